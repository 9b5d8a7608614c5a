"""Idle pooled connections: a server closes them on its own timer, and a request sent just as it does is lost
without an answer. An idempotent request would be retried; a WhatsApp send could not be told apart from one the
upstream processed. So pools are kept below common server idle timeouts, and a non-idempotent request only goes
out on a connection used very recently (or a new one)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

POLICY = """
upstreams:
  api:
    url: {url}
    retry: {{attempts: 1}}
    limits: {{keepalive: {keepalive}, keepalive_non_idempotent: {fresh}}}
"""


class IdleClosingUpstream:
    """Keeps connections alive, but a request arriving on one idle for longer than `idle` is dropped unread and
    unanswered: the race of a server whose idle timer fires just as a request is sent (the FIN and the request
    cross on the wire). Deterministic, unlike waiting for the real race."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.processed: list[tuple[str, bytes]] = []
        self.connections = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> IdleClosingUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        last = time.monotonic()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if time.monotonic() - last > self.idle:
                    self.dropped += 1  # "closed while idle": the request is never read, never processed
                    return
                lines = head.decode().split("\r\n")
                length = next((int(v) for k, _, v in (line.partition(": ") for line in lines[1:])
                               if k.lower() == "content-length"), 0)
                body = await reader.readexactly(length)
                self.processed.append((lines[0].split(" ")[0], body))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
                last = time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


@pytest.fixture
async def idle_closing():
    upstream = await IdleClosingUpstream(idle=0.3).start()
    yield upstream
    await upstream.stop()


async def test_a_post_is_never_sent_on_a_connection_idle_past_the_non_idempotent_bound(
    idle_closing, make_sidecar, client
):
    sc = await make_sidecar(POLICY.format(url=f"http://127.0.0.1:{idle_closing.port}", keepalive="10s", fresh="100ms"))
    for i in range(3):
        async with client.post(sc.url + "/api/v19.0/1/messages", data=f"send {i}".encode()) as resp:
            assert resp.status == 200, await resp.text()  # never 502 upstream_reset
        await asyncio.sleep(0.45)  # longer than the server keeps an idle connection
    assert [body for _, body in idle_closing.processed] == [b"send 0", b"send 1", b"send 2"]  # each exactly once
    assert idle_closing.dropped == 0
    assert idle_closing.connections == 3


async def test_a_post_right_after_another_reuses_its_connection(idle_closing, make_sidecar, client):
    sc = await make_sidecar(POLICY.format(url=f"http://127.0.0.1:{idle_closing.port}", keepalive="10s", fresh="1s"))
    for i in range(3):
        async with client.post(sc.url + "/api/v19.0/1/messages", data=f"send {i}".encode()) as resp:
            assert resp.status == 200
    assert idle_closing.connections == 1  # recently used: safe, and no new handshake per send


async def test_an_idempotent_request_is_not_sent_on_a_connection_idle_past_keepalive(
    idle_closing, make_sidecar, client
):
    sc = await make_sidecar(POLICY.format(url=f"http://127.0.0.1:{idle_closing.port}", keepalive="200ms", fresh="0s"))
    for _ in range(2):
        async with client.get(sc.url + "/api/v19.0/media") as resp:
            assert resp.status == 200
            assert resp.headers["X-Egress-Attempts"] == "1"  # a new connection, not a failure then a retry
        await asyncio.sleep(0.45)
    assert idle_closing.dropped == 0


async def test_the_default_idle_bounds_are_below_common_server_idle_timeouts():
    from proxy.policy import Limits

    assert Limits().keepalive < 5.0  # Node's and Apache's 5 s
    assert Limits().keepalive_non_idempotent <= 1.0
