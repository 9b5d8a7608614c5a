"""The retry stage's decisions, one outcome at a time: `RetryLoop.decide` and `_schedule`, with the real pieces a
request carries (a policy's Route, a RetryBudgetWindow, a ThrottleClock, a Breaker, Metrics, a Deadline). Upstream
answers are real `aiohttp.ClientResponse`s from a loopback FaultyUpstream: no HTTP mocks. The loop itself (sleeping,
attempt counting, X-Egress-Attempts) is covered end to end in test_retry.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import cast

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from proxy.deadline import Deadline
from proxy.errors import (
    EgressError,
    Throttled,
    UpstreamBadResponse,
    UpstreamConnectError,
    UpstreamReset,
    UpstreamTimeout,
)
from proxy.exchange import Answer, Exchange, Reply
from proxy.forward import RequestBody, WriteWatchdog
from proxy.metrics import Metrics
from proxy.policy import Route, parse_policy
from proxy.policy.model import RetryBudget
from proxy.policy.units import MAX_DURATION
from proxy.stages.breaker import Breaker, BreakerTelemetry
from proxy.stages.retry import RetryBudgetWindow, RetryContext, RetryLoop, Verdict
from proxy.throttle import ThrottleClock
from tests.support.upstream import Behaviour, FaultyUpstream, respond

BACKOFF_BASE = 0.01
BACKOFF_MAX = 2.0
POLICY = parse_policy(
    """
