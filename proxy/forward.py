"""One attempt: send one request to one upstream and get its response headers, or an `EgressError`.

All aiohttp exception handling lives in `classify`, so the rest of the sidecar reasons about outcomes
(connect_error, reset, timeout) and about whether the request could have reached the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.deadline import Deadline
from proxy.errors import (
    BadRequest,
    BodyTooLarge,
    EgressError,
    ExpectationFailed,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamReset,
    UpstreamTimeout,
)
from proxy.headers import REQUEST_ID, end_to_end
from proxy.memo import Memo
from proxy.policy import Timeouts, Upstream

# Headers aiohttp would otherwise invent; a transparent proxy sends only what the caller sent.
SKIP_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")
# Sidecar controls are for the sidecar: they are not forwarded upstream. `Expect: 100-continue` was answered by
# the sidecar (`_send_continue`): forwarded, it would make aiohttp wait for the upstream's 100 too.
SIDECAR_REQUEST_HEADERS = frozenset({"host", "x-egress-timeout", "expect"})
CLIENT_TIMEOUT_MEMO = 64  # an upstream's routes have a few distinct timeouts between them


def open_session(keepalive: float) -> aiohttp.ClientSession:
    """One pooled keep-alive session. The bulkhead bounds concurrency, so the pool doesn't. A connection idle
    longer than `keepalive` is never reused (aiohttp checks the idle time when it takes one from the pool)."""
    connector = (
        aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60, keepalive_timeout=keepalive)
        if keepalive > 0
        else aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60, force_close=True)
    )
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,  # bytes and Content-Encoding pass exactly as the upstream sent them
        skip_auto_headers=SKIP_AUTO_HEADERS,
        cookie_jar=aiohttp.DummyCookieJar(),  # a shared jar would hand one caller's cookies to another
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
        requote_redirect_url=False,
    )
    # aiohttp replays an idempotent request once by itself when its connection drops, unseen by the retry
    # policy: past `attempts`, outside the retry budget and X-Egress-Attempts. Retries are the policy's alone.
    # (No public switch: this is the attribute aiohttp's own test client turns off; aiohttp is pinned.)
    session._retry_connection = False
    return session


@dataclass(frozen=True, slots=True)
class Pools:
    """An upstream's two connection pools. A request that may be replayed takes a connection idle up to
    `limits.keepalive`; one that may not (a WhatsApp send) only one used within `limits.keepalive_non_idempotent`:
    a server closing an idle connection just as the request goes out would leave it neither provably unsent (to
    retry) nor answered. Lifetime: carried over a reload while the URL and both idle bounds are unchanged."""

    url: URL
    keepalive: float
    keepalive_non_idempotent: float
    reusable: aiohttp.ClientSession
    fresh: aiohttp.ClientSession

    @classmethod
    def open(cls, upstream: Upstream) -> Pools:
        limits = upstream.limits
        return cls(
            upstream.url, limits.keepalive, limits.keepalive_non_idempotent,
            open_session(limits.keepalive), open_session(limits.keepalive_non_idempotent),
        )

    @classmethod
    def carry(cls, previous: Pools | None, upstream: Upstream) -> Pools:
        """`previous` for the reloaded `upstream`, or new pools if what they were opened for changed."""
        limits = upstream.limits
        if previous is not None and (previous.url, previous.keepalive, previous.keepalive_non_idempotent) == (
            upstream.url, limits.keepalive, limits.keepalive_non_idempotent
        ):
            return previous
        return cls.open(upstream)

    def session_for(self, idempotent: bool) -> aiohttp.ClientSession:
        return self.reusable if idempotent else self.fresh

    @property
    def closed(self) -> bool:
        return self.reusable.closed and self.fresh.closed

    async def close(self) -> None:
        await self.reusable.close()
        await self.fresh.close()


class WriteWatchdog:
    """The `write` timeout: armed while a body chunk is being handed to the upstream, paused otherwise.

    Waiting on the *caller* for more body is not the upstream's fault, so the clock is paused then.
    Only streamed bodies need it: a buffered one is written in one go, within the request's deadline.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.fired = False
        self._timer: asyncio.Timeout | None = None

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        async with asyncio.timeout(None) as timer:
            self._timer = timer
            try:
                yield
            finally:
                self.fired = timer.expired()
                self._timer = None

    def arm(self) -> None:
        if self._timer is not None and not self._timer.expired():
            self._timer.reschedule(asyncio.get_running_loop().time() + self.seconds)

    def pause(self) -> None:
        if self._timer is not None and not self._timer.expired():
            self._timer.reschedule(None)


