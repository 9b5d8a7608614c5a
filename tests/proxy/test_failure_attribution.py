"""Who a failure is put down to: the upstream, the request's deadline, or the caller itself.

It decides the answer's reason and detail, whether the breaker counts it, and whether identical requests
waiting on this one (single-flight) get the same failure. Found in review: each test failed before its fix.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp

from tests.support.upstream import count_body, delay, free_port, reset_after_body, respond, stalled_body, stream

Result = tuple[int, str | None, bytes]


def getter(client: aiohttp.ClientSession, url: str) -> Callable[..., Awaitable[Result]]:
    async def get(**kwargs: object) -> Result:
        async with client.get(url, **kwargs) as resp:  # type: ignore[arg-type]
            return resp.status, resp.headers.get("X-Egress-Error"), await resp.read()

    return get


def cached_route(url: str, extra: str = "") -> str:
    return f"""
    upstreams:
      supabase:
        url: {url}
        retry: {{attempts: 1}}
        timeouts: {{read: 5s, pool: 5s, total: 10s}}
        {extra}
        routes:
          - name: bot_profile
            match: GET /rest/v1/bot_profiles
            cache: {{ttl: 5m}}
          - name: plain
            match: /rest/v1/plain
    """


PROFILES = "/supabase/rest/v1/bot_profiles"
SHORT = {"X-Egress-Timeout": "300ms"}

# -- the request's deadline, not a reset or the pool -------------------------------------------------------


async def test_a_cached_read_whose_body_outlasts_the_deadline_is_a_timeout(upstream, make_sidecar, client):
    upstream.default = stalled_body(200)
    sc = await make_sidecar(cached_route(upstream.url))
    status, error, _ = await getter(client, sc.url + PROFILES)(headers=SHORT)
    assert (status, error) == (504, "upstream_timeout")  # was 502 upstream_reset: TimeoutError is an OSError


async def test_a_throttle_candidate_body_that_outlasts_the_deadline_is_a_timeout(upstream, make_sidecar, client):
    upstream.default = stalled_body(400, {"Content-Type": "application/json"})
    sc = await make_sidecar(f"""
    upstreams:
      whatsapp:
        url: {upstream.url}
        timeouts: {{read: 5s, total: 400ms}}
        throttle: [{{status: 400, field: error.code, codes: [130429], delay: 1s}}]
    """)
    async with client.post(sc.url + "/whatsapp/v19.0/1/messages", data=b"{}") as resp:
        assert (resp.status, resp.headers["X-Egress-Error"]) == (504, "upstream_timeout")


async def test_a_pool_wait_cut_short_by_the_deadline_says_total(upstream, make_sidecar, client):
    upstream.script(delay(0.8))
    sc = await make_sidecar(cached_route(upstream.url, "limits: {max_concurrent: 1, max_queue: 10}"))
    hog = asyncio.create_task(client.get(sc.url + "/supabase/rest/v1/plain"))
    await asyncio.sleep(0.1)
    async with client.get(sc.url + "/supabase/rest/v1/plain", headers=SHORT) as resp:
        body = await resp.json()
    (await hog).release()
    assert resp.status == 504
    assert body["detail"] == "total timeout after 0.3s", body  # the 5 s pool timeout never ran out


async def test_a_mid_body_read_timeout_is_counted_as_a_timeout(upstream, make_sidecar, client):
    upstream.default = stream([b"a", b"b"], gap=1.0)
    sc = await make_sidecar(f"""
    upstreams:
      up:
        url: {upstream.url}
        timeouts: {{read: 300ms}}
    """)
    try:
        async with client.get(sc.url + "/up/sse") as resp:
            await resp.read()
    except aiohttp.ClientPayloadError:
        pass
    await asyncio.sleep(0.1)
    errors = sc.runtime.metrics.upstream_errors
    counted = errors.labels("up", "upstream_timeout")._value.get(), errors.labels("up", "upstream_reset")._value.get()
    assert counted == (1, 0)  # aiohttp's read timeout is a ClientError too


# -- single-flight: followers get only what the upstream did -----------------------------------------------


async def test_a_leaders_short_deadline_in_its_body_read_is_not_passed_to_followers(upstream, make_sidecar, client):
    upstream.script(stalled_body(200))
    upstream.default = respond(200, b"fine")
    sc = await make_sidecar(cached_route(upstream.url))
    get = getter(client, sc.url + PROFILES)
    leader = asyncio.create_task(get(headers=SHORT))
    await asyncio.sleep(0.1)
    follower = await get()
    assert (await leader)[:2] == (504, "upstream_timeout")
    assert follower == (200, None, b"fine")


async def test_a_leaders_short_deadline_in_the_pool_queue_is_not_passed_to_followers(upstream, make_sidecar, client):
    upstream.script(delay(0.6))
    upstream.default = respond(200, b"fine")
    sc = await make_sidecar(cached_route(upstream.url, "limits: {max_concurrent: 1, max_queue: 10}"))
    hog = asyncio.create_task(client.get(sc.url + "/supabase/rest/v1/plain"))
    await asyncio.sleep(0.1)
    get = getter(client, sc.url + PROFILES)
    leader = asyncio.create_task(get(headers=SHORT))
    await asyncio.sleep(0.05)
    follower = await get()
    (await hog).release()
    assert (await leader)[:2] == (504, "upstream_timeout")
    assert follower == (200, None, b"fine")


async def test_a_leaders_own_oversized_body_is_not_passed_to_followers(upstream, make_sidecar, client):
    upstream.default = respond(200, b"fine")
    sc = await make_sidecar(cached_route(upstream.url, "limits: {max_request_body: 1KiB}"))
    get = getter(client, sc.url + PROFILES)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"z" * 512
            await asyncio.sleep(0.2)

    leader = asyncio.create_task(get(data=body()))
    await asyncio.sleep(0.1)
    follower = await get()
    status, error, detail = await leader
    assert (status, error) == (413, "body_too_large")
    assert b'"upstream": "supabase"' in detail
    assert follower == (200, None, b"fine")


# -- the caller's own doing ------------------------------------------------------------------------------


async def test_a_streamed_body_over_max_request_body_is_413_not_a_reset(upstream, make_sidecar, client):
    upstream.default = count_body()
    sc = await make_sidecar(f"""
    upstreams:
      supabase:
        url: {upstream.url}
        retry: {{max_body: 1KiB}}
        limits: {{max_request_body: 4KiB}}
    """)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"q" * 1024
            await asyncio.sleep(0.01)

    async with client.post(sc.url + "/supabase/rest/v1/x", data=chunked()) as resp:
        assert (resp.status, resp.headers["X-Egress-Error"]) == (413, "body_too_large")


async def test_a_caller_stalling_its_body_is_408_and_frees_its_slot_at_the_deadline(upstream, make_sidecar, client):
    upstream.default = respond(200, b"fine")
    sc = await make_sidecar(f"""
    upstreams:
      supabase:
        url: {upstream.url}
        timeouts: {{total: 300ms}}
        limits: {{max_concurrent: 1, max_queue: 0}}
    """)
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port)
    writer.write(b"POST /supabase/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"y" * 10)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(200), 1.5)  # was: no answer, the slot held for good
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert await getter(client, sc.url + "/supabase/other")() == (200, None, b"fine")
    assert [r.raw_path for r in upstream.requests] == ["/other"]  # the stalled POST never went upstream


async def test_callers_own_short_deadlines_do_not_open_the_breaker_for_everyone(upstream, make_sidecar, client):
    upstream.default = delay(0.15, respond(200, b"fine"))
    sc = await make_sidecar(f"""
    upstreams:
      gemini:
        url: {upstream.url}
        timeouts: {{total: 10s}}
        retry: {{attempts: 1}}
        breaker: {{failures: 3, reset_after: 30s}}
    """)
    get = getter(client, sc.url + "/gemini/x")
    for _ in range(3):
        assert (await get(headers={"X-Egress-Timeout": "50ms"}))[:2] == (504, "upstream_timeout")
    assert await get() == (200, None, b"fine")
    assert sc.runtime.breakers["gemini"].state == "closed"


async def test_x_egress_delivery_says_whether_the_request_may_have_been_processed(upstream, make_sidecar, client):
    """`unknown` only when the request reached the upstream and no answer came back; `none` when it never did."""
    upstream.default = reset_after_body()
    sc = await make_sidecar(f"""
    upstreams:
      whatsapp:
        url: {upstream.url}
        breaker: {{failures: 1000}}
      nowhere:
        url: http://127.0.0.1:{free_port()}
    """)
    async with client.post(sc.url + "/whatsapp/v19.0/1/messages", data=b"{}") as resp:
        assert (resp.status, resp.headers["X-Egress-Error"], resp.headers["X-Egress-Delivery"]) == (
            502, "upstream_reset", "unknown")
    async with client.post(sc.url + "/nowhere/x", data=b"{}") as resp:
        assert (resp.headers["X-Egress-Error"], resp.headers["X-Egress-Delivery"]) == (
            "upstream_connect_error", "none")
    async with client.get(sc.url + "/unknown/x") as resp:
        assert (resp.status, resp.headers["X-Egress-Delivery"]) == (404, "none")
