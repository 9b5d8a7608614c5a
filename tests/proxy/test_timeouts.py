"""Each timeout kind fires with its own reason, at about the policy's value (200 ms scale, generous bounds)."""

from __future__ import annotations

import asyncio
import time

from tests.support.upstream import BlackholeListener, delay, free_port, hang, never_read_body, respond, stream


def policy(url: str, timeouts: str, extra: str = "") -> str:
    return f"""
    upstreams:
      gemini:
        url: {url}
        timeouts: {timeouts}
        retry: {{attempts: 1}}
        {extra}
    """


async def timed(coro):
    started = time.monotonic()
    result = await coro
    return result, time.monotonic() - started


async def fetch(client, method, url, **kwargs):
    async with client.request(method, url, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_read_timeout_when_the_upstream_hangs(upstream, make_sidecar, client):
    upstream.default = hang()
    sc = await make_sidecar(policy(upstream.url, "{read: 200ms, total: 5s}"))
    (status, headers, body), took = await timed(fetch(client, "GET", sc.url + "/gemini/x"))
    assert status == 504
    assert headers["X-Egress-Error"] == "upstream_timeout"
    assert b"read timeout" in body
    assert 0.15 < took < 1.5


async def test_read_timeout_is_a_gap_between_bytes_not_a_cap_on_long_streams(upstream, make_sidecar, client):
    upstream.default = stream([b"data: x\n\n"] * 8, gap=0.1)  # 0.8 s in all, never a 0.2 s silence
    sc = await make_sidecar(policy(upstream.url, "{read: 300ms, total: 400ms}"))
    status, _, body = await fetch(client, "GET", sc.url + "/gemini/x")
    assert status == 200
    assert body == b"data: x\n\n" * 8


async def test_a_stream_that_stalls_is_cut_and_the_caller_sees_a_broken_body(upstream, make_sidecar, client):
    async def stall(request, record):
        from aiohttp import web

        response = web.StreamResponse()
        response.content_length = 100
        await response.prepare(request)
        await response.write(b"x" * 10)
        await asyncio.sleep(3600)

    upstream.default = stall
    sc = await make_sidecar(policy(upstream.url, "{read: 200ms, total: 5s}"))
    import aiohttp
    import pytest

    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(sc.url + "/gemini/x") as resp:
            assert resp.status == 200
            await resp.read()


async def test_total_timeout_bounds_the_wait_for_an_answer(upstream, make_sidecar, client):
    upstream.default = delay(2.0)
    sc = await make_sidecar(policy(upstream.url, "{read: 5s, total: 300ms}"))
    (status, headers, body), took = await timed(fetch(client, "GET", sc.url + "/gemini/x"))
    assert status == 504
    assert headers["X-Egress-Error"] == "upstream_timeout"
    assert b"total timeout" in body
    assert 0.25 < took < 1.5


async def test_connect_timeout_when_the_upstream_never_accepts(make_sidecar, client):
    blackhole = BlackholeListener()
    try:
        sc = await make_sidecar(policy(f"http://127.0.0.1:{blackhole.port}", "{connect: 200ms, total: 5s}"))
        (status, headers, body), took = await timed(fetch(client, "GET", sc.url + "/gemini/x"))
    finally:
        blackhole.close()
    assert status == 504
    assert headers["X-Egress-Error"] == "upstream_timeout"
    assert b"connect timeout" in body
    assert took < 2.0


async def test_connection_refused_is_502_connect_error(make_sidecar, client):
    sc = await make_sidecar(policy(f"http://127.0.0.1:{free_port()}", "{connect: 1s}"))
    (status, headers, _), took = await timed(fetch(client, "GET", sc.url + "/gemini/x"))
    assert status == 502
    assert headers["X-Egress-Error"] == "upstream_connect_error"
    assert took < 1.0


async def test_unresolvable_host_is_502_connect_error(make_sidecar, client):
    sc = await make_sidecar(policy("http://no-such-host.invalid", "{connect: 1s}"))
    status, headers, _ = await fetch(client, "GET", sc.url + "/gemini/x")
    assert status == 502
    assert headers["X-Egress-Error"] == "upstream_connect_error"


async def test_upstream_reset_before_answering_is_502_reset(upstream, make_sidecar, client):
    from tests.support.upstream import reset_after_body

    upstream.default = reset_after_body()
    sc = await make_sidecar(policy(upstream.url, "{read: 2s}"))
    status, headers, _ = await fetch(client, "POST", sc.url + "/gemini/x", data=b"hello")
    assert status == 502
    assert headers["X-Egress-Error"] == "upstream_reset"


async def test_write_timeout_when_the_upstream_stops_reading_the_body(upstream, make_sidecar, client):
    upstream.default = never_read_body()
    sc = await make_sidecar(policy(upstream.url, "{write: 200ms, read: 10s, total: 10s}",
                                   "limits: {max_request_body: 200MiB}"))

    async def body():
        chunk = b"x" * 65536
        for _ in range(1600):  # 100 MiB: far more than socket buffers hold
            yield chunk

    (status, headers, text), took = await timed(fetch(client, "POST", sc.url + "/gemini/upload", data=body()))
    assert status == 504
    assert headers["X-Egress-Error"] == "upstream_timeout"
    assert b"write timeout" in text
    assert took < 5.0


async def test_pool_timeout_when_every_slot_is_busy(upstream, make_sidecar, client):
    upstream.script(hang())
    upstream.default = respond()
    limits = "limits: {max_concurrent: 1, max_queue: 5}"
    sc = await make_sidecar(policy(upstream.url, "{pool: 200ms, read: 10s}", limits))
    first = asyncio.create_task(fetch(client, "GET", sc.url + "/gemini/slow"))
    await asyncio.sleep(0.2)
    (status, headers, body), took = await timed(fetch(client, "GET", sc.url + "/gemini/x"))
    first.cancel()
    assert status == 504
    assert headers["X-Egress-Error"] == "upstream_timeout"
    assert b"pool timeout" in body
    assert 0.15 < took < 1.5


async def test_route_timeouts_override_the_upstreams(upstream, make_sidecar, client):
    upstream.default = delay(0.4)
    sc = await make_sidecar(f"""
    upstreams:
      gemini:
        url: {upstream.url}
        timeouts: {{read: 200ms}}
        retry: {{attempts: 1}}
        routes:
          - name: stream
            match: POST /v1beta/models/*:streamGenerateContent
            timeouts: {{read: 2s}}
    """)
    status, _, _ = await fetch(client, "POST", sc.url + "/gemini/v1beta/models/m:streamGenerateContent")
    assert status == 200
    status, headers, _ = await fetch(client, "POST", sc.url + "/gemini/v1beta/models/m:generateContent")
    assert status == 504 and headers["X-Egress-Error"] == "upstream_timeout"


async def test_total_bounds_a_body_of_known_length_but_not_a_stream(upstream, make_sidecar, client):
    import aiohttp
    import pytest
    from aiohttp import web

    async def slow_fixed_length(request, record):
        response = web.StreamResponse()
        response.content_length = 10
        await response.prepare(request)
        for _ in range(10):
            await response.write(b"x")
            await asyncio.sleep(0.1)
        return response

    upstream.script(slow_fixed_length, stream([b"y"] * 10, gap=0.1))
    sc = await make_sidecar(policy(upstream.url, "{read: 1s, total: 400ms}"))
    started = time.monotonic()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(sc.url + "/gemini/fixed") as resp:
            await resp.read()
    assert time.monotonic() - started < 0.9
    status, _, body = await fetch(client, "GET", sc.url + "/gemini/stream")
    assert status == 200 and body == b"y" * 10
