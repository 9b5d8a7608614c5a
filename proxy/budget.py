"""Retry budget per upstream: retries may add at most `ratio` of recent requests (floor: `min_per_second`).

This is what turns a failing upstream into a bounded amount of extra traffic instead of a retry storm.
"""

from __future__ import annotations

from proxy.policy.model import RetryBudget
from proxy.window import SlidingCounts


class RetryBudgetWindow:
    def __init__(self, budget: RetryBudget, window: int = 10) -> None:
        self.budget = budget
        self.window = window
        self._counts = SlidingCounts(("requests", "retries"), window)

    def record_request(self) -> None:
        self._counts.add("requests")

    def allowance(self) -> float:
        by_ratio = self.budget.ratio * self._counts.total("requests")
        return max(by_ratio, self.budget.min_per_second * self.window)

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one left."""
        if self._counts.total("retries") + 1 > self.allowance():
            return False
        self._counts.add("retries")
        return True
