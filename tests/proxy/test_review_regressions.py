"""Regressions found in review: slots that leaked, deadlines that stretched, answers shared or served wrongly."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from proxy.errors import UpstreamTimeout
from proxy.policy import Limits
from proxy.stages.bulkhead import Bulkhead
from tests.proxy.test_cache import call, policy
from tests.support.upstream import Recorded, delay, numbered, respond, stalled_body

# -- bulkhead ---------------------------------------------------------------------------------------------


async def test_a_slot_handed_over_just_as_the_pool_wait_times_out_is_not_lost():
    """The releaser hands its slot to the queued request (inflight unchanged) in the same loop turn as that
    request's pool timeout fires: the timed-out request must pass the slot on, or it is gone for good."""
    bulkhead = Bulkhead("u", Limits(max_concurrent=1, max_queue=5))
    await bulkhead.acquire(1.0)
    waiting = asyncio.create_task(bulkhead.acquire(0.05))
    await asyncio.sleep(0)  # it is queued now
    assert bulkhead.queued == 1
    loop = asyncio.get_running_loop()
    loop.call_soon(bulkhead.release)  # runs first in the next turn, the overdue pool timer right after it
    time.sleep(0.1)  # noqa: ASYNC251  (blocks the loop on purpose: the pool timeout is overdue when it turns)
    try:
        await waiting
    except UpstreamTimeout:
        pass  # gave up: it must have handed the slot on
    else:
        bulkhead.release()  # got it: done with it
    assert (bulkhead.inflight, bulkhead.queued) == (0, 0)


# -- breaker trial ----------------------------------------------------------------------------------------


async def test_a_trial_admitted_while_the_previous_answer_drains_is_freed_when_the_caller_hangs_up(
    upstream, make_sidecar, client
):
    """Attempt 1 gets a 503 (opening the breaker) whose body stalls; after its Retry-After the breaker is due
    for a trial and attempt 2 is admitted as that trial, then the 503's body is drained before it is sent.
    A caller hanging up during that drain must free the trial, or the breaker refuses everything forever."""
    upstream.script(stalled_body(503, {"Retry-After": "1"}))
    upstream.default = respond(200, b"fine")
    sc = await make_sidecar(f"""
    upstreams:
      up:
        url: {upstream.url}
        retry: {{attempts: 2, backoff: {{base: 10ms, max: 2s}}, on: [503]}}
        breaker: {{failures: 1, reset_after: 300ms}}
    """)
    with pytest.raises(TimeoutError):
        async with client.get(sc.url + "/up/thing", timeout=aiohttp.ClientTimeout(total=1.4)) as resp:
            await resp.read()
    await asyncio.sleep(0.2)
    async with client.get(sc.url + "/up/thing") as resp:
        assert (resp.status, resp.headers.get("X-Egress-Error"), await resp.read()) == (200, None, b"fine")
    assert sc.runtime.breakers["up"].state == "closed"


# -- cache: single-flight and stale-if-error ---------------------------------------------------------------


async def test_a_single_flight_follower_keeps_its_own_deadline(upstream, make_sidecar, client):
    """Waiting for an identical request's fetch is part of this request's time: with a 300ms deadline it
    must not wait out a leader that takes 1s, then get a fresh 300ms of its own on top."""
    upstream.default = delay(1.0, respond(200, b"slow", {"Cache-Control": "no-store"}))
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    leader = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.1)  # the leader is waiting for the upstream
    started = time.monotonic()
    follower = await call(client, url, headers={"X-Egress-Timeout": "300ms"})
    elapsed = time.monotonic() - started
    assert (follower[0], follower[1].get("X-Egress-Error")) == (504, "upstream_timeout")
    assert elapsed < 0.7, f"a 300ms deadline answered after {elapsed:.2f}s"
    assert (await leader)[2] == b"slow"


async def test_a_leaders_own_short_deadline_does_not_fail_its_followers(upstream, make_sidecar, client):
    """`X-Egress-Timeout` is one caller's wish: its expiry is no verdict on the upstream for the others."""
    upstream.default = delay(0.5, numbered())
    sc = await make_sidecar(policy(upstream))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    leader = asyncio.create_task(call(client, url, headers={"X-Egress-Timeout": "200ms"}))
    await asyncio.sleep(0.05)
    follower = await call(client, url)
    assert (follower[0], follower[2]) == (200, b"2")
    assert (await leader)[0] == 504


