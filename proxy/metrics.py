"""Prometheus metrics, in a registry owned by the runtime (not the global one), so several sidecars
and the tests can live in one process. Label values are bounded: upstream and route *names*, never paths.

The per-request series and the refusal counts are deferred and batched by the `Ledger` accounting this registry
(`proxy.account`, where all deferral lives): a collection settles it first, so a scrape never misses a request
answered before it.
"""

from __future__ import annotations

import asyncio
import platform
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy import __version__
from proxy.memo import Memo

# 5 ms .. 60 s: from a cache hit to the slowest media download the policy allows.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)
# 0 (a turn at once: most requests) .. 30 s: the longest `rate_limit.wait` worth having within a deadline.
WAIT_BUCKETS = (0.0, 0.005, 0.025, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Series looked up once, not per use: `.labels()` takes a lock and hashes its values (about 2 µs, timeit, against
# 0.5 µs for the memo). Label values are bounded by the policy, so the bounds are never reached in practice; an
# evicted child is only looked up again (the series lives on in its metric).
CHILD_MEMO, ROUTE_MEMO, CODE_MEMO = 4096, 1024, 256


class Deferring(Protocol):
    """What the registry asks of the ledger accounting it (`proxy.account.Ledger`)."""

    def refuse(self, upstream: str, reason: str) -> None: ...

    def settle(self) -> None: ...


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "OTHER"


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        r.register(_Settle(self))  # first: a collection settles what is waiting before reading any series
        self.requests = Counter(
            "egress_requests_total", "Requests answered, by upstream, route, method and status code",
            ["upstream", "route", "method", "code"], registry=r,
        )
        self.duration = Histogram(
            "egress_request_duration_seconds", "Time from request received to response finished",
            ["upstream", "route"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.upstream_errors = Counter(
            "egress_upstream_errors_total", "Failed attempts, by upstream and reason (an egress error's, or "
            "upstream_5xx: answered with a 5xx status)",
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
            "egress_breaker_state", "Breaker state at the scrape: 0 closed, 1 half-open or due for its trial, 2 open",
            ["breaker"], registry=r,
        )
        self.breaker_transitions = Counter(
            "egress_breaker_transitions_total", "Breaker state changes, by target state", ["breaker", "to"],
            registry=r,
        )
        self.rejected = Counter(
            "egress_rejected_total", "Requests refused without contacting the upstream",
            ["upstream", "reason"], registry=r,
        )
        self.observed = Counter(
            "egress_observed_total", "Refusals computed but not enforced (`mode: observe`), by upstream and decision "
            "(circuit_open, trial_in_flight, overloaded, queued)", ["upstream", "decision"], registry=r,
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
        self.rate_limited = Counter(
            "egress_rate_limited_total", "Requests on paced routes, by upstream, route, limit and result: passed (its "
            "turn at once), waited (this limit made it wait) or rejected (this limit's turn was further off than the "
            "request could wait: 503 rate_limited)", ["upstream", "route", "limit", "result"], registry=r,
        )
        self.rate_limit_wait = Histogram(
            "egress_rate_limit_wait_seconds", "How long requests on paced routes waited for their turn (0: none)",
            ["upstream", "route"], buckets=WAIT_BUCKETS, registry=r,
        )
        self.rate_limit_backend_errors = Counter(
            "egress_rate_limit_backend_errors_total", "Rate limit decisions and heartbeats Redis failed or did not "
            "answer within cache.op_timeout (the replica then paces locally at rate / replicas)", ["upstream"],
            registry=r,
        )
        self.cache_entries = Gauge("egress_cache_entries", "Entries in the memory cache", registry=r)
        self.cache_bytes = Gauge("egress_cache_bytes", "Body bytes held by the memory cache", registry=r)
        r.register(_LoopTasks())
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time
        Info("egress_build", "The sidecar's version and Python", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )

        self._children: Memo[tuple[Counter | Gauge | Histogram, tuple[str, ...]], Any] = Memo(CHILD_MEMO)
        self._routes: Memo[tuple[str, str], RouteMetrics] = Memo(ROUTE_MEMO)
        self._ledgers: list[Deferring] = []

    def child(self, metric: Counter | Gauge | Histogram, *values: str) -> Any:
        """`metric.labels(*values)`, remembered."""
        return self._children.get((metric, values), _labelled)

    def route(self, upstream: str, route: str) -> RouteMetrics:
        """The per-request series of one route, remembered."""
        return self._routes.get((upstream, route), self._route_metrics)

    def _route_metrics(self, key: tuple[str, str]) -> RouteMetrics:
        return RouteMetrics(self, *key)

    def refused(self, upstream: str, reason: str) -> None:
        """One request refused without contacting the upstream (`egress_rejected_total`): counted by the ledger
        accounting this registry, or at once when none does (a bare `Metrics`)."""
        if self._ledgers:
            self._ledgers[-1].refuse(upstream, reason)
        else:
            self.child(self.rejected, upstream, reason).inc()

    def account_with(self, ledger: Deferring) -> None:
        """`ledger` defers this registry's counts: refusals go to it (to the latest, should there be several),
        and every read of the registry settles it first."""
        self._ledgers.append(ledger)

    def settle(self) -> None:
        for ledger in self._ledgers:
            ledger.settle()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _labelled(key: tuple[Counter | Gauge | Histogram, tuple[str, ...]]) -> Any:
    metric, values = key
    return metric.labels(*values)


class _Settle(Collector):
    """Exports nothing; collected first (the registry keeps its collectors in order), it settles the ledgers.
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
        self._requests: Memo[tuple[str, str], Any] = Memo(CODE_MEMO)

    def count(self, method: str, code: str, requests: int = 1) -> None:
        self._requests.get((method, code), self._counter).inc(requests)

    def _counter(self, key: tuple[str, str]) -> Any:
        method, code = key
        return self._metrics.requests.labels(self._upstream, self._route, method, code)

    def took(self, seconds: Iterable[float]) -> None:
        if self.duration is not None:
            observe = self.duration.observe
            for each in seconds:
                observe(each)
