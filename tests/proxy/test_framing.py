"""Faithful framing: every byte a caller sends reaches the upstream as sent (whatever its Content-Encoding, buffered
or streamed), `Expect: 100-continue` works both ways a caller uses it, and a refused body is never drained."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
import zlib

import pytest

from tests.support.upstream import FaultyUpstream, echo, respond

SMALL = 4096  # retry.max_body in these tests: bodies up to it are buffered for replay, larger ones stream


def policy(upstream: FaultyUpstream, extra: str = "") -> str:
    return f"""
    upstreams:
      api:
        url: {upstream.url}
        retry: {{attempts: 1, max_body: {SMALL}}}
        {extra}
    """


def _encoded(encoding: str, size: int) -> bytes:
    """A body in `encoding` (or random bytes labelled with it: the sidecar must not care either way)."""
    plain = (b'{"messaging_product": "whatsapp", "text": "%d"}' % size) * (size // 40 + 1)
    if encoding == "gzip":
        return gzip.compress(plain)[:size] if size < 64 else gzip.compress(os.urandom(size))
    if encoding == "deflate":
        return zlib.compress(os.urandom(size))
    return os.urandom(size)  # br, zstd, an unknown token: opaque bytes


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd", "x-custom"])
@pytest.mark.parametrize("size", [66, SMALL - 100, SMALL * 8])  # buffered, buffered near the bound, streamed
async def test_an_encoded_request_body_reaches_the_upstream_byte_for_byte(
    upstream, make_sidecar, client, encoding, size
):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream))
    body = _encoded(encoding, size)
    headers = {"Content-Encoding": encoding, "Content-Type": "application/json"}
    async with client.post(sc.url + "/api/v1/messages", data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    seen = upstream.requests[-1]
    assert seen.body == body  # not decompressed on the way in, nor re-encoded
    assert seen.headers["Content-Encoding"] == encoding


async def test_a_gzip_body_of_unknown_length_streams_through_unchanged(upstream, make_sidecar, client):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream))
    body = gzip.compress(os.urandom(SMALL * 4))

    async def chunks():  # no Content-Length: chunked, as a streaming SDK sends it
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    async with client.post(sc.url + "/api/upload", data=chunks(), headers={"Content-Encoding": "gzip"}) as resp:
        assert resp.status == 200
    assert upstream.requests[-1].body == body


async def test_an_encoded_response_body_reaches_the_caller_byte_for_byte(upstream, make_sidecar, client):
    payload = gzip.compress(b"hello " * 1000)
    upstream.default = respond(200, payload, headers={"Content-Encoding": "gzip"})
    sc = await make_sidecar(policy(upstream))
    async with client.get(sc.url + "/api/doc") as resp:  # the test client does not decompress either
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == payload


# -- Expect: 100-continue ----------------------------------------------------------------------------------


async def _raw_exchange(port: int, head: bytes, body: bytes, wait_for_continue: bool) -> tuple[bytes, float]:
    """Send `head`; then the body at once, or only after reading `100 Continue`. Returns everything read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(head)
        if wait_for_continue:
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
            assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        writer.write(body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # Connection: close: to the end
        return answer, time.monotonic() - started
    finally:
        writer.close()


def _post_head(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n"
            f"Connection: close\r\n{extra}\r\n").encode()


@pytest.mark.parametrize("wait_for_continue", [True, False], ids=["waits-for-100", "sends-at-once"])
@pytest.mark.parametrize("size", [100, SMALL * 4], ids=["buffered", "streamed"])
async def test_expect_100_continue_is_answered_and_the_body_delivered(upstream, make_sidecar, wait_for_continue, size):
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream))
    body = os.urandom(size)
    head = _post_head("/api/v1/messages", body)
    if wait_for_continue:
        answer, took = await _raw_exchange(sc.sidecar.data_port, head, body, wait_for_continue)
    else:
        answer, took = await _raw_exchange(sc.sidecar.data_port, head + body, b"", wait_for_continue)
    final = answer.split(b"HTTP/1.1 ")[-1]
    assert final.startswith(b"200"), answer[:300]
    assert took < 2.0  # not the 8 s hang then 504 of a caller and an upstream each waiting for the other
    assert upstream.requests[-1].body == body
    assert "expect" not in {k.lower() for k in upstream.requests[-1].headers}  # answered here, not forwarded


async def test_expect_100_continue_refused_before_the_body_gets_the_refusal_not_100(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream, "limits: {max_request_body: 1KiB}"))
    body = b"x" * 5000
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port)
    try:
        writer.write(_post_head("/api/v1/upload", body))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 413"), head  # no 100 Continue first: the body is not wanted
    finally:
        writer.close()
    assert upstream.requests == []


async def test_an_unknown_expectation_is_417(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream))
    head = b"POST /api/x HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: teapot\r\nConnection: close\r\n\r\nhi"
    answer, _ = await _raw_exchange(sc.sidecar.data_port, head, b"", wait_for_continue=False)
    assert answer.startswith(b"HTTP/1.1 417"), answer[:200]
    assert b"X-Egress-Error: expectation_failed" in answer
    assert upstream.requests == []


# -- a refused body is not read ----------------------------------------------------------------------------


async def test_after_a_413_the_connection_closes_instead_of_reading_the_rest_of_the_body(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream, "limits: {max_request_body: 1KiB}"))
    declared = 2 * 1024**3  # 2 GiB announced; the caller keeps sending as long as the sidecar reads
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port)
    sent = 0
    try:
        writer.write(f"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 413")
        assert b"Connection: close" in head
        chunk = b"x" * 65536
        with pytest.raises((ConnectionError, asyncio.TimeoutError)):
            async with asyncio.timeout(5):
                while True:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)
    finally:
        writer.close()
    assert sent < 64 * 1024 * 1024  # the sidecar hung up; it did not swallow the body (it would take GiBs)
