"""The in-process cache's storage, with the bounds aiocache's memory cache lacks: least recently used values go
first once there are more than `max_entries` of them or they hold more than `max_bytes`.

Plain Python: aiocache reaches it through `proxy.adapters.MemoryBackend` (which says why that is an adapter),
and the store reads it directly on the HIT path (`peek`), where aiocache's per-call layers would cost more than
the read itself.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator


class BoundedLru:
    """Byte values in least-recently-used order, bounded by their number and total size, each with an optional
    lifetime; and counters, kept apart.

    Keys starting with `uncounted` (bookkeeping that rides along with a value: Vary markers) are kept, and evicted
    in their turn, without taking a value's place. Counters (the generations `increment` keeps) are never evicted
    nor expired: losing one would make the entries it invalidated reachable again."""

    def __init__(self, max_entries: int, max_bytes: int, uncounted: str = "\0") -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.entries = 0  # the values that count, and their total size
        self.bytes = 0
        self._uncounted = uncounted
        self._values: collections.OrderedDict[str, bytes] = collections.OrderedDict()  # oldest first
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._counters: dict[str, int] = {}

    def peek(self, key: str) -> bytes | int | None:
        """A read that needs no await; a value read moves to the young end."""
        counter = self._counters.get(key)
        if counter is not None:
            return counter
        value = self._values.get(key)
        if value is not None:
            self._values.move_to_end(key)
        return value

    def put(self, key: str, value: bytes, ttl: float | None = None) -> bool:
        """Store `value` (for `ttl` seconds if given), evicting the oldest values past the bounds; whether it was
        stored. A rewrite is a use: the key moves to the young end and its old lifetime ends."""
        if len(value) > self.max_bytes:  # would evict every other value, then itself
            self.drop(key)  # nor may an older value stay under its key
            return False
        self.drop(key)
        self._values[key] = value
        self._count(key, value, 1)
        if ttl:
            self._expiry[key] = asyncio.get_running_loop().call_later(ttl, self.drop, key)
        values = self._values
        while values and (self.entries > self.max_entries or self.bytes > self.max_bytes):
            self.drop(next(iter(values)))
        return True

    def drop(self, key: str) -> bool:
        """Remove the value under `key` (eviction, expiry, or a rewrite); whether there was one."""
        value = self._values.pop(key, None)
        if value is None:
            return False
        self._count(key, value, -1)
        timer = self._expiry.pop(key, None)
        if timer is not None:
            timer.cancel()
        return True

    def increment(self, key: str, delta: int = 1) -> int:
        value = self._counters[key] = self._counters.get(key, 0) + delta
        return value

    def keys(self) -> Iterator[str]:
        """Every key held, values' (oldest first) then counters'."""
        yield from self._values
        yield from self._counters

    def _count(self, key: str, value: bytes, sign: int) -> None:
        if not key.startswith(self._uncounted):
            self.entries += sign
            self.bytes += sign * len(value)
