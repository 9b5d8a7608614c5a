"""Bodies stream both ways with constant memory: 50 MB through the sidecar does not grow it by 50 MB."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.support.upstream import big_body, count_body, cut_stream

SIZE = 50 * 1024 * 1024
CHUNK = 64 * 1024


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@contextlib.asynccontextmanager
async def peak_rss() -> AsyncIterator[dict[str, int]]:
    """Samples this process's RSS (sidecar, upstream and client all live here) while the block runs."""
    result = {"start": rss_bytes(), "peak": 0}
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            result["peak"] = max(result["peak"], rss_bytes())
            await asyncio.sleep(0.01)

    task = asyncio.create_task(sample())
    try:
        yield result
    finally:
        stop.set()
        await task


def policy(url: str) -> str:
    return f"""
    upstreams:
      whatsapp_media:
        url: {url}
        timeouts: {{read: 10s, total: 60s}}
        limits: {{max_request_body: 100MiB}}
    """


@pytest.mark.timeout(120)
async def test_a_50mb_download_streams_with_bounded_memory(upstream, make_sidecar, client):
    upstream.default = big_body(SIZE)
    sc = await make_sidecar(policy(upstream.url))
    received = 0
    async with peak_rss() as rss, client.get(sc.url + "/whatsapp_media/media/1") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(SIZE)
        async for chunk in resp.content.iter_chunked(CHUNK):
            received += len(chunk)
    assert received == SIZE
    growth = rss["peak"] - rss["start"]
    assert growth < 25 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB while streaming 50 MB"


@pytest.mark.timeout(120)
async def test_a_50mb_upload_streams_with_bounded_memory(upstream, make_sidecar, client):
    upstream.default = count_body()
    sc = await make_sidecar(policy(upstream.url))

    async def body() -> AsyncIterator[bytes]:
        block = b"y" * CHUNK
        for _ in range(SIZE // CHUNK):
            yield block

    async with peak_rss() as rss, client.post(sc.url + "/whatsapp_media/upload", data=body()) as resp:
        assert resp.status == 200
        assert (await resp.json())["received"] == SIZE
    growth = rss["peak"] - rss["start"]
    assert growth < 25 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB while streaming 50 MB"


async def test_an_upload_with_content_length_keeps_it(upstream, make_sidecar, client):
    from tests.support.upstream import echo

    upstream.default = echo()
    sc = await make_sidecar(policy(upstream.url))
    data = b"z" * (3 * 1024 * 1024)  # over retry.max_body: streamed, yet not re-chunked
    async with client.put(sc.url + "/whatsapp_media/x", data=data) as resp:
        seen = await resp.json()
    assert seen["body_length"] == len(data)
    assert seen["headers"]["content-length"] == [str(len(data))]
    assert "transfer-encoding" not in seen["headers"]


async def test_a_response_cut_mid_body_reaches_the_caller_as_an_error_not_a_short_success(
    upstream, make_sidecar, client
):
    import aiohttp

    upstream.default = cut_stream(b"a" * 1000, 10_000)
    sc = await make_sidecar(policy(upstream.url))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(sc.url + "/whatsapp_media/media/2") as resp:
            await resp.read()


async def test_a_cut_body_reaches_an_http_1_0_caller_as_a_reset_not_as_its_end(upstream, make_sidecar):
    # HTTP/1.0 has no chunked encoding: a body of no stated length ends where the connection ends, so a
    # clean close would make the first 1000 bytes look like the whole body.
    upstream.default = cut_stream(b"a" * 1000, None)
    sc = await make_sidecar(policy(upstream.url))
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port)
    writer.write(b"GET /whatsapp_media/media/2 HTTP/1.0\r\nHost: a\r\n\r\n")
    received = b""
    with pytest.raises(ConnectionResetError):
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 3)
            if not chunk:
                break  # a clean end of stream: what must not happen
            received += chunk
    writer.close()
    head = received.partition(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.0 200") and b"content-length" not in head


async def test_request_body_over_the_limit_is_413(upstream, make_sidecar, client):
    sc = await make_sidecar(f"""
    upstreams:
      supabase:
        url: {upstream.url}
        limits: {{max_request_body: 1KiB}}
    """)
    async with client.post(sc.url + "/supabase/rest/v1/x", data=b"q" * 2048) as resp:
        assert resp.status == 413
        assert resp.headers["X-Egress-Error"] == "body_too_large"
    assert upstream.requests == []
