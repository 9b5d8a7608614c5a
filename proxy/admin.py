"""The admin port: health, readiness, metrics, breakers, upstreams, the effective policy and cache purges.

It reads the runtime; it never reaches into stage internals. Mutating endpoints need
`Authorization: Bearer <admin.token>` when the policy sets a token.
"""

from __future__ import annotations

import functools
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from proxy import __version__
from proxy.policy.render import effective_policy
from proxy.runtime import Runtime

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    applied: bool
    problems: list[str]  # why a reload was refused, one `file:line: key: message` each
    notes: list[str]  # what the reload could not apply (addresses: restart)


class AdminState:
    """What the admin app reads: the runtime, whether the data plane is serving, and how to reload."""

    def __init__(self, runtime: Runtime, reload: Callable[[], Awaitable[ReloadResult]] | None = None) -> None:
        self.runtime = runtime
        self.ready = False
        self.started = time.time()
        self.reload = reload


STATE = web.AppKey("state", AdminState)


def _state(request: web.Request) -> AdminState:
    return request.app[STATE]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=functools.partial(json.dumps, indent=2))


def _authorized(request: web.Request) -> bool:
    token = _state(request).runtime.policy.admin.token
    if not token:
        return True
    scheme, _, supplied = request.headers.get("Authorization", "").partition(" ")
    # The scheme is case-insensitive (RFC 9110 §11.1). aiohttp hands undecodable header bytes over as
    # surrogates: back to the same bytes, never an error.
    return scheme.lower() == "bearer" and hmac.compare_digest(
        supplied.strip().encode("utf-8", "surrogateescape"), token.encode()
    )


def mutating(handler: Handler) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        if not _authorized(request):
            return web.json_response(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <admin.token>"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="egress-admin"'},
            )
        return await handler(request)

    return guarded


async def health(request: web.Request) -> web.Response:
    state = _state(request)
    return _json({"status": "ok", "version": __version__, "uptime_seconds": round(time.time() - state.started, 3)})


async def ready(request: web.Request) -> web.Response:
    state = _state(request)
    if not state.ready:
        return _json({"status": "not_ready"}, status=503)
    return _json({"status": "ready", "policy": state.runtime.policy.source})


async def metrics(request: web.Request) -> web.Response:
    body = _state(request).runtime.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def policy(request: web.Request) -> web.Response:
    return _json(effective_policy(_state(request).runtime.policy))


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
