"""The backend's listening socket against slow and numerous callers: real raw sockets on loopback.

Short timeouts (tenths of a second) keep each test near a second; the asserts allow several times that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from urllib.parse import urlsplit

import pytest

from inbox_backend.settings import Settings, SettingsError
from tests.backend.harness import MakeStack, Stack

HEAD = b"GET /auth/me HTTP/1.1\r\nHost: inbox\r\nAuthorization: Bearer user-token\r\n\r\n"


async def connect(stack: Stack) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    address = urlsplit(stack.url)
    assert address.hostname is not None and address.port is not None
    return await asyncio.open_connection(address.hostname, address.port)


async def trickle(writer: asyncio.StreamWriter, data: bytes, gap: float) -> None:
    """Send `data` a byte at a time, `gap` seconds apart, until it is sent or the server hangs up."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(gap)


async def until_closed(reader: asyncio.StreamReader, within: float) -> bytes:
    """Everything the server sends until it closes the connection (fails if it does not within `within` s)."""
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), within)
    return b""


async def one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, gap: float = 0.0) -> bytes:
    """Send HEAD (trickled when `gap`), return the status line of the answer, its body read."""
    if gap:
        await trickle(writer, HEAD, gap)
    else:
        writer.write(HEAD)
    status = await asyncio.wait_for(reader.readline(), 5)
    length = 0
    while (line := await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def request_on_a_new_connection(stack: Stack) -> bytes:
    reader, writer = await connect(stack)
    try:
        return await one_request(reader, writer)
    finally:
        writer.close()


async def test_twenty_callers_trickling_headers_are_answered_408_and_closed_others_stay_fast(
    make_stack: MakeStack,
) -> None:
    # keep-alive far away: only the header timeout can close these connections
    stack = await make_stack(header_timeout=0.3, keepalive_timeout=30.0)
    connections = [await connect(stack) for _ in range(20)]
    trickles = [asyncio.create_task(trickle(w, HEAD, gap=0.05)) for _, w in connections]  # 1 s per head at best
    started = time.monotonic()
    status, _, _ = await stack.call("GET", "/auth/me", headers={"Authorization": "Bearer user-token"})
    assert status == 200 and time.monotonic() - started < 1.0
    answers = await asyncio.gather(*(until_closed(r, within=5.0) for r, _ in connections))
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    assert time.monotonic() - started < 3.0  # about 0.3 s; the head alone would take 4 s
    await asyncio.gather(*trickles)
    for _, writer in connections:
        writer.close()


async def test_the_408_reaches_a_caller_that_keeps_sending_after_it(make_stack: MakeStack) -> None:
    # Closing a socket with input still arriving makes the kernel send a reset, which can destroy the 408 in the
    # caller's buffer before it is read: the server lingers, dropping input, before it closes.
    stack = await make_stack(header_timeout=0.3, keepalive_timeout=30.0)
    connections = [await connect(stack) for _ in range(10)]
    trickles = [asyncio.create_task(trickle(w, b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200, gap=0.01))
                for _, w in connections]
    await asyncio.sleep(0.6)  # the 408s are sent, while the bytes keep coming
    answers = await asyncio.gather(*(until_closed(r, within=5.0) for r, _ in connections))
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    await asyncio.gather(*trickles)
    for _, writer in connections:
        writer.close()


async def test_a_head_slower_than_usual_but_within_the_timeout_is_served_on_each_request_of_a_connection(
    make_stack: MakeStack,
) -> None:
    # Each head takes about 0.6 s: both are served although the two together exceed the timeout
    stack = await make_stack(header_timeout=1.5, keepalive_timeout=30.0)
    reader, writer = await connect(stack)
    for _ in range(2):
        assert await one_request(reader, writer, gap=0.6 / len(HEAD)) == b"HTTP/1.1 200 OK\r\n"
    writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(make_stack: MakeStack) -> None:
    stack = await make_stack(header_timeout=30.0, keepalive_timeout=0.3)
    reader, writer = await connect(stack)
    assert await one_request(reader, writer) == b"HTTP/1.1 200 OK\r\n"
    started = time.monotonic()
    assert await until_closed(reader, within=5.0) == b""  # closed without a word: nothing was asked
    assert time.monotonic() - started < 3.0
    silent_reader, silent = await connect(stack)  # a connection that never sends a byte
    assert await until_closed(silent_reader, within=5.0) == b""
    writer.close()
    silent.close()


async def test_connections_beyond_max_connections_are_answered_503_and_closed(make_stack: MakeStack) -> None:
    stack = await make_stack(max_connections=5, header_timeout=30.0, keepalive_timeout=30.0)
    held = [await connect(stack) for _ in range(5)]
    reader, writer = await connect(stack)
    answer = await until_closed(reader, within=5.0)
    assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer
    writer.close()
    # one of the five hangs up: a new caller is served again
    held.pop()[1].close()
    deadline = time.monotonic() + 5.0
    while (status := await request_on_a_new_connection(stack)) != b"HTTP/1.1 200 OK\r\n":
        assert time.monotonic() < deadline, status  # the server had not yet seen the hang-up: again
        await asyncio.sleep(0.05)
    for _, w in held:
        w.close()


async def test_a_body_trickled_slower_than_the_body_timeout_is_answered_408(make_stack: MakeStack) -> None:
    stack = await make_stack(body_timeout=0.3, header_timeout=30.0, keepalive_timeout=30.0)
    for head in (b"POST /webhook HTTP/1.1\r\nHost: inbox\r\nContent-Length: 200\r\n\r\n",
                 b"POST /messages HTTP/1.1\r\nHost: inbox\r\nAuthorization: Bearer user-token\r\n"
                 b"Content-Length: 200\r\n\r\n"):
        reader, writer = await connect(stack)
        writer.write(head)
        trickling = asyncio.create_task(trickle(writer, b"{" * 200, gap=0.05))  # 10 s for the whole body
        started = time.monotonic()
        status = await asyncio.wait_for(reader.readline(), 5.0)
        assert status == b"HTTP/1.1 408 Request Timeout\r\n"
        assert time.monotonic() - started < 3.0
        trickling.cancel()
        writer.close()
    assert stack.sim.state.request_count("supabase", "rest:messages:POST") == 0


def test_the_connection_settings_come_from_the_environment_and_refuse_nonsense() -> None:
    settings = Settings.from_env({"INBOX_HEADER_TIMEOUT": "2.5", "INBOX_KEEPALIVE_TIMEOUT": "30",
                                  "INBOX_MAX_CONNECTIONS": "200", "INBOX_MAX_BODY": "65536",
                                  "INBOX_BODY_TIMEOUT": "5"})
    assert (settings.header_timeout, settings.keepalive_timeout) == (2.5, 30.0)
    assert (settings.max_connections, settings.max_body, settings.body_timeout) == (200, 65536, 5.0)
    defaults = Settings.from_env({})
    assert (defaults.header_timeout, defaults.keepalive_timeout, defaults.max_connections) == (10.0, 75.0, 1000)
    assert (defaults.max_body, defaults.body_timeout) == (1024 * 1024, 30.0)
    for name, value in [("INBOX_HEADER_TIMEOUT", "0"), ("INBOX_HEADER_TIMEOUT", "inf"),
                        ("INBOX_MAX_CONNECTIONS", "0"), ("INBOX_MAX_CONNECTIONS", "²"),
                        ("INBOX_MAX_BODY", "1" * 5000), ("INBOX_MAX_BODY", "1e6")]:
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})
