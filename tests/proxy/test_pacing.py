"""Pacing (`rate_limit`), end to end: real sidecars between a real client and a real loopback upstream, sharing a
real Redis. Sends over their limits wait for their turn or are refused 503 `rate_limited`, never sent; two replicas
together stay under one budget; a Redis that dies or stalls leaves each replica pacing at its share.

Timing: short rates and generous bounds. "At most N in every second" is checked over windows of 0.95 s of the
upstream's arrival times, so loopback jitter of a few milliseconds cannot fail it; nothing asserts a throughput."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence

import aiohttp
import pytest
import redis.asyncio as aioredis

from proxy.pacing import shared
from tests.proxy.test_reload import reloadable, start  # noqa: F401  (a fixture, and how it starts a sidecar)
from tests.support.sidecar import RunningSidecar
from tests.support.upstream import FaultyUpstream, respond, until

PHONE = "1001"
WINDOW = 0.95  # "in every second", less the jitter of a loopback hop


def paced(
    upstream: FaultyUpstream, limits: str, *, redis_url: str = "", namespace: str = "", wait: str = "2s",
    backend: str = "redis", replicas: str = "auto", upstream_keys: str = "", op_timeout: str = "100ms",
) -> str:
    cache = (f'cache: {{backend: redis, redis_url: "{redis_url}", namespace: {namespace}, op_timeout: {op_timeout}}}'
             if redis_url else "")
    return f"""
    {cache}
    upstreams:
      whatsapp:
        url: {upstream.url}
        {upstream_keys}
        routes:
          - name: send
            match: POST /v19.0/{{phone_id}}/messages
            rate_limit:
              backend: {backend}
              wait: {wait}
              replicas: {replicas}
              limits: {limits}
    """


NUMBER_5 = '[{name: number, key: "{phone_id}", rate: 5/s, burst: 5}]'


async def send(
    client: aiohttp.ClientSession, sc: RunningSidecar, to: str, n: int = 0, phone: str = PHONE,
    headers: dict[str, str] | None = None,
) -> tuple[int, str | None, str | None, float]:
    """(status, X-Egress-Error, Retry-After, seconds taken) of one send."""
    started = time.monotonic()
    async with client.post(f"{sc.url}/whatsapp/v19.0/{phone}/messages", json={"to": to, "n": n},
                           headers=headers) as resp:
        await resp.read()
        return resp.status, resp.headers.get("X-Egress-Error"), resp.headers.get("Retry-After"), \
            time.monotonic() - started


def most_in_any_window(times: Sequence[float], span: float = WINDOW) -> int:
    ordered = sorted(times)
    most, first = 0, 0
    for last, at in enumerate(ordered):
        while at - ordered[first] > span:
            first += 1
        most = max(most, last - first + 1)
    return most


def delivered(upstream: FaultyUpstream) -> list[int]:
    return [json.loads(r.body)["n"] for r in upstream.requests]


def refused_as_rate_limited(results: Sequence[tuple[int, str | None, str | None, float]]) -> bool:
    """Every caller got a 200, or a 503 `rate_limited` with its Retry-After: nothing else."""
    return all(r[0] == 200 or (r[0] == 503 and r[1] == "rate_limited" and r[2] is not None) for r in results)


def backend_errors(sc: RunningSidecar) -> float:
    value = sc.runtime.metrics.registry.get_sample_value("egress_rate_limit_backend_errors_total",
                                                        {"upstream": "whatsapp"})
    return value or 0.0


@pytest.fixture
def quick_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas heard from within a fifth of a second (the default is every 2 s): only the timer changes."""
    monkeypatch.setattr(shared, "HEARTBEAT_EVERY", 0.1)
    monkeypatch.setattr(shared, "REST_AFTER_FAILURE", 0.1)


# -- shared by replicas ------------------------------------------------------------------------------------------


