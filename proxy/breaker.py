"""Circuit breakers: pybreaker's state machine, driven from asyncio.

The retry loop asks `admit()` before an attempt (fail fast while open, let exactly one trial through when
half-open) and tells `record()` its verdict after it; pybreaker does the counting, the transitions and the listener
calls. pybreaker only takes a verdict through a guarded call, so `proxy.adapters.settle` hands it one (its docstring
says why nothing public fits better); the rest is pybreaker's public API. Nothing here blocks: pybreaker's lock is a
threading.RLock that is never contended on the event loop thread.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pybreaker

from proxy.adapters import settle
from proxy.errors import CircuitOpen
from proxy.policy import BreakerPolicy

log = logging.getLogger("egress.breaker")

STATE_VALUES = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}


@dataclass(slots=True)
class Trial:
    """Permission for one attempt; `is_trial` marks the single half-open probe."""

    breaker: Breaker
    is_trial: bool = False
    settled: bool = False


class Breaker:
    def __init__(
        self, name: str, upstream: str, policy: BreakerPolicy, listener: pybreaker.CircuitBreakerListener
    ) -> None:
        self.name = name
        self.upstream = upstream
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
        return None if self.opened_at is None or self.state != "open" else self.opened_at + self.policy.reset_after

    def refusal(self) -> CircuitOpen | None:
        """The answer while open and not yet due for a trial, else None; no side effects. The pipeline asks
        this first, so a refused request costs no cache lookup, deadline, bulkhead slot or body read. The answer
        is made once per open period (an exception is dear to make) and must only be rendered, never raised:
        a raised exception keeps its traceback, and this one is shared."""
        answer = self._answer
        if answer is not None and (answer.retry_at is None or time.monotonic() < answer.retry_at):
            return answer
        return None

    def check_open(self) -> None:
        """Raise a `CircuitOpen` of its own where `refusal()` would answer."""
        if self.refusal() is not None:
            raise self._open_answer()

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
        if self.refusal() is not None:
            return False
        return not (self.state == pybreaker.STATE_HALF_OPEN and self._trial is not None)

    def admit(self, hedge: bool = False) -> Trial:
        """Before an attempt: raise `CircuitOpen` (no upstream contact) or grant the attempt. A `hedge` is only
        granted while closed: the single half-open trial is a real request's, never a speculative copy's."""
        self.check_open()
        state = self.state
        if hedge and state != pybreaker.STATE_CLOSED:
            raise CircuitOpen(f"breaker {self.name} is {state}: no hedge", upstream=self.upstream, retry_after=1.0)
        if state == pybreaker.STATE_OPEN:  # open, and reset_after has passed: this request is the trial
            self._cb.half_open()
            state = pybreaker.STATE_HALF_OPEN
        if state == pybreaker.STATE_HALF_OPEN:
            if self._trial is not None:
                raise CircuitOpen(
                    f"breaker {self.name} is half-open and its trial request is in flight",
                    upstream=self.upstream,
                    retry_after=1.0,
                )
            self._trial = Trial(self, is_trial=True)
            return self._trial
        return Trial(self)

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
        settle(self._cb, failure)

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
            "retry_at": self.retry_at(),
            "retry_in_seconds": round(self.retry_in(), 3),
            "forced_open": self.forced_open,
            "counts": dict(self.outcomes),
        }

    def _on_transition(self, new: str) -> None:
        if new == pybreaker.STATE_OPEN:
            self.opened_at = time.time()
            self._opened_mono = time.monotonic()
            self._answer = self._open_answer()
            return
        self._answer = None
        if new == pybreaker.STATE_CLOSED:
            self.opened_at = None


class _Transitions(pybreaker.CircuitBreakerListener):
    """Keeps the breaker's own clock in step with pybreaker's transitions."""

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        self._breaker._on_transition(new.name)
