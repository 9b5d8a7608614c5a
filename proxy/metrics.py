"""Prometheus metrics, in a registry owned by the runtime (not the global one), so several sidecars
and the tests can live in one process. Label values are bounded: upstream and route *names*, never paths.

Refusals are counted the cheap way (a plain counter per upstream and reason) and applied to their series
before anything reads the registry, as are the per-request series (see `proxy.account`): a collection first
runs the `before_collect` callbacks, so a scrape never misses a request answered before it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# 5 ms .. 60 s: from a cache hit to the slowest media download the policy allows.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        r.register(_Settle(self))  # first: a collection applies the waiting notes before reading any series
        self.requests = Counter(
            "egress_requests_total", "Requests answered, by upstream, route, method and status code",
            ["upstream", "route", "method", "code"], registry=r,
        )
        self.duration = Histogram(
            "egress_request_duration_seconds", "Time from request received to response finished",
            ["upstream", "route"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.upstream_errors = Counter(
            "egress_upstream_errors_total", "Failed attempts, by upstream and egress error reason",
            ["upstream", "reason"], registry=r,
        )
        self.inflight = Gauge(
            "egress_inflight_requests", "Requests being handled, by upstream", ["upstream"], registry=r
        )
        self.retries = Counter(
            "egress_retries_total", "Retries made, by upstream, route and what was retried",
            ["upstream", "route", "reason"], registry=r,
        )
        self.hedges = Counter(
            "egress_hedges_total", "Hedged attempts, by upstream, route and result: won, lost, or why none was sent",
            ["upstream", "route", "result"], registry=r,
        )
        self.budget_exhausted = Counter(
            "egress_retry_budget_exhausted_total", "Retries refused because the retry budget was spent",
            ["upstream"], registry=r,
        )
        self.breaker_state = Gauge(
            "egress_breaker_state", "Breaker state: 0 closed, 1 half-open, 2 open", ["breaker"], registry=r
        )
        self.breaker_transitions = Counter(
            "egress_breaker_transitions_total", "Breaker state changes, by target state", ["breaker", "to"],
            registry=r,
        )
        self.rejected = Counter(
            "egress_rejected_total", "Requests refused without contacting the upstream",
            ["upstream", "reason"], registry=r,
        )
        self.reloads = Counter(
            "egress_policy_reloads_total", "Policy reloads, applied or refused (a bad file keeps the running policy)",
            ["result"], registry=r,
        )
        self.cache_requests = Counter(
            "egress_cache_requests_total", "Cache lookups by result (HIT, MISS, STALE, BYPASS, REFRESH)",
            ["upstream", "route", "result"], registry=r,
        )
        self.cache_errors = Counter(
            "egress_cache_errors_total", "Cache backend operations that failed or timed out", ["backend"],
            registry=r,
        )
        self.cache_entries = Gauge("egress_cache_entries", "Entries in the memory cache", registry=r)
        self.cache_bytes = Gauge("egress_cache_bytes", "Body bytes held by the memory cache", registry=r)
        r.register(_LoopTasks())

        self._routes: dict[tuple[str, str], RouteMetrics] = {}
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self._rejections: collections.Counter[tuple[str, str]] = collections.Counter()
        self._before_collect: list[Callable[[], None]] = [self._apply_rejections]

    def child(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, looked up once: label values are bounded, and `.labels()` takes a lock."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def route(self, upstream: str, route: str) -> RouteMetrics:
        """The per-request series of one route, looked up once (a `.labels()` call costs a lock and a hash)."""
        key = (upstream, route)
        found = self._routes.get(key)
        if found is None:
            found = self._routes[key] = RouteMetrics(self, upstream, route)
        return found

    def refused(self, upstream: str, reason: str) -> None:
        """One request refused without contacting the upstream (`egress_rejected_total`)."""
        self._rejections[upstream, reason] += 1

    def before_collect(self, callback: Callable[[], None]) -> None:
        """Run `callback` whenever the registry is read (it applies what is waiting to be counted)."""
        self._before_collect.append(callback)

    def settle(self) -> None:
        for callback in self._before_collect:
            callback()

    def _apply_rejections(self) -> None:
        rejections, self._rejections = self._rejections, collections.Counter()
        for (upstream, reason), count in rejections.items():
            self.child(self.rejected, upstream, reason).inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Settle(Collector):
    """Exports nothing; collected first (the registry keeps its collectors in order), it settles what waits.
    A read of `registry.restricted_registry(names)` would skip it (it has no names): the admin port reads all."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # nothing to describe: without this the registry would collect at registration

    def collect(self) -> list[Metric]:
        self._metrics.settle()
        return []


class _LoopTasks(Collector):
    """`egress_event_loop_tasks`: the asyncio tasks alive in the scraping loop, counted at scrape time only (a
    walk of the loop's task set, nothing per request). A count that climbs under steady load is a leak
    (`bench/soak.py` watches it). Outside a running loop (a synchronous `render()`) it exports no sample."""

    NAME = "egress_event_loop_tasks"
    HELP = "asyncio tasks alive in the sidecar's event loop, counted at scrape"

    def describe(self) -> list[Metric]:
        return [GaugeMetricFamily(self.NAME, self.HELP)]

    def collect(self) -> list[Metric]:
        family = GaugeMetricFamily(self.NAME, self.HELP)
        try:
            tasks = asyncio.all_tasks()
        except RuntimeError:  # no running loop: nothing to count
            return [family]
        family.add_metric([], len(tasks))
        return [family]


class RouteMetrics:
    def __init__(self, metrics: Metrics, upstream: str, route: str) -> None:
        self._metrics = metrics
        self._upstream = upstream
        self._route = route
        self.duration = metrics.duration.labels(upstream, route) if upstream else None
        self._requests: dict[tuple[str, str], Any] = {}

    def count(self, method: str, code: str, requests: int = 1) -> None:
        key = (method, code)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self._metrics.requests.labels(self._upstream, self._route, method, code)
        counter.inc(requests)

    def took(self, seconds: Iterable[float]) -> None:
        if self.duration is not None:
            observe = self.duration.observe
            for each in seconds:
                observe(each)
