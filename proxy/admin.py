"""The admin port: the status page, health, readiness, metrics, breakers, upstreams, the effective policy and
cache purges.

It reads the runtime; it never reaches into stage internals.

Mutating endpoints (`POST /breakers/...`, `POST /reload`, `DELETE /cache`) are guarded in this order:

1. Cross-site requests are refused (403 `cross_origin`): a request whose `Sec-Fetch-Site` is not `same-origin` /
   `none`, or, without a token, whose `Origin` names another host than its `Host` (any scheme: a TLS-terminating
   proxy in front of the port changes it). Browsers send these on every cross-site POST; curl, Prometheus and
   scripts send neither, so they pass. With a token the `Origin` is not compared: the token travels in
   `Authorization`, which a foreign page cannot attach without a CORS preflight that this port never grants, and
   a proxy that rewrites `Host` would otherwise refuse the status page's own buttons.
2. A body type a browser may send cross-site without a preflight (`text/plain`, `application/x-www-form-urlencoded`,
   `multipart/form-data`) is refused (415 `unsupported_media_type`): send no body (`curl -X POST`), or
   `Content-Type: application/json`. So an HTML form or a no-cors `fetch` can never reach a handler, Origin or not.
3. Without a token (loopback only: the loader refuses an admin beyond loopback without one) the `Host` must name
   loopback (403 `bad_host`), so a DNS-rebound name pointing at 127.0.0.1 is refused too.
4. With `admin.token` set, `Authorization: Bearer <token>` is required (401), compared in constant time.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy import __version__
from proxy import status as status_page
from proxy.logs import iso
from proxy.policy.model import is_loopback_host
from proxy.policy.render import effective_policy
from proxy.runtime import LiveRuntime, Runtime

# One line per admin action (breaker overrides, purges, reloads), refused ones included: who changed what, when.
audit = logging.getLogger("egress.audit")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    applied: bool
    problems: list[str]  # why a reload was refused, one `file:line: key: message` each
    notes: list[str]  # what the reload could not apply (addresses: restart)


@dataclass(frozen=True, slots=True)
class ReloadAttempt:
    at: float  # epoch seconds
    result: ReloadResult

    def show(self) -> dict[str, Any]:
        return {"at": iso(self.at), "result": "applied" if self.result.applied else "refused",
                "problems": self.result.problems, "notes": self.result.notes}


class AdminState:
    """What the admin app reads: the runtime, whether the data plane is serving, how to reload, and how the last
    reload went (a refused one leaves the running policy as it was: `/policy` says so, not only the log)."""

    def __init__(self, live: LiveRuntime, reload: Callable[[], Awaitable[ReloadResult]] | None = None) -> None:
        self.live = live
        self.ready = False
        self.started = time.time()
        self.reload = reload
        self.policy_loaded_at = self.started
        self.last_reload: ReloadAttempt | None = None

    def note_reload(self, result: ReloadResult) -> None:
        """Every attempt, by SIGHUP or `POST /reload`, applied or not."""
        self.last_reload = ReloadAttempt(time.time(), result)
        if result.applied:
            self.policy_loaded_at = self.last_reload.at

    @property
    def runtime(self) -> Runtime:
        return self.live.runtime


STATE = web.AppKey("state", AdminState)


def _state(request: web.Request) -> AdminState:
    return request.app[STATE]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=functools.partial(json.dumps, indent=2))


# The request content types a browser sends cross-origin without a CORS preflight (Fetch standard, "CORS-safelisted
# request-header"): the only bodies a foreign page can make a browser send here.
SIMPLE_CONTENT_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})  # `none`: typed in the address bar, a bookmark


def _forbidden(error: str, detail: str, status: int = 403) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def _cross_site(request: web.Request, token_set: bool) -> web.Response | None:
    """Why a mutating request may come from another site's page (CSRF), or None when it cannot."""
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in SAME_SITE_FETCHES:
        return _forbidden("cross_origin", f"Sec-Fetch-Site: {fetch_site} is refused on a mutating endpoint")
    origin = request.headers.get("Origin")
    if origin is not None and not token_set and origin.strip().lower().partition("://")[2] != request.host.lower():
        return _forbidden("cross_origin", "a request from another origin is refused on a mutating endpoint")
    content_type = request.headers.get("Content-Type")
    if content_type is not None and content_type.partition(";")[0].strip().lower() in SIMPLE_CONTENT_TYPES:
        return _forbidden(
            "unsupported_media_type", "send no body, or Content-Type: application/json", status=415
        )
    return None


def _host_is_loopback(request: web.Request) -> bool:
    host = request.host
    if host.startswith("["):  # `[::1]:9901`
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return is_loopback_host(host)


def _authorized(request: web.Request) -> bool:
    admin = _state(request).runtime.policy.admin
    token = admin.token
    if not token:
        return admin.listen.is_loopback  # the loader refuses this already: never open beyond loopback
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    # The scheme is case-insensitive (RFC 9110 §11.1). aiohttp hands undecodable header bytes over as
    # surrogates: back to the same bytes, never an error.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        supplied.strip().encode("utf-8", "surrogateescape"), token.encode()
    )


