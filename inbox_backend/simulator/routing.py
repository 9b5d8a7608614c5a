"""HTTP plumbing shared by the simulated upstreams: counting, fault injection, reply writing.

Handlers return a ``Reply`` (status, headers, and a body that is either bytes or an async
iterator of chunks) instead of writing to the socket themselves, so that every fault kind
(``slow_stream``, ``reset_after`` ...) works the same way for every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import web

from .errors import status_body, throttle_response
from .faults import Fault
from .state import SimulatorState

log = logging.getLogger("inbox_backend.simulator")

STATE_KEY: Final = web.AppKey("simulator_state", SimulatorState)
JSON_TYPE: Final = "application/json; charset=utf-8"

Body = bytes | AsyncIterator[bytes]


@dataclass
class Reply:
    status: int = 200
    body: Body = b""
    content_type: str | None = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    #: Length of an iterator body, when known (sent as Content-Length instead of chunked).
    content_length: int | None = None


Handler = Callable[[web.Request, SimulatorState], Awaitable[Reply]]
RouteName = str | Callable[[web.Request], str]


def dumps(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_reply(
    data: Any, status: int = 200, headers: dict[str, str] | None = None, content_type: str = JSON_TYPE
) -> Reply:
    return Reply(status, dumps(data), content_type, dict(headers or {}))


def empty_reply(status: int, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, b"", None, dict(headers or {}))


def state_of(request: web.Request) -> SimulatorState:
    return request.app[STATE_KEY]


WebHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def endpoint(upstream: str, route: RouteName, handler: Handler) -> WebHandler:
    """Wrap ``handler``: count the request under ``(upstream, route)`` and apply any matching fault."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        state = state_of(request)
        name = route if isinstance(route, str) else route(request)
        state.count_request(upstream, name)
        fault = state.take_fault(upstream, name)
        if fault is None:
            return await send(request, await handler(request, state))
        log.info("fault %s#%d on %s %s (%s)", fault.kind, fault.id, upstream, name, request.path)
        return await _apply(request, state, upstream, name, fault, handler)

    return wrapped


async def _apply(
    request: web.Request, state: SimulatorState, upstream: str, route: str, fault: Fault, handler: Handler
) -> web.StreamResponse:
    kind = fault.kind
    if kind == "reset_before":
        await _sleep(state, fault.delay)
        return reset_connection(request)
    if kind == "hang":
        await wait_for_disconnect(request, state)
        return reset_connection(request)
    if kind == "reset_after":
        await request.read()
        await _sleep(state, fault.delay)
        reply = await handler(request, state)
        await _discard(reply)
        return reset_connection(request)
    if fault.delay:
        await request.read()
        await _sleep(state, fault.delay)
    if kind == "status":
        status = fault.status or 503
        headers = dict(fault.headers)
        if fault.retry_after is not None:
            headers.setdefault("Retry-After", f"{fault.retry_after:g}")
        default = status_body(upstream, route, status)
        return await send(request, _fault_body(fault.body, default, status, headers))
    if kind == "throttle":
        status, body, headers = throttle_response(upstream, route, fault.retry_after, fault.variant)
        headers.update(fault.headers)
        return await send(request, _fault_body(fault.body, body, status, headers))
    reply = await handler(request, state)
    if kind == "slow_stream":
        return await send(request, reply, chunk_size=fault.chunk_size, interval=fault.interval)
    return await send(request, reply)


def _fault_body(custom: Any, default: Any, status: int, headers: dict[str, str]) -> Reply:
    if custom is None:
        return json_reply(default, status, headers)
    if isinstance(custom, str):
        return Reply(status, custom.encode(), "text/plain; charset=utf-8" if custom else None, headers)
    return json_reply(custom, status, headers)


async def _sleep(state: SimulatorState, seconds: float) -> None:
    if seconds <= 0:
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(state.closing.wait(), seconds)


async def _discard(reply: Reply) -> None:
    body = reply.body
    if not isinstance(body, bytes):
        closer = getattr(body, "aclose", None)
        if closer is not None:
            await closer()


def _closed(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def wait_for_disconnect(request: web.Request, state: SimulatorState, poll: float = 0.02) -> None:
    """Block until the client closes the connection (or the simulator shuts down)."""
    while not _closed(request) and not state.closing.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.closing.wait(), poll)


def reset_connection(request: web.Request) -> web.StreamResponse:
    """Drop the connection with a TCP RST and no response; aiohttp then ignores the return value."""
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    return web.Response(status=499)


async def send(
    request: web.Request, reply: Reply, *, chunk_size: int | None = None, interval: float = 0.0
) -> web.StreamResponse:
    """Write ``reply``; with ``chunk_size`` the body goes out in pieces ``interval`` seconds apart."""
    body = reply.body
    if isinstance(body, bytes) and chunk_size is None:
        whole = web.Response(status=reply.status, body=body, headers=reply.headers)
        if reply.content_type is not None:
            whole.headers["Content-Type"] = reply.content_type
        return whole
    response = web.StreamResponse(status=reply.status, headers=reply.headers)
    if reply.content_type is not None:
        response.headers["Content-Type"] = reply.content_type
    if isinstance(body, bytes):
        response.content_length = len(body)
    elif reply.content_length is not None:
        response.content_length = reply.content_length
    try:
        await response.prepare(request)
        first = True
        async for chunk in _pieces(body, chunk_size):
            if chunk_size is not None and not first and interval > 0:
                await asyncio.sleep(interval)
            first = False
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        log.debug("client went away during %s %s", request.method, request.path)
    finally:
        await _discard(reply)
    return response


async def _pieces(body: Body, chunk_size: int | None) -> AsyncIterator[bytes]:
    if isinstance(body, bytes):
        step = chunk_size or max(1, len(body))
        for start in range(0, len(body), step):
            yield body[start : start + step]
        return
    async for chunk in body:
        if chunk_size is None:
            yield chunk
            continue
        for start in range(0, len(chunk), chunk_size):
            yield chunk[start : start + chunk_size]


def not_found_route(upstream: str, body: Callable[[web.Request], Any], status: int = 404) -> WebHandler:
    """Catch-all for unknown paths: counted as route ``not_found`` and answered in the provider's shape."""

    async def handler(request: web.Request, state: SimulatorState) -> Reply:
        return json_reply(body(request), status)

    return endpoint(upstream, "not_found", handler)


async def read_json(request: web.Request) -> tuple[bool, Any]:
    """``(True, value)`` for a JSON body, ``(False, None)`` when it is missing or malformed."""
    raw = await request.read()
    if not raw.strip():
        return False, None
    try:
        return True, json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return False, None
