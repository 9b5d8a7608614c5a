"""The breaker's transitions, driven with real pybreaker: no sidecar, no sockets, no mocks. Each test reads as the
retry loop uses a breaker: `admit()` before an attempt, `record()` (or `abandon()`) after it."""

from __future__ import annotations

import time
from typing import Any

import pybreaker
import pytest

from proxy.errors import CircuitOpen
from proxy.metrics import Metrics
from proxy.policy import BreakerPolicy
from proxy.stages.breaker import Breaker, BreakerTelemetry, Trial

RESET_AFTER = 0.2
PAST_RESET = RESET_AFTER + 0.05


class Transitions(BreakerTelemetry):
    """What pybreaker tells its listeners, in order."""

    def __init__(self) -> None:
        super().__init__(Metrics())
        self.seen: list[str] = []

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        super().state_change(cb, old, new)
        self.seen.append(new.name)


def make(failures: int = 3, reset_after: float = RESET_AFTER, listener: Any = None) -> Breaker:
    policy = BreakerPolicy(failures=failures, reset_after=reset_after)
    return Breaker("gemini", "gemini", policy, listener or BreakerTelemetry(Metrics()))


def fail(breaker: Breaker, times: int = 1, outcome: str = "timeout") -> None:
    for _ in range(times):
        breaker.record(breaker.admit(), outcome)


def opened(failures: int = 1, reset_after: float = RESET_AFTER) -> Breaker:
    breaker = make(failures=failures, reset_after=reset_after)
    fail(breaker, failures)
    assert breaker.state == "open"
    return breaker


def due_trial(breaker: Breaker) -> Trial:
    """Wait out reset_after and take the half-open trial."""
    time.sleep(PAST_RESET)
    trial = breaker.admit()
    assert trial.is_trial and breaker.state == "half-open"
    return trial


def test_opens_after_the_policys_number_of_consecutive_counted_failures() -> None:
    breaker = make(failures=3)
    fail(breaker, 2)
    assert (breaker.state, breaker.failures, breaker.opened_at) == ("closed", 2, None)
    fail(breaker)
    assert (breaker.state, breaker.failures) == ("open", 3)
    assert breaker.opened_at is not None and breaker.retry_at() == pytest.approx(breaker.opened_at + RESET_AFTER)
    assert breaker.outcomes == {"timeout": 3}


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = make(failures=3)
    fail(breaker, 2)
    breaker.record(breaker.admit(), None)
    assert (breaker.state, breaker.failures) == ("closed", 0)
    fail(breaker, 2)
    assert breaker.state == "closed"


def test_healthy_attempts_are_no_trials_and_leave_the_state_machine_alone() -> None:
    listener = Transitions()
    breaker = make(listener=listener)
    for _ in range(100):
        trial = breaker.admit()
        assert not trial.is_trial
        breaker.record(trial, None)
    assert (breaker.state, breaker.failures, listener.seen) == ("closed", 0, [])
    assert breaker.outcomes == {"success": 100}


def test_an_open_breaker_refuses_with_retry_after_until_reset_after_has_passed() -> None:
    breaker = opened(reset_after=RESET_AFTER)
    refusal = breaker.refusal()
    assert refusal is not None and refusal.advice() == "1"  # whole seconds, rounded up
    assert breaker.refusal() is refusal  # made once per open period
    assert 0 < breaker.retry_in() <= RESET_AFTER
    with pytest.raises(CircuitOpen) as raised:
        breaker.admit()
    assert raised.value is not refusal  # a raised answer is its own (it keeps a traceback)
    assert raised.value.upstream == "gemini" and "is open" in raised.value.detail
    time.sleep(PAST_RESET)
    assert breaker.refusal() is None and breaker.retry_in() == 0.0
    assert breaker.admit().is_trial


def test_half_open_lets_exactly_one_trial_through() -> None:
    breaker = opened()
    due_trial(breaker)
    for _ in range(3):
        with pytest.raises(CircuitOpen) as raised:
            breaker.admit()
        assert "trial request is in flight" in raised.value.detail and raised.value.advice() == "1"
    assert breaker.state == "half-open"


def test_a_successful_trial_closes() -> None:
    listener = Transitions()
    breaker = make(failures=1, listener=listener)
    fail(breaker)
    breaker.record(due_trial(breaker), None)
    assert (breaker.state, breaker.failures, breaker.opened_at, breaker.refusal()) == ("closed", 0, None, None)
    assert listener.seen == ["open", "half-open", "closed"]
    assert not breaker.admit().is_trial


