"""Operating the backend: `GET /health` (the backend and what it depends on), `GET /metrics` and
`GET /admin/circuit-breakers`.

Health and breakers read the sidecar's admin port, which is not an upstream: it is called directly, with a short
timeout, never through the data plane.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import aiohttp
from aiohttp import web

from inbox_backend.errors import ApiError
from inbox_backend.inputs import current_user
from inbox_backend.settings import Upstream
from inbox_backend.state import AppState, app_state

Status = Literal["ok", "degraded", "down"]
ADMIN_TIMEOUT = aiohttp.ClientTimeout(total=2.0)
# Without Supabase nothing can be stored: the inbox is down. Without Gemini or WhatsApp it still
# takes messages in: degraded.
CRITICAL = frozenset({Upstream.SUPABASE})


class SidecarUnreachable(Exception):
    pass


async def sidecar_breakers(state: AppState) -> dict[str, Any]:
    """The sidecar admin port's `GET /breakers` (after checking it is ready to serve)."""
    base = state.settings.sidecar_admin_url
    try:
        async with state.session.get(f"{base}/ready", timeout=ADMIN_TIMEOUT) as ready:
            if ready.status != 200:
                raise SidecarUnreachable(f"sidecar not ready ({ready.status})")
        async with state.session.get(f"{base}/breakers", timeout=ADMIN_TIMEOUT) as response:
            response.raise_for_status()
            data = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise SidecarUnreachable(f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(data, dict):
        raise SidecarUnreachable("the sidecar's /breakers is not a JSON object")
    return data


def upstream_breakers(breakers: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per upstream: its worst breaker state (a route may have its own breaker, `upstream.route`)."""
    rank = {"closed": 0, "half-open": 1, "open": 2}
    report: dict[str, dict[str, Any]] = {}
    for upstream in Upstream:
        own = {
            name: b.get("state", "unknown")
            for name, b in breakers.items()
            if isinstance(b, dict) and (name == upstream or name.startswith(f"{upstream}."))
        }
        worst = max(own.values(), key=lambda s: rank.get(s, 3), default="unknown")
        report[upstream] = {"breaker": worst, "breakers": own}
    return report


def overall(upstreams: dict[str, dict[str, Any]]) -> Status:
    states = {u: info["breaker"] for u, info in upstreams.items()}
    if any(states[u] == "open" for u in CRITICAL):
        return "down"
    return "ok" if all(s == "closed" for s in states.values()) else "degraded"


async def health(request: web.Request) -> web.Response:
    """Each answer carries the pid: a launcher tells its own child from another instance on the same port."""
    state = app_state(request)
    if state.settings.direct:
        # Nothing between us and the upstreams to ask; the upstreams' own health is not probed.
        body = {"status": "ok", "backend": "ok", "pid": os.getpid(), "egress_mode": "direct",
                "sidecar": {"reachable": None}}
        return web.json_response(body)
    try:
        breakers = await sidecar_breakers(state)
    except SidecarUnreachable as exc:
        # Every outbound call goes through the sidecar: without it the inbox can do nothing.
        body = {
            "status": "down", "backend": "ok", "pid": os.getpid(), "egress_mode": "sidecar",
            "sidecar": {"reachable": False, "error": str(exc)},
        }
        return web.json_response(body, status=503)
    upstreams = upstream_breakers(breakers)
    status = overall(upstreams)
    body = {
        "status": status, "backend": "ok", "pid": os.getpid(), "egress_mode": "sidecar",
        "sidecar": {"reachable": True}, "upstreams": upstreams,
    }
    return web.json_response(body, status=503 if status == "down" else 200)


async def circuit_breakers(request: web.Request) -> web.Response:
    user = await current_user(request)
    user.require_admin()
    state = app_state(request)
    if state.settings.direct:
        return web.json_response({"egress_mode": "direct", "breakers": {}})
    try:
        breakers = await sidecar_breakers(state)
    except SidecarUnreachable as exc:
        raise ApiError(503, "sidecar_unavailable", detail=str(exc)) from exc
    return web.json_response({"egress_mode": "sidecar", "breakers": breakers})


async def metrics(request: web.Request) -> web.Response:
    body = app_state(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/circuit-breakers", circuit_breakers)
