"""Stage `retry`, around the attempts: backoff with full jitter, the idempotency rule, Retry-After and throttling,
the retry budget and the deadline; the loop stops when the breaker opens.

The one rule that matters most: a request that is not idempotent (a WhatsApp send) is replayed only
when it provably never reached the upstream, or when the upstream said "throttled" (it was rejected,
not processed). A reset or timeout after the body left is returned to the caller, never retried.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import backoff

from proxy.deadline import Deadline
from proxy.errors import CircuitOpen, EgressError, Throttled
from proxy.exchange import Answer, Exchange, Next, Reply, Stored
from proxy.forward import RequestBody
from proxy.metrics import Metrics
from proxy.policy import Route, ThrottleRule, Upstream
from proxy.policy.model import RetryBudget
from proxy.stages.breaker import Breaker
from proxy.throttle import RETRY_AFTER_STATUSES, ThrottleClock, needs_body, retry_after_seconds, throttling
from proxy.window import SlidingCounts

log = logging.getLogger("egress.retry")

THROTTLE_BODY_LIMIT = 64 * 1024  # a throttle signal is a small JSON error; a larger body is read no further

Outcome = Answer | EgressError


class RetryStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        return await RetryLoop(RetryContext.of(ex)).run(ex, next)


class RetryBudgetWindow:
    """Per upstream: retries (and hedges) may add at most `ratio` of recent requests (floor: `min_per_second`).
    This is what turns a failing upstream into a bounded amount of extra traffic instead of a retry storm.

    Lifetime: carried over a reload while the upstream's budget settings are unchanged (its window is history)."""

    def __init__(self, budget: RetryBudget, window: int = 10) -> None:
        self.budget = budget
        self.window = window
        self._counts = SlidingCounts(("requests", "retries"), window)

    @classmethod
    def carry(cls, previous: RetryBudgetWindow | None, upstream: Upstream) -> RetryBudgetWindow:
        budget = upstream.default_route.retry.budget
        return previous if previous is not None and previous.budget == budget else cls(budget)

    def record_request(self) -> None:
        self._counts.add("requests")

    def allowance(self) -> float:
        by_ratio = self.budget.ratio * self._counts.total("requests")
        return max(by_ratio, self.budget.min_per_second * self.window)

    def left(self) -> float:
        """Retries the budget would allow now (the status page)."""
        return max(self.allowance() - self._counts.total("retries"), 0.0)

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one left."""
        if self._counts.total("retries") + 1 > self.allowance():
            return False
        self._counts.add("retries")
        return True


@dataclass(frozen=True, slots=True)
class Verdict:
    retry: bool
    reason: str  # the condition, for logs and `egress_retries_total{reason}`
    wait: float = 0.0
    why_not: str = ""
    throttle: float | None = None  # the delay a throttled answer asked for (its Retry-After, should it be final)


@dataclass(slots=True)
class RetryContext:
    """What the loop needs about one request."""

    upstream: str
    route: Route
    method: str
    idempotent: bool
    deadline: Deadline
    breaker: Breaker
    budget: RetryBudgetWindow
    throttle: ThrottleClock
    throttle_rules: tuple[ThrottleRule, ...]
    body: RequestBody
    metrics: Metrics
    request_id: str
    attempts: int = 0  # tries: attempts this loop made (a hedge is not one of them)
    on_throttle: Callable[[float, frozenset[str]], bool] | None = None  # Exchange.on_throttle (the pace stage's)

    @classmethod
    def of(cls, ex: Exchange) -> RetryContext:
        assert ex.target is not None and ex.upstream is not None and ex.deadline is not None and ex.body is not None
        state, route = ex.upstream, ex.target.route
        return cls(
            upstream=state.upstream.name,
            route=route,
            method=ex.method,
            idempotent=ex.idempotent,
            deadline=ex.deadline,
            breaker=state.breakers.of(route),
            budget=state.budget,
            throttle=state.throttle,
            throttle_rules=state.upstream.throttle,
            body=ex.body,
            metrics=ex.runtime.metrics,
            request_id=ex.request_id,
            on_throttle=ex.on_throttle,
        )


class RetryLoop:
    def __init__(self, ctx: RetryContext) -> None:
        self.ctx = ctx
        self._waits: Iterator[float] | None = None  # made on the first retry: most requests never need one

    async def run(self, ex: Exchange, attempt: Next) -> Outcome:
        """Attempts until one is final; returns the last answer or error (never raises EgressError)."""
        ctx = self.ctx
        ctx.budget.record_request()
        last: Outcome | None = None
        while True:
            try:
                await ctx.throttle.wait(ctx.deadline)
            except EgressError as refused:
                return refused if last is None else last
            if last is not None and not ctx.breaker.admits():
                # The breaker opened (or its trial is taken): the caller gets the last real answer, which is why
                # a retried-past answer is only discarded once the next attempt would be admitted.
                return last
            if isinstance(last, Answer):
                await last.discard(ctx.deadline)
            ctx.attempts += 1
            reply = await attempt(ex)
            assert not isinstance(reply, Stored)  # below the cache
            outcome = reply
            if isinstance(outcome, CircuitOpen):
                return outcome  # not admitted: nothing was sent
            if isinstance(outcome, Answer) and needs_body(ctx.throttle_rules, outcome.status):
                outcome = await self._read_small(outcome)
            verdict = self.decide(outcome)
            if not verdict.retry:
                if verdict.why_not:
                    log.info("Not retrying %s %s %s: %s request_id=%s", ctx.upstream, ctx.method, ctx.route.name,
                             verdict.why_not, ctx.request_id)
                if verdict.throttle is not None and isinstance(outcome, Answer):
                    return await self._throttled(outcome, verdict)
                return outcome
            log.warning(
                "Retrying %s %s %s attempt %d/%d in %dms (reason: %s) request_id=%s",
                ctx.upstream, ctx.method, ctx.route.name, ctx.attempts + 1, ctx.route.retry.attempts,
                round(verdict.wait * 1000), verdict.reason, ctx.request_id,
            )
            ctx.metrics.retries.labels(ctx.upstream, ctx.route.name, verdict.reason).inc()
            last = outcome
            try:
                await asyncio.sleep(verdict.wait)
            except asyncio.CancelledError:
                if isinstance(last, Answer):
                    last.close()
                raise

    async def _throttled(self, answer: Answer, verdict: Verdict) -> Throttled:
        """A throttled answer that cannot be waited out (its delay outlasts the deadline, the budget or the attempts)
        is a 503 `throttled` with its Retry-After: the same answer the callers after it get from the throttle clock,
        never the provider's own 400 or 429, which would say the caller was at fault (or nothing at all)."""
        await answer.discard(self.ctx.deadline)
        delay = verdict.throttle or 0.0
        why_not = verdict.why_not or f"all {self.ctx.route.retry.attempts} attempts were made"
        detail = f"the upstream asked for {delay:.1f}s of quiet ({answer.status}); not retried: {why_not}"
        return Throttled(detail, upstream=self.ctx.upstream, retry_after=delay if delay > 0 else None)

    async def _read_small(self, answer: Answer) -> Answer | EgressError:
        """Throttle signals hide in bodies (WhatsApp's 400 + code 130429): read them, within the deadline.
        A body too large to be such a signal is not one: what was read of it goes first when it is passed on."""
        ctx = self.ctx
        within = max(ctx.deadline.remaining(), 0.001)
        try:
            data, complete = await answer.read_up_to(
                THROTTLE_BODY_LIMIT, within, ctx.upstream, ctx.route.timeouts, ctx.deadline
            )
        except EgressError as error:
            return error
        if complete:
            answer.body = data
        else:
            answer.prefix = data
        return answer

    def decide(self, outcome: Outcome) -> Verdict:
        ctx = self.ctx
        policy = ctx.route.retry
        if isinstance(outcome, EgressError):
            reason = outcome.outcome or outcome.reason
            if not policy.on.matches(reason):
                return Verdict(False, reason)
            if outcome.sent and not ctx.idempotent:
                return Verdict(False, reason, why_not=f"{reason} after the request may have reached the upstream "
                               "and the request is not idempotent")
            retry_after: float | None = None
        else:
            status = outcome.status
            said = throttling(ctx.throttle_rules, status, outcome.response.headers.get("Retry-After"), outcome.body)
            outcome.throttled = said is not None  # for the cache's stale-if-error, should this be the answer
            if said is not None:
                delay = said.delay
                if delay > 0:
                    # An answer about some of the route's limits (a rule's `limits`) holds just their keys; any
                    # other holds the whole upstream here, and the request's keys on every replica.
                    held = ctx.on_throttle is not None and ctx.on_throttle(delay, said.limits)
                    if not (said.limits and held):
                        ctx.throttle.note(delay)
                # Rejected, not processed: replay is safe whatever the method. The one limit on the wait is the
                # request's own deadline (not backoff.max): a WhatsApp send told to wait 5 s is sent once more.
                verdict = self._schedule("throttled", delay, throttled=True)
                return verdict if verdict.retry else dataclasses.replace(verdict, throttle=delay)
            elif policy.on.matches_status(status):
                reason = str(status)
                if not ctx.idempotent:
                    return Verdict(False, reason, why_not=f"{status} and the request is not idempotent")
                header = outcome.response.headers.get("Retry-After") if status in RETRY_AFTER_STATUSES else None
                retry_after = retry_after_seconds(header)
            else:
                return Verdict(False, str(status))
        return self._schedule(reason, retry_after)

    def _next_backoff(self) -> float:
        if self._waits is None:
            backoff_policy = self.ctx.route.retry.backoff
            self._waits = backoff.expo(base=2, factor=backoff_policy.base, max_value=backoff_policy.max)
            next(self._waits)  # backoff's generators are primed with one next()
        return float(next(self._waits))

    def _schedule(self, reason: str, retry_after: float | None, *, throttled: bool = False) -> Verdict:
        ctx = self.ctx
        policy = ctx.route.retry
        if ctx.attempts >= policy.attempts:
            return Verdict(False, reason)
        if not ctx.body.replayable:
            return Verdict(False, reason, why_not="the request body was streamed (over retry.max_body)")
        if not throttled and retry_after is not None and retry_after > policy.backoff.max:
            return Verdict(False, reason, why_not=f"the upstream asked for {retry_after:.1f}s, over backoff.max")
        wait = max(backoff.full_jitter(self._next_backoff()), retry_after or 0.0)
        if wait >= ctx.deadline.remaining():
            return Verdict(False, reason, why_not="no time left before the deadline")
        if not ctx.budget.try_spend():
            ctx.metrics.budget_exhausted.labels(ctx.upstream).inc()
            return Verdict(False, reason, why_not="the retry budget is spent")
        return Verdict(True, reason, wait)
