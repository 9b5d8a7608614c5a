"""Pacing: the budgets behind `rate_limit`, per upstream, and the decision a request's turn comes from.

    Pacer.admit()   one turn of each of the request's limits, all or none: now, after a wait, or refused
    Pacer.hold()    a provider's throttle answer: no turn of the request's keys before its delay is over
    Pacer.snapshot()  each limit and its tokens, for `/upstreams`

Modules: `gcra` (the arithmetic, and the in-process budgets of `backend: memory`), `shared` (the Redis script and
heartbeat of `backend: redis`), `keys` (a request's key for each limit). With Redis down or slow, a decision is
made by the pacer's local fallback at each limit's `rate / replicas` (burst likewise, at least 1): never open, and
never waiting on Redis past `cache.op_timeout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from typing import Any

from proxy.metrics import Metrics
from proxy.pacing.gcra import Bucket, Buckets, Decision, Turn, tokens
from proxy.pacing.keys import Key, render_keys
from proxy.pacing.shared import RedisLink
from proxy.policy import CacheSettings, RateLimitPolicy, Upstream

__all__ = ["Decision", "Key", "Pacer", "render_keys"]

SEEN = 256  # buckets remembered for /upstreams (the most recently decided)
SHOWN_PER_LIMIT = 5  # /upstreams shows the emptiest of them


class Pacer:
    """One upstream's budgets. Lifetime: carried over every reload of its upstream (the turns taken are history the
    provider remembers too); a reload re-points its Redis link when `cache.redis_url`, `namespace` or `op_timeout`
    changed, and closes it when no route of the upstream paces through Redis any more."""

    def __init__(self, upstream: str, metrics: Metrics) -> None:
        self.upstream = upstream
        self.local = Buckets()  # backend: memory
        self.fallback = Buckets()  # backend: redis, while Redis does not answer
        self.link: RedisLink | None = None
        self._errors = metrics.rate_limit_backend_errors.labels(upstream)
        self._seen: dict[Bucket, tuple[str, float, float, int]] = {}  # bucket -> (shown key, TAT, interval, burst)
        self._holds: set[asyncio.Task[None]] = set()
        self._retired: list[RedisLink] = []

    @classmethod
    def carry(cls, previous: Pacer | None, upstream: Upstream, cache: CacheSettings, metrics: Metrics) -> Pacer:
        pacer = previous if previous is not None else cls(upstream.name, metrics)
        pacer._point(upstream, cache)
        return pacer

    def _point(self, upstream: Upstream, cache: CacheSettings) -> None:
        shared = any(r.rate_limit is not None and r.rate_limit.backend == "redis"
                     for r in (*upstream.routes, upstream.default_route))
        if self.link is not None and (not shared or not self.link.serves(cache)):
            self._retired.append(self.link)  # closed by `close` or the next `warm_up`, in a running loop
            self.link = None
        if shared and self.link is None:
            self.link = RedisLink(upstream.name, cache, self._errors)

    def share(self, pacing: RateLimitPolicy) -> int:
        """The divisor of each rate while Redis is down: the policy's `replicas`, else those last seen."""
        seen = self.link.replicas if self.link is not None else None
        return max(1, pacing.replicas or seen or 1)

    # -- decisions --------------------------------------------------------------------------------------

    async def admit(self, pacing: RateLimitPolicy, keys: Sequence[Key], allowance: float) -> Decision:
        turns = _turns(pacing, keys)
        if pacing.backend == "memory":
            decision: Decision | None = self.local.take(turns, allowance)
        else:
            decision = await self.link.take(turns, allowance) if self.link is not None else None
        if decision is None:  # Redis down or slow: this replica's share, decided here
            turns = _turns(pacing, keys, self.share(pacing))
            for turn in turns:
                # Where the shared budget stood, in time, is where this replica's share of it stands: each one
                # goes on from the debt all of them had run up, rather than from a full bucket each.
                if (seen := self._seen.get(turn.bucket)) is not None:
                    self.fallback.seed(turn.bucket, seen[1])
            decision = self.fallback.take(turns, allowance, "fallback")
        self._note(turns, keys, decision)
        return decision

    async def hold(self, pacing: RateLimitPolicy, keys: Sequence[Key], delay: float) -> None:
        """No turn of these limits' keys (`pacing` and `keys` in step) before `delay` is over."""
        if pacing.backend == "memory":
            self.local.hold(_turns(pacing, keys), delay)
            return
        # Locally too: should Redis go down meanwhile, the fallback knows the provider asked for quiet.
        self.fallback.hold(_turns(pacing, keys, self.share(pacing)), delay)
        if self.link is not None:
            await self.link.hold(_turns(pacing, keys), delay)

    def hold_soon(
        self, pacing: RateLimitPolicy, keys: Sequence[Key], delay: float, only: frozenset[str] = frozenset()
    ) -> bool:
        """`hold` the limits named in `only` (all when empty), without making the request that met the throttle
        wait for Redis; whether any of its limits was held."""
        if only:
            kept = [(limit, key) for limit, key in zip(pacing.limits, keys, strict=True) if limit.name in only]
            if not kept:
                return False
            pacing = dataclasses.replace(pacing, limits=tuple(limit for limit, _ in kept))
            keys = [key for _, key in kept]
        task = asyncio.get_running_loop().create_task(self.hold(pacing, keys, delay))
        self._holds.add(task)
        task.add_done_callback(self._holds.discard)
        return True

    # -- lifetime ---------------------------------------------------------------------------------------

    async def warm_up(self) -> None:
        await self._close_retired()
        if self.link is not None:
            await self.link.warm_up()

    async def close(self) -> None:
        for task in list(self._holds):
            task.cancel()
        await self._close_retired()
        if self.link is not None:
            await self.link.close()

    async def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for link in retired:
            await link.close()

    # -- /upstreams -------------------------------------------------------------------------------------

    def _note(self, turns: Sequence[Turn], keys: Sequence[Key], decision: Decision) -> None:
        now = time.monotonic()
        seen = self._seen
        for turn, key, tat in zip(turns, keys, decision.tats, strict=True):
            seen.pop(turn.bucket, None)
            seen[turn.bucket] = (key.shown, now + tat, turn.interval, turn.burst)
        while len(seen) > SEEN:
            del seen[next(iter(seen))]

    def snapshot(self, upstream: Upstream) -> dict[str, Any]:
        """Each limit of the upstream's routes: what it is, and the tokens of its emptiest recent keys as this
        replica last saw them (refilled to now); the Redis link's state when there is one."""
        now = time.monotonic()
        limits: dict[str, dict[str, Any]] = {}
        for route in (*upstream.routes, upstream.default_route):
            pacing = route.rate_limit
            if pacing is None:
                continue
            for limit in pacing.limits:
                shown = limits.setdefault(limit.name, {
                    "rate": str(limit.rate), "burst": limit.bucket_size, "key": limit.key.text,
                    "backend": pacing.backend, "routes": [], "tokens": {},
                })
                shown["routes"].append(route.name)
        recent: dict[str, list[tuple[float, str]]] = {}
        for (name, _), (key, tat, interval, burst) in self._seen.items():
            recent.setdefault(name, []).append((round(tokens(tat, now, interval, burst), 2), key))
        for name, shown in limits.items():
            shown["tokens"] = {key: left for left, key in sorted(recent.get(name, []))[:SHOWN_PER_LIMIT]}
        out: dict[str, Any] = {"limits": limits}
        if self.link is not None:
            out["redis"] = {"state": "up" if self.link.up else "down: pacing locally at rate / replicas",
                            "replicas": self.link.replicas}
        return out


def _turns(pacing: RateLimitPolicy, keys: Sequence[Key], share: int = 1) -> tuple[Turn, ...]:
    """A request's turn of each limit; at `share` > 1 (Redis down), this replica's share of it."""
    return tuple(
        Turn((limit.name, key.value), limit.rate.interval * share, max(1, limit.bucket_size // share))
        for limit, key in zip(pacing.limits, keys, strict=True)
    )