class RequestBody:
    """The caller's body: buffered when small enough to replay, else a one-shot stream."""

    def __init__(self, request: web.BaseRequest, buffered: bytes | None, prefix: bytes, limit: int | None) -> None:
        self._request = request
        self.buffered = buffered
        self._prefix = prefix
        self._limit = limit
        self._started = False

    @property
    def replayable(self) -> bool:
        """Buffered bodies replay; a streamed one only if no byte of it was ever handed to a connection."""
        return self.buffered is not None or not self._started

    @classmethod
    async def read(cls, request: web.BaseRequest, replay_limit: int, max_body: int | None) -> RequestBody:
        length = request.content_length
        if max_body is not None and length is not None and length > max_body:
            raise BodyTooLarge(f"request body of {length} bytes exceeds max_request_body ({max_body})")
        if not request.body_exists:
            return cls(request, b"", b"", max_body)
        await _send_continue(request)  # routed, admitted, given a slot and not too large: now the body is wanted
        if length is not None and length <= replay_limit:
            return cls(request, await _read_exactly(request, length), b"", max_body)
        if length is None and replay_limit > 0:
            prefix = await _read_up_to(request, replay_limit + 1)
            if max_body is not None and len(prefix) > max_body:  # no Content-Length said so up front
                raise BodyTooLarge(f"request body exceeds max_request_body ({max_body})")
            if len(prefix) <= replay_limit and request.content.at_eof():
                return cls(request, prefix, b"", max_body)
            return cls(request, None, prefix, max_body)
        return cls(request, None, b"", max_body)

    def payload(self, watchdog: WriteWatchdog) -> bytes | AsyncIterator[bytes] | None:
        if self.buffered is not None:
            return self.buffered or None
        if self._started:
            raise BadRequest("a streamed request body cannot be sent twice")
        return self._stream(watchdog)

    async def _stream(self, watchdog: WriteWatchdog) -> AsyncIterator[bytes]:
        self._started = True
        sent = 0
        if self._prefix:
            sent += len(self._prefix)
            watchdog.arm()
            yield self._prefix
        while True:
            watchdog.pause()
            chunk = await self._request.content.readany()
            if not chunk:
                return
            sent += len(chunk)
            if self._limit is not None and sent > self._limit:
                raise BodyTooLarge(f"request body exceeds max_request_body ({self._limit})")
            watchdog.arm()
            yield chunk


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


async def _send_continue(request: web.BaseRequest) -> None:
    """`100 Continue` when the caller asked for it (aiohttp's low-level server leaves `Expect` to the application).
    Sent only once the body is wanted, so a refusal (413, an open breaker) goes instead, as RFC 9110 §10.1.1 means;
    a caller that sent its body at once gets it too, which the RFC allows. Any other expectation is a 417."""
    expect = request.headers.get("Expect")
    if expect is None:
        return
    if expect.lower() != "100-continue":
        raise ExpectationFailed(f"unsupported Expect: {expect[:100]!r}")
    if request.version >= (1, 1):
        writer = request.writer
        if writer.output_size == 0:  # nothing sent yet: the interim answer can still go first
            await writer.write(CONTINUE)
            writer.output_size = 0  # the final answer is yet to come: aiohttp counts its bytes from here


async def _read_exactly(request: web.BaseRequest, length: int) -> bytes:
    data = await request.content.readexactly(length) if length else b""
    return data


async def _read_up_to(request: web.BaseRequest, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await request.content.read(limit - size)
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class Outgoing:
    method: str
    url: URL
    headers: CIMultiDict[str]
    body: RequestBody
    idempotent: bool  # may be replayed: see Pools


def classify(exc: BaseException, upstream: str, timeouts: Timeouts) -> EgressError:
    """aiohttp's exceptions -> the sidecar's outcomes. `sent=False` only when nothing can have left."""
    if isinstance(exc, EgressError):
        exc.upstream = exc.upstream or upstream
        return exc
    if isinstance(exc.__cause__, EgressError):  # the sidecar's own, from inside aiohttp (a body over the limit)
        return classify(exc.__cause__, upstream, timeouts)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return UpstreamTimeout("connect", timeouts.connect, upstream=upstream, sent=False)
    if isinstance(exc, aiohttp.SocketTimeoutError):
        return UpstreamTimeout("read", timeouts.read, upstream=upstream)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamConnectError(f"cannot connect to {exc.host}:{exc.port}: {exc.os_error}", upstream=upstream)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return UpstreamReset("the upstream closed the connection before answering", upstream=upstream)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamReset(f"the response body was cut short: {exc}", upstream=upstream)
    if isinstance(exc, aiohttp.ClientResponseError):  # its head did not parse (status line, a header, the bounds)
        return UpstreamBadResponse(f"malformed response from the upstream: {exc.message[:200]}", upstream=upstream)
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError, OSError)):
        return UpstreamReset(f"connection lost: {exc}", upstream=upstream)
    if isinstance(exc, aiohttp.ClientError):
        return UpstreamReset(f"{type(exc).__name__}: {exc}", upstream=upstream)
    raise exc


