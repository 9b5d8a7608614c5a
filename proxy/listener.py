"""The data port's side of each caller connection: what a caller may hold before any route is known.

An adapter around aiohttp's server, because aiohttp cannot say these things itself:
- a **header timeout** (slowloris): aiohttp waits for a request head for as long as its bytes trickle in; here a
  head must be complete within `limits.header_timeout` of its first byte (of the connection's accept, for the first
  request), else the caller gets 408 and the connection is closed (nginx's client_header_timeout);
- a **bound on the whole head** (`limits.max_header_bytes`, counted as the bytes arrive, before aiohttp buffers
  them) and on the number of headers (aiohttp's parser, set from `limits.max_headers`): 431 `headers_too_large`
  (Envoy's max_request_headers_kb);
- a **bound on open connections** (`limits.max_connections`): one more is answered 503 `overloaded` and closed;
- parse errors answered in the sidecar's own error format (`X-Egress-Error`), not aiohttp's text page and
  traceback in the log;
- a body the sidecar did not read to its end is not drained: the answer says `Connection: close`, and what
  still arrives is read and dropped for at most `LINGER_TIME` and `LINGER_BYTES` before the connection closes
  (nginx's lingering close, bounded in bytes as well), so a caller refused with 413 cannot make the sidecar read
  2 GiB for nothing, yet still reads its answer (closing at once, with its body unread, would reset the
  connection and could destroy the answer before the caller read it).

Request bodies are never decoded on the way in (`auto_decompress=False`): a gzip body reaches the upstream as the
caller's bytes, under the caller's `Content-Encoding`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from proxy.errors import BadRequest, EgressError, HeadersTooLarge, Overloaded, RequestTimeout
from proxy.policy import ListenerLimits
from proxy.respond import error_body, error_response

log = logging.getLogger("egress.listener")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
Refused = Callable[[str], None]  # told the reason of every caller refused here (for `egress_rejected_total`)

_HEAD_ENDS = (b"\r\n\r\n", b"\n\n")
LINGER_TIME = 1.0  # seconds an answered connection keeps reading (and dropping) what the caller still sends
LINGER_BYTES = 1024 * 1024  # ... and at most this much of it


def raw_error(error: EgressError) -> bytes:
    """A whole HTTP/1.1 answer for a connection that never completed a request head (no request to answer
    through aiohttp): the sidecar's usual error body, then the connection closes."""
    body = error_body(error.reason, error.upstream, error.detail)
    advice = error.advice()
    retry_after = f"Retry-After: {advice}\r\n" if advice is not None else ""
    head = (
        f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\nContent-Type: application/json\r\n"
        f"X-Egress-Error: {error.reason}\r\n{retry_after}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _head_end(data: bytes, tail: bytes) -> int:
    """The index in `data` just past the end of a request head that began before it (`tail`: its last bytes so
    far), or -1. The common case, a whole head in one read, is one search and no copy."""
    if not tail:
        found = data.find(b"\r\n\r\n")
        if found >= 0:
            return found + 4
    window = tail + data
    ends = [at + len(marker) for marker in _HEAD_ENDS if (at := window.find(marker)) >= 0]
    return min(ends) - len(tail) if ends else -1


class CallerConnection(web.RequestHandler):
    """One caller connection: aiohttp's protocol plus the head's start time and byte count.

    The head's clock is a time stamp, not a timer per request (arming and cancelling one cost ~2 µs a request,
    +13% on the open-breaker refusal): the server's sweep (`CallerServer._sweep`) ends the heads that are late."""

    def __init__(self, server: CallerServer, limits: ListenerLimits, **kwargs: Any) -> None:
        super().__init__(server, loop=asyncio.get_running_loop(), **kwargs)
        self._server = server
        self._limits = limits
        self._now = asyncio.get_running_loop().time
        self._head_open = True  # the bytes arriving now are a request head (before the first request, between two)
        self.head_since: float | None = None  # when the open head's first byte came (the accept, for the first)
        self._head_bytes = 0
        self._tail = b""  # the last bytes of the head so far: its end marker may straddle two reads
        self._lingered: int | None = None  # bytes dropped since the answer that ends this connection, if any
        self._answered = False  # the sidecar wrote its own answer (a refusal before any request): drop the rest

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if len(self._server.connections) > self._limits.max_connections:
            self._refuse(Overloaded(f"{self._limits.max_connections} caller connections are open (limits reached)"))
            return
        self.head_since = self._now()  # from the accept: a connection that never sends a byte is closed too
        self._server.watch()

    def data_received(self, data: bytes) -> None:
        if self._lingered is not None:
            self._lingered += len(data)
            if self._lingered > LINGER_BYTES:
                self.force_close()
                return
            if self._answered:
                return  # no parser wanted: the answer is out
        elif self._head_open and data:
            if self.head_since is None:
                self.head_since = self._now()
            end = _head_end(data, self._tail)
            if end >= 0:
                size = self._head_bytes + end
                self._head_open, self.head_since = False, None
            else:
                size = self._head_bytes = self._head_bytes + len(data)
                self._tail = (self._tail + data)[-3:]
            if size > self._limits.max_header_bytes:
                self._refuse(HeadersTooLarge(f"the request head exceeds limits.max_header_bytes "
                                             f"({self._limits.max_header_bytes} bytes)"))
                return
        super().data_received(data)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        """Every answer goes out here. The next bytes are the next request's head, unless this request's body was
        left unread: then the caller is told the connection ends with this answer, and what still arrives of the
        body is dropped (bounded by data_received), never counted as a head."""
        if request.body_exists and not request.content.is_eof():
            resp.force_close()
            self._lingered = 0  # aiohttp reads on for `lingering_time`
        else:
            self._head_open, self._head_bytes, self._tail = True, 0, b""  # its clock starts at its first byte
        return await super().finish_response(request, resp, start_time)

    def late(self, now: float) -> bool:
        """Whether the open head has outlasted `limits.header_timeout`."""
        return self._head_open and self.head_since is not None and now - self.head_since > self._limits.header_timeout

    def head_timed_out(self) -> None:
        if self._head_bytes or self._tail:  # a head was started: say why it ends
            self._refuse(RequestTimeout(f"the request head did not arrive within {self._limits.header_timeout:g}s"))
        else:  # nothing at all since the accept: nobody to answer
            self._server.refused("idle_connection")
            self._end()

    def _refuse(self, error: EgressError) -> None:
        self._server.refused(error.reason)
        self._head_open = False
        transport = self.transport
        if transport is None or transport.is_closing():
            self.force_close()
            return
        transport.write(raw_error(error))
        if transport.can_write_eof():
            transport.write_eof()  # the answer, then our end of the stream; what the caller still sends is dropped
        self._answered, self._lingered = True, 0
        asyncio.get_running_loop().call_later(LINGER_TIME, self.force_close)

    def eof_received(self) -> None:
        if self._answered:  # the caller is done too: nothing left to linger for
            self.force_close()

    def _end(self) -> None:
        self._head_open = False
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp could not parse the request (or a bug raised): the sidecar's error body, one log line, close.
        A head over aiohttp's own bounds (a field over max_header_bytes, more than max_headers) is a 431."""
        error: EgressError
        said = exc.message if isinstance(exc, BadHttpMessage) else (exc or message)
        if isinstance(exc, LineTooLong) or (isinstance(exc, BadHttpMessage) and "Too many headers" in str(exc)):
            error = HeadersTooLarge(f"the request head exceeds limits.max_header_bytes or limits.max_headers: {said}")
        elif status < 500:
            error = BadRequest(f"malformed request: {said}")
        else:
            log.error("unhandled error answering %s %s", request.method, request.rel_url, exc_info=exc)
            return super().handle_error(request, status, exc, message)
        log.info("refused a malformed request from %s: %s", request.remote, error.detail[:200])
        self._server.refused(error.reason)
        response = error_response(error, {})
        response.force_close()
        return response


class CallerServer(web.Server):
    """aiohttp's server with `CallerConnection` as its protocol. `limits` may be replaced (a policy reload):
    connections accepted after that use the new ones."""

    def __init__(self, handler: Handler, limits: ListenerLimits, refused: Refused) -> None:
        # A caller that hangs up cancels its request: the upstream call stops and its slot frees up (nginx's
        # default too), instead of waiting out the read timeout for nobody.
        super().__init__(handler, access_log=None, handler_cancellation=True)
        self.limits = limits
        self.refused = refused
        self._sweeping: asyncio.TimerHandle | None = None

    def __call__(self) -> CallerConnection:
        limits = self.limits
        return CallerConnection(
            self,
            limits,
            access_log=None,
            keepalive_timeout=limits.idle_timeout,
            # aiohttp's own bounds, a backstop behind the byte count in data_received (which a pipelined head
            # escapes): no field, and no request line, longer than the whole head may be; and the header count.
            max_line_size=limits.max_header_bytes,
            max_field_size=limits.max_header_bytes,
            max_headers=limits.max_headers,
            auto_decompress=False,  # the caller's body bytes go upstream as sent, Content-Encoding and all
            lingering_time=LINGER_TIME,  # an unread body is read and dropped this long at most (see module doc)
        )

    def watch(self) -> None:
        """Sweep for late heads while connections are open: every quarter of the header timeout (at most 1 s),
        so a head is cut off within 1.25 x `limits.header_timeout`."""
        if self._sweeping is None:
            interval = min(1.0, self.limits.header_timeout / 4)
            self._sweeping = asyncio.get_running_loop().call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._sweeping = None
        now = asyncio.get_running_loop().time()
        connections = [c for c in self.connections if isinstance(c, CallerConnection)]
        for connection in connections:
            if connection.late(now):
                connection.head_timed_out()
        if connections:
            self.watch()

    def stop_watching(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
