"""Writing answers to the caller: an upstream response streamed through, a stored one from the cache, or the
sidecar's own error."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.cache.entry import Entry
from proxy.errors import EgressError
from proxy.exchange import Answer
from proxy.headers import end_to_end
from proxy.memo import Memo

log = logging.getLogger("egress.respond")

NO_BODY_STATUSES = frozenset({204, 304})
EGRESS_ERROR_HEADER = "X-Egress-Error"
DELIVERY_HEADER = "X-Egress-Delivery"  # see EgressError.delivery
AGE_HEADER = "Age"
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s


@dataclass(slots=True)
class Delivery:
    """How the response went: bytes written and, if it broke mid-way, who broke it."""

    sent: int = 0
    broken: str | None = None  # "upstream_reset", "upstream_timeout" or "client_disconnected"


# Rendered answers, by (reason, upstream, detail, Retry-After, delivery): an open breaker's one refusal goes out
# thousands of times a second, and refusals of one kind (overloaded, throttled) are each a new error with the same
# answer. Measured (timeit): rendering one (json.dumps, the header dict) takes about 3 µs, a remembered one 0.2 µs.
_ANSWERS: Memo[tuple[str, str, str, str | None, str], tuple[dict[str, str], bytes]] = Memo(256)


def _render(key: tuple[str, str, str, str | None, str]) -> tuple[dict[str, str], bytes]:
    reason, upstream, detail, advice, delivery = key
    headers = {EGRESS_ERROR_HEADER: reason, DELIVERY_HEADER: delivery, "Content-Type": "application/json"}
    if advice is not None:
        headers["Retry-After"] = advice
    return headers, json.dumps({"error": reason, "upstream": upstream, "detail": detail}).encode()


def error_response(error: EgressError, extra: Mapping[str, str]) -> web.Response:
    key = (error.reason, error.upstream, error.detail, error.advice(), error.delivery())
    headers, body = _ANSWERS.get(key, _render)
    return web.Response(status=error.status, body=body, headers={**headers, **extra})


def error_body(reason: str, upstream: str, detail: str) -> bytes:
    """The JSON body of the sidecar's own answers: `{"error", "upstream", "detail"}`."""
    return _ANSWERS.get((reason, upstream, detail, None, "none"), _render)[1]


def entry_response(entry: Entry, method: str, extra: Mapping[str, str]) -> web.Response:
    """A stored answer as the upstream gave it, plus its `Age`. HEAD gets the headers alone."""
    headers = CIMultiDict(entry.headers)
    with_body = method != "HEAD" and entry.status not in NO_BODY_STATUSES
    if with_body:
        headers.popall("Content-Length", None)  # aiohttp sets it from the body
    response = web.Response(status=entry.status, headers=headers, body=entry.body if with_body else None)
    response.headers.update(extra)
    response.headers[AGE_HEADER] = str(int(entry.age()))
    return response


class _Relay(web.StreamResponse):
    """A response whose headers leave with its first body bytes: one write, one packet, instead of two. Only for
    answers whose first bytes are already here; a stream still waiting for its first event (SSE) gets the
    plain StreamResponse, whose headers go out at once."""

    _send_headers_immediately = False


def _response_head(answer: Answer, extra: Mapping[str, str], method: str) -> web.StreamResponse:
    upstream = answer.response
    # Nothing to wait for: a body already read, or arrived with the headers, or no body at all.
    ready = answer.body is not None or upstream.content.total_bytes > 0 or upstream.content.is_eof()
    out = (_Relay if ready else web.StreamResponse)(status=upstream.status, reason=upstream.reason)
    headers = end_to_end(upstream.headers)
    # A HEAD's body is empty by definition: its Content-Length is the upstream's, not len(b"").
    if answer.body is not None and upstream.status not in NO_BODY_STATUSES and method != "HEAD":
        headers["Content-Length"] = str(len(answer.body))  # already read: the length is now known
    out.headers.extend(headers)
    out.headers.update(extra)
    return out


async def send_answer(
    request: web.BaseRequest,
    answer: Answer,
    extra: Mapping[str, str],
    remaining: float | None = None,
    prefix: bytes = b"",
    idle: float | None = None,
) -> tuple[web.StreamResponse, Delivery]:
    """Stream the upstream's response through as it arrives (SSE chunks are not held back).

    A body of known length must arrive within the request's `remaining` time (the `total` timeout);
    a streamed one (chunked, SSE) is bounded only by the gap between bytes (`idle`: the `read` timeout).
    `prefix` is the start of the body the sidecar already read (the cache looked, found it too large, and let it
    go): it goes first.
    """
    out = _response_head(answer, extra, request.method)
    delivery = Delivery()
    upstream = answer.response
    try:
        await out.prepare(request)
        if answer.body is not None:
            if request.method != "HEAD" and answer.body:
                await out.write(answer.body)
                delivery.sent = len(answer.body)
        elif request.method != "HEAD" and upstream.status not in NO_BODY_STATUSES:
            if prefix:
                await out.write(prefix)
                delivery.sent = len(prefix)
            try:
                if upstream.content.is_eof():
                    # A body that arrived whole with its headers (nothing left to wait for): no timer, which
                    # would cost more than a small body's copy.
                    await _pipe(upstream, out, delivery)
                elif upstream.content_length is None:
                    await _pipe_stream(upstream, out, delivery, idle)
                else:
                    async with asyncio.timeout(remaining):
                        await _pipe(upstream, out, delivery)
            except aiohttp.ClientConnectionResetError:
                raise  # writing to a caller who left: handled below as client_disconnected, not the upstream's
            except TimeoutError:  # before ClientError: aiohttp's read timeout is both
                delivery.broken = "upstream_timeout"
                _abort(request, out, f"upstream body timed out (read or total) after {delivery.sent} bytes")
                return out, delivery
            except aiohttp.ClientError as exc:  # payload cut short, connection lost
                delivery.broken = "upstream_reset"
                _abort(request, out, f"upstream broke the response after {delivery.sent} bytes: {exc}")
                return out, delivery
        await out.write_eof()
    except (ConnectionResetError, aiohttp.ClientConnectionResetError):
        delivery.broken = "client_disconnected"
        upstream.close()  # its body was not read to the end: the connection cannot go back to the pool
        return out, delivery
    upstream.release()
    return out, delivery


async def _pipe(upstream: aiohttp.ClientResponse, out: web.StreamResponse, delivery: Delivery) -> None:
    async for chunk in upstream.content.iter_any():
        await out.write(chunk)
        delivery.sent += len(chunk)


async def _pipe_stream(
    upstream: aiohttp.ClientResponse, out: web.StreamResponse, delivery: Delivery, idle: float | None
) -> None:
    """A stream, bounded by the gap between chunks. aiohttp's own `sock_read` is not enough: when a chunked body
    fails to parse mid-way (a chunk size of 20 hex digits), aiohttp 3.14 drops that timer and never wakes the
    reader, which would hold the request (and its bulkhead slot) forever. One timer, moved on at each chunk."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None if idle is None else loop.time() + idle) as timer:
        async for chunk in upstream.content.iter_any():
            await out.write(chunk)
            delivery.sent += len(chunk)
            if idle is not None:
                timer.reschedule(loop.time() + idle)


def _abort(request: web.BaseRequest, out: web.StreamResponse, message: str) -> None:
    """Never finish a truncated body cleanly: a reset connection is how the caller learns it broke. A clean
    close would not do: an HTTP/1.0 caller reads a body without a length to the end of the connection."""
    log.warning(message)
    out.force_close()
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # linger 0: the close is a TCP reset, not an end of stream
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        transport.abort()
