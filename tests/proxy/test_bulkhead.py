"""Bulkheads: a hung upstream occupies only its own slots; beyond its limits the answer is an instant 503."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from tests.proxy.test_admin import sample
from tests.support.upstream import hang, respond


def policy(gemini: str, supabase: str, limits: str) -> str:
    return f"""
    upstreams:
      gemini:
        url: {gemini}
        timeouts: {{read: 30s, pool: 10s, total: 60s}}
        limits: {limits}
        retry: {{attempts: 1}}
      supabase:
        url: {supabase}
        retry: {{attempts: 1}}
    """


async def test_a_hung_upstream_cannot_slow_down_another(make_upstream, make_sidecar):
    gemini, supabase = await make_upstream(), await make_upstream()
    gemini.default = hang()
    supabase.default = respond(200, b"[]")
    sc = await make_sidecar(policy(gemini.url, supabase.url, "{max_concurrent: 100, max_queue: 100}"))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        target = sc.url + "/gemini/v1beta/models/m:generateContent"
        hung = [asyncio.create_task(session.get(target)) for _ in range(200)]
        for _ in range(100):
            if sc.runtime.upstreams["gemini"].bulkhead.queued == 100:
                break
            await asyncio.sleep(0.05)
        gemini_state = sc.runtime.upstreams["gemini"].bulkhead
        assert (gemini_state.inflight, gemini_state.queued) == (100, 100)
        timings = []
        for _ in range(20):
            started = time.monotonic()
            async with session.get(sc.url + "/supabase/rest/v1/accounts") as resp:
                assert resp.status == 200
                await resp.read()
            timings.append(time.monotonic() - started)
        timings.sort()
        assert timings[len(timings) // 2] < 0.05, f"median supabase latency {timings[10] * 1000:.1f} ms"
        assert timings[-1] < 0.5
        async with session.get(sc.admin + "/upstreams") as resp:
            snapshot = await resp.json()
        assert snapshot["gemini"]["inflight"] == 100 and snapshot["gemini"]["queued"] == 100
        assert snapshot["supabase"]["inflight"] == 0
        for task in hung:
            task.cancel()
        await asyncio.gather(*hung, return_exceptions=True)


async def test_beyond_the_queue_the_answer_is_an_immediate_503_overloaded(make_upstream, make_sidecar, client):
    gemini, supabase = await make_upstream(), await make_upstream()
    gemini.default = hang()
    sc = await make_sidecar(policy(gemini.url, supabase.url, "{max_concurrent: 2, max_queue: 1}"))
    hung = [asyncio.create_task(client.get(sc.url + "/gemini/x")) for _ in range(3)]
    for _ in range(100):
        if sc.runtime.upstreams["gemini"].bulkhead.queued == 1:
            break
        await asyncio.sleep(0.02)
    started = time.monotonic()
    async with client.get(sc.url + "/gemini/x") as resp:
        took = time.monotonic() - started
        assert resp.status == 503
        assert resp.headers["X-Egress-Error"] == "overloaded"
        assert (await resp.json())["upstream"] == "gemini"
    assert took < 0.05
    assert len(gemini.requests) == 2  # only the slots reached the upstream
    async with client.get(sc.admin + "/metrics") as resp:
        text = await resp.text()
    assert sample(text, "egress_rejected_total", upstream="gemini", reason="overloaded") == 1
    for task in hung:
        task.cancel()
    await asyncio.gather(*hung, return_exceptions=True)


async def test_a_queued_request_takes_the_slot_freed_by_a_finished_one(make_upstream, make_sidecar, client):
    from tests.support.upstream import delay

    gemini, supabase = await make_upstream(), await make_upstream()
    gemini.default = delay(0.2, respond(200))
    sc = await make_sidecar(policy(gemini.url, supabase.url, "{max_concurrent: 1, max_queue: 10}"))

    async def get() -> int:
        async with client.get(sc.url + "/gemini/x") as resp:
            return resp.status

    started = time.monotonic()
    statuses = await asyncio.gather(*(get() for _ in range(4)))
    assert statuses == [200, 200, 200, 200]
    assert time.monotonic() - started >= 0.75  # one at a time
    bulkhead = sc.runtime.upstreams["gemini"].bulkhead
    assert (bulkhead.inflight, bulkhead.queued) == (0, 0)