async def test_two_sidecars_on_one_redis_keep_40_sends_under_5_per_second_plus_the_burst(
    upstream, make_sidecar, client, redis_url, redis_namespace, quick_heartbeats
):
    # op_timeout 1 s: 40 sends and two sidecars share this test's one event loop, and on a loaded machine a Redis
    # answer can wait past 100 ms for the loop; this test is about the shared budget, not the fallback.
    body = paced(upstream, NUMBER_5, redis_url=redis_url, namespace=redis_namespace, wait="2s", op_timeout="1s")
    a, b = await make_sidecar(body), await make_sidecar(body)
    links = [sc.runtime.upstreams["whatsapp"].pacer.link for sc in (a, b)]
    await until(lambda: all(link is not None and link.replicas == 2 for link in links))
    results = await asyncio.gather(*(send(client, (a, b)[n % 2], f"user{n}", n) for n in range(40)))
    assert refused_as_rate_limited(results), Counter((r[0], r[1]) for r in results)
    assert backend_errors(a) == backend_errors(b) == 0  # every decision was Redis's: the shared budget
    sent = [n for n, r in enumerate(results) if r[0] == 200]
    assert sorted(delivered(upstream)) == sent  # each answered send reached the upstream once; no refused one did
    assert most_in_any_window([r.at for r in upstream.requests]) <= 5 + 5
    assert len(sent) > 5 and len(sent) < 40  # some waited for a later turn, some were past the 2 s they may wait
    assert {n % 2 for n in sent} == {0, 1}  # both replicas sent
    waited = [r for r in results if r[0] == 200 and r[3] > 0.5]
    assert waited and all(r[3] < 2 + 1 for r in results)  # a turn is waited for, never past `wait`


async def test_the_pair_limit_holds_per_recipient_while_other_recipients_flow(
    upstream, make_sidecar, client, redis_url, redis_namespace
):
    limits = ('[{name: number, key: "{phone_id}", rate: 100/s}, '
              '{name: pair, key: "{phone_id}:{body.to}", rate: 1/s, burst: 1}]')
    a = await make_sidecar(paced(upstream, limits, redis_url=redis_url, namespace=redis_namespace, wait="0s"))
    b = await make_sidecar(paced(upstream, limits, redis_url=redis_url, namespace=redis_namespace, wait="3s"))
    # No wait allowed: one send to the busy recipient goes, the others are refused; every other recipient goes.
    busy = await asyncio.gather(*(send(client, a, "+4915550001", n) for n in range(4)))
    others = await asyncio.gather(*(send(client, a, f"+49155500{n:02d}", 10 + n) for n in range(10, 14)))
    assert sorted(r[0] for r in busy) == [200, 503, 503, 503] and refused_as_rate_limited(busy)
    assert [r[0] for r in others] == [200] * 4
    # Within 3 s: the busy recipient's sends go one per second, in turn, while the others go at once.
    started = time.monotonic()
    later = asyncio.gather(*(send(client, b, "+4915550001", 20 + n) for n in range(2)))
    await asyncio.sleep(0.1)
    flowing = await asyncio.gather(*(send(client, b, f"+49155501{n:02d}", 30 + n) for n in range(5)))
    assert all(r[0] == 200 and r[3] < 0.5 for r in flowing)
    assert [r[0] for r in await later] == [200, 200]
    to_busy = sorted(r.at for r in upstream.requests if json.loads(r.body)["to"] == "+4915550001")
    assert len(to_busy) == 3 and all(b - a >= 0.9 for a, b in itertools.pairwise(to_busy))
    assert to_busy[-1] - started >= 1.0


