"""Control API (its own port): faults, stats, reset, config and media sizes over HTTP.

Endpoints::

    GET    /healthz          {"status": "ok", "urls": {...}}
    GET    /faults           active faults
    POST   /faults           add a fault (JSON object, or an array of them) -> 201
    DELETE /faults           clear all faults
    DELETE /faults/{id}      remove one fault (404 if unknown)
    GET    /stats            request counters, faults applied, deliveries
    GET    /deliveries       deliveries, optional ?to=...&body=...
    POST   /reset            clear faults, counters, deliveries; restore sample data
    GET    /config           current config
    PATCH  /config           change config fields (keys, stream gap, media sizes, media_base_url ...)
    PUT    /media/{media_id} {"size": N, "mime_type": "image/jpeg"} register a media object
"""

from __future__ import annotations

import os
from typing import Any

from aiohttp import web

from .faults import Fault
from .routing import STATE_KEY, read_json
from .state import SimulatorState


def _state(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


def _error(message: str, status: int = 400) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def healthz(request: web.Request) -> web.Response:
    # The pid: a launcher tells its own simulator from another one on the same port.
    return web.json_response({"status": "ok", "pid": os.getpid(), "urls": _state(request).urls})


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response([f.to_dict() for f in _state(request).list_faults()])


async def add_faults(request: web.Request) -> web.Response:
    ok, data = await read_json(request)
    if not ok:
        return _error("body must be a JSON fault object or an array of them")
    items: list[Any] = data if isinstance(data, list) else [data]
    try:
        faults = [Fault.from_dict(item) for item in items]
    except (TypeError, ValueError) as exc:
        return _error(str(exc))
    state = _state(request)
    added = [state.add_fault(f).to_dict() for f in faults]
    return web.json_response(added if isinstance(data, list) else added[0], status=201)


async def clear_faults(request: web.Request) -> web.Response:
    state = _state(request)
    removed = len(state.list_faults())
    state.clear_faults()
    return web.json_response({"removed": removed})


async def delete_fault(request: web.Request) -> web.Response:
    try:
        fault_id = int(request.match_info["fault_id"])
    except ValueError:
        return _error("fault id must be an integer")
    if not _state(request).remove_fault(fault_id):
        return _error(f"no fault {fault_id}", 404)
    return web.json_response({"removed": 1})


async def stats(request: web.Request) -> web.Response:
    return web.json_response(_state(request).stats())


async def deliveries(request: web.Request) -> web.Response:
    found = _state(request).deliveries_to(request.query.get("to"), request.query.get("body"))
    return web.json_response([d.to_dict() for d in found])


async def reset(request: web.Request) -> web.Response:
    _state(request).reset()
    return web.json_response({"status": "reset"})


async def get_config(request: web.Request) -> web.Response:
    return web.json_response(_state(request).config.to_dict())


async def patch_config(request: web.Request) -> web.Response:
    ok, data = await read_json(request)
    if not ok or not isinstance(data, dict):
        return _error("body must be a JSON object")
    config = _state(request).config
    try:
        config.update(data)
    except ValueError as exc:
        return _error(str(exc))
    return web.json_response(config.to_dict())


async def put_media(request: web.Request) -> web.Response:
    ok, data = await read_json(request)
    if not ok or not isinstance(data, dict):
        return _error("body must be a JSON object")
    size = data.get("size")
    mime_type = data.get("mime_type", "image/jpeg")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return _error("size must be an integer >= 0")
    if not isinstance(mime_type, str):
        return _error("mime_type must be a string")
    info = _state(request).set_media(request.match_info["media_id"], size, mime_type)
    return web.json_response({"media_id": info.media_id, "size": info.size, "mime_type": info.mime_type})


def create_app(state: SimulatorState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/faults", list_faults)
    app.router.add_post("/faults", add_faults)
    app.router.add_delete("/faults", clear_faults)
    app.router.add_delete("/faults/{fault_id}", delete_fault)
    app.router.add_get("/stats", stats)
    app.router.add_get("/deliveries", deliveries)
    app.router.add_post("/reset", reset)
    app.router.add_get("/config", get_config)
    app.router.add_patch("/config", patch_config)
    app.router.add_put("/media/{media_id}", put_media)
    return app
