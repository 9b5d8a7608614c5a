"""Stage `breaker gate`, and what an attempt's outcome means for a circuit breaker.

The gate is the data path's fast path: while a breaker is open, its requests are answered 503 `circuit_open` before
anything else (no deadline, cache plan, slot or body read, and no exception made: an outage is when refusals come
by the thousand). A cacheable read goes on, since the cache may answer it (a HIT, or STALE in place of this very
refusal); if it must go upstream, the attempt stage's `admit` refuses it there, and the cache sees that refusal.

`settle` is the one rule deciding whether an attempt's outcome counts for, against, or not at all for the breaker.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pybreaker

from proxy.breaker import STATE_VALUES, Breaker, Trial
from proxy.cache.rules import CACHEABLE_METHODS
from proxy.deadline import Deadline
from proxy.errors import EgressError, UpstreamTimeout
from proxy.exchange import Answer, Exchange, Next, Reply
from proxy.metrics import Metrics
from proxy.policy import Route, Upstream

log = logging.getLogger("egress.breaker")


class BreakerStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None and ex.upstream is not None
        route = ex.target.route
        if route.cache is None or ex.method not in CACHEABLE_METHODS:
            refusal = ex.upstream.breakers.of(route).refusal()
            if refusal is not None:
                return refusal
        return await next(ex)


def breaker_failure(outcome: Answer | EgressError, route: Route) -> str | None:
    """The outcome as the breaker's `count` sees it: a counted failure's name, or None (healthy)."""
    count = route.breaker.count
    if isinstance(outcome, EgressError):
        if outcome.counts_as is not None:
            return str(outcome.counts_as) if count.matches_status(outcome.counts_as) else None
        return outcome.outcome if outcome.outcome and count.matches(outcome.outcome) else None
    return str(outcome.status) if count.matches_status(outcome.status) else None


def settle(trial: Trial, outcome: Answer | EgressError, route: Route, deadline: Deadline) -> str | None:
    """Record an attempt's outcome on its breaker and return the failure it counted (None: healthy, or no verdict).
    The trial is abandoned when the outcome says nothing about the upstream: the caller's own doing (its body too
    large or cut short), or a deadline that was gone before anything was sent or that the caller chose to shorten
    (one impatient caller must not open the breaker for all)."""
    breaker = trial.breaker
    if isinstance(outcome, EgressError) and (outcome.callers_doing or _not_the_upstreams(outcome, deadline)):
        breaker.abandon(trial)
        return None
    failure = breaker_failure(outcome, route)
    breaker.record(trial, failure)
    return failure


def _not_the_upstreams(error: EgressError, deadline: Deadline) -> bool:
    return isinstance(error, UpstreamTimeout) and error.kind == "total" and (not error.sent or deadline.shortened)


class BreakerTelemetry(pybreaker.CircuitBreakerListener):
    """Breaker transitions -> a log line an operator can grep, and the breaker metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        name = str(cb.name)
        state = str(new.name)
        self.metrics.breaker_state.labels(name).set(STATE_VALUES[state])
        self.metrics.breaker_transitions.labels(name, state).inc()
        if state == pybreaker.STATE_OPEN:
            log.warning(
                "Circuit breaker OPEN for %s after %d failures (retry in %.0fs)",
                name, cb.fail_counter, cb.reset_timeout,
            )
        else:
            log.warning("Circuit breaker %s for %s", state.upper(), name)


class Breakers:
    """One upstream's breakers by name: its own, and one per route that has its own `breaker` section.

    Lifetime: each breaker is carried over a reload by name (its state and counts; new thresholds apply from the
    reload on); a breaker the policy dropped is gone, and `retire` stops exporting its state."""

    def __init__(self, by_name: dict[str, Breaker]) -> None:
        self.by_name = by_name

    @classmethod
    def carry(
        cls, previous: Breakers | None, upstream: Upstream, telemetry: BreakerTelemetry
    ) -> Breakers:
        kept = previous.by_name if previous is not None else {}
        by_name: dict[str, Breaker] = {}
        for route in (upstream.default_route, *upstream.routes):
            name = route.breaker_name
            if name in by_name:
                continue
            breaker = kept.get(name)
            if breaker is not None:
                breaker.reconfigure(route.breaker)
            else:
                breaker = Breaker(name, upstream.name, route.breaker, telemetry)
                telemetry.metrics.breaker_state.labels(name).set(0)
            by_name[name] = breaker
        return cls(by_name)

    def of(self, route: Route) -> Breaker:
        return self.by_name[route.breaker_name]

    def retire(self, successor: Breakers | None, metrics: Metrics) -> None:
        """The breakers `successor` dropped: their last state must not be exported (and alerted on) forever."""
        for name in self.by_name.keys() - (successor.by_name.keys() if successor is not None else set()):
            with contextlib.suppress(KeyError):
                metrics.breaker_state.remove(name)
