"""The memory cache's bounds, pure: `BoundedLru` on its own, and through aiocache's commands (`MemoryBackend`), which
is how the store writes to it. The sidecar-level behaviour (entries evicted past the policy's bounds, Vary markers)
is in test_cache.py."""

from __future__ import annotations

import asyncio

from proxy.adapters import MemoryBackend
from proxy.cache.memory import BoundedLru

MARK = "vary:"


def lru(max_entries: int = 100, max_bytes: int = 1000) -> BoundedLru:
    return BoundedLru(max_entries, max_bytes, uncounted=MARK)


def test_the_least_recently_used_value_goes_first_past_max_entries() -> None:
    cache = lru(max_entries=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert cache.peek("a") == b"1"  # a read is a use: b is now the oldest
    cache.put("c", b"3")
    assert (cache.peek("a"), cache.peek("b"), cache.peek("c")) == (b"1", None, b"3")
    assert (cache.entries, cache.bytes) == (2, 2)


def test_the_least_recently_used_values_go_first_past_max_bytes() -> None:
    cache = lru(max_bytes=10)
    for key in "abc":
        cache.put(key, b"xxxx")
    assert list(cache.keys()) == ["b", "c"]
    assert (cache.entries, cache.bytes) == (2, 8)
    cache.put("d", b"x" * 10)  # fits alone: everything older goes
    assert list(cache.keys()) == ["d"] and cache.bytes == 10


def test_a_rewrite_is_a_use_and_recounts_the_bytes() -> None:
    cache = lru(max_entries=2)
    cache.put("a", b"1")
    cache.put("b", b"2")
    cache.put("a", b"1111")
    cache.put("c", b"3")
    assert list(cache.keys()) == ["a", "c"]
    assert (cache.entries, cache.bytes) == (2, 5)


def test_a_value_larger_than_max_bytes_is_not_stored_evicts_nothing_and_drops_the_old_one() -> None:
    cache = lru(max_bytes=10)
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert not cache.put("a", b"x" * 11)
    assert list(cache.keys()) == ["b"] and (cache.entries, cache.bytes) == (1, 1)


def test_uncounted_keys_take_no_values_place_but_are_evicted_in_their_turn() -> None:
    cache = lru(max_entries=2)
    cache.put(MARK + "a", b"X-Tenant")
    cache.put("a", b"1")
    cache.put("b", b"2")
    assert (cache.entries, cache.bytes) == (2, 2)
    assert list(cache.keys()) == [MARK + "a", "a", "b"]
    cache.put("c", b"3")  # the oldest goes, whatever it is, until the values fit again
    assert list(cache.keys()) == ["b", "c"]


def test_counters_are_never_evicted() -> None:
    cache = lru(max_entries=1, max_bytes=4)
    assert cache.increment("gen:a") == 1
    assert cache.increment("gen:a", 2) == 3
    for i in range(10):
        cache.put(f"v{i}", b"xxxx")
    assert cache.peek("gen:a") == 3
    assert list(cache.keys()) == ["v9", "gen:a"] and (cache.entries, cache.bytes) == (1, 4)


async def test_a_value_expires_after_the_ttl_given_to_aiocache() -> None:
    cache = lru()
    backend = MemoryBackend(cache, timeout=None)
    assert await backend.set("a", b"1", ttl=0.05)
    assert await backend.set("b", b"2")  # no ttl: kept
    assert await backend.get("a") == b"1"
    await asyncio.sleep(0.1)
    assert await backend.multi_get(["a", "b"]) == [None, b"2"]
    assert (cache.entries, cache.bytes) == (1, 1)


async def test_a_rewrite_without_ttl_ends_the_old_lifetime() -> None:
    cache = lru()
    backend = MemoryBackend(cache, timeout=None)
    await backend.set("a", b"1", ttl=0.05)
    await backend.set("a", b"2")
    await asyncio.sleep(0.1)
    assert await backend.get("a") == b"2"


async def test_an_evicted_values_timer_does_not_expire_its_successor() -> None:
    cache = lru(max_entries=1)
    backend = MemoryBackend(cache, timeout=None)
    await backend.set("a", b"1", ttl=0.05)
    await backend.set("b", b"2")  # evicts a
    await backend.set("a", b"3")  # no ttl, evicts b
    await asyncio.sleep(0.1)
    assert await backend.get("a") == b"3"


async def test_aiocaches_commands_reach_the_lru() -> None:
    cache = lru()
    backend = MemoryBackend(cache, timeout=None)
    assert await backend.increment("gen") == 1
    assert await backend.increment("gen") == 2
    await backend.set("a", b"1")
    assert await backend.delete("a") == 1
    assert await backend.delete("a") == 0
    assert list(cache.keys()) == ["gen"]
    await backend.close()