def test_a_failed_trial_reopens_for_another_reset_after() -> None:
    breaker = opened()
    first = breaker.refusal()
    assert first is not None and first.retry_at is not None
    breaker.record(due_trial(breaker), "connect_error")
    assert breaker.state == "open"
    again = breaker.refusal()
    assert again is not None and again is not first and again.retry_at is not None
    assert again.retry_at > first.retry_at + RESET_AFTER  # counted from the trial's failure, not the first opening
    with pytest.raises(CircuitOpen):
        breaker.admit()


def test_an_abandoned_trial_frees_the_slot_and_counts_nothing() -> None:
    breaker = opened()
    trial = due_trial(breaker)
    breaker.abandon(trial)
    assert breaker.state == "half-open" and breaker.outcomes == {"timeout": 1}
    second = breaker.admit()
    assert second.is_trial and second is not trial
    breaker.record(trial, "timeout")  # settled already: abandon was its verdict
    assert breaker.state == "half-open"
    breaker.record(second, None)
    assert breaker.state == "closed"


def test_a_verdict_counts_once() -> None:
    breaker = make(failures=2)
    trial = breaker.admit()
    breaker.record(trial, "timeout")
    breaker.record(trial, "timeout")
    assert (breaker.state, breaker.failures) == ("closed", 1)


def test_a_late_answer_from_before_the_breaker_opened_says_nothing_about_now() -> None:
    breaker = make(failures=1)
    late_success, late_failure = breaker.admit(), breaker.admit()
    fail(breaker)
    breaker.record(late_success, None)
    breaker.record(late_failure, "timeout")
    assert breaker.state == "open"
    trial = due_trial(breaker)
    breaker.record(trial, None)
    assert breaker.state == "closed"


def test_a_probe_from_before_an_operator_override_does_not_settle_the_next_half_open_period() -> None:
    breaker = opened()
    stale = due_trial(breaker)
    breaker.force_close()
    fail(breaker)
    current = due_trial(breaker)
    breaker.record(stale, None)  # a success from the earlier period: must not close this one
    assert breaker.state == "half-open"
    with pytest.raises(CircuitOpen):
        breaker.admit()  # the current probe still holds the slot
    breaker.record(current, None)
    assert breaker.state == "closed"


def test_a_stale_probes_failure_does_not_reopen_the_next_half_open_period() -> None:
    breaker = opened()
    stale = due_trial(breaker)
    breaker.force_open()
    breaker.force_close()
    fail(breaker)
    current = due_trial(breaker)
    breaker.record(stale, "timeout")
    assert breaker.state == "half-open"
    breaker.record(current, None)
    assert breaker.state == "closed"


def test_reconfigure_keeps_the_state_and_applies_the_new_failure_threshold() -> None:
    breaker = make(failures=5)
    fail(breaker, 2)
    breaker.reconfigure(BreakerPolicy(failures=3, reset_after=RESET_AFTER))
    assert (breaker.state, breaker.failures, breaker.policy.failures) == ("closed", 2, 3)
    fail(breaker)
    assert breaker.state == "open"


def test_reconfigure_of_an_open_breaker_keeps_it_open_with_the_new_wait() -> None:
    breaker = opened(reset_after=RESET_AFTER)
    opened_at = breaker.opened_at
    breaker.reconfigure(BreakerPolicy(failures=1, reset_after=30.0))
    assert (breaker.state, breaker.opened_at) == ("open", opened_at)
    time.sleep(PAST_RESET)  # past the old wait, well inside the new one
    refusal = breaker.refusal()
    assert refusal is not None and refusal.advice() == "30"
    with pytest.raises(CircuitOpen):
        breaker.admit()


def test_an_operators_open_holds_past_reset_after_until_an_operator_closes_it() -> None:
    breaker = make()
    breaker.force_open()
    assert (breaker.state, breaker.forced_open) == ("open", True)
    time.sleep(PAST_RESET)
    refusal = breaker.refusal()
    assert refusal is not None and refusal.advice() == "1"  # the policy's wait: no trial is due
    with pytest.raises(CircuitOpen) as raised:
        breaker.admit()
    assert "opened by an operator" in raised.value.detail
    breaker.force_close()
    assert (breaker.state, breaker.forced_open, breaker.refusal()) == ("closed", False, None)
    assert not breaker.admit().is_trial


def test_an_operators_open_drops_the_trial_in_flight() -> None:
    breaker = opened()
    trial = due_trial(breaker)
    breaker.force_open()
    breaker.record(trial, None)  # from before the override: closes nothing
    assert breaker.state == "open"


def test_reset_closes_and_forgets_the_counts() -> None:
    breaker = opened()
    breaker.reset()
    assert (breaker.state, breaker.failures, breaker.outcomes) == ("closed", 0, {})
    snapshot = breaker.snapshot()
    assert (snapshot["state"], snapshot["counts"], snapshot["retry_at"]) == ("closed", {}, None)
