"""Everything with state, built from one `Policy`, and how each piece lives through a reload.

`LIFETIMES` below is the table of what a reload carries over and what it starts anew, one row per piece, next to
the `carry` rule that implements it (`check --diff` reports from it; a test holds each row to what `successor`
does). One owner, handed out through one `LiveRuntime` reference that a reload swaps in one place; a request keeps
the runtime it arrived under (`Exchange.runtime`). No module-level state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

from proxy.cache import ResponseCache
from proxy.forward import Forwarder, Pools
from proxy.metrics import Metrics
from proxy.pacing import Pacer
from proxy.policy import CacheSettings, Policy, Upstream
from proxy.routing import Router
from proxy.stages.breaker import Breaker, Breakers, BreakerTelemetry
from proxy.stages.bulkhead import Bulkhead
from proxy.stages.retry import RetryBudgetWindow
from proxy.throttle import ThrottleClock
from proxy.traffic import Traffic
from proxy.window import SlidingCounts


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One piece of state and its rule over a reload.

    `scope`: `process` (always carried), `version` (always rebuilt), `top` (carried while `settings` are unchanged),
    `upstream` (per upstream name: carried while the upstream stays and its `settings` are unchanged), `breaker`
    (per breaker name: carried while a route still names it). `settings` are keys of the effective policy (`GET
    /policy`, dotted, at the scope's level; a key covers everything under it)."""

    piece: str
    rule: str
    declared_at: str
    scope: Literal["process", "version", "top", "upstream", "breaker"]
    settings: tuple[str, ...] = ()


LIFETIMES: tuple[Lifetime, ...] = (
    Lifetime("metrics registry", "the process", "Runtime (kept from `previous`)", "process"),
    Lifetime("last minute of traffic (status page)", "the process", "Runtime (kept from `previous`)", "process"),
    Lifetime("router, routes", "one policy version", "Runtime", "version"),
    Lifetime("breakers", "carried by name (state and counts); new thresholds apply", "stages.breaker.Breakers.carry",
             "breaker"),
    Lifetime("bulkhead", "carried while the upstream's limits are unchanged", "stages.bulkhead.Bulkhead.carry",
             "upstream", ("limits",)),
    Lifetime("retry budget window", "carried while its settings are unchanged", "stages.retry.RetryBudgetWindow.carry",
             "upstream", ("retry.budget",)),
    Lifetime("throttle clock", "carried always (per upstream name)", "throttle.ThrottleClock.carry", "upstream"),
    Lifetime("connection pools", "carried while URL and idle bounds are unchanged", "forward.Pools.carry", "upstream",
             ("url", "limits.keepalive", "limits.keepalive_non_idempotent")),
    Lifetime("response cache", "carried while `cache` settings are unchanged", "cache.ResponseCache.carry", "top",
             ("cache",)),
    Lifetime("recent attempt counts", "carried always (per upstream name)", "UpstreamState", "upstream"),
    Lifetime("rate limit budgets", "carried always (per upstream name); its Redis link follows cache.redis_url",
             "pacing.Pacer.carry", "upstream"),
)


