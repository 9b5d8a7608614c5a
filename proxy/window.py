"""Counts over a sliding window of one-second buckets: O(1) to add, O(window) to sum, no per-event memory."""

from __future__ import annotations

import time


class SlidingCounts:
    """Several named counters sharing one time axis, e.g. ("requests", "retries") over the last 10 s."""

    def __init__(self, names: tuple[str, ...], window: int) -> None:
        self.window = window
        self._index = {name: i for i, name in enumerate(names)}
        self._counts = [[0] * len(names) for _ in range(window)]
        self._stamp = [-1] * window  # the second each bucket holds

    def add(self, name: str, amount: int = 1) -> None:
        now = int(time.monotonic())
        slot = now % self.window
        if self._stamp[slot] != now:
            self._stamp[slot] = now
            self._counts[slot] = [0] * len(self._index)
        self._counts[slot][self._index[name]] += amount

    def total(self, name: str) -> int:
        oldest = int(time.monotonic()) - self.window
        i = self._index[name]
        return sum(counts[i] for counts, stamp in zip(self._counts, self._stamp, strict=True) if stamp > oldest)
