"""Retry budget per upstream: retries may add at most `ratio` of recent requests (floor: `min_per_second`).

This is what turns a failing upstream into a bounded amount of extra traffic instead of a retry storm.
Counts live in one-second buckets over a sliding window.
"""

from __future__ import annotations

import time

from proxy.policy.model import RetryBudget


class RetryBudgetWindow:
    def __init__(self, budget: RetryBudget, window: int = 10) -> None:
        self.budget = budget
        self.window = window
        self._requests = [0] * window
        self._retries = [0] * window
        self._stamp = [0] * window  # the second each bucket holds

    def _bucket(self) -> int:
        now = int(time.monotonic())
        index = now % self.window
        if self._stamp[index] != now:
            self._stamp[index] = now
            self._requests[index] = 0
            self._retries[index] = 0
        return index

    def _sum(self, counts: list[int]) -> int:
        oldest = int(time.monotonic()) - self.window
        return sum(c for c, stamp in zip(counts, self._stamp, strict=True) if stamp > oldest)

    def record_request(self) -> None:
        self._requests[self._bucket()] += 1

    def allowance(self) -> float:
        by_ratio = self.budget.ratio * self._sum(self._requests)
        return max(by_ratio, self.budget.min_per_second * self.window)

    def try_spend(self) -> bool:
        """Take one retry from the budget if there is one left."""
        index = self._bucket()
        if self._sum(self._retries) + 1 > self.allowance():
            return False
        self._retries[index] += 1
        return True