async def test_a_throttle_answer_holds_the_key_on_every_replica(
    upstream, make_sidecar, client, redis_url, redis_namespace
):
    """WhatsApp's pair rate limit (400, code 131056) teaches the throttle clock of the replica that met it, and holds
    the key in Redis for the delay: the other replica's send to that recipient waits it out, others go."""
    throttle = "throttle: [{status: 400, field: error.code, codes: [131056], delay: 1s}]"
    limits = '[{name: pair, key: "{phone_id}:{body.to}", rate: 10/s}]'
    a = await make_sidecar(paced(upstream, limits, redis_url=redis_url, namespace=redis_namespace,
                                 upstream_keys=throttle))
    b = await make_sidecar(paced(upstream, limits, redis_url=redis_url, namespace=redis_namespace, wait="300ms",
                                 upstream_keys=throttle))
    upstream.script(respond(400, {"error": {"code": 131056, "message": "pair rate limit hit"}}))
    throttled = asyncio.ensure_future(send(client, a, "+4915550009", 1))
    await until(lambda: len(upstream.requests) == 1)
    await asyncio.sleep(0.1)  # the hold is on its way to Redis
    assert (await send(client, b, "+4915550009", 2))[:2] == (503, "rate_limited")  # its turn is ~0.9 s away
    assert (await send(client, b, "+4915550010", 3))[0] == 200  # another recipient: not held
    status, _, _, took = await throttled
    assert status == 200 and took >= 1.0  # its own retry waited the delay out (the throttle clock), then went
    assert delivered(upstream) == [1, 3, 1]


BOTH = ('[{name: number, key: "{phone_id}", rate: 50/s, burst: 50}, '
        '{name: pair, key: "{phone_id}:{body.to}", rate: 10/s}]')


@pytest.mark.parametrize("scoped", [True, False])
async def test_a_throttle_rule_about_one_limit_holds_only_its_keys(upstream, make_sidecar, client, scoped):
    """`limits: [pair]` on the #131056 rule: the recipient's pair key is held, the number's other recipients go at
    once. Without it, the answer holds all of the request's keys (and the upstream's throttle clock)."""
    scope = ", limits: [pair]" if scoped else ""
    throttle = f"throttle: [{{status: 400, field: error.code, codes: [131056], delay: 1s{scope}}}]"
    sc = await make_sidecar(paced(upstream, BOTH, backend="memory", wait="300ms", upstream_keys=throttle))
    upstream.script(respond(400, {"error": {"code": 131056, "message": "pair rate limit hit"}}))
    throttled = asyncio.ensure_future(send(client, sc, "+4915550009", 1))
    await until(lambda: len(upstream.requests) == 1)
    await asyncio.sleep(0.05)
    other = await send(client, sc, "+4915550010", 2)
    if scoped:
        assert other[0] == 200 and other[3] < 0.5  # not held: another recipient of the same number
        assert (await send(client, sc, "+4915550009", 3))[:2] == (503, "rate_limited")  # that pair is, ~0.9 s
    else:
        assert other[:2] == (503, "rate_limited")  # every key of the request held, the number's too
    status, _, _, took = await throttled
    assert status == 200 and took >= 1.0  # its own retry waited the delay out, then went


# -- Redis down or slow ------------------------------------------------------------------------------------------


async def test_redis_killed_mid_test_leaves_each_replica_at_its_share_and_callers_see_no_other_error(
    upstream, make_sidecar, client, make_redis, redis_namespace, quick_heartbeats, caplog
):
    own = make_redis()
    body = paced(upstream, NUMBER_5, redis_url=own.url, namespace=redis_namespace, wait="1s")
    a, b = await make_sidecar(body), await make_sidecar(body)
    links = [sc.runtime.upstreams["whatsapp"].pacer.link for sc in (a, b)]
    await until(lambda: all(link is not None and link.replicas == 2 for link in links))  # learnt while up
    before = await asyncio.gather(*(send(client, (a, b)[n % 2], f"u{n}", n) for n in range(10)))
    own.stop()
    after = await asyncio.gather(*(send(client, (a, b)[n % 2], f"u{n}", n) for n in range(10, 40)))
    assert refused_as_rate_limited(before + after)
    assert all(r[3] < 1 + 0.5 for r in after)  # nobody waited on the dead Redis
    sent = [n for n, r in enumerate(before + after) if r[0] == 200]
    assert sorted(delivered(upstream)) == sent
    assert most_in_any_window([r.at for r in upstream.requests]) <= 5 + 5
    fallback = [r.at for r in upstream.requests if json.loads(r.body)["n"] >= 10]
    assert fallback and most_in_any_window(fallback) <= 5 + 4  # 2 x (2.5/s, a burst of 2)
    assert backend_errors(a) >= 1 and backend_errors(b) >= 1
    assert sum("Rate limit backend redis unavailable" in r.getMessage() for r in caplog.records) == 2  # one each
    async with client.get(a.admin + "/upstreams") as resp:
        pacing = (await resp.json())["whatsapp"]["rate_limits"]
    assert pacing["redis"] == {"state": "down: pacing locally at rate / replicas", "replicas": 2}


