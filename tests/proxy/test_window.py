"""The sliding one-second-bucket counters behind the retry budget and /upstreams' error rate."""

from __future__ import annotations

import time

import pytest

from proxy.policy.model import RetryBudget
from proxy.stages.retry import RetryBudgetWindow
from proxy.window import SlidingCounts


def test_counts_add_up_within_the_window() -> None:
    counts = SlidingCounts(("a", "b"), window=10)
    for _ in range(5):
        counts.add("a")
    counts.add("b", 3)
    assert (counts.total("a"), counts.total("b")) == (5, 3)


def test_counts_older_than_the_window_are_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    counts = SlidingCounts(("a",), window=3)
    counts.add("a", 7)
    now[0] += 2
    counts.add("a")
    assert counts.total("a") == 8
    now[0] += 2  # the first second is now out of the window
    assert counts.total("a") == 1
    now[0] += 10
    assert counts.total("a") == 0


def test_many_events_cost_no_memory() -> None:
    counts = SlidingCounts(("a",), window=60)
    for _ in range(100_000):
        counts.add("a")
    assert counts.total("a") == 100_000
    assert len(counts._counts) == 60


def test_the_budget_allows_ratio_of_requests_or_the_floor() -> None:
    budget = RetryBudgetWindow(RetryBudget(ratio=0.2, min_per_second=0), window=10)
    for _ in range(50):
        budget.record_request()
    spent = sum(budget.try_spend() for _ in range(100))
    assert spent == 10
    floor = RetryBudgetWindow(RetryBudget(ratio=0.0, min_per_second=1), window=10)
    assert sum(floor.try_spend() for _ in range(100)) == 10
