"""Response caching: the `ResponseCache` façade the pipeline's cache stage calls.

    plan()      what a request is to the cache: a read (GET/HEAD on a cached route), a write that
                invalidates (any unsafe method on a path a cached route reads, RFC 9111 §4.4), or nothing
    lookup()    for a read, a context: HIT (answer now, no upstream slot), a concurrent identical request's
                answer (single-flight), or MISS/REFRESH/BYPASS (go upstream; a stale entry may be kept aside)
    storable()/store()   keep the upstream's answer
    release()   let the requests waiting on this one go, before its answer streams to its own caller
    revalidated()  the upstream's 304 to a conditional request the cache sent: the entry, refreshed
    fallback()  the upstream failed: the stale entry to serve instead, if any
    for_caller()   the entry as the caller gets it: a 304 when its own conditional request matches
    invalidate()/purge() bump a generation: every entry of the path / upstream / route becomes unreachable

Modules: `keys` (keyed-hash keys, generations, vary markers), `entry` (the stored form), `rules` (HTTP caching
rules), `store` (the guarded aiocache backend), `memory` (LRU bounds), `flight` (single-flight),
`capture` (bounded body reads), `freshness` (the RFC 9111 age and lifetime arithmetic). The cache outlives a
policy reload: it holds settings, not routes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDictProxy
from yarl import URL

from proxy.cache.entry import Entry
from proxy.cache.flight import Flight, SingleFlight
from proxy.cache.freshness import NO_ASKS, Asks, acceptable, initial_age
from proxy.cache.keys import KeyMaker, RequestKey, header_values, key_secret
from proxy.cache.rules import (
    CACHEABLE_METHODS,
    RANGE_HEADERS,
    Mode,
    asks,
    entry_for,
    extra_vary,
    is_unsafe,
    may_answer,
    may_serve_stale,
    not_modified_for,
    refusal,
    request_mode,
    updated,
)
from proxy.cache.store import Store, open_store
from proxy.deadline import Deadline
from proxy.errors import EgressError, Throttled, UpstreamTimeout
from proxy.logs import redact_target
from proxy.memo import Memo
from proxy.metrics import Metrics
from proxy.policy import CacheSettings, RouteCache
from proxy.policy.model import SECRET_QUERY_NAMES
from proxy.routing import Target

__all__ = ["CACHE_HEADER", "CACHE_STATUS_HEADER", "Entry", "Lookup", "ReadPlan", "ResponseCache", "WritePlan"]

log = logging.getLogger("egress.cache")

CACHE_HEADER = "X-Egress-Cache"
CACHE_STATUS_HEADER = "Cache-Status"  # RFC 9211, next to X-Egress-Cache
CACHE_STATUS_NAME = "egress"
HIT, MISS, STALE, REVALIDATED = "HIT", "MISS", "STALE", "REVALIDATED"
# Served stale within the entry's stale-while-revalidate (RFC 5861 §3) while one refresh runs in the background
# (nginx's `$upstream_cache_status` says the same word).
UPDATING = "UPDATING"
# Decoded memory-cache entries kept, small ones only: at most 256 x 2 x 16 KiB = 8 MiB beyond max_bytes.
DECODED_MEMO, DECODED_MEMO_MAX_SIZE = 256, 16 * 1024
ORIGIN_MEMO = 64  # distinct (url, injected headers) pairs: one per upstream, a few more across reloads
# Failures a stale entry stands in for: the upstream could not answer (or was not asked, to protect it).
STALE_ON = frozenset(
    {"upstream_timeout", "upstream_connect_error", "upstream_reset", "circuit_open", "overloaded", "throttled",
     "rate_limited"}
)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    key: RequestKey
    rule: RouteCache
    mode: Mode
    headers: CIMultiDictProxy[str]  # the caller's, for the values of Vary'd headers
    method: str
    target: Target
    redact: Collection[str] = SECRET_QUERY_NAMES  # the running policy's `redact.query`, for log lines
    asks: Asks = NO_ASKS  # the caller's freshness directives

    def __str__(self) -> str:
        """`supabase bot_profile GET /rest/v1/bot_profiles?id=eq.1`, secrets redacted: for log lines, made only
        when a line is written (log calls take the plan itself)."""
        where = redact_target(self.target.path, self.target.query, self.redact)
        return f"{self.key.upstream} {self.key.route} {self.method} {where}"


@dataclass(frozen=True, slots=True)
class WritePlan:
    upstream: str
    path: str
    label: str
    target: Target


@dataclass(frozen=True, slots=True)
class Shared:
    """What a single-flight leader hands its followers: the entry it answered with, or its failure."""

    result: str
    entry: Entry | None = None
    vary: str = ""  # digest of the leader's values of `entry.vary`: a follower must have the same
    error: EgressError | None = None


class Lookup:
    """One read's dealings with the cache, filled in as the request crosses the stage."""

    def __init__(self, plan: ReadPlan) -> None:
        self.plan = plan
        self.result = MISS if plan.mode is Mode.LOOKUP else plan.mode.value
        self.ready: Entry | None = None  # answer with this now (a HIT, or a leader's STALE)
        self.failed: EgressError | None = None  # the leader this request waited for failed like this
        self.stale: Entry | None = None  # expired but within stale_if_error: the fallback
        self.generations: list[int] | None = None  # None: the backend did not answer, so nothing is stored
        self.marker: tuple[str, ...] = ()  # Vary'd header names the store knew of
        self.shared: Shared | None = None
        self.flight: Flight[Shared] | None = None  # set when this request leads a single-flight
        self.found = False  # an entry was there (fresh or not): `fwd=stale` rather than `fwd=uri-miss`
        self.revalidating: Entry | None = None  # the stale entry whose validators went upstream
        self.sent_at = time.time()  # §4.2.3 request_time, for the age of what comes back

    def refreshing(self) -> Lookup:
        """The lookup of the background refresh of what this one served UPDATING: the same plan, the same place
        in the store (generations, marker), the served entry's validators going upstream."""
        twin = Lookup(self.plan)
        twin.generations, twin.marker, twin.found = self.generations, self.marker, True
        twin.stale = self.ready
        twin.revalidating = self.ready if self.ready is not None and self.ready.validators else None
        return twin


