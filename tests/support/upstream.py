"""A real upstream on a loopback port that fails on command: the one fault server every proxy test uses.

Tests script it with `upstream.script(...)` (one behaviour per coming request) or `upstream.default = ...`,
and read back what reached it: `upstream.requests` (every request, with its raw path and body) and
`upstream.deliveries` (requests whose body was fully received, i.e. "processed", even if the
connection was then dropped).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDictProxy

Behaviour = Callable[[web.BaseRequest, "Recorded"], Awaitable[web.StreamResponse | None]]


@dataclass
class Recorded:
    method: str
    raw_path: str
    headers: CIMultiDictProxy[str]
    body: bytes = b""
    delivered: bool = False
    at: float = field(default_factory=time.monotonic)  # when its head arrived (time.monotonic)


@dataclass
class FaultyUpstream:
    host: str = "127.0.0.1"
    requests: list[Recorded] = field(default_factory=list)
    default: Behaviour | None = None
    _script: collections.deque[Behaviour] = field(default_factory=collections.deque)
    _runner: web.ServerRunner | None = None
    port: int = 0
    read_body: bool = True

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def deliveries(self) -> int:
        return sum(1 for r in self.requests if r.delivered)

    def script(self, *behaviours: Behaviour) -> None:
        self._script.extend(behaviours)

    async def start(self) -> FaultyUpstream:
        self._runner = web.ServerRunner(
            # auto_decompress off: tests compare the bytes that arrived with the bytes the caller sent
            web.Server(self._handle, auto_decompress=False), access_log=None, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        behaviour = self._script.popleft() if self._script else (self.default or respond())
        record = Recorded(request.method, request.raw_path, request.headers)
        self.requests.append(record)
        response = await behaviour(request, record)
        if response is None:  # the behaviour dropped the connection
            raise ConnectionResetError("dropped on purpose")
        return response


async def _read(request: web.BaseRequest, record: Recorded) -> None:
    record.body = b"".join([chunk async for chunk in request.content.iter_any()])  # no 1 MiB cap
    record.delivered = True


# -- behaviours ------------------------------------------------------------------------------------------


def respond(
    status: int = 200, body: bytes | str | dict[str, object] = b"ok", headers: dict[str, str] | None = None
) -> Behaviour:
    if isinstance(body, dict):
        payload = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    else:
        payload = body.encode() if isinstance(body, str) else body

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await _read(request, record)
        return web.Response(status=status, body=payload if status not in (204, 304) else None, headers=headers)

    return behaviour


def numbered(status: int = 200, headers: dict[str, str] | None = None) -> Behaviour:
    """Answer `1`, `2`, `3`... in arrival order, so a test can tell which upstream answer it was given."""
    count = itertools.count(1)

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await _read(request, record)
        return web.Response(status=status, text=str(next(count)), headers=headers)

    return behaviour


def echo() -> Behaviour:
    """Answer with what arrived: method, raw path, headers (multi-valued as lists), body length and text."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await _read(request, record)
        headers: dict[str, list[str]] = {}
        for k, v in request.headers.items():
            headers.setdefault(k.lower(), []).append(v)
        return web.json_response(
            {
                "method": request.method,
                "path": request.raw_path,
                "headers": headers,
                "body_length": len(record.body),
                "body": record.body.decode(errors="replace")[:1000],
            }
        )

    return behaviour


def hang() -> Behaviour:
    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await _read(request, record)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return behaviour


def delay(seconds: float, then: Behaviour | None = None) -> Behaviour:
    after = then or respond()

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse | None:
        await asyncio.sleep(seconds)
        return await after(request, record)

    return behaviour


def reset_before_body() -> Behaviour:
    """Drop the connection as soon as the request line and headers arrive."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> None:
        assert request.transport is not None
        request.transport.abort()
        return None

    return behaviour


def reset_after_body() -> Behaviour:
    """Read (and so process) the whole request, then drop the connection without answering."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> None:
        await _read(request, record)
        assert request.transport is not None
        request.transport.abort()
        return None

    return behaviour


def never_read_body() -> Behaviour:
    """Accept the request but never read its body, so the sender's writes stall."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return behaviour


def stream(
    chunks: list[bytes], gap: float = 0.0, headers: dict[str, str] | None = None, first_after: float = 0.0
) -> Behaviour:
    """Headers at once, then `chunks` `gap` apart, the first one `first_after` seconds after the headers."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await _read(request, record)
        response = web.StreamResponse(headers=headers or {"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await asyncio.sleep(first_after)
        for chunk in chunks:
            await response.write(chunk)
            if gap:
                await asyncio.sleep(gap)
        await response.write_eof()
        return response

    return behaviour


def stalled_body(status: int, headers: dict[str, str] | None = None, length: int = 100) -> Behaviour:
    """Headers and the first 10 bytes of a `length`-byte body, then nothing more."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers=headers or {})
        response.content_length = length
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    return behaviour


def big_body(size: int, chunk: int = 256 * 1024) -> Behaviour:
    """`size` bytes generated on the fly, with Content-Length."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        await _read(request, record)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        block = b"x" * chunk
        sent = 0
        while sent < size:
            part = block[: min(chunk, size - sent)]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
        return response

    return behaviour


def count_body() -> Behaviour:
    """Consume a (large) body chunk by chunk without keeping it; answer with its size."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        record.delivered = True
        return web.json_response({"received": total})

    return behaviour


def cut_stream(first: bytes, size: int | None) -> Behaviour:
    """Promise `size` bytes (None: a chunked body of no stated length), send `first`, then drop the connection."""

    async def behaviour(request: web.BaseRequest, record: Recorded) -> None:
        await _read(request, record)
        response = web.StreamResponse()
        if size is not None:
            response.content_length = size
        await response.prepare(request)
        await response.write(first)
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()
        return None

    return behaviour


# -- sockets that misbehave below HTTP --------------------------------------------------------------------


def free_port() -> int:
    """A loopback port with nothing listening (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BlackholeListener:
    """A listening socket whose accept queue is full, so new connections never complete (connect timeout)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        self.port = int(self.server.getsockname()[1])
        self._fillers: list[socket.socket] = []
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):  # completes in the background, filling the queue
                filler.connect(("127.0.0.1", self.port))
            self._fillers.append(filler)

    def close(self) -> None:
        for s in self._fillers:
            s.close()
        self.server.close()


class SilentListener:
    """Connections complete (the kernel accepts them into the backlog) but nothing is ever read or answered:
    a server that hangs after connect, like a Redis stuck behind a slow command."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(128)
        self.port = int(self.server.getsockname()[1])

    def close(self) -> None:
        self.server.close()


async def chunks_of(stream: AsyncIterator[bytes]) -> list[bytes]:
    return [chunk async for chunk in stream]


RawAnswer = Callable[[asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """An upstream below aiohttp: it reads each request's head (and a Content-Length body) and answers with bytes
    of the test's choosing, malformed or lying as need be. `answer` writes them; the connection then closes."""

    def __init__(self, answer: bytes | RawAnswer) -> None:
        self._answer = answer
        self.requests = 0
        self.written = 0  # bytes the answers managed to hand to the socket (for backpressure checks)
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            await reader.readexactly(length)
            self.requests += 1
            if isinstance(self._answer, bytes):
                writer.write(self._answer)
                await writer.drain()
            else:
                await self._answer(writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Poll `condition` (what an upstream has seen, a runtime's state) until it holds, `within` seconds at most."""
    give_up = time.monotonic() + within
    while not condition():
        assert time.monotonic() < give_up, "timed out waiting for the condition"
        await asyncio.sleep(0.02)