def timed_out(exc: TimeoutError, upstream: str, timeouts: Timeouts, deadline: Deadline) -> EgressError:
    """A TimeoutError while talking to the upstream: aiohttp's own (connect, read) or the request's deadline."""
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return classify(exc, upstream, timeouts)
    return UpstreamTimeout("total", deadline.budget, upstream=upstream)


def _client_timeout(timeouts: Timeouts) -> aiohttp.ClientTimeout:
    """aiohttp's timers for one attempt: connect and read; the total is the request's deadline, not aiohttp's."""
    return aiohttp.ClientTimeout(total=None, connect=None, sock_connect=timeouts.connect, sock_read=timeouts.read)


class Forwarder:
    """Sends attempts for one upstream over its pooled session."""

    def __init__(self, upstream: Upstream, pools: Pools) -> None:
        self.upstream = upstream
        self.pools = pools
        self._base = str(upstream.url).rstrip("/")
        self._dropped = SIDECAR_REQUEST_HEADERS | {name.lower() for name, _ in upstream.headers}
        # One per distinct route timeouts, made once: made on every attempt it cost 1.1 µs (timeit), the memo 0.5.
        self._client_timeouts: Memo[Timeouts, aiohttp.ClientTimeout] = Memo(CLIENT_TIMEOUT_MEMO)

    def headers_for(self, incoming: CIMultiDictProxy[str], request_id: str) -> CIMultiDict[str]:
        """The caller's end-to-end headers, the policy's injected ones winning, and the request id."""
        headers = end_to_end(incoming, self._dropped)
        headers.extend(self.upstream.headers)
        headers[REQUEST_ID] = request_id
        return headers

    def _client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        return self._client_timeouts.get(timeouts, _client_timeout)

    def url_for(self, path: str, query: str) -> URL:
        return URL(self._base + path + ("?" + query if query else ""), encoded=True)

    async def send(self, out: Outgoing, timeouts: Timeouts, deadline: Deadline) -> aiohttp.ClientResponse:
        """Response headers within the deadline; the body is left for the caller to stream or read."""
        remaining = deadline.remaining()
        if remaining <= 0:
            raise UpstreamTimeout("total", deadline.budget, upstream=self.upstream.name, sent=False)
        watchdog = WriteWatchdog(timeouts.write)
        payload = out.body.payload(watchdog)
        try:
            async with asyncio.timeout(remaining):
                if isinstance(payload, bytes) or payload is None:
                    response = await self._request(out, payload, timeouts)
                else:
                    async with watchdog.watching():
                        response = await self._request(out, payload, timeouts)
        except TimeoutError as exc:
            if watchdog.fired and not isinstance(exc, aiohttp.ServerTimeoutError):
                raise UpstreamTimeout("write", timeouts.write, upstream=self.upstream.name) from exc
            raise timed_out(exc, self.upstream.name, timeouts, deadline) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise classify(exc, self.upstream.name, timeouts) from exc
        if response.status == 101:  # nobody asked (Upgrade is hop-by-hop: never forwarded), and nothing is tunnelled
            response.close()
            raise UpstreamBadResponse("the upstream switched protocols (101): the sidecar does not tunnel",
                                      upstream=self.upstream.name)
        return response

    def _request(
        self, out: Outgoing, payload: bytes | AsyncIterator[bytes] | None, timeouts: Timeouts
    ) -> aiohttp.client._RequestContextManager:
        return self.pools.session_for(out.idempotent).request(
            out.method,
            out.url,
            headers=out.headers,
            data=payload,
            allow_redirects=False,
            timeout=self._client_timeout(timeouts),
        )
