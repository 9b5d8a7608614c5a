"""Every outbound call: one shared ClientSession, the base URL per upstream and mode, the credentials
the backend itself sends, the request id, and the failure -> ApiError mapping.

No retry, breaker or cache logic here: that is the sidecar's job. In direct mode (`EGRESS_MODE=direct`,
the rollback path when the sidecar is broken) calls go straight to the real hosts with plain timeouts.

Credentials, per upstream:
  gemini          sidecar mode: none (the policy injects x-goog-api-key, the key lives in the sidecar
                  only); direct mode: x-goog-api-key from GEMINI_API_KEY.
  whatsapp(_media) Authorization: Bearer WHATSAPP_TOKEN in both modes (the policy does not inject it).
  supabase        apikey: SUPABASE_KEY in both modes; data calls also Authorization: Bearer SUPABASE_KEY
                  (service role), the user-token check sends the user's own bearer instead.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from inbox_backend.errors import ApiError, Purpose, from_exception, from_response
from inbox_backend.settings import AUTH_TIMEOUT_KEY, Settings, Upstream

log = logging.getLogger("inbox.egress")

REQUEST_ID = "X-Request-ID"


@dataclass(frozen=True)
class Call:
    upstream: Upstream
    method: str
    path: str  # from the upstream's root, starting with "/"
    purpose: Purpose = Purpose.API
    params: Mapping[str, str] = field(default_factory=dict)
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        # For logs: no query (a media URL's carries its access signature).
        return f"{self.upstream} {self.method} {self.path.partition('?')[0]}"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    data: Any


def call_url(base_url: str, call: Call) -> URL:
    """The call's URL. Parameters are set as values and encoded by yarl (`&`, `=`, `#` ... escaped), so none
    can end its own parameter and start another."""
    url = URL(base_url + call.path)
    return url.update_query(dict(call.params)) if call.params else url


def open_session() -> aiohttp.ClientSession:
    # No cookies: one session serves every user. No env proxies: egress goes where the settings say.
    return aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)


class Egress:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.session = session
        # Per (upstream, is the token check): a direct upstream's own timeout; through the sidecar one backstop.
        limits = {(u, auth): _limits(settings, u, auth) for u in Upstream for auth in (False, True)}
        self._timeouts = {key: pair[0] for key, pair in limits.items()}
        self._stream_timeouts = {key: pair[1] for key, pair in limits.items()}

    def url(self, call: Call) -> URL:
        return call_url(self.settings.base_url(call.upstream), call)

    def credentials(self, upstream: Upstream, purpose: Purpose) -> dict[str, str]:
        s = self.settings
        if upstream is Upstream.GEMINI:
            return {"x-goog-api-key": s.gemini_api_key} if s.direct else {}
        if upstream in (Upstream.WHATSAPP, Upstream.WHATSAPP_MEDIA):
            return {"Authorization": f"Bearer {s.whatsapp_token}"}
        if purpose is Purpose.AUTH:
            return {"apikey": s.supabase_key}  # the caller's bearer comes with the call
        return {"apikey": s.supabase_key, "Authorization": f"Bearer {s.supabase_key}"}

    def headers(self, call: Call, request_id: str) -> dict[str, str]:
        # The caller's request id goes through the sidecar (which keeps it): one id in both logs.
        headers = {**self.credentials(call.upstream, call.purpose), **call.headers, REQUEST_ID: request_id}
        if call.json is not None:
            headers["Content-Type"] = "application/json"
        return headers

    async def send(self, call: Call, request_id: str) -> Reply:
        """One call, its JSON body read; any failure raised as the ApiError the backend answers with."""
        async with self.open(call, request_id, self._timeouts[_timeout_key(call)]) as response:
            try:
                raw = await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise self._failed(call, request_id, exc) from exc
        return Reply(response.status, response.headers.copy(), _json(raw))

    @asynccontextmanager
    async def stream(self, call: Call, request_id: str) -> AsyncIterator[aiohttp.ClientResponse]:
        """A 2xx response whose body the caller reads piece by piece (media), as its host encoded it: its
        Content-Length and Content-Encoding then still describe the bytes passed on."""
        limits = self._stream_timeouts[_timeout_key(call)]
        async with self.open(call, request_id, limits, decompress=False) as response:
            yield response

    @asynccontextmanager
    async def open(
        self, call: Call, request_id: str, limits: aiohttp.ClientTimeout, decompress: bool = True
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        try:
            response = await self.session.request(
                call.method,
                self.url(call),
                headers=self.headers(call, request_id),
                data=None if call.json is None else json.dumps(call.json).encode(),
                timeout=limits,
                allow_redirects=False,
                auto_decompress=decompress,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._failed(call, request_id, exc) from exc
        async with response:
            if response.status >= 300:
                error = from_response(call.upstream, call.purpose, response.status, response.headers)
                log.warning("%s failed: %s -> %d %s (request_id=%s)", call, error.detail, error.status, error.code,
                            request_id)
                raise error
            yield response

    def _failed(self, call: Call, request_id: str, exc: BaseException) -> ApiError:
        error = from_exception(call.upstream, call.purpose, exc)
        log.warning("%s failed: %s -> %d %s (request_id=%s)", call, error.detail, error.status, error.code, request_id)
        return error


def _timeout_key(call: Call) -> tuple[Upstream, bool]:
    return call.upstream, call.purpose is Purpose.AUTH


def _limits(settings: Settings, upstream: Upstream, auth: bool) -> tuple[aiohttp.ClientTimeout, aiohttp.ClientTimeout]:
    """(a call's timeout, a streamed call's) to `upstream`; `auth`: the Supabase token check."""
    if not settings.direct:
        backstop = settings.sidecar_backstop_timeout
        return aiohttp.ClientTimeout(total=backstop), aiohttp.ClientTimeout(total=None, sock_read=backstop)
    seconds = settings.direct_timeout_for(AUTH_TIMEOUT_KEY if auth else upstream.value)
    connect = settings.direct_connect_timeout
    # A large media download may take longer than any one call: bound the gaps instead.
    return (aiohttp.ClientTimeout(total=seconds, sock_connect=connect),
            aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=seconds))


def _json(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise ApiError(502, "external_api_unavailable", detail="the upstream sent a body that is not JSON") from None


@dataclass(frozen=True)
class Caller:
    """The egress bound to one request's id: what the upstream clients hold."""

    egress: Egress
    request_id: str

    async def send(self, call: Call) -> Reply:
        return await self.egress.send(call, self.request_id)

    def stream(self, call: Call) -> AbstractAsyncContextManager[aiohttp.ClientResponse]:
        return self.egress.stream(call, self.request_id)