class ResponseCache:
    def __init__(self, settings: CacheSettings, store: Store, keys: KeyMaker, metrics: Metrics) -> None:
        self.settings = settings
        self.storage = store
        self.keys = keys
        self.metrics = metrics
        self._flights: SingleFlight[Shared] = SingleFlight()
        # Keyed by the stored bytes themselves (hashed once: bytes keep their hash), so a replaced entry is a
        # new key and never answered from the old one's decoding.
        self._decoded: Memo[bytes, Entry | None] = Memo(DECODED_MEMO)
        self._origins: Memo[tuple[URL, tuple[tuple[str, str], ...]], str] = Memo(ORIGIN_MEMO)
        self._refreshes: dict[str, asyncio.Task[None]] = {}  # by key: one background refresh at a time

    @classmethod
    def open(cls, settings: CacheSettings, metrics: Metrics) -> ResponseCache:
        secret = key_secret(settings)
        return cls(settings, open_store(settings, metrics), KeyMaker(secret), metrics)

    @classmethod
    def carry(cls, previous: ResponseCache | None, settings: CacheSettings, metrics: Metrics) -> ResponseCache:
        """Lifetime: carried over a reload, entries and all, while the `cache` settings are unchanged (it holds
        settings, not routes); the runtime that drops it closes it (`Runtime.retire`)."""
        if previous is not None and previous.settings == settings:
            return previous
        return cls.open(settings, metrics)

    @property
    def max_body(self) -> int:
        return self.settings.max_body

    async def warm_up(self) -> bool:
        return await self.storage.warm_up()

    async def close(self) -> None:
        for task in list(self._refreshes.values()):
            task.cancel()
        await self.storage.close()

    def refresh_soon(self, lookup: Lookup, refresh: Callable[[Lookup], Coroutine[Any, Any, None]]) -> bool:
        """Run `refresh` in the background for what `lookup` served UPDATING, unless one for its key is running
        (identical requests meanwhile are served the same entry and start none); whether it started."""
        key = lookup.plan.key.base
        if key in self._refreshes or lookup.generations is None:
            return False
        task = asyncio.get_running_loop().create_task(refresh(lookup.refreshing()))
        self._refreshes[key] = task
        task.add_done_callback(lambda _: self._refreshes.pop(key, None))
        log.debug("Cache UPDATING %s (refreshing in the background)", lookup.plan)
        return True

    # -- what a request is to the cache ---------------------------------------------------------------

    def plan(
        self, target: Target, method: str, headers: CIMultiDictProxy[str], redact: Collection[str] = SECRET_QUERY_NAMES
    ) -> ReadPlan | WritePlan | None:
        """`redact`: the query names the plan's log lines hide (the running policy's, which a reload may change
        while this cache carries over)."""
        route = target.route
        if route.cache is not None and may_answer(route, method):  # (`is not None` again, for the type)
            identity = header_values(headers, (*route.cache.vary, *RANGE_HEADERS))
            key = self.keys.request(
                target.upstream.name, route.name, method, target.path, target.query, identity, self._origin(target)
            )
            return ReadPlan(key, route.cache, request_mode(headers), headers, method, target, redact, asks(headers))
        if is_unsafe(method) and _caches_any(target):
            return WritePlan(target.upstream.name, target.path, f"{target.upstream.name} {target.path}", target)
        return None

    def _origin(self, target: Target) -> str:
        """Who answers, and as whom: the upstream's URL and the headers the sidecar injects (its credentials).
        A reload that re-points an upstream or rotates its key (service role -> anon) must not serve what was
        answered before; the values only ever enter the keyed hash. Remembered: made on every lookup it cost
        about 3.7 µs (timeit, two credential headers), remembered 0.7 µs."""
        upstream = target.upstream
        return self._origins.get((upstream.url, upstream.headers), _origin)

    # -- reads ------------------------------------------------------------------------------------------

    def lookup(self, plan: ReadPlan, deadline: Deadline) -> LookupScope:
        """`async with cache.lookup(plan, deadline) as lookup:` finds the entry or joins an identical request's
        fetch (waiting no longer than `deadline`); on exit it leaves the single-flight (handing followers what
        this request got) and counts the result."""
        return LookupScope(self, plan, deadline)

    async def _enter(self, plan: ReadPlan, deadline: Deadline) -> Lookup:
        lookup = Lookup(plan)
        if self.storage.local and plan.mode is Mode.LOOKUP:
            # In process a lookup never waits, so there is nothing to share but the fetch: look first, and
            # join the flight only to go (or wait for) upstream. No request waits with a fresh entry of its own.
            await self._find(lookup)
            if lookup.ready is not None:
                return lookup
        # Only plain lookups share: no-cache asked for its own fetch, no-store for no cache at all.
        flight = self._flights.join(plan.key.base) if plan.mode is Mode.LOOKUP else None
        try:
            if flight is not None and not flight.leads:
                await self._follow(lookup, flight, deadline)
            else:
                lookup.flight = flight
                if plan.mode is not Mode.BYPASS and lookup.generations is None:
                    await self._find(lookup)
        except BaseException:
            self._exit(lookup)
            raise
        if lookup.ready is None:  # going upstream (a served entry was logged where it was found)
            log.debug("Cache %s %s", lookup.result, plan)
        return lookup

    def _exit(self, lookup: Lookup) -> None:
        self.release(lookup)
        if lookup.flight is not None:
            lookup.flight.finish()
        key = lookup.plan.key
        self.metrics.child(self.metrics.cache_requests, key.upstream, key.route, lookup.result).inc()

    def release(self, lookup: Lookup) -> None:
        """Hand followers what this request has for them (an entry, a failure, or nothing: then they fetch
        for themselves). Called once the answer is known, so nobody waits while it streams; again on exit."""
        if lookup.flight is not None:
            lookup.flight.land(lookup.shared)

    async def _follow(self, lookup: Lookup, flight: Flight[Shared], deadline: Deadline) -> None:
        try:
            async with asyncio.timeout(max(deadline.remaining(), 0.0)):
                shared = await flight.outcome()
        except TimeoutError:  # the leader outlasts this request's own deadline: so much for waiting
            lookup.failed = UpstreamTimeout("total", deadline.budget, upstream=lookup.plan.key.upstream)
            return
        if shared is not None and shared.error is not None:
            # The leader's key leaves out what its upstream's Vary names: this request may hold a fresh (or
            # stale) entry of its own, which beats the leader's failure.
            await self._find(lookup)
            if lookup.ready is None and (stale := self.fallback(lookup, shared.error)) is not None:
                lookup.ready = stale
            if lookup.ready is None:
                lookup.failed = shared.error
        elif shared is not None and shared.entry is not None and shared.vary == self._vary(lookup, shared.entry):
            lookup.ready = shared.entry
            lookup.result = shared.result
            log.debug("Cache %s %s (answered by a concurrent identical request)", lookup.result, lookup.plan)
        else:  # the leader had nothing this request may use: it goes on by itself
            await self._find(lookup)

    async def _find(self, lookup: Lookup) -> None:
        key = lookup.plan.key
        found = await self.storage.get_many([*key.generations, key.marker])
        if found is None:
            return  # the backend is unavailable: pass through, store nothing
        *generations, marker = found
        lookup.generations = [int(g or 0) for g in generations]
        lookup.marker = tuple(marker.decode().split(",")) if marker else ()
        if lookup.plan.mode is not Mode.LOOKUP:
            return
        entry_key = self._entry_key(lookup, lookup.marker)
        data = await self.storage.get(entry_key)
        entry = self._decode(data) if data else None
        now = time.time()
        if entry is None:
            return
        lookup.found = True
        plan = lookup.plan
        if self._acceptable(entry, plan, now):
            lookup.ready = entry
            lookup.result = HIT
            self._share(lookup, HIT, entry)
            log.debug("Cache HIT %s (age=%.1fs)", lookup.plan, entry.age(now))
        elif not plan.asks.freshness and entry.within_stale_while_revalidate(now):
            # RFC 5861 §3: served now, refreshed in the background (the stage starts it: `refresh_soon`). A caller
            # who asked for freshness of its own (max-age, min-fresh...) gets the entry revalidated in line.
            lookup.ready = entry
            lookup.result = UPDATING
            self._share(lookup, UPDATING, entry)
        else:  # stale (or not fresh enough for this caller): revalidated when it can be, a fallback if allowed
            lookup.stale = entry
            if entry.validators and plan.mode is Mode.LOOKUP:
                lookup.revalidating = entry

    def _acceptable(self, entry: Entry, plan: ReadPlan, now: float) -> bool:
        if entry.revalidate:
            return False  # no-cache: every use is validated (a HEAD of the same key as well)
        if plan.asks is NO_ASKS:
            return entry.is_fresh(now)  # the common case, without parsing the stored Cache-Control
        return acceptable(entry.age(now), entry.ttl, plan.asks, may_serve_stale(entry, plan.rule))

    def _decode(self, data: bytes) -> Entry | None:
        """The in-process store hands back the very bytes it holds: decode them once, not on every HIT (timeit: 8 µs
        a decode of a small JSON answer, 0.2 µs remembered)."""
        if not self.storage.local or len(data) > DECODED_MEMO_MAX_SIZE:
            return Entry.decode(data)
        return self._decoded.get(data, Entry.decode)

    def storable(self, lookup: Lookup, status: int, headers: CIMultiDictProxy[str]) -> bool:
        if lookup.plan.mode is Mode.BYPASS:
            return False
        refused = refusal(lookup.plan.rule, status, headers, ranged="Range" in lookup.plan.headers)
        if refused is not None:
            log.debug("Cache not storing %s: %s", lookup.plan, refused)
        return refused is None

    def keep(
        self, lookup: Lookup, status: int, headers: CIMultiDictProxy[str], body: bytes
    ) -> tuple[Entry, Callable[[], Awaitable[None]]] | None:
        """An answer `storable` allowed: identical requests waiting on this one get it at once (even if the
        backend is down); the entry and its storing are returned, for the caller to run once the answer has
        gone out (None when it will not be stored)."""
        plan = lookup.plan
        now = time.time()
        entry = entry_for(plan.rule, status, headers, body, now, initial_age(headers, lookup.sent_at, now),
                          extra_vary(headers, plan.rule))
        self._share(lookup, HIT, entry)
        if lookup.generations is None or entry.lifetime <= 0:
            return None  # without the current generations a write could land where invalidated entries lived
        return entry, functools.partial(self._write, lookup, entry)

    async def _write(self, lookup: Lookup, entry: Entry) -> None:
        plan = lookup.plan
        if entry.vary != lookup.marker:
            await self.storage.set(plan.key.marker, ",".join(entry.vary).encode(), entry.lifetime)
        if await self.storage.set(self._entry_key(lookup, entry.vary), entry.encode(), entry.lifetime):
            log.info("Cache SET %s (ttl=%gs)", plan, entry.ttl)

    def revalidated(
        self, lookup: Lookup, headers: CIMultiDictProxy[str]
    ) -> tuple[Entry, Callable[[], Awaitable[None]] | None]:
        """The upstream answered 304 to the validators of `lookup.revalidating`: the stored answer with its
        headers refreshed (RFC 9111 §4.3.4) and a new age, to serve now; and its storing, to run afterwards."""
        stale = lookup.revalidating
        assert stale is not None
        now = time.time()
        merged = updated(stale, headers)
        entry = entry_for(lookup.plan.rule, stale.status, merged, stale.body, now,
                          initial_age(headers, lookup.sent_at, now), stale.vary)
        lookup.result = REVALIDATED
        self._share(lookup, REVALIDATED, entry)
        log.debug("Cache REVALIDATED %s", lookup.plan)
        if lookup.generations is None or entry.lifetime <= 0:
            return entry, None
        return entry, functools.partial(self._write, lookup, entry)

    @staticmethod
    def for_caller(entry: Entry, plan: ReadPlan) -> Entry:
        """What the caller gets of a stored answer: a 304 when its own If-None-Match / If-Modified-Since
        matches (RFC 9111 §4.3.2), else the answer itself."""
        return not_modified_for(entry, plan.headers) or entry

    def fallback(self, lookup: Lookup, failure: EgressError | int) -> Entry | None:
        """The upstream failed (an error, a 5xx, or a throttled answer: pass 429 for one a throttle rule
        recognised): the stale entry to serve instead, if any."""
        eligible = (failure >= 500 or failure == 429) if isinstance(failure, int) else failure.reason in STALE_ON
        # Judged now, not at lookup: retries and waits may have carried the entry past its stale_if_error.
        stale = lookup.stale
        entry = stale if eligible and stale is not None and stale.is_usable_stale() else None
        if entry is None:
            if isinstance(failure, EgressError) and _shareable(failure):
                lookup.shared = Shared(MISS, error=failure)  # identical requests waiting on this one fail alike
            return None
        lookup.result = STALE
        self._share(lookup, STALE, entry)
        why = f"upstream answered {failure}" if isinstance(failure, int) else failure.reason
        log.info("Cache STALE %s (age=%.0fs, %s)", lookup.plan, entry.age(), why)
        return entry

    def _share(self, lookup: Lookup, result: str, entry: Entry) -> None:
        lookup.shared = Shared(result, entry, self._vary(lookup, entry))

    def _vary(self, lookup: Lookup, entry: Entry) -> str:
        return self.keys.vary(lookup.plan.headers, entry.vary)

    def _entry_key(self, lookup: Lookup, vary: tuple[str, ...]) -> str:
        assert lookup.generations is not None
        return self.keys.entry(lookup.plan.key, lookup.generations, self.keys.vary(lookup.plan.headers, vary))

    # -- writes and purges -----------------------------------------------------------------------------

    async def invalidate(self, plan: WritePlan, why: str, also: Collection[str] = ()) -> None:
        """After a successful write: every cached entry of the path (all queries, all callers) goes, and those
        of `also` (the same upstream's paths its Location / Content-Location named, RFC 9111 §4.4)."""
        # A read begun before the write may have fetched the old state: a read issued after it must not join
        # that fetch. Keys are keyed hashes, so the path's flights cannot be picked out; writes are rare: forget all.
        paths = [path for path in dict.fromkeys((plan.path, *also)) if invalidated_by_writes(plan.target, path)]
        if paths:
            self._flights.forget()
        for path in paths:
            label = plan.label if path == plan.path else f"{plan.upstream} {path}"
            if await self.storage.incr(self.keys.path_generation(plan.upstream, path)) is None:
                log.warning("Cache INVALIDATE failed for %s after %s: its entries may be served until they expire",
                            label, why)
                continue
            log.info("Cache INVALIDATE %s (after %s)", label, why)

    async def purge(self, upstream: str, route: str | None = None) -> bool:
        self._flights.forget()  # as for a write: a read issued after the purge must not join a fetch from before
        key = self.keys.route_generation(upstream, route) if route else self.keys.upstream_generation(upstream)
        purged = await self.storage.incr(key) is not None
        log.info("Cache PURGE %s%s%s", upstream, f" route={route}" if route else "", "" if purged else " failed")
        return purged