async def test_a_stalled_redis_costs_a_decision_op_timeout_at_most_then_none(
    upstream, make_sidecar, client, make_redis, redis_namespace, quick_heartbeats
):
    own = make_redis()
    sc = await make_sidecar(paced(upstream, NUMBER_5, redis_url=own.url, namespace=redis_namespace))
    assert (await send(client, sc, "u0"))[0] == 200
    assert own.process is not None
    own.process.send_signal(signal.SIGSTOP)  # connections still complete; nothing answers
    try:
        results = [await send(client, sc, f"u{n}", n) for n in range(1, 4)]
        assert [r[0] for r in results] == [200, 200, 200]
        assert results[0][3] < 0.1 + 0.3  # op_timeout (100ms), then the local decision
        assert all(r[3] < 0.1 for r in results[1:])  # marked down: Redis is not asked again
        assert backend_errors(sc) >= 1
    finally:
        os.kill(own.process.pid, signal.SIGCONT)
    link = sc.runtime.upstreams["whatsapp"].pacer.link
    assert link is not None
    await until(lambda: link.up)  # a heartbeat got through: back on the shared budget


async def test_a_redis_that_lost_the_script_gets_it_again_in_the_same_decision(
    upstream, make_sidecar, client, make_redis, redis_namespace
):
    own = make_redis()
    sc = await make_sidecar(paced(upstream, NUMBER_5, redis_url=own.url, namespace=redis_namespace))
    assert (await send(client, sc, "u0"))[0] == 200
    admin = aioredis.Redis.from_url(own.url)
    try:
        await admin.script_flush()  # as a restarted (or failed-over) Redis would have it
        assert (await send(client, sc, "u1", 1))[0] == 200
        assert backend_errors(sc) == 0  # NOSCRIPT was answered by loading it, not by the fallback
        keys = [k.decode() async for k in admin.scan_iter(match=f"{redis_namespace}:rl:*")]
        assert f"{redis_namespace}:rl:{{whatsapp}}:number:{PHONE}" in keys
        assert 0 < await admin.pttl(f"{redis_namespace}:rl:{{whatsapp}}:number:{PHONE}") <= 1000
    finally:
        await admin.aclose()


# -- keys ---------------------------------------------------------------------------------------------------------


async def test_keys_from_a_header_and_a_missing_value_shares_one_budget(upstream, make_sidecar, client):
    sc = await make_sidecar(paced(upstream, '[{name: tenant, key: "t-{header.X-Tenant}", rate: 1/s, burst: 1}]',
                                  backend="memory", wait="0s"))
    tenant = {"X-Tenant": "acme-corp"}
    assert [(await send(client, sc, "u", headers=tenant))[0] for _ in range(2)] == [200, 503]
    assert (await send(client, sc, "u", headers={"X-Tenant": "other"}))[0] == 200
    assert [(await send(client, sc, "u"))[0] for _ in range(2)] == [200, 503]  # no header: the empty one's
    async with client.get(sc.admin + "/upstreams") as resp:
        tokens = (await resp.json())["whatsapp"]["rate_limits"]["limits"]["tenant"]["tokens"]
    assert set(tokens) == {"t-…corp", "t-…ther", "t-"}  # a header value shows its last 4 characters, if longer


