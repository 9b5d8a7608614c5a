"""Serving the app on a socket, with bounds on what one internet caller may hold open.

aiohttp 3.14's server has one timer per connection (`keepalive_timeout`, 3630 s unless set): it closes a
connection that has not completed a request head that long after it opened or after its last response. Nothing
bounds the head itself once it starts, nor the number of connections, so a caller trickling header bytes keeps
its connection (and a file descriptor) for an hour. This module adds, without copying aiohttp's request loop:

- `header_timeout`: once the first byte of a request head arrives on an idle connection, the whole head must
  arrive within it; otherwise the caller gets `408` and the connection is closed (nginx's
  `client_header_timeout`, Envoy's `request_headers_timeout`);
- `keepalive_timeout`: aiohttp's own timer, now set by the settings (idle connections are closed);
- `max_connections`: a connection beyond it is answered `503` and closed, before anything is parsed.

A refused connection is half-closed and lingers for `LINGER` seconds (input dropped) before it closes, so the
answer is not lost to a reset. Request bodies are timed by the handlers (inputs.read_body, `body_timeout`).

The hook is a `RequestHandler` subclass (aiohttp's protocol, one per connection) made by a `Server` subclass,
which a small `AppRunner` subclass builds in place of the plain one. It reads three of the handler's attributes
(`_waiter`, set while the handler waits for a request head; `_manager`; `_loop`) and the plain server's
`_kwargs`: the tests in tests/backend/test_serving.py pin that behaviour, so an aiohttp upgrade that changes
them fails there, not in production.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from inbox_backend.settings import Settings

log = logging.getLogger("inbox.app")

REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
# After a refusal, what the caller still sends is read and dropped this long before the socket closes: closing with
# unread input makes the kernel answer with a reset, which can destroy the refusal before the caller reads it.
LINGER = 1.0
OVERLOADED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    keepalive_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout, settings.keepalive_timeout, settings.max_connections)


class GuardedRequestHandler(RequestHandler):
    """aiohttp's protocol for one connection, plus the header timeout and the connection bound."""

    def __init__(self, manager: web.Server, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._head_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The manager counts this connection already: shed it when it is one too many. Cheap (no parsing), and
        # the caller learns to come back instead of waiting in a queue that never drains.
        manager = self._manager
        if manager is not None and len(manager.connections) > self._limits.max_connections:
            self._refuse(OVERLOADED)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: dropped unparsed
        # Bytes while the handler waits for a request head start (or continue) a head: time it from its first byte.
        if data and self._head_timer is None and self._awaiting_head():
            self._head_timer = self._loop.call_later(self._limits.header_timeout, self._head_too_slow)
        super().data_received(data)
        if self._head_timer is not None and not self._awaiting_head():
            self._cancel_head_timer()  # the head is complete (or was refused as malformed)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        # Set by aiohttp's request loop while no complete request is queued; None while a request is handled
        # (body bytes then are the handler's to time) or after the connection closed.
        waiter = self._waiter
        return waiter is not None and not waiter.done()

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self._awaiting_head():
            self._refuse(REQUEST_TIMEOUT)

    def _refuse(self, answer: bytes) -> None:
        """Answer, end our side (FIN), drop what still comes for LINGER seconds, then close."""
        transport = self.transport
        if self._refused or not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            self.force_close()
            return
        self._refused = True
        self._cancel_head_timer()
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER, self.force_close)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


class GuardedServer(web.Server):
    """The protocol factory the listening socket calls for each connection."""

    def __init__(self, handler: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limits = limits

    def __call__(self) -> RequestHandler:
        return GuardedRequestHandler(self, limits=self.limits, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """`web.AppRunner` whose server makes `GuardedRequestHandler`s, with aiohttp's keep-alive timer set."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the app; its handler, request factory and options
        return GuardedServer(
            plain.request_handler,
            limits=self.limits,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **plain._kwargs,
        )


async def serve(app: web.Application, settings: Settings, shutdown_timeout: float = 5.0) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully: in-flight requests finish, then cleanup runs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner = GuardedRunner(app, ConnectionLimits.of(settings), access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
