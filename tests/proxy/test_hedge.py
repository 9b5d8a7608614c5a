"""Hedged reads (`routes[].hedge`): a slow attempt gets a twin after `after`; the first answer wins. Only for
idempotent requests, never the half-open trial, within the retry budget and the bulkhead."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from proxy.policy import load_policy
from tests.support.sidecar import RunningSidecar
from tests.support.upstream import delay, hang, reset_before_body, respond

BUDGET = "{ratio: 1.0, min_per_second: 100}"


def policy(url: str, hedge: str = "{after: 200ms}", route: str = "", upstream: str = "", budget: str = BUDGET) -> str:
    return f"""
    upstreams:
      supabase:
        url: {url}
        timeouts: {{read: 5s, total: 5s}}
        retry: {{attempts: 1, budget: {budget}}}
        breaker: {{failures: 1000}}
        {upstream}
        routes:
          - name: reads
            match: GET /rest/v1/**
            hedge: {hedge}
            {route}
          - name: writes
            match: POST /rest/v1/**
            hedge: {hedge}
    """


async def call(client: aiohttp.ClientSession, method: str, url: str) -> tuple[int, dict[str, str], bytes]:
    async with client.request(method, url) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def hedges(sc: RunningSidecar, result: str, route: str = "reads") -> float:
    value = sc.runtime.metrics.registry.get_sample_value(
        "egress_hedges_total", {"upstream": "supabase", "route": route, "result": result}
    )
    return value or 0.0


async def test_a_slow_first_attempt_is_answered_by_the_hedge_in_about_after(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.INFO, logger="egress.access")
    upstream.script(delay(3, respond(200, b"slow")), delay(0.05, respond(200, b"fast")))
    sc = await make_sidecar(policy(upstream.url))
    started = time.monotonic()
    status, headers, body = await call(client, "GET", sc.url + "/supabase/rest/v1/messages?id=eq.1")
    took = time.monotonic() - started
    assert (status, body) == (200, b"fast")
    assert 0.2 <= took < 1.5  # after (200 ms) plus the fast answer, not the slow one's 3 s
    assert headers["X-Egress-Attempts"] == "2"
    assert len(upstream.requests) == 2
    assert hedges(sc, "won") == 1 and hedges(sc, "lost") == 0
    sc.settle()
    lines = [r.getMessage() for r in caplog.records if r.name == "egress.access"]
    assert len(lines) == 1 and "hedges=1" in lines[0] and "attempts=2" in lines[0]


async def test_the_losers_slot_and_connection_are_given_back(upstream, make_sidecar, client):
    upstream.script(hang(), delay(0.05, respond(200, b"fast")))
    sc = await make_sidecar(policy(upstream.url, upstream="limits: {max_concurrent: 2, max_queue: 0}"))
    status, _, body = await call(client, "GET", sc.url + "/supabase/rest/v1/messages")
    assert (status, body) == (200, b"fast")
    bulkhead = sc.runtime.upstreams["supabase"].bulkhead
    for _ in range(50):
        if bulkhead.inflight == 0:
            break
        await asyncio.sleep(0.02)
    assert bulkhead.inflight == 0  # the hung loser was cancelled: both slots are free again
    status, _, _ = await call(client, "GET", sc.url + "/supabase/rest/v1/messages")  # and usable: 2 slots
    assert status == 200


async def test_a_fast_answer_sends_no_hedge(upstream, make_sidecar, client):
    upstream.default = respond(200, b"quick")
    sc = await make_sidecar(policy(upstream.url))
    status, headers, _ = await call(client, "GET", sc.url + "/supabase/rest/v1/messages")
    await asyncio.sleep(0.3)  # past `after`: nothing more goes out
    assert status == 200 and headers["X-Egress-Attempts"] == "1"
    assert len(upstream.requests) == 1
    assert hedges(sc, "won") == hedges(sc, "lost") == 0


async def test_a_post_is_never_hedged(upstream, make_sidecar, client):
    upstream.default = delay(0.6, respond(201, b"stored"))
    sc = await make_sidecar(policy(upstream.url))
    status, headers, _ = await call(client, "POST", sc.url + "/supabase/rest/v1/messages")
    assert status == 201 and headers["X-Egress-Attempts"] == "1"
    assert len(upstream.requests) == 1  # a write sent twice could be stored twice
    assert hedges(sc, "won", "writes") == hedges(sc, "lost", "writes") == 0


async def test_a_post_with_an_idempotency_key_is_hedged(upstream, make_sidecar, client):
    upstream.script(delay(3, respond(201, b"slow")), delay(0.05, respond(201, b"fast")))
    sc = await make_sidecar(policy(upstream.url))
    async with client.post(sc.url + "/supabase/rest/v1/messages", data=b"{}",
                           headers={"Idempotency-Key": "messages:1"}) as resp:
        assert (resp.status, await resp.read(), resp.headers["X-Egress-Attempts"]) == (201, b"fast", "2")
    assert hedges(sc, "won", "writes") == 1


async def test_up_to_max_hedges_go_out_one_after_each_wait(upstream, make_sidecar, client):
    upstream.script(hang(), hang(), delay(0.05, respond(200, b"third")))
    sc = await make_sidecar(policy(upstream.url, hedge="{after: 150ms, max: 2}"))
    started = time.monotonic()
    status, headers, body = await call(client, "GET", sc.url + "/supabase/rest/v1/messages")
    assert (status, body) == (200, b"third")
    assert 0.3 <= time.monotonic() - started < 1.5
    assert headers["X-Egress-Attempts"] == "3" and len(upstream.requests) == 3
    assert hedges(sc, "won") == 1 and hedges(sc, "lost") == 1


async def test_the_retry_budget_bounds_hedges_under_an_outage(upstream, make_sidecar, client):
    # Every answer slow: without a bound each request would double the load on an upstream already struggling.
    upstream.default = delay(0.5, respond(200))
    sc = await make_sidecar(policy(upstream.url, budget="{ratio: 0.0, min_per_second: 0.2}"))  # 2 per 10 s
    replies = await asyncio.gather(*(call(client, "GET", sc.url + f"/supabase/rest/v1/m?n={i}") for i in range(10)))
    assert all(status == 200 for status, _, _ in replies)
    assert len(upstream.requests) == 12  # 10 requests and the 2 hedges the budget allows
    assert hedges(sc, "won") + hedges(sc, "lost") == 2
    assert hedges(sc, "budget") == 8


async def test_a_hedge_never_takes_the_half_open_trial(upstream, make_sidecar, client):
    upstream.script(respond(500), delay(0.6, respond(200, b"trial")))
    sc = await make_sidecar(policy(
        upstream.url, route="breaker: {failures: 1, reset_after: 200ms, count: [5xx]}",
    ))
    assert (await call(client, "GET", sc.url + "/supabase/rest/v1/m"))[0] == 500  # opens the breaker
    await asyncio.sleep(0.3)  # due for its trial
    status, _, body = await call(client, "GET", sc.url + "/supabase/rest/v1/m")
    assert (status, body) == (200, b"trial")
    assert len(upstream.requests) == 2  # the trial went alone, slow as it was
    assert hedges(sc, "breaker") == 1
    assert sc.runtime.breakers["supabase.reads"].state == "closed"


async def test_a_hedge_takes_a_bulkhead_slot_and_is_not_sent_without_one(upstream, make_sidecar, client):
    upstream.default = delay(0.5, respond(200, b"only"))
    sc = await make_sidecar(policy(upstream.url, upstream="limits: {max_concurrent: 1, max_queue: 0}"))
    status, _, body = await call(client, "GET", sc.url + "/supabase/rest/v1/m")
    assert (status, body) == (200, b"only")
    assert len(upstream.requests) == 1  # the one slot was the first attempt's
    assert hedges(sc, "overloaded") == 1


async def test_identical_cached_reads_share_one_hedged_fetch(upstream, make_sidecar, client):
    upstream.script(delay(3, respond(200, b"slow")), delay(0.05, respond(200, b"fast")))
    sc = await make_sidecar(policy(upstream.url, route="cache: {ttl: 60s}"))
    url = sc.url + "/supabase/rest/v1/bot_profiles?id=eq.1"
    replies = await asyncio.gather(*(call(client, "GET", url) for _ in range(5)))
    assert {body for _, _, body in replies} == {b"fast"}
    assert len(upstream.requests) == 2  # one fetch for five callers, and its one hedge


async def test_a_hedge_that_fails_leaves_the_race_to_the_first_attempt(upstream, make_sidecar, client):
    upstream.script(delay(0.5, respond(200, b"first")), reset_before_body())
    sc = await make_sidecar(policy(upstream.url))
    status, headers, body = await call(client, "GET", sc.url + "/supabase/rest/v1/m")
    assert (status, body) == (200, b"first")  # a failure is not an answer: the race goes on without it
    assert headers["X-Egress-Attempts"] == "2"
    assert hedges(sc, "lost") == 1


async def test_an_upstream_answer_from_the_hedge_wins_even_a_5xx(upstream, make_sidecar, client):
    upstream.script(delay(1, respond(200, b"first")), respond(503, b"hedge said 503"))
    sc = await make_sidecar(policy(upstream.url))
    status, headers, body = await call(client, "GET", sc.url + "/supabase/rest/v1/m")
    # An answer wins the race; the retry policy judges it (attempts: 1 here), as it would the first attempt's.
    assert (status, body) == (503, b"hedge said 503")
    assert headers["X-Egress-Attempts"] == "2"


def test_the_shipped_policy_hedges_supabase_reads():
    policy = load_policy("config/policy.yaml")
    supabase = policy.upstreams["supabase"]
    reads = supabase.route_for("GET", "/rest/v1/messages")
    assert reads.hedge is not None and reads.hedge.after <= 0.5
    writes = supabase.route_for("POST", "/rest/v1/messages")
    assert writes.hedge is not None and not writes.idempotent  # only a write sent with an Idempotency-Key is hedged
    assert supabase.route_for("GET", "/rest/v1/bot_profiles").hedge is not None
    generate = policy.upstreams["gemini"].route_for("POST", "/v1beta/models/m:generateContent")
    assert generate.idempotent and generate.hedge is not None and generate.hedge.after < generate.timeouts.read
    assert policy.upstreams["gemini"].route_for("POST", "/v1beta/models/m:streamGenerateContent").hedge is None