async def test_a_body_key_reads_a_body_no_bulkhead_slot_has_been_given_for(upstream, make_sidecar, client):
    """`{body.to}` needs the body before the bulkhead: a send waiting for its turn holds no slot, so with one slot
    another recipient's send goes while the busy one waits."""
    sc = await make_sidecar(paced(upstream, '[{name: pair, key: "{body.to}", rate: 1/s, burst: 1}]',
                                  backend="memory", wait="3s").replace(
        "        routes:", "        limits: {max_concurrent: 1, max_queue: 0}\n        routes:"))
    assert (await send(client, sc, "busy"))[0] == 200
    waiting = asyncio.ensure_future(send(client, sc, "busy", 1))
    await asyncio.sleep(0.2)
    other = await send(client, sc, "idle", 2)
    assert other[0] == 200 and other[3] < 0.3
    assert (await waiting)[0] == 200 and delivered(upstream) == [0, 2, 1]


async def test_upstreams_shows_each_limit_and_its_tokens(upstream, make_sidecar, client, redis_url, redis_namespace):
    limits = ('[{name: number, key: "{phone_id}", rate: 80/s, burst: 80}, '
              '{name: pair, key: "{phone_id}:{body.to}", rate: 1/6s, burst: 3}]')
    sc = await make_sidecar(paced(upstream, limits, redis_url=redis_url, namespace=redis_namespace))
    await send(client, sc, "+4915550001")
    async with client.get(sc.admin + "/upstreams") as resp:
        pacing = (await resp.json())["whatsapp"]["rate_limits"]
    assert pacing["redis"] == {"state": "up", "replicas": 1}
    number, pair = pacing["limits"]["number"], pacing["limits"]["pair"]
    assert {k: number[k] for k in ("rate", "burst", "key", "backend", "routes")} == {
        "rate": "80/s", "burst": 80, "key": "{phone_id}", "backend": "redis", "routes": ["send"]}
    assert 79 <= number["tokens"][PHONE] <= 80
    assert pair["rate"] == "1/6s" and 2 <= pair["tokens"][f"{PHONE}:…0001"] < 2.1  # one of 3 taken


# -- reloads ------------------------------------------------------------------------------------------------------


async def test_a_reload_carries_the_budgets_and_re_points_the_redis_link(
    upstream, reloadable, client, make_redis, redis_namespace  # noqa: F811  (the fixture imported above)
):
    first, second = make_redis(), make_redis()
    limits = '[{name: pair, key: "{body.to}", rate: 1/10s, burst: 1}]'
    sc = await start(reloadable, paced(upstream, limits, redis_url=first.url, namespace=redis_namespace, wait="0s"))
    pacer = sc.runtime.upstreams["whatsapp"].pacer
    assert (await send(client, sc, "u1"))[0] == 200
    sc.text = paced(upstream, limits, redis_url=second.url, namespace=redis_namespace, wait="0s")
    assert (await sc.sidecar.reload()).applied
    assert sc.runtime.upstreams["whatsapp"].pacer is pacer  # carried
    assert pacer.link is not None and pacer.link.origin[0] == second.url
    assert (await send(client, sc, "u2"))[0] == 200  # decided in the second Redis
    for own, expected in ((first, {"u1"}), (second, {"u2"})):
        admin = aioredis.Redis.from_url(own.url)
        try:
            keys = {k.decode().rsplit(":", 1)[1] async for k in admin.scan_iter(match=f"{redis_namespace}:rl:*:pair:*")}
        finally:
            await admin.aclose()
        assert keys == expected
    sc.text = paced(upstream, limits, backend="memory", wait="0s")
    assert (await sc.sidecar.reload()).applied
    assert pacer.link is None  # no route paces through Redis any more: its link is retired
    assert [(await send(client, sc, "u3"))[0] for _ in range(2)] == [200, 503]
