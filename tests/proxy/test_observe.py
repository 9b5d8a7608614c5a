"""Observe-only rollout (`breaker.mode: observe`, `limits.mode: observe`): the decision is computed, counted in
egress_observed_total and logged, but the request is sent, so a new threshold can be rehearsed on live traffic."""

from __future__ import annotations

import asyncio
import logging

from tests.proxy.test_admin import sample
from tests.proxy.test_breaker import call, open_it
from tests.support.upstream import delay, respond


def policy(url: str, breaker: str = "", limits: str = "") -> str:
    return f"""
    admin: {{listen: 127.0.0.1:0, token: op-token}}
    upstreams:
      gemini:
        url: {url}
        timeouts: {{read: 2s}}
        retry: {{attempts: 1}}
        breaker: {{failures: 3, reset_after: 30s{breaker}}}
        limits: {{max_concurrent: 1, max_queue: 1{limits}}}
    """


async def metrics(client, sc) -> str:
    async with client.get(sc.admin + "/metrics") as resp:
        return await resp.text()


async def test_an_observing_breaker_opens_but_lets_every_request_through(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.WARNING, logger="egress.breaker")
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, breaker=", mode: observe"))
    await open_it(client, sc.url + "/gemini/x")
    assert sc.runtime.breakers["gemini"].state == "open"  # the decision is computed as when enforcing
    reached = len(upstream.requests)
    for _ in range(4):
        status, headers = await call(client, sc.url + "/gemini/x")
        assert status == 500 and "X-Egress-Error" not in headers  # the upstream's answer, not 503 circuit_open
    assert len(upstream.requests) == reached + 4
    text = await metrics(client, sc)
    assert sample(text, "egress_observed_total", upstream="gemini", decision="circuit_open") == 4
    assert sample(text, "egress_rejected_total", upstream="gemini", reason="circuit_open") == 0
    would = [r for r in caplog.records if "would refuse" in r.getMessage()]
    assert len(would) == 1  # once per open period, not once per request


async def test_an_operators_open_is_enforced_even_in_observe_mode(upstream, make_sidecar, client):
    upstream.default = respond(200)
    sc = await make_sidecar(policy(upstream.url, breaker=", mode: observe"))
    async with client.post(sc.admin + "/breakers/gemini/open", headers={"Authorization": "Bearer op-token"}) as r:
        assert r.status == 200
    status, headers = await call(client, sc.url + "/gemini/x")
    assert (status, headers["X-Egress-Error"]) == (503, "circuit_open")
    assert not upstream.requests


async def test_an_enforcing_breaker_still_refuses(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url))
    await open_it(client, sc.url + "/gemini/x")
    status, headers = await call(client, sc.url + "/gemini/x")
    assert (status, headers["X-Egress-Error"]) == (503, "circuit_open")
    assert sample(await metrics(client, sc), "egress_observed_total", upstream="gemini", decision="circuit_open") == 0


async def test_observed_limits_count_the_queued_and_the_overloaded_and_send_them_all(upstream, make_sidecar, client):
    upstream.default = delay(0.3, respond(200))
    sc = await make_sidecar(policy(upstream.url, limits=", mode: observe"))
    first = asyncio.create_task(call(client, sc.url + "/gemini/x"))
    await asyncio.sleep(0.1)  # the one slot is taken
    others = [asyncio.create_task(call(client, sc.url + "/gemini/x")) for _ in range(3)]
    results = await asyncio.gather(first, *others)
    assert [status for status, _ in results] == [200] * 4  # enforcing: 1 queued, then 2 refused 503 overloaded
    assert len(upstream.requests) == 4
    text = await metrics(client, sc)
    assert sample(text, "egress_observed_total", upstream="gemini", decision="queued") == 1
    assert sample(text, "egress_observed_total", upstream="gemini", decision="overloaded") == 2
    assert sample(text, "egress_inflight_requests", upstream="gemini") == 0  # every slot taken was given back
    assert sc.runtime.upstreams["gemini"].bulkhead.inflight == 0
