"""The cache backend (aiocache's memory or Redis cache) behind a guard: a slow or broken backend costs a
request at most one `op_timeout` per operation, never an error.

Every operation runs under aiocache's own per-call timeout. A failure is counted in
`egress_cache_errors_total{backend}`, logged at most once per `WARN_EVERY`, and takes the backend out of
the requests' path: they pass through uncached without waiting, while a background task pings it every
`REST_AFTER_FAILURE` (with `WARM_UP_TIMEOUT`) until it answers. The dial happens there, off any request's
clock: a cold one (TCP, TLS, AUTH, CLIENT SETINFO) can take longer than `op_timeout`, which would cancel it
on every request and keep the cache down for good.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiocache.serializers import NullSerializer
from prometheus_client import Counter

from proxy.adapters import MemoryBackend, RedisBackend
from proxy.cache.keys import MARKER_PREFIX
from proxy.cache.memory import BoundedLru
from proxy.logs import Occasional
from proxy.metrics import Metrics
from proxy.policy import CacheSettings

log = logging.getLogger("egress.cache")

T = TypeVar("T")
REST_AFTER_FAILURE = 1.0
WARN_EVERY = 30.0
WARM_UP_TIMEOUT = 1.0


class BytesSerializer(NullSerializer):  # type: ignore[misc]  # aiocache ships no type hints
    """Values are stored and read back as bytes, untouched (aiocache's Redis cache would JSON them)."""

    DEFAULT_ENCODING = None


class Store:
    def __init__(self, backend: Any, name: str, errors: Counter) -> None:
        self.backend = backend  # an aiocache BaseCache
        self.name = name
        self._errors = errors.labels(name)
        self._recovery: asyncio.Task[None] | None = None  # set while the backend is out of the requests' path
        self._closed = False
        self._warning = Occasional(WARN_EVERY)
        # In-process reads cannot fail or wait: they skip aiocache's per-call layers (timeout, plugins, hooks),
        # which cost more than the read itself, and read the LRU itself. Writes still go through aiocache.
        self._local: BoundedLru | None = None
        if isinstance(backend, MemoryBackend):
            assert backend.namespace is None  # else aiocache's keys would not be the ones read here
            self._local = backend.lru

    @property
    def local(self) -> bool:
        return self._local is not None

    async def get(self, key: str) -> bytes | None:
        if self._local is not None:
            value = self._local.peek(key)
        else:
            value = await self._guarded("get", lambda: self.backend.get(key))
        return value if isinstance(value, bytes) else None

    async def get_many(self, keys: Sequence[str]) -> list[Any] | None:
        """One round trip (MGET); None when the backend could not answer (not the same as "all missing")."""
        if self._local is not None:
            return [self._local.peek(key) for key in keys]
        values = await self._guarded("multi_get", lambda: self.backend.multi_get(list(keys)))
        return list(values) if values is not None else None

    async def set(self, key: str, value: bytes, ttl: float) -> bool:
        return bool(await self._guarded("set", lambda: self.backend.set(key, value, ttl=ttl)))

    async def incr(self, key: str) -> int | None:
        value = await self._guarded("increment", lambda: self.backend.increment(key))
        return int(value) if value is not None else None

    async def warm_up(self) -> bool:
        """Open a connection before the first request needs one (see the module's docstring)."""
        return bool(await self._guarded("ping", self._ping))

    async def _ping(self) -> bool:
        if self.name != "redis":
            return True
        return bool(await self.backend.raw("ping", timeout=WARM_UP_TIMEOUT))

    async def close(self) -> None:
        self._closed = True
        if self._recovery is not None:
            self._recovery.cancel()
        with contextlib.suppress(Exception):  # even while down: its connections must go
            await self.backend.close()

    async def _guarded(self, op: str, call: Callable[[], Awaitable[T]]) -> T | None:
        if self._recovery is not None or self._closed:
            return None  # down (until a ping gets through) or retired by a reload: pass through uncached
        try:
            return await call()
        except Exception as exc:  # whatever the backend does wrong, the request goes on uncached
            self._failed(op, exc)
            return None

    async def _recover(self) -> None:
        try:
            while True:
                await asyncio.sleep(REST_AFTER_FAILURE)
                try:
                    if await self._ping():
                        log.info("Cache backend %s is back", self.name)
                        return
                except Exception as exc:
                    self._failed("ping", exc)
        finally:
            self._recovery = None

    def _failed(self, op: str, exc: Exception) -> None:
        self._errors.inc()
        if self._recovery is None and not self._closed:
            self._recovery = asyncio.get_running_loop().create_task(self._recover())
        if self._warning.due():
            log.warning(
                "Cache backend %s unavailable (%s %s); requests pass through uncached "
                "(next warning in %.0fs at the earliest)", self.name, op, Occasional.failure(exc), WARN_EVERY,
            )


def open_store(settings: CacheSettings, metrics: Metrics) -> Store:
    if settings.backend == "redis":
        return Store(_redis(settings), "redis", metrics.cache_errors)
    # No per-call timeout in process: these calls never wait, and aiocache's would cost a task per call.
    # Vary markers ride along with their entries: they must not take an entry's place nor count as one.
    lru = BoundedLru(settings.max_entries, settings.max_bytes, uncounted=MARKER_PREFIX)
    metrics.cache_entries.set_function(lambda: lru.entries)
    metrics.cache_bytes.set_function(lambda: lru.bytes)
    return Store(MemoryBackend(lru, timeout=None), "memory", metrics.cache_errors)


def _redis(settings: CacheSettings) -> RedisBackend:
    """`redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS. Connections open on first use."""
    url = urllib.parse.urlsplit(settings.redis_url)
    if url.scheme not in ("redis", "rediss"):
        raise ValueError(f"cache.redis_url must start with redis:// or rediss://, got {url.scheme or '(none)'}://")
    return RedisBackend(
        endpoint=url.hostname or "127.0.0.1",
        port=url.port or 6379,
        db=url.path.strip("/") or 0,
        password=urllib.parse.unquote(url.password) if url.password else None,
        ssl=url.scheme == "rediss",
        connection_pool_kwargs={"username": urllib.parse.unquote(url.username)} if url.username else None,
        serializer=BytesSerializer(),
        namespace=settings.namespace,  # aiocache writes every key as `<namespace>:<key>`
        timeout=settings.op_timeout,  # aiocache bounds every call with it (asyncio.wait_for)
    )