def mutating(handler: Handler) -> Handler:
    """Guards an admin action (CSRF, Host, token) and writes its one audit line: what, from where, the result."""

    async def audited(request: web.Request) -> web.StreamResponse:
        response = await guarded(request)
        error = ""
        if response.status >= 400 and isinstance(response, web.Response) and response.text:
            with contextlib.suppress(ValueError, AttributeError):
                error = f" ({json.loads(response.text).get('error', '')})"
        audit.warning("admin %s %s from %s: %d%s", request.method, request.path_qs, request.remote, response.status,
                      error)
        return response

    async def guarded(request: web.Request) -> web.StreamResponse:
        token_set = bool(_state(request).runtime.policy.admin.token)
        refused = _cross_site(request, token_set)
        if refused is not None:
            return refused
        if not token_set and not _host_is_loopback(request):
            return _forbidden("bad_host", "without admin.token, send Host: 127.0.0.1 or localhost")
        if not _authorized(request):
            return web.json_response(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <admin.token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="egress-admin"'},
            )
        return await handler(request)

    return audited


async def health(request: web.Request) -> web.Response:
    state = _state(request)
    # The pid: a launcher tells its own child's answer from another instance's on the same port.
    return _json({"status": "ok", "version": __version__, "pid": os.getpid(),
                  "uptime_seconds": round(time.time() - state.started, 3)})


async def ready(request: web.Request) -> web.Response:
    state = _state(request)
    if not state.ready:
        return _json({"status": "not_ready", "pid": os.getpid()}, status=503)
    return _json({"status": "ready", "pid": os.getpid(), "policy": state.runtime.policy.source})


async def metrics(request: web.Request) -> web.Response:
    body = _state(request).runtime.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# The key of `/policy` that is not the policy's: the running policy's load time and the last reload attempt.
RELOAD_KEY = "reload"


def _reload_state(state: AdminState) -> dict[str, Any]:
    last = state.last_reload
    return {"policy_loaded_at": iso(state.policy_loaded_at),
            "last_attempt": last.show() if last is not None else None}


async def policy(request: web.Request) -> web.Response:
    """The running (effective) policy, plus under `reload` when it was loaded and how the last attempt went."""
    state = _state(request)
    shown = effective_policy(state.runtime.policy)
    shown[RELOAD_KEY] = _reload_state(state)
    return _json(shown)


async def status(request: web.Request) -> web.Response:
    state = _state(request)
    return _json(status_page.report(state.runtime, _reload_state(state)))


async def page(request: web.Request) -> web.Response:
    """The status page; `?part=main` is the part it refreshes itself with."""
    state = _state(request)
    shown = status_page.report(state.runtime, _reload_state(state))
    html = status_page.render_main(shown) if request.query.get("part") == "main" else status_page.render_page(shown)
    return web.Response(text=html, content_type="text/html", headers=status_page.HEADERS)


async def breakers(request: web.Request) -> web.Response:
    runtime = _state(request).runtime
    return _json({name: b.snapshot() for name, b in runtime.breakers.items()})


@mutating
async def breaker_action(request: web.Request) -> web.Response:
    runtime = _state(request).runtime
    name, action = request.match_info["name"], request.match_info["action"]
    breaker = runtime.breakers.get(name)
    if breaker is None:
        return _json({"error": "unknown_breaker", "detail": f"no breaker named {name!r}"}, status=404)
    {"open": breaker.force_open, "close": breaker.force_close, "reset": breaker.reset}[action]()
    return _json(breaker.snapshot())


@mutating
async def purge_cache(request: web.Request) -> web.Response:
    """`DELETE /cache?upstream=<name>[&route=<route>]`: O(1), a generation bump; the orphans expire."""
    runtime = _state(request).runtime
    name, route = request.query.get("upstream"), request.query.get("route")
    if not name:
        return _json({"error": "bad_request", "detail": "DELETE /cache?upstream=<name>[&route=<route>]"}, status=400)
    upstream = runtime.policy.upstreams.get(name)
    if upstream is None:
        return _json({"error": "unknown_upstream", "detail": f"no upstream named {name!r}"}, status=404)
    if route is not None and route not in {r.name for r in upstream.routes}:
        return _json({"error": "unknown_route", "detail": f"no route {route!r} in upstream {name!r}"}, status=404)
    if not await runtime.cache.purge(name, route):
        return _json({"error": "cache_unavailable", "detail": "the cache backend did not answer"}, status=503)
    return _json({"purged": {"upstream": name, "route": route}})


@mutating
async def reload(request: web.Request) -> web.Response:
    state = _state(request)
    if state.reload is None:
        return _json({"error": "reload_unavailable"}, status=501)
    result = await state.reload()
    return _json(asdict(result), status=200 if result.applied else 400)


async def upstreams(request: web.Request) -> web.Response:
    runtime = _state(request).runtime
    return _json({name: s.snapshot() for name, s in runtime.upstreams.items()})


def build_admin_app(state: AdminState) -> web.Application:
    app = web.Application()
    app[STATE] = state
    app.router.add_get("/", page)
    app.router.add_get("/status", status)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/policy", policy)
    app.router.add_get("/breakers", breakers)
    app.router.add_post("/breakers/{name}/{action:open|close|reset}", breaker_action)
    app.router.add_get("/upstreams", upstreams)
    app.router.add_post("/reload", reload)
    app.router.add_delete("/cache", purge_cache)
    return app
