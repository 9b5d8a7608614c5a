"""The retry loop: backoff with full jitter, the idempotency rule, Retry-After and throttling, the retry
budget and the deadline, with the breaker gate in front of every attempt.

The one rule that matters most: a request that is not idempotent (a WhatsApp send) is replayed only
when it provably never reached the upstream, or when the upstream said "throttled" (it was rejected,
not processed). A reset or timeout after the body left is returned to the caller, never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

import aiohttp
import backoff

from proxy.breaker import Breaker, Trial
from proxy.budget import RetryBudgetWindow
from proxy.cache.capture import read_capped
from proxy.deadline import Deadline
from proxy.errors import EgressError, Throttled
from proxy.forward import RequestBody, classify, timed_out
from proxy.metrics import Metrics
from proxy.policy import IDEMPOTENT_METHODS, Route, ThrottleRule, Timeouts
from proxy.throttle import RETRY_AFTER_STATUSES, ThrottleClock, needs_body, retry_after_seconds, throttle_delay

log = logging.getLogger("egress.retry")

IDEMPOTENCY_KEY = "Idempotency-Key"
DISCARD_LIMIT = 64 * 1024  # bodies of responses we retry past are drained (keeping the connection) up to this
DISCARD_WAIT = 1.0  # ... if they arrive within this
THROTTLE_BODY_LIMIT = 64 * 1024  # a throttle signal is a small JSON error; a larger body is read no further


@dataclass(slots=True)
class Answer:
    """An upstream response whose headers arrived. `body` is set once the sidecar has read it."""

    response: aiohttp.ClientResponse
    body: bytes | None = None
    prefix: bytes = b""  # the start of a body read in part (it outgrew a limit): still owed to the caller
    throttled: bool = False  # the upstream said "slow down" (a 429, or a throttle rule matched), as judged once

    @property
    def status(self) -> int:
        return self.response.status

    async def read_up_to(
        self, limit: int, within: float | None, upstream: str, timeouts: Timeouts, deadline: Deadline
    ) -> tuple[bytes, bool]:
        """The body if it fits in `limit` bytes, else what was read of it (`read_capped`), within `within`
        seconds. On failure the response is closed and the failure raised as an EgressError."""
        try:
            async with asyncio.timeout(within):
                return await read_capped(self.response.content, limit)
        except TimeoutError as exc:  # first: the deadline's and aiohttp's read timeouts are OSErrors too
            self.close()
            raise timed_out(exc, upstream, timeouts, deadline) from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.close()
            raise classify(exc, upstream, timeouts) from exc

    async def discard(self, deadline: Deadline) -> None:
        """Done with this response without passing it on: keep the connection if that is cheap (a small body
        that arrives within a second and within the request's deadline), else close it."""
        length = self.response.content_length
        if self.body is None and length is not None and length <= DISCARD_LIMIT:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with asyncio.timeout(min(DISCARD_WAIT, max(deadline.remaining(), 0.0))):
                    await self.response.read()
        self.response.release() if self.body is not None or self.response.closed else self.response.close()

    def close(self) -> None:
        self.response.close()


Outcome = Answer | EgressError


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
    attempts: int = 0


def is_idempotent(method: str, route: Route, idempotency_key: str | None) -> bool:
    return method in IDEMPOTENT_METHODS or route.idempotent or bool(idempotency_key)


def breaker_failure(outcome: Outcome, route: Route) -> str | None:
    """The outcome as the breaker's `count` sees it: a counted failure's name, or None (healthy)."""
    count = route.breaker.count
    if isinstance(outcome, EgressError):
        if outcome.counts_as is not None:
            return str(outcome.counts_as) if count.matches_status(outcome.counts_as) else None
        return outcome.outcome if outcome.outcome and count.matches(outcome.outcome) else None
    return str(outcome.status) if count.matches_status(outcome.status) else None


class RetryLoop:
    def __init__(self, ctx: RetryContext) -> None:
        self.ctx = ctx
        self._waits: Iterator[float] | None = None  # made on the first retry: most requests never need one

    async def run(self, attempt: Callable[[Trial], Awaitable[Outcome]]) -> Outcome:
        """Attempts until one is final; returns the last answer or error (never raises EgressError)."""
        ctx = self.ctx
        ctx.budget.record_request()
        last: Outcome | None = None
        while True:
            try:
                await ctx.throttle.wait(ctx.deadline)
                trial = ctx.breaker.admit()
            except EgressError as refused:
                # A loop stops at once when its breaker opens: the caller gets the last real answer if any,
                # which is why a retried-past response is only discarded once the next attempt is admitted.
                return refused if last is None else last
            if isinstance(last, Answer):
                try:
                    await last.discard(ctx.deadline)
                except BaseException:
                    # Admitted but never attempted (the caller hung up while the old body drained): a
                    # half-open trial slot that is not given back would keep the breaker refusing forever.
                    ctx.breaker.abandon(trial)
                    last.close()
                    raise
            ctx.attempts += 1
            outcome = await attempt(trial)
            if isinstance(outcome, Answer) and needs_body(ctx.throttle_rules, outcome.status):
                outcome = await self._read_small(outcome)
            verdict = self.decide(outcome)
            if not verdict.retry:
                if verdict.why_not:
                    log.info("Not retrying %s %s %s: %s", ctx.upstream, ctx.method, ctx.route.name, verdict.why_not)
                if verdict.throttle is not None and isinstance(outcome, Answer):
                    return await self._throttled(outcome, verdict)
                return outcome
            log.warning(
                "Retrying %s %s %s attempt %d/%d in %dms (reason: %s)",
                ctx.upstream, ctx.method, ctx.route.name, ctx.attempts + 1, ctx.route.retry.attempts,
                round(verdict.wait * 1000), verdict.reason,
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
            delay = throttle_delay(
                ctx.throttle_rules, status, outcome.response.headers.get("Retry-After"), outcome.body
            )
            outcome.throttled = delay is not None  # for the cache's stale-if-error, should this be the answer
            if delay is not None:
                if delay > 0:
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
