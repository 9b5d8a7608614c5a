"""aiocache's in-process cache with the bounds it lacks: least recently used values go first once there are
more than `max_entries` of them or they hold more than `max_bytes`.

aiocache keeps its values in a plain dict and pops expired keys from TTL timers; swapping that dict for an
`LruLedger` keeps the LRU order and the byte total right however a value leaves (eviction, expiry, delete).
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, MutableMapping
from typing import Any

from aiocache import SimpleMemoryCache


class LruLedger(MutableMapping[str, bytes]):
    """Byte values in least-recently-used order (oldest first), with the number and total size of those that
    count: keys starting with `uncounted` (bookkeeping that rides along with a value) are kept, and evicted in
    their turn, without taking a value's place."""

    def __init__(self, uncounted: str = "\0") -> None:
        self._values: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._uncounted = uncounted
        self.entries = 0
        self.bytes = 0

    def __getitem__(self, key: str) -> bytes:
        return self._values[key]

    def find(self, key: str) -> bytes | None:
        return self._values.get(key)  # Mapping's own `get` goes through a KeyError on every miss

    def __setitem__(self, key: str, value: bytes) -> None:
        old = self._values.pop(key, None)  # a rewrite is a use: the key moves to the young end
        if old is not None:
            self._count(key, old, -1)
        self._values[key] = value
        self._count(key, value, 1)

    def __delitem__(self, key: str) -> None:
        self._count(key, self._values.pop(key), -1)

    def _count(self, key: str, value: bytes, sign: int) -> None:
        if not key.startswith(self._uncounted):
            self.entries += sign
            self.bytes += sign * len(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def touch(self, key: str) -> None:
        self._values.move_to_end(key)

    def oldest(self) -> str:
        return next(iter(self._values))


class BoundedMemoryCache(SimpleMemoryCache):  # type: ignore[misc]  # aiocache ships no type hints
    """Counters (the generations `increment` keeps) live apart and are never evicted nor expired:
    losing one would make the entries it invalidated reachable again."""

    def __init__(self, max_entries: int, max_bytes: int, uncounted: str = "\0", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._cache = self.ledger = LruLedger(uncounted)
        self._counters: dict[str, int] = {}

    def peek(self, key: str) -> bytes | int | None:
        """A read that needs no await: the store calls it directly on the hot path of a cache HIT."""
        if key in self._counters:
            return self._counters[key]
        value = self.ledger.find(key)
        if value is not None:
            self.ledger.touch(key)
        return value

    async def _get(self, key: str, encoding: str | None = "utf-8", _conn: Any = None) -> bytes | int | None:
        return self.peek(key)

    async def _multi_get(self, keys: list[str], encoding: str | None = "utf-8", _conn: Any = None) -> list[Any]:
        return [self.peek(key) for key in keys]

    async def _set(self, key: str, value: bytes, ttl: float | None = None, _cas_token: Any = None,
                   _conn: Any = None) -> bool:
        if len(value) > self.max_bytes:  # would evict every other value, then itself
            if key in self.ledger:
                await self._delete(key)  # nor may an older value stay under its key
            return False
        stored = await super()._set(key, value, ttl=ttl, _cas_token=_cas_token, _conn=_conn)
        await self._evict()
        return bool(stored)

    async def _increment(self, key: str, delta: int, _conn: Any = None) -> int:
        value = self._counters[key] = self._counters.get(key, 0) + delta
        return value

    async def _evict(self) -> None:
        ledger = self.ledger
        while ledger and (ledger.entries > self.max_entries or ledger.bytes > self.max_bytes):
            await self._delete(ledger.oldest())  # aiocache's delete also cancels the key's TTL timer