class LookupScope:
    """The `async with` of `ResponseCache.lookup`: a plain class, as it is on every cacheable request."""

    __slots__ = ("_cache", "_deadline", "_lookup", "_plan")

    def __init__(self, cache: ResponseCache, plan: ReadPlan, deadline: Deadline) -> None:
        self._cache = cache
        self._plan = plan
        self._deadline = deadline
        self._lookup: Lookup | None = None

    async def __aenter__(self) -> Lookup:
        self._lookup = await self._cache._enter(self._plan, self._deadline)
        return self._lookup

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave the single-flight and count the result; once, however often called."""
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            self._cache._exit(lookup)


def _shareable(failure: EgressError) -> bool:
    """Whether identical requests waiting on this one would get the same failure: only what the upstream did.
    Not this request's own deadline (X-Egress-Timeout may have shortened it) nor its wait for a throttle, and
    not its own body (too large, cut short): the followers then go on by themselves."""
    if failure.callers_doing or isinstance(failure, Throttled):
        return False
    return not (isinstance(failure, UpstreamTimeout) and failure.kind == "total")


def _origin(key: tuple[URL, tuple[tuple[str, str], ...]]) -> str:
    url, headers = key
    return f"{url}\0{json.dumps(headers)}"


def _caches_any(target: Target) -> bool:
    """A write to any path of an upstream with a cached route may name (Location) a cached path."""
    return any(route.cache is not None for route in target.upstream.routes)


def invalidated_by_writes(target: Target, path: str) -> bool:
    """Routes match by method: the write may be a different route than the read it invalidates."""
    upstream = target.upstream
    readers = (upstream.route_for(method, path) for method in CACHEABLE_METHODS)
    return any(route.cache is not None and route.cache.invalidate_on_write for route in readers)


def cache_status(lookup: Lookup, served: Entry | None, fwd_status: int | None, stored: Entry | None) -> str:
    """RFC 9211 `Cache-Status` for one answer: `egress; hit; ttl=12` when the cache answered alone, else why it
    went upstream (`fwd=uri-miss|stale|request|bypass`), what came back (`fwd-status`) and whether it was
    `stored`; `ttl` is the freshness left of the entry served or stored (negative: stale)."""
    now = time.time()
    if lookup.result in (HIT, UPDATING):
        parts = ["hit"]  # UPDATING: a hit on a stale entry, its negative ttl says so (RFC 9211 §2.2)
    elif lookup.plan.mode is Mode.REFRESH:
        parts = ["fwd=request"]
    elif lookup.plan.mode is Mode.BYPASS:
        parts = ["fwd=bypass"]
    else:
        parts = ["fwd=stale" if lookup.found else "fwd=uri-miss"]
    if fwd_status is not None and lookup.result not in (HIT, UPDATING):
        parts.append(f"fwd-status={fwd_status}")
    if stored is not None:
        parts.append("stored")
    shown = served or stored
    if shown is not None:
        parts.append(f"ttl={math.floor(shown.ttl - shown.age(now))}")
    return "; ".join([CACHE_STATUS_NAME, *parts])
