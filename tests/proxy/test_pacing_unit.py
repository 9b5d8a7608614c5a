"""The pacing pieces alone: GCRA in process (turns, FIFO bookings, all-or-none, holds, the bound on what it
remembers), the Redis script deciding as it does, and the keys a request renders."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.metrics import Metrics
from proxy.pacing.gcra import Buckets, Turn, tokens
from proxy.pacing.keys import KEY_BODY_LIMIT, MAX_KEY, render_keys
from proxy.pacing.shared import RedisLink
from proxy.policy import CacheSettings
from tests.policy._helpers import load

FIVE = Turn(("number", "1001"), 0.2, 2)  # 5/s, two at once
PAIR = Turn(("pair", "1001:x"), 1.0, 1)


def test_a_burst_goes_at_once_then_turns_come_one_interval_apart_in_booking_order():
    buckets = Buckets()
    delays = [buckets.take([FIVE], allowance=10).delay for _ in range(5)]
    assert delays[:2] == [0.0, 0.0]
    for before, after, expected in zip(delays[1:], delays[2:], (0.2, 0.2, 0.2), strict=False):
        assert after - before == pytest.approx(expected, abs=0.01)


def test_a_turn_past_the_allowance_is_refused_and_no_limit_is_taken():
    buckets = Buckets()
    assert buckets.take([FIVE, PAIR], allowance=0).admitted
    before = buckets.tat(FIVE.bucket)
    refused = buckets.take([FIVE, PAIR], allowance=0.5)  # the pair's next turn is a second away
    assert not refused.admitted and refused.delay == pytest.approx(1.0, abs=0.01)
    assert refused.waits[0] == 0.0 and refused.waits[1] == pytest.approx(1.0, abs=0.01)
    assert buckets.tat(FIVE.bucket) == before  # the number limit's turn was not taken either
    other = Turn(("pair", "1001:y"), 1.0, 1)
    assert buckets.take([FIVE, other], allowance=0).admitted  # another recipient goes


def test_a_hold_gives_no_turn_before_its_delay_and_then_no_burst():
    buckets = Buckets()
    buckets.hold([FIVE], delay=1.0)
    first, second = buckets.take([FIVE], allowance=10), buckets.take([FIVE], allowance=10)
    assert first.delay == pytest.approx(1.0, abs=0.01)
    assert second.delay == pytest.approx(1.2, abs=0.01)


def test_tokens_refill_to_the_burst():
    assert tokens(tat=10.0, now=10.0, interval=0.2, burst=2) == 2.0
    assert tokens(tat=10.2, now=10.0, interval=0.2, burst=2) == pytest.approx(1.0)
    assert tokens(tat=11.0, now=10.0, interval=0.2, burst=2) == 0.0


def test_the_buckets_remembered_are_bounded_full_ones_first():
    buckets = Buckets(bound=10)
    for n in range(25):
        buckets.take([Turn(("n", str(n)), 60.0, 1)], allowance=0)
    assert len(buckets) <= 10
    assert buckets.tat(("n", "24")) is not None  # the latest stays


@pytest.fixture
async def link(redis_url: str, redis_namespace: str) -> AsyncIterator[RedisLink]:
    metrics = Metrics()
    settings = CacheSettings(backend="redis", redis_url=redis_url, namespace=redis_namespace, op_timeout=0.5)
    shared = RedisLink("whatsapp", settings, metrics.rate_limit_backend_errors.labels("whatsapp"))
    assert await shared.warm_up()
    yield shared
    await shared.close()


async def test_the_redis_script_decides_as_the_process_does(link):
    """The same requests, one after the other: the same verdicts and (within a few ms of clock) the same waits."""
    local = Buckets()
    sequence = [[FIVE], [FIVE], [FIVE, PAIR], [FIVE, PAIR], [FIVE], [PAIR], [FIVE, PAIR]]
    for turns in sequence:
        here = local.take(turns, allowance=0.5)
        there = await link.take(turns, allowance=0.5)
        assert there is not None
        assert there.admitted == here.admitted
        assert there.delay == pytest.approx(here.delay, abs=0.02)
        assert there.waits == pytest.approx(here.waits, abs=0.02)
        assert there.tats == pytest.approx(here.tats, abs=0.02)


async def test_a_redis_hold_reaches_every_replica(link, redis_url, redis_namespace):
    metrics = Metrics()
    settings = CacheSettings(backend="redis", redis_url=redis_url, namespace=redis_namespace, op_timeout=0.5)
    other = RedisLink("whatsapp", settings, metrics.rate_limit_backend_errors.labels("whatsapp"))
    try:
        assert await other.warm_up() and other.replicas == 2  # its heartbeat counts both
        assert await link.hold([PAIR], delay=2.0)
        seen = await other.take([PAIR], allowance=5)
        assert seen is not None and seen.admitted and seen.delay == pytest.approx(2.0, abs=0.05)
    finally:
        await other.close()
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert await client.zcard(f"{redis_namespace}:rl:{{whatsapp}}:replicas") == 1  # it left on close
    finally:
        await client.aclose()


# -- keys ---------------------------------------------------------------------------------------------------------

PACING = load("""\
upstreams:
  w:
    url: https://w.example
    routes:
      - name: send
        match: POST /v19.0/{phone_id}/messages
        rate_limit:
          limits:
            - {name: pair, key: "{phone_id}:{body.to}", rate: 1/6s}
            - {name: nested, key: "{body.messages.0.to}|{body.n}|{body.flag}", rate: 1/s}
            - {name: tenant, key: "{header.X-Tenant}", rate: 1/s}
""").upstreams["w"].routes[0].rate_limit
assert PACING is not None


class Buffered:
    """What the keys read of a request body: `buffered` (None: it was streamed)."""

    def __init__(self, data: bytes | None) -> None:
        self.buffered = data


def keys(body: bytes | None, headers: dict[str, str] | None = None) -> list[tuple[str, str]]:
    assert PACING is not None
    rendered = render_keys(PACING, {"phone_id": "1001"}, CIMultiDictProxy(CIMultiDict(headers or {})),
                           Buffered(body))  # type: ignore[arg-type]
    return [(key.value, key.shown) for key in rendered]


def test_keys_from_captures_body_fields_and_headers_with_values_shown_by_their_tail():
    body = json.dumps({"to": "+4915550001", "messages": [{"to": "a"}], "n": 7, "flag": True}).encode()
    assert keys(body, {"x-tenant": "acme-corp"}) == [
        ("1001:+4915550001", "1001:…0001"), ("a|7|true", "…|…|…"), ("acme-corp", "…corp")]


@pytest.mark.parametrize("body", [None, b"", b"not json", b"[1, 2]", b'{"to": ' + b"1" * KEY_BODY_LIMIT + b"}"])
def test_a_body_that_is_missing_not_json_or_too_large_renders_its_fields_empty(body):
    assert keys(body)[0] == ("1001:", "1001:")


def test_a_huge_key_value_is_kept_as_its_digest_one_budget_per_value():
    huge = [json.dumps({"to": c * 60_000}).encode() for c in "ab"]
    (a, a_shown), (b, _) = keys(huge[0])[0], keys(huge[1])[0]
    assert a.startswith("sha256:") and len(a) <= MAX_KEY and len(a_shown) <= MAX_KEY
    assert a != b and keys(huge[0])[0][0] == a  # distinct values, distinct budgets; the same value, the same one