async def test_a_stale_entry_is_not_served_once_past_stale_if_error(upstream, make_sidecar, client):
    """Usable-stale is judged when it stands in, not when the request began: an upstream that takes 600ms to
    fail must not get an entry served 200ms past its stale_if_error window."""
    upstream.script(numbered(), delay(0.6, respond(503, b"down")))
    sc = await make_sidecar(policy(upstream, "{ttl: 200ms, stale_if_error: 500ms}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles"
    assert (await call(client, url))[2] == b"1"
    await asyncio.sleep(0.3)  # expired, usable stale for another 400ms
    reply = await call(client, url)
    assert (reply[0], reply[2], reply[1].get("X-Egress-Cache")) == (503, b"down", "MISS")


# -- request body limit ------------------------------------------------------------------------------------


async def test_a_chunked_request_body_over_the_limit_is_413_even_when_small_enough_to_buffer(
    upstream, make_sidecar, client
):
    """Without a Content-Length the body is buffered for replay (under retry.max_body): the limit still holds."""
    sc = await make_sidecar(f"""
    upstreams:
      supabase:
        url: {upstream.url}
        limits: {{max_request_body: 1KiB}}
    """)

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b"q" * 1024

    async with client.post(sc.url + "/supabase/rest/v1/x", data=chunked()) as resp:
        assert resp.status == 413
        assert resp.headers["X-Egress-Error"] == "body_too_large"
    assert upstream.requests == []


# -- deadline ----------------------------------------------------------------------------------------------


async def test_draining_a_retried_past_answer_stays_within_the_deadline(upstream, make_sidecar, client):
    """The 503 being retried past trickles its body: draining it (to keep the connection) may not take the
    request past its `total`."""
    upstream.script(stalled_body(503, {}))
    upstream.default = respond(200, b"fine")
    sc = await make_sidecar(f"""
    upstreams:
      up:
        url: {upstream.url}
        timeouts: {{total: 500ms}}
        retry: {{attempts: 3, backoff: {{base: 10ms, max: 20ms}}, on: [503]}}
    """)
    started = time.monotonic()
    async with client.get(sc.url + "/up/thing") as resp:
        await resp.read()
    elapsed = time.monotonic() - started
    assert elapsed < 0.8, f"a 500ms deadline answered after {elapsed:.2f}s ({resp.status})"


async def test_a_read_after_a_successful_write_does_not_join_a_fetch_begun_before_it(
    upstream, make_sidecar, client
):
    """Invalidation on write means a read issued after the write's 2xx never gets the pre-write answer, not even
    from an identical read that was already in flight when the write happened."""
    version = 0

    async def read(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        seen = version  # what the upstream read, as of its arrival
        await asyncio.sleep(0.5)
        return web.Response(text=f"v{seen}")

    async def write(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        nonlocal version
        version += 1
        return web.Response(text="written")

    async def route(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        return await (read if request.method == "GET" else write)(request, record)

    upstream.default = route
    sc = await make_sidecar(f"""
    upstreams:
      supabase:
        url: {upstream.url}
        retry: {{attempts: 1}}
        routes:
          - name: accounts
            match: GET /rest/v1/accounts
            cache: {{ttl: 5m, invalidate_on_write: true}}
    """)
    url = sc.url + "/supabase/rest/v1/accounts?id=eq.42"
    before = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.1)  # that read is in flight upstream
    async with client.patch(url, data=b"{}") as resp:
        assert resp.status == 200
    after = await call(client, url)
    assert (await before)[2] == b"v0"
    assert after[2] == b"v1"


async def test_a_head_whose_body_a_throttle_rule_read_keeps_the_upstreams_content_length(
    upstream, make_sidecar, client
):
    from tests.support.upstream import respond

    upstream.default = respond(400, b"x" * 123)
    sc = await make_sidecar(f"""
    upstreams:
      whatsapp:
        url: {upstream.url}
        throttle: [{{status: 400, field: error.code, codes: [130429]}}]
    """)
    async with client.head(sc.url + "/whatsapp/v19.0/1") as resp:
        assert resp.status == 400
        assert resp.headers["Content-Length"] == "123"


async def test_a_request_whose_deadline_was_gone_before_sending_does_not_count_against_the_breaker(
    upstream, make_sidecar, client
):
    from tests.support.upstream import respond

    upstream.default = respond(200, b"fine")
    sc = await make_sidecar(f"""
    upstreams:
      gemini:
        url: {upstream.url}
        breaker: {{failures: 1, reset_after: 30s}}
    """)
    async with client.get(sc.url + "/gemini/x", headers={"X-Egress-Timeout": "0ms"}) as resp:
        assert resp.status == 504 and resp.headers["X-Egress-Error"] == "upstream_timeout"
    assert upstream.requests == []
    assert sc.runtime.breakers["gemini"].state == "closed"
    async with client.get(sc.url + "/gemini/x") as resp:
        assert resp.status == 200