upstreams:
  whatsapp:
    url: http://127.0.0.1:1
    timeouts: {total: 10s}
    retry: {attempts: 3, backoff: {base: 10ms, max: 2s}, budget: {ratio: 1.0, min_per_second: 100}}
    throttle:
      - {status: 400, field: error.code, codes: [130429, 131056], delay: 300ms}
      - {status: 429, delay_field: "error.details[].retryDelay", delay: 1s}
    routes:
      - name: send_message
        match: POST /v19.0/*/messages
      - name: media
        match: GET /v19.0/**
      - name: only_503
        match: GET /narrow/**
        retry: {on: [503]}
""",
    "p.yaml",
    {},
)
UPSTREAM = POLICY.upstreams["whatsapp"]
WHATSAPP_THROTTLE = {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}}
assert UPSTREAM.default_route.retry.backoff.base == BACKOFF_BASE
assert UPSTREAM.default_route.retry.backoff.max == BACKOFF_MAX

MakeAnswer = Callable[[Behaviour], Awaitable[Answer]]


def route(name: str) -> Route:
    return next(r for r in UPSTREAM.routes if r.name == name)


def buffered(method: str) -> RequestBody:
    """A body held for replay: RequestBody only reaches for its request when it streams."""
    return RequestBody(make_mocked_request(method, "/"), b'{"to": "15551234567"}', b"", None)


def context(
    name: str = "media",
    *,
    method: str = "GET",
    idempotent: bool = True,
    total: float = 10.0,
    budget: RetryBudgetWindow | None = None,
    body: RequestBody | None = None,
) -> RetryContext:
    chosen = route(name)
    metrics = Metrics()
    return RetryContext(
        upstream=UPSTREAM.name,
        route=chosen,
        method=method,
        idempotent=idempotent,
        deadline=Deadline.start(total),
        breaker=Breaker(chosen.breaker_name, UPSTREAM.name, chosen.breaker, BreakerTelemetry(metrics)),
        budget=budget or RetryBudgetWindow(chosen.retry.budget),
        throttle=ThrottleClock(UPSTREAM.name),
        throttle_rules=UPSTREAM.throttle,
        body=body or buffered(method),
        metrics=metrics,
        request_id="rid-unit",
    )


def send() -> RetryLoop:
    """A WhatsApp send: POST, not idempotent."""
    return RetryLoop(context("send_message", method="POST", idempotent=False))


def read() -> RetryLoop:
    return RetryLoop(context("media"))


def exhausted_count(ctx: RetryContext) -> float:
    value = ctx.metrics.registry.get_sample_value("egress_retry_budget_exhausted_total", {"upstream": UPSTREAM.name})
    return value or 0.0


@pytest.fixture
async def answer(upstream: FaultyUpstream, client: aiohttp.ClientSession) -> MakeAnswer:
    """An Answer holding a real response from the loopback upstream, its body read (as the loop does for bodies a
    throttle rule reads)."""

    async def make(behaviour: Behaviour) -> Answer:
        upstream.script(behaviour)
        response = await client.get(upstream.url + "/v19.0/x")
        got = Answer(response)
        got.body = await response.read()
        return got

    return make


# -- failures without an answer ----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", [send, read], ids=["POST", "GET"])
def test_a_connect_error_is_retried_whatever_the_method_since_nothing_was_sent(loop: Callable[[], RetryLoop]) -> None:
    verdict = loop().decide(UpstreamConnectError("cannot connect", upstream="whatsapp"))
    assert verdict.retry and verdict.reason == "connect_error" and verdict.why_not == ""
    assert 0.0 <= verdict.wait <= BACKOFF_BASE


def test_a_connect_timeout_with_nothing_sent_is_retried_for_a_post() -> None:
    verdict = send().decide(UpstreamTimeout("connect", 3.0, sent=False))
    assert verdict.retry and verdict.reason == "timeout"


@pytest.mark.parametrize(
    "error", [UpstreamReset("closed after the body"), UpstreamTimeout("read", 2.0)], ids=["reset", "read_timeout"]
)
def test_a_reset_or_timeout_after_sending_is_not_retried_for_a_non_idempotent_request(error: EgressError) -> None:
    assert error.sent
    verdict = send().decide(error)
    assert not verdict.retry
    assert verdict.reason == error.outcome
    assert "may have reached the upstream" in verdict.why_not and "not idempotent" in verdict.why_not


@pytest.mark.parametrize(
    "error", [UpstreamReset("closed after the body"), UpstreamTimeout("read", 2.0)], ids=["reset", "read_timeout"]
)
def test_a_reset_or_timeout_after_sending_is_retried_for_an_idempotent_request(error: EgressError) -> None:
    verdict = read().decide(error)
    assert verdict.retry and verdict.reason == error.outcome


def test_a_failure_without_a_retry_condition_is_not_retried_and_says_nothing() -> None:
    verdict = read().decide(UpstreamBadResponse("garbage status line"))
    assert verdict == Verdict(False, "upstream_bad_response")


def test_an_outcome_left_out_of_the_routes_retry_on_is_not_retried() -> None:
    loop = RetryLoop(context("only_503"))
    assert loop.decide(UpstreamTimeout("read", 2.0)) == Verdict(False, "timeout")
    assert loop.decide(UpstreamConnectError("refused")) == Verdict(False, "connect_error")


# -- answers -------------------------------------------------------------------------------------------------


async def test_a_503_is_retried_for_an_idempotent_request(answer: MakeAnswer) -> None:
    got = await answer(respond(503))
    verdict = read().decide(got)
    assert verdict.retry and verdict.reason == "503"
    assert not got.throttled


async def test_a_503_is_not_retried_for_a_non_idempotent_request(answer: MakeAnswer) -> None:
    verdict = send().decide(await answer(respond(503)))
    assert not verdict.retry and verdict.reason == "503"
    assert verdict.why_not == "503 and the request is not idempotent"


@pytest.mark.parametrize("status", [200, 201, 404, 500])
async def test_statuses_outside_retry_on_are_final_answers(answer: MakeAnswer, status: int) -> None:
    assert read().decide(await answer(respond(status))) == Verdict(False, str(status))


async def test_a_status_left_out_of_a_narrowed_retry_on_is_final(answer: MakeAnswer) -> None:
    loop = RetryLoop(context("only_503"))
    assert loop.decide(await answer(respond(502))) == Verdict(False, "502")
    assert loop.decide(await answer(respond(503))).retry


async def test_a_503s_retry_after_within_backoff_max_sets_the_least_wait(answer: MakeAnswer) -> None:
    verdict = read().decide(await answer(respond(503, headers={"Retry-After": "1"})))
    assert verdict.retry and verdict.wait == 1.0  # the jittered backoff (<= 10ms) is shorter


async def test_a_503s_retry_after_over_backoff_max_is_not_waited_for(answer: MakeAnswer) -> None:
    verdict = read().decide(await answer(respond(503, headers={"Retry-After": "30"})))
    assert not verdict.retry and verdict.reason == "503"
    assert verdict.why_not == "the upstream asked for 30.0s, over backoff.max"


async def test_retry_after_on_a_502_is_ignored(answer: MakeAnswer) -> None:
    verdict = read().decide(await answer(respond(502, headers={"Retry-After": "30"})))
    assert verdict.retry and verdict.wait <= BACKOFF_BASE  # Retry-After means something on 429 and 503 only


async def test_whatsapps_throttle_400_is_retried_even_for_a_post(answer: MakeAnswer) -> None:
    loop = send()
    got = await answer(respond(400, WHATSAPP_THROTTLE))
    verdict = loop.decide(got)
    assert verdict.retry and verdict.reason == "throttled"
    assert 0.3 <= verdict.wait < 0.3 + BACKOFF_BASE  # the rule's delay: rejected, not processed
    assert got.throttled
    assert 0.25 < loop.ctx.throttle.remaining() <= 0.3  # and the rest of the upstream's traffic holds back too


async def test_a_throttle_delay_past_backoff_max_is_waited_when_it_fits_the_deadline(answer: MakeAnswer) -> None:
    loop = send()
    verdict = loop.decide(await answer(respond(400, WHATSAPP_THROTTLE, headers={"Retry-After": "5"})))
    assert verdict.retry and verdict.wait == 5.0 > BACKOFF_MAX
    assert verdict.throttle is None


async def test_a_throttle_delay_past_the_deadline_is_final_with_the_delay_for_the_503(answer: MakeAnswer) -> None:
    loop = RetryLoop(context("send_message", method="POST", idempotent=False, total=2.0))
    got = await answer(respond(400, WHATSAPP_THROTTLE, headers={"Retry-After": "5"}))
    verdict = loop.decide(got)
    assert not verdict.retry and verdict.reason == "throttled"
    assert verdict.throttle == 5.0
    assert verdict.why_not == "no time left before the deadline"
    assert got.throttled and loop.ctx.throttle.remaining() > 4.9


async def test_a_throttled_answer_after_the_last_attempt_is_final_with_its_delay(answer: MakeAnswer) -> None:
    loop = send()
    loop.ctx.attempts = 3
    verdict = loop.decide(await answer(respond(400, WHATSAPP_THROTTLE)))
    assert not verdict.retry and verdict.throttle == pytest.approx(0.3)


async def test_a_400_with_another_error_code_is_an_ordinary_final_answer(answer: MakeAnswer) -> None:
    loop = send()
    got = await answer(respond(400, {"error": {"code": 100, "message": "Invalid parameter"}}))
    assert loop.decide(got) == Verdict(False, "400")
    assert not got.throttled and loop.ctx.throttle.remaining() == 0.0


async def test_a_429_with_a_retry_info_body_waits_its_retry_delay(answer: MakeAnswer) -> None:
    body = {"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                "retryDelay": "1.5s"}]}}
    verdict = send().decide(await answer(respond(429, body)))
    assert verdict.retry and verdict.reason == "throttled" and 1.5 <= verdict.wait < 1.5 + BACKOFF_BASE


async def test_a_429_that_says_nothing_more_waits_the_rules_delay(answer: MakeAnswer) -> None:
    loop = send()
    got = await answer(respond(429, b""))
    verdict = loop.decide(got)
    assert verdict.retry and verdict.reason == "throttled" and 1.0 <= verdict.wait < 1.0 + BACKOFF_BASE
    assert got.throttled and 0.95 < loop.ctx.throttle.remaining() <= 1.0


async def test_a_429_without_any_rule_is_throttled_and_retried_on_backoff_alone(answer: MakeAnswer) -> None:
    loop = send()
    loop.ctx.throttle_rules = ()
    got = await answer(respond(429, b""))
    verdict = loop.decide(got)
    assert verdict.retry and verdict.reason == "throttled" and verdict.wait <= BACKOFF_BASE
    assert got.throttled and loop.ctx.throttle.remaining() == 0.0  # no delay to share with the other requests


# -- _schedule: attempts, body, deadline, budget ------------------------------------------------------------


def test_no_retry_once_the_attempts_are_made() -> None:
    loop = read()
    loop.ctx.attempts = 2
    assert loop.decide(UpstreamConnectError("refused")).retry
    loop.ctx.attempts = 3
    assert loop.decide(UpstreamConnectError("refused")) == Verdict(False, "connect_error")


async def test_no_retry_of_a_body_that_was_streamed() -> None:
    body = RequestBody(make_mocked_request("GET", "/"), None, b"first bytes", None)  # over retry.max_body
    assert body.replayable  # nothing handed to a connection yet
    payload = body.payload(WriteWatchdog(1.0))
    assert not isinstance(payload, (bytes, type(None)))
    assert await anext(payload) == b"first bytes"
    loop = RetryLoop(context(body=body))
    verdict = loop.decide(UpstreamConnectError("refused"))
    assert not verdict.retry and verdict.why_not == "the request body was streamed (over retry.max_body)"


def test_no_retry_when_the_wait_would_outlast_the_deadline() -> None:
    loop = RetryLoop(context(total=0.0))
    verdict = loop.decide(UpstreamConnectError("refused"))
    assert not verdict.retry and verdict.why_not == "no time left before the deadline"


def test_no_retry_when_retry_after_would_outlast_the_deadline() -> None:
    loop = RetryLoop(context(total=0.5))
    verdict = loop._schedule("503", 1.0)
    assert not verdict.retry and verdict.why_not == "no time left before the deadline"


def test_a_spent_budget_refuses_the_retry_and_counts_it() -> None:
    empty = RetryBudgetWindow(RetryBudget(ratio=0.0, min_per_second=0.0))
    loop = RetryLoop(context(budget=empty))
    assert exhausted_count(loop.ctx) == 0.0
    verdict = loop.decide(UpstreamConnectError("refused"))
    assert not verdict.retry and verdict.reason == "connect_error"
    assert verdict.why_not == "the retry budget is spent"
    assert exhausted_count(loop.ctx) == 1.0


def test_the_budget_allows_its_ratio_of_recent_requests_then_refuses() -> None:
    window = RetryBudgetWindow(RetryBudget(ratio=0.5, min_per_second=0.1))  # floor: 0.1/s over 10 s = 1
    for _ in range(4):
        window.record_request()
    assert window.allowance() == 2.0
    ctx = context(budget=window)
    verdicts = [RetryLoop(ctx).decide(UpstreamConnectError("refused")) for _ in range(3)]
    assert [v.retry for v in verdicts] == [True, True, False]
    assert exhausted_count(ctx) == 1.0


def test_the_budgets_floor_allows_retries_with_no_traffic_yet() -> None:
    window = RetryBudgetWindow(RetryBudget(ratio=0.2, min_per_second=0.2))  # floor: 2 over the 10 s window
    assert [window.try_spend() for _ in range(3)] == [True, True, False]


def test_a_budget_is_spent_only_by_retries_that_happen() -> None:
    window = RetryBudgetWindow(RetryBudget(ratio=0.0, min_per_second=0.1))  # one retry in the window
    loop = RetryLoop(context(budget=window, total=0.0))
    assert loop.decide(UpstreamConnectError("refused")).why_not == "no time left before the deadline"
    assert window.try_spend()  # the refused-for-time retry left the budget's one retry alone


def test_backoff_waits_grow_exponentially_with_full_jitter_up_to_backoff_max() -> None:
    loop = read()  # _schedule is called once per retry; the loop counts attempts, so each call is the next wait
    for n in range(12):
        cap = min(BACKOFF_BASE * 2**n, BACKOFF_MAX)
        verdict = loop._schedule("503", None)
        assert verdict.retry and 0.0 <= verdict.wait <= cap


def test_backoff_waits_are_jittered() -> None:
    waits = {RetryLoop(context())._schedule("503", None).wait for _ in range(20)}
    assert len(waits) > 1


def test_retry_after_is_the_least_wait_and_over_backoff_max_refuses_unless_throttled() -> None:
    assert read()._schedule("503", 0.5).wait == 0.5
    refused = read()._schedule("503", 5.0)
    assert not refused.retry and "over backoff.max" in refused.why_not
    throttled = read()._schedule("throttled", 5.0, throttled=True)
    assert throttled.retry and throttled.wait == 5.0



async def test_a_hostile_retry_after_ends_in_a_throttled_refusal_with_usable_advice(answer: MakeAnswer) -> None:
    """Regression, through the loop: `Retry-After: 999...9` (inf as a float) used to raise OverflowError here."""
    loop = read()
    got = await answer(respond(429, b"", headers={"Retry-After": "9" * 400}))

    async def attempt(ex: Exchange) -> Reply:
        return got

    reply = await loop.run(cast(Exchange, object()), attempt)  # the loop hands the exchange to `attempt` only
    assert isinstance(reply, Throttled) and reply.retry_after == MAX_DURATION
    assert reply.advice() == str(int(MAX_DURATION))
    assert loop.ctx.attempts == 1 and loop.ctx.throttle.remaining() > MAX_DURATION - 1