class UpstreamState:
    """One upstream's live state, each piece carried from `previous` by its own rule (see LIFETIMES)."""

    def __init__(
        self, upstream: Upstream, metrics: Metrics, telemetry: BreakerTelemetry, previous: UpstreamState | None,
        cache: CacheSettings | None = None,
    ) -> None:
        self.upstream = upstream
        self.inflight = metrics.inflight.labels(upstream.name)
        was = previous
        self.forwarder: Forwarder = Forwarder(upstream, Pools.carry(was.forwarder.pools if was else None, upstream))
        self.bulkhead: Bulkhead = Bulkhead.carry(was.bulkhead if was else None, upstream)
        self.budget: RetryBudgetWindow = RetryBudgetWindow.carry(was.budget if was else None, upstream)
        self.throttle: ThrottleClock = ThrottleClock.carry(was.throttle if was else None, upstream)
        self.breakers: Breakers = Breakers.carry(was.breakers if was else None, upstream, telemetry)
        self.pacer: Pacer = Pacer.carry(was.pacer if was else None, upstream, cache or CacheSettings(), metrics)
        # Attempts and failures over the last minute, for /upstreams.
        self._recent: SlidingCounts = was._recent if was else SlidingCounts(("attempts", "failures"), 60)

    def note_attempt(self, failed: bool) -> None:
        self._recent.add("attempts")
        if failed:
            self._recent.add("failures")

    def error_rate(self) -> float:
        attempts = self._recent.total("attempts")
        return round(self._recent.total("failures") / attempts, 4) if attempts else 0.0

    def snapshot(self) -> dict[str, Any]:
        limits = self.upstream.limits
        breakers = self.breakers.by_name
        return {
            "name": self.upstream.name,
            "inflight": self.bulkhead.inflight,
            "queued": self.bulkhead.queued,
            "limits": {"max_concurrent": limits.max_concurrent, "max_queue": limits.max_queue},
            "breaker": breakers[self.upstream.name].state,
            "breakers": {name: b.state for name, b in breakers.items()},
            "throttled_for_seconds": round(self.throttle.remaining(), 3),
            "error_rate_1m": self.error_rate(),
            "rate_limits": self.pacer.snapshot(self.upstream),
        }

    async def close(self) -> None:
        await self.forwarder.pools.close()


class Runtime:
    def __init__(self, policy: Policy, previous: Runtime | None = None) -> None:
        self.policy = policy
        # Counters must keep counting across a reload: one registry for the life of the process.
        self.metrics: Metrics = previous.metrics if previous is not None else Metrics()
        self.traffic: Traffic = previous.traffic if previous is not None else Traffic()
        self.router = Router(policy.upstreams)
        self.started: float = previous.started if previous is not None else time.time()
        self.telemetry: BreakerTelemetry = (
            previous.telemetry if previous is not None else BreakerTelemetry(self.metrics)
        )
        before = previous.upstreams if previous is not None else {}
        self.upstreams: dict[str, UpstreamState] = {
            name: UpstreamState(u, self.metrics, self.telemetry, before.get(name), policy.cache)
            for name, u in policy.upstreams.items()
        }
        was = previous.cache if previous is not None else None
        self.cache: ResponseCache = ResponseCache.carry(was, policy.cache, self.metrics)

    @property
    def breakers(self) -> dict[str, Breaker]:
        return {name: b for state in self.upstreams.values() for name, b in state.breakers.by_name.items()}

    def successor(self, policy: Policy) -> Runtime:
        """The runtime for a reloaded policy; close the old one with `retire` once its requests are done."""
        return Runtime(policy, previous=self)

    async def retire(self, successor: Runtime) -> None:
        """Close what the successor did not take over (pools of removed or re-pointed upstreams, an old cache)."""
        kept = {id(state.forwarder.pools) for state in successor.upstreams.values()}
        for name, state in self.upstreams.items():
            if id(state.forwarder.pools) not in kept:
                await state.close()
            following = successor.upstreams.get(name)
            state.breakers.retire(following.breakers if following is not None else None, self.metrics)
            if following is None or following.pacer is not state.pacer:
                await state.pacer.close()
        if successor.cache is not self.cache:
            await self.cache.close()

    async def close(self) -> None:
        for state in self.upstreams.values():
            await state.close()
            await state.pacer.close()
        await self.cache.close()


class LiveRuntime:
    """The one reference to the running runtime, shared by the data plane and the admin port: a reload swaps it
    here, once, and both see the new one from their next request."""

    __slots__ = ("runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def swap(self, successor: Runtime) -> Runtime:
        """Make `successor` the running runtime; the previous one, to retire once its requests are done."""
        previous, self.runtime = self.runtime, successor
        return previous
