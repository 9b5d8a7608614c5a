"""Everything with state, built from one `Policy`: sessions, bulkheads, breakers, budgets, throttle clocks,
the response cache, metrics. One owner, handed to the pipeline and the admin server explicitly; no
module-level state."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import pybreaker

from proxy.breaker import STATE_VALUES, Breaker
from proxy.budget import RetryBudgetWindow
from proxy.cache import ResponseCache
from proxy.forward import Forwarder, Pools
from proxy.limits import Bulkhead
from proxy.metrics import Metrics
from proxy.policy import Policy, Route, Upstream
from proxy.routing import Router
from proxy.throttle import ThrottleClock
from proxy.window import SlidingCounts

log = logging.getLogger("egress.breaker")


class BreakerTelemetry(pybreaker.CircuitBreakerListener):
    """Breaker transitions -> a log line an operator can grep, and the breaker metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        name = str(cb.name)
        state = str(new.name)
        self.metrics.breaker_state.labels(name).set(STATE_VALUES[state])
        self.metrics.breaker_transitions.labels(name, state).inc()
        if state == pybreaker.STATE_OPEN:
            log.warning(
                "Circuit breaker OPEN for %s after %d failures (retry in %.0fs)",
                name, cb.fail_counter, cb.reset_timeout,
            )
        else:
            log.warning("Circuit breaker %s for %s", state.upper(), name)


class UpstreamState:
    """One upstream's live state. Built anew on a policy reload, carrying over from `previous` what should
    survive it: the connection pools (see Pools.carry), breakers (by name), the bulkhead (same limits), the retry
    budget's window and the throttle clock."""

    def __init__(
        self,
        upstream: Upstream,
        metrics: Metrics,
        listener: BreakerTelemetry,
        previous: UpstreamState | None = None,
    ) -> None:
        self.upstream = upstream
        self.inflight = metrics.inflight.labels(upstream.name)
        pools = previous.forwarder.pools.carry(upstream) if previous is not None else Pools.open(upstream)
        self.forwarder: Forwarder = Forwarder(upstream, pools)
        self.bulkhead: Bulkhead = (
            previous.bulkhead
            if previous is not None and previous.upstream.limits == upstream.limits
            else Bulkhead(upstream.name, upstream.limits)
        )
        budget = upstream.default_route.retry.budget
        self.budget: RetryBudgetWindow = (
            previous.budget if previous is not None and previous.budget.budget == budget else RetryBudgetWindow(budget)
        )
        self.throttle: ThrottleClock = previous.throttle if previous is not None else ThrottleClock(upstream.name)
        self.breakers: dict[str, Breaker] = {}
        for route in (upstream.default_route, *upstream.routes):
            if route.breaker_name in self.breakers:
                continue
            kept = previous.breakers.get(route.breaker_name) if previous is not None else None
            if kept is not None:
                kept.reconfigure(route.breaker)
                self.breakers[route.breaker_name] = kept
            else:
                self.breakers[route.breaker_name] = Breaker(route.breaker_name, upstream.name, route.breaker, listener)
                metrics.breaker_state.labels(route.breaker_name).set(0)
        # Attempts and failures over the last minute, for /upstreams.
        self._recent: SlidingCounts = (
            previous._recent if previous is not None else SlidingCounts(("attempts", "failures"), 60)
        )

    def breaker_for(self, route: Route) -> Breaker:
        return self.breakers[route.breaker_name]

    def note_attempt(self, failed: bool) -> None:
        self._recent.add("attempts")
        if failed:
            self._recent.add("failures")

    def error_rate(self) -> float:
        attempts = self._recent.total("attempts")
        return round(self._recent.total("failures") / attempts, 4) if attempts else 0.0

    def snapshot(self) -> dict[str, Any]:
        limits = self.upstream.limits
        main = self.breakers[self.upstream.name]
        return {
            "name": self.upstream.name,
            "inflight": self.bulkhead.inflight,
            "queued": self.bulkhead.queued,
            "limits": {"max_concurrent": limits.max_concurrent, "max_queue": limits.max_queue},
            "breaker": main.state,
            "breakers": {name: b.state for name, b in self.breakers.items()},
            "throttled_for_seconds": round(self.throttle.remaining(), 3),
            "error_rate_1m": self.error_rate(),
        }

    async def close(self) -> None:
        await self.forwarder.pools.close()


class Runtime:
    def __init__(self, policy: Policy, previous: Runtime | None = None) -> None:
        self.policy = policy
        # Counters must keep counting across a reload: one registry for the life of the process.
        self.metrics: Metrics = previous.metrics if previous is not None else Metrics()
        self.router = Router(policy.upstreams)
        self.started: float = previous.started if previous is not None else time.time()
        listener = previous._listener if previous is not None else BreakerTelemetry(self.metrics)
        self._listener: BreakerTelemetry = listener
        before = previous.upstreams if previous is not None else {}
        self.upstreams: dict[str, UpstreamState] = {
            name: UpstreamState(u, self.metrics, listener, before.get(name)) for name, u in policy.upstreams.items()
        }
        # The cache holds settings, not routes: a reload keeps it (and its entries) unless its settings change.
        self.cache: ResponseCache
        if previous is not None and previous.policy.cache == policy.cache:
            self.cache = previous.cache
        else:
            self.cache = ResponseCache.open(policy.cache, self.metrics)

    @property
    def breakers(self) -> dict[str, Breaker]:
        return {name: b for state in self.upstreams.values() for name, b in state.breakers.items()}

    def successor(self, policy: Policy) -> Runtime:
        """The runtime for a reloaded policy; close the old one with `retire` once its requests are done."""
        return Runtime(policy, previous=self)

    async def retire(self, successor: Runtime) -> None:
        """Close what the successor did not take over (pools of removed or re-pointed upstreams, an old cache)."""
        kept = {id(state.forwarder.pools) for state in successor.upstreams.values()}
        for state in self.upstreams.values():
            if id(state.forwarder.pools) not in kept:
                await state.close()
        if successor.cache is not self.cache:
            await self.cache.close()
        for name in self.breakers.keys() - successor.breakers.keys():
            # A breaker the policy dropped: its last state must not be exported (and alerted on) forever.
            with contextlib.suppress(KeyError):
                self.metrics.breaker_state.remove(name)

    async def close(self) -> None:
        for state in self.upstreams.values():
            await state.close()
        await self.cache.close()
