"""Circuit breakers: the `breaker gate` stage, the state machine, and what an attempt's outcome means for it.

The gate is the data path's fast path: while a breaker is open, its requests are answered 503 `circuit_open` before
anything else (no deadline, cache plan, slot or body read, and no exception made: an outage is when refusals come
by the thousand). A cacheable read goes on, since the cache may answer it (a HIT, or STALE in place of this very
refusal); if it must go upstream, the attempt stage's `admit` refuses it there, and the cache sees that refusal.

`Breaker` is pybreaker's state machine, driven from asyncio: `admit()` before an attempt (fail fast while open, let
exactly one trial through when half-open) and `record()` with its verdict after it; pybreaker does the counting,
the transitions and the listener calls. pybreaker only takes a verdict through a guarded call, so
`proxy.adapters.settle` hands it one (its docstring says why nothing public fits better); the rest is pybreaker's
public API. Nothing here blocks: pybreaker's lock is a threading.RLock never contended on the event loop thread.

`settle` is the one rule deciding whether an attempt's outcome counts for, against, or not at all for the breaker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pybreaker

from proxy import adapters
from proxy.cache.rules import may_answer
from proxy.deadline import Deadline
from proxy.errors import CircuitOpen, EgressError, UpstreamTimeout
from proxy.exchange import Answer, Exchange, Next, Reply
from proxy.metrics import Metrics
from proxy.policy import BreakerPolicy, Route, Upstream

log = logging.getLogger("egress.breaker")

PHASE_VALUES = {pybreaker.STATE_CLOSED: 0.0, pybreaker.STATE_HALF_OPEN: 1.0, "due": 1.0, pybreaker.STATE_OPEN: 2.0,
                "forced_open": 2.0}


class BreakerStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None and ex.upstream is not None
        route = ex.target.route
        if not may_answer(route, ex.method):
            breaker = ex.upstream.breakers.of(route)
            refusal = breaker.refusal()
            if refusal is not None and breaker.enforces:  # observed refusals are counted once, at `admit`
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


@dataclass(slots=True)
class Trial:
    """Permission for one attempt; `is_trial` marks the single half-open probe."""

    breaker: Breaker
    is_trial: bool = False
    settled: bool = False
    request_id: str = ""  # for the log line of a transition this attempt's outcome causes


class Breaker:
    def __init__(
        self, name: str, upstream: str, policy: BreakerPolicy, listener: BreakerTelemetry
    ) -> None:
        self.name = name
        self.upstream = upstream
        self.telemetry = listener
        self.policy = policy
        self._cb = pybreaker.CircuitBreaker(
            fail_max=policy.failures,
            reset_timeout=policy.reset_after,
            name=name,
            listeners=[_Transitions(self), listener],
            throw_new_error_on_trip=False,
        )
        self.opened_at: float | None = None  # wall clock, for operators
        self._opened_mono = 0.0
        # The half-open probe in flight, if any. Held by identity: a probe admitted before an operator's
        # override must not settle the half-open period that comes after it.
        self._trial: Trial | None = None
        self.forced_open = False  # an operator's "open" holds until an operator closes it
        self.outcomes: Counter[str] = Counter()
        self._answer: CircuitOpen | None = None  # while open: the refusal, made once per open period
        self._cause = ""  # while an outcome is settled: its request id (a transition's log line names it)
        self._observed_period: float | None = None  # observe mode: the open period (opened_at) already logged

    # -- state -------------------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return str(self._cb.current_state)

    @property
    def failures(self) -> int:
        return int(self._cb.fail_counter)

    def retry_in(self) -> float:
        """Seconds until the open breaker lets a trial through."""
        if self.state != pybreaker.STATE_OPEN:
            return 0.0
        return max(0.0, self._opened_mono + self.policy.reset_after - time.monotonic())

    def retry_at(self) -> float | None:
        """Wall-clock time of the next trial; None when closed, half-open or held open by an operator."""
        if self.opened_at is None or self.state != pybreaker.STATE_OPEN or self.forced_open:
            return None
        return self.opened_at + self.policy.reset_after

    def phase(self) -> str:
        """The state as it is now, not as of the last transition: an open breaker whose trial is due is `due` (the
        next request is the trial), one an operator opened is `forced_open`. pybreaker moves to half-open only
        when a request arrives, so its state alone says `open` for as long as no traffic comes."""
        if self.state != pybreaker.STATE_OPEN:
            return self.state
        if self.forced_open:
            return "forced_open"
        return "due" if self.retry_in() == 0 else pybreaker.STATE_OPEN

    def exported_state(self) -> float:
        """egress_breaker_state, computed at each scrape: 2 refusing, 1 letting a trial through (half-open, or due
        for its trial), 0 closed. A breaker past its retry time no longer reads as open, so its alert resolves."""
        return PHASE_VALUES[self.phase()]

    def refusal(self) -> CircuitOpen | None:
        """The answer while open and not yet due for a trial, else None; no side effects. The pipeline asks
        this first, so a refused request costs no cache lookup, deadline, bulkhead slot or body read. The answer
        is made once per open period (an exception is dear to make) and must only be rendered, never raised:
        a raised exception keeps its traceback, and this one is shared."""
        answer = self._answer
        if answer is not None and (answer.retry_at is None or time.monotonic() < answer.retry_at):
            return answer
        return None

    @property
    def enforces(self) -> bool:
        """Whether its refusals are enforced: always, but in `mode: observe` (then only an operator's open is)."""
        return self.policy.enforcing or self.forced_open

    def check_open(self) -> None:
        """Raise a `CircuitOpen` of its own where `refusal()` would answer (observed instead in observe mode)."""
        if self.refusal() is not None:
            if not self.enforces:
                self._observe("circuit_open")
                return
            raise self._open_answer()

    def _caused_by(self) -> str:
        return f" request_id={self._cause}" if self._cause else ""

    def _observe(self, decision: str) -> None:
        """A refusal not enforced (`mode: observe`): counted every time, logged once per open period."""
        self.telemetry.metrics.observed.labels(self.upstream, decision).inc()
        if self._observed_period != self.opened_at:
            self._observed_period = self.opened_at
            log.warning("Circuit breaker %s would refuse calls (%s); observe mode: sending them", self.name, decision)

    def _open_answer(self) -> CircuitOpen:
        reset_after = self.policy.reset_after
        if self.forced_open:  # no trial is due: the advice is the policy's wait
            detail = f"breaker {self.name} was opened by an operator"
            return CircuitOpen(detail, upstream=self.upstream, retry_after=reset_after)
        detail = f"breaker {self.name} is open"
        return CircuitOpen(detail, upstream=self.upstream, retry_at=self._opened_mono + reset_after)

    # -- the two calls the retry loop makes ----------------------------------------------------------

    def admits(self) -> bool:
        """Whether `admit()` would grant an attempt now; no side effects."""
        if not self.enforces:
            return True
        if self.refusal() is not None:
            return False
        return not (self.state == pybreaker.STATE_HALF_OPEN and self._trial is not None)

    def admit(self, hedge: bool = False, request_id: str = "") -> Trial:
        """Before an attempt: raise `CircuitOpen` (no upstream contact) or grant the attempt. A `hedge` is only
        granted while closed: the single half-open trial is a real request's, never a speculative copy's."""
        self.check_open()
        state = self.state
        if hedge and state != pybreaker.STATE_CLOSED:
            raise CircuitOpen(f"breaker {self.name} is {state}: no hedge", upstream=self.upstream, retry_after=1.0)
        if state == pybreaker.STATE_OPEN and self.refusal() is not None:
            # observe mode: the refusal observed, the attempt sent (its outcome is not counted)
            return Trial(self, request_id=request_id)
        if state == pybreaker.STATE_OPEN:  # open, and reset_after has passed: this request is the trial
            self._cb.half_open()
            state = pybreaker.STATE_HALF_OPEN
        if state == pybreaker.STATE_HALF_OPEN:
            if self._trial is not None and not self.enforces:
                self._observe("trial_in_flight")
                return Trial(self, request_id=request_id)
            if self._trial is not None:
                raise CircuitOpen(
                    f"breaker {self.name} is half-open and its trial request is in flight",
                    upstream=self.upstream,
                    retry_after=1.0,
                )
            self._trial = Trial(self, is_trial=True, request_id=request_id)
            return self._trial
        return Trial(self, request_id=request_id)

    def record(self, trial: Trial, failure: str | None) -> None:
        """After an attempt: `failure` is the counted outcome, or None when the upstream answered fine."""
        if trial.settled:
            return
        trial.settled = True
        current = self._release(trial)
        self.outcomes[failure or "success"] += 1
        if trial.is_trial and not current:
            return  # a probe from an earlier half-open period (an operator has stepped in since)
        if not trial.is_trial and self.state != pybreaker.STATE_CLOSED:
            return  # a late answer from before the breaker opened says nothing about now
        if failure is None and not trial.is_trial and self._cb.fail_counter == 0:
            return  # the common case: healthy and staying so; nothing for the state machine to do
        self._cause = trial.request_id  # read by the transition's log line, if this outcome causes one
        try:
            adapters.settle(self._cb, failure)
        finally:
            self._cause = ""

    def abandon(self, trial: Trial) -> None:
        """The attempt ended without a verdict (caller went away): free the trial slot, count nothing."""
        if not trial.settled:
            trial.settled = True
            self._release(trial)

    def _release(self, trial: Trial) -> bool:
        """Free the probe slot if `trial` holds it; whether it did."""
        if self._trial is trial:
            self._trial = None
            return True
        return False

    def reconfigure(self, policy: BreakerPolicy) -> None:
        """A reloaded policy: new thresholds apply from now on; the state and its counts carry over."""
        self.policy = policy
        self._cb.fail_max = policy.failures
        self._cb.reset_timeout = policy.reset_after
        if self._answer is not None:
            self._answer = self._open_answer()

    # -- operator overrides ---------------------------------------------------------------------------

    def force_open(self) -> None:
        self.forced_open = True
        self._trial = None
        self._cb.open()

    def force_close(self) -> None:
        self.forced_open = False
        self._trial = None
        self._cb.close()

    def reset(self) -> None:
        self.force_close()
        self.outcomes.clear()

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "consecutive_failures": self.failures,
            "threshold": self.policy.failures,
            "reset_after_seconds": self.policy.reset_after,
            "opened_at": self.opened_at,
            "phase": self.phase(),
            "retry_at": self.retry_at(),
            "retry_in_seconds": None if self.forced_open else round(self.retry_in(), 3),
            "forced_open": self.forced_open,
            "counts": dict(self.outcomes),
        }

    def _on_transition(self, new: str) -> None:
        if new == pybreaker.STATE_OPEN:
            self.opened_at = time.time()
            self._opened_mono = time.monotonic()
            self._answer = self._open_answer()
            if self.forced_open:
                log.warning("Circuit breaker OPEN for %s by an operator (holds until closed)", self.name)
            else:
                log.warning("Circuit breaker OPEN for %s after %d failures (retry in %.0fs)%s",
                            self.name, self.failures, self.policy.reset_after, self._caused_by())
            return
        self._answer = None
        log.warning("Circuit breaker %s for %s%s", new.upper(), self.name, self._caused_by())
        if new == pybreaker.STATE_CLOSED:
            self.opened_at = None


class _Transitions(pybreaker.CircuitBreakerListener):
    """Keeps the breaker's own clock in step with pybreaker's transitions."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self._breaker._on_transition(new.name)


class BreakerTelemetry(pybreaker.CircuitBreakerListener):
    """Breaker transitions -> egress_breaker_transitions_total (the breaker logs them itself: it knows whether an
    operator forced the change; the state gauge reads each breaker at scrape, `Breaker.exported_state`)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self.metrics.breaker_transitions.labels(str(cb.name), str(new.name)).inc()


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
            telemetry.metrics.breaker_state.labels(name).set_function(breaker.exported_state)
            by_name[name] = breaker
        return cls(by_name)

    def of(self, route: Route) -> Breaker:
        return self.by_name[route.breaker_name]

    def retire(self, successor: Breakers | None, metrics: Metrics) -> None:
        """The breakers `successor` dropped: their last state must not be exported (and alerted on) forever."""
        for name in self.by_name.keys() - (successor.by_name.keys() if successor is not None else set()):
            with contextlib.suppress(KeyError):
                metrics.breaker_state.remove(name)
