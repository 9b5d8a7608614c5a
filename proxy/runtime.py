"""Everything with state, built from one `Policy`: sessions, bulkheads, breakers, budgets, throttle clocks,
the response cache, metrics. One owner, handed to the pipeline and the admin server explicitly; no
module-level state."""

from __future__ import annotations

import logging
import time
from typing import Any

import pybreaker

from proxy.breaker import STATE_VALUES, Breaker
from proxy.budget import RetryBudgetWindow
from proxy.cache import ResponseCache
from proxy.forward import Forwarder, open_session
from proxy.limits import Bulkhead
from proxy.metrics import Metrics
from proxy.policy import Policy, Route, Upstream
from proxy.routing import Router
from proxy.throttle import ThrottleClock

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
    def __init__(self, upstream: Upstream, metrics: Metrics, listener: BreakerTelemetry) -> None:
        self.upstream = upstream
        self.forwarder = Forwarder(upstream, open_session(upstream))
        self.bulkhead = Bulkhead(upstream.name, upstream.limits)
        self.budget = RetryBudgetWindow(upstream.default_route.retry.budget)
        self.throttle = ThrottleClock(upstream.name)
        self.breakers: dict[str, Breaker] = {}
        for route in (upstream.default_route, *upstream.routes):
            if route.breaker_name not in self.breakers:
                self.breakers[route.breaker_name] = Breaker(route.breaker_name, route.breaker, listener)
                metrics.breaker_state.labels(route.breaker_name).set(0)
        self._recent: list[tuple[float, bool]] = []  # (when, failed) of recent attempts, for /upstreams

    def breaker_for(self, route: Route) -> Breaker:
        return self.breakers[route.breaker_name]

    def note_attempt(self, failed: bool) -> None:
        now = time.monotonic()
        self._recent.append((now, failed))
        if len(self._recent) > 1000 or (self._recent and self._recent[0][0] < now - 60):
            self._recent = [r for r in self._recent[-1000:] if r[0] >= now - 60]

    def error_rate(self) -> float:
        now = time.monotonic()
        recent = [failed for when, failed in self._recent if when >= now - 60]
        return round(sum(recent) / len(recent), 4) if recent else 0.0

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
        await self.forwarder.session.close()


class Runtime:
    def __init__(self, policy: Policy, metrics: Metrics | None = None) -> None:
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.router = Router(policy.upstreams)
        self.started = time.time()
        listener = BreakerTelemetry(self.metrics)
        self.upstreams = {name: UpstreamState(u, self.metrics, listener) for name, u in policy.upstreams.items()}
        # Holds settings, not routes: a policy reload should hand this same cache to the next runtime.
        self.cache = ResponseCache.open(policy.cache, self.metrics)

    @property
    def breakers(self) -> dict[str, Breaker]:
        return {name: b for state in self.upstreams.values() for name, b in state.breakers.items()}

    async def close(self) -> None:
        for state in self.upstreams.values():
            await state.close()
        await self.cache.close()
