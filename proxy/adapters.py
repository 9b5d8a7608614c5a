"""Where the sidecar needs more of pybreaker and aiocache than their public calls express, and why. Everything else
of theirs is used through public API where it belongs (`proxy/stages/breaker.py`, `proxy/cache/store.py`).
Line numbers are those of the pinned versions (pybreaker 1.4.1, aiocache 0.12.3).

pybreaker: feeding it an attempt's verdict (`settle`)
    Its rules (count a failure, trip at `fail_max`, close after a half-open success, re-open after a half-open
    failure, tell the listeners) live in its state objects and run only inside a guarded call: `call(func)`, its
    `calling()` and decorator forms (pybreaker/__init__.py:246-264) run `CircuitBreakerState.call`, which ends in
    `_handle_success` / `_handle_error` -> `on_success` / `on_failure` (:689-728, :807-815, :883-897). There is no
    public "record a success" or "record a failure". The alternatives do not fit:
    - `call_async` is a tornado coroutine (`from tornado import gen`, :44-49, :266-279), not an asyncio one;
    - guarding the attempt itself is not the shape of the retry loop: it admits an attempt, awaits it, and only
      then decides whether it counts (often from a status code, not an exception), or abandons it uncounted;
    - a custom `CircuitBreakerStorage` (:360-412) is public, but passive: its `increment_counter` trips nothing
      and tells no listener, so recording through it would mean re-writing the rules pybreaker is here for.
    So `settle` hands pybreaker each verdict as a guarded call of a function that returns or raises, through the
    documented `call` (README: "db_breaker.call(update_customer, my_customer)"); `calling()` does the same through
    two more generators (measured: 4.0 vs 1.9 us for a success). This is the only such call in the code base.
    The transitions an operator or the clock makes use public methods directly: `open`, `half_open`, `close`
    (:281-301), as do the reads (`current_state`, `fail_counter`) and the `fail_max` / `reset_timeout` setters.

aiocache: the bounded memory backend (`MemoryBackend`) and the Redis backend's close (`RedisBackend`)
    Its public commands (`get`, `set`, `increment`, `close`...) add the timeout, plugins, serializer and namespace,
    then call backend hooks that `BaseCache` declares and leaves to each backend (`_get`, `_set`, `_increment`,
    `_close`...: aiocache/base.py:204, :246, :283, :348, :401, :498). Implementing those hooks in a `BaseCache`
    subclass is how a backend is written: aiocache's memory, Redis and memcached backends are exactly that, and its
    docs offer no other way. The alternatives do not fit:
    - `SimpleMemoryCache` has no size bound, and its storage is private: the `_cache` dict and `_handlers`
      timers, emptied by a name-mangled `__delete` (backends/memory.py:13-17, :36-38, :99-106). Bounding it meant
      swapping that dict and overriding its hooks, i.e. depending on its internals;
    - plugins (`post_set`, `post_get`: docs/plugins.rst, examples/lru_plugin.py) are the documented extension, but
      no hook sees a value leave when its TTL timer fires (the timer calls `__delete` directly), so a plugin's byte
      total would drift; and they run inside every call's layers, which the HIT path skips.
    So `MemoryBackend` is a `BaseCache` backend of its own over `proxy.cache.memory.BoundedLru` (the bounds, the
    lifetimes and the counters, in plain Python). `RedisBackend` overrides one hook, `_close`: aiocache's
    (backends/redis.py:190-191) calls redis-py's `close()`, deprecated since redis-py 5.0.1 for `aclose()`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import pybreaker
from aiocache import RedisCache
from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer

if TYPE_CHECKING:  # proxy.cache imports this module: a runtime import would be circular
    from proxy.cache.memory import BoundedLru

# -- pybreaker ---------------------------------------------------------------------------------------------------------


class CountedFailure(Exception):
    """An attempt outcome the breaker's `count` list names (connect_error, timeout, 5xx, 401...), as pybreaker sees
    it: the exception its guarded call raised."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _succeed() -> None:
    return None


def _fail(outcome: str) -> None:
    raise CountedFailure(outcome)


def settle(cb: pybreaker.CircuitBreaker, failure: str | None) -> None:
    """Give `cb` one attempt's verdict: `failure` is the counted outcome, or None for a success. pybreaker counts,
    transitions and tells its listeners. Meant for a closed or half-open breaker: an open one refuses the verdict
    (`CircuitBreakerError`, dropped here), or, if its own clock says the wait is over, takes it as its trial."""
    with contextlib.suppress(CountedFailure, pybreaker.CircuitBreakerError):
        if failure is None:
            cb.call(_succeed)
        else:
            cb.call(_fail, failure)


# -- aiocache ----------------------------------------------------------------------------------------------------------


class MemoryBackend(BaseCache):  # type: ignore[misc]  # aiocache ships no type hints
    """aiocache's commands over a `BoundedLru`. Values are bytes, stored as given (NullSerializer)."""

    NAME = "memory"

    def __init__(self, lru: BoundedLru, **kwargs: Any) -> None:
        super().__init__(serializer=NullSerializer(), **kwargs)
        self.lru = lru

    async def _get(self, key: str, encoding: str | None = "utf-8", _conn: Any = None) -> bytes | int | None:
        return self.lru.peek(key)

    async def _multi_get(self, keys: list[str], encoding: str | None = "utf-8", _conn: Any = None) -> list[Any]:
        return [self.lru.peek(key) for key in keys]

    async def _set(
        self, key: str, value: bytes, ttl: float | None = None, _cas_token: Any = None, _conn: Any = None
    ) -> bool:
        if _cas_token is not None:  # aiocache's optimistic lock: nothing here uses it, so nothing implements it
            raise NotImplementedError("MemoryBackend has no compare-and-set")
        return self.lru.put(key, value, ttl)

    async def _delete(self, key: str, _conn: Any = None) -> int:
        return int(self.lru.drop(key))

    async def _increment(self, key: str, delta: int, _conn: Any = None) -> int:
        return self.lru.increment(key, delta)


class RedisBackend(RedisCache):  # type: ignore[misc]  # aiocache ships no type hints
    """aiocache's Redis cache, closed with redis-py's `aclose()`."""

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        await self.client.aclose()
