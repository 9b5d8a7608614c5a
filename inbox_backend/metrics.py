"""Prometheus metrics in a registry the app owns (not the process-global one), so several apps can live
in one process (tests) and nothing leaks between them.

`route` is the aiohttp route's canonical pattern (`/messages/{id}`), never the raw path, so the label
set stays bounded whatever callers send. Example queries (see docs/walkthrough.md):

    histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))
    sum(rate(http_requests_total{status=~"5.."}[5m])) / sum(rate(http_requests_total[5m]))
"""

from __future__ import annotations

import platform

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, ProcessCollector, generate_latest

from inbox_backend import __version__

# 5 ms .. 30 s: from a cached read to a Gemini reply at the policy's timeout.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0)
UNMATCHED_ROUTE = "<unmatched>"
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "http_requests_total", "HTTP requests answered, by method, route pattern and status",
            ["method", "route", "status"], registry=r,
        )
        self.duration = Histogram(
            "http_request_duration_seconds", "Time to answer an HTTP request, by method and route pattern",
            ["method", "route"], buckets=DURATION_BUCKETS, registry=r,
        )
        self.bot_reply_failures = Counter(
            "inbox_bot_reply_failures_total",
            "Bot reply attempts that failed, by stage (load: Supabase reads, generate: Gemini, send: WhatsApp + store);"
            " a background reply waiting out an outage counts each try",
            ["stage"], registry=r,
        )
        self.ambiguous_sends = Counter(
            "inbox_ambiguous_sends_total",
            "Bot replies whose WhatsApp send has an unknown outcome (reached WhatsApp, no answer): maybe delivered",
            registry=r,
        )
        self.webhook_messages = Counter(
            "inbox_webhook_messages_total", "Inbound WhatsApp messages, by result (stored, duplicate, unknown_account)",
            ["result"], registry=r,
        )
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, start time
        Info("inbox_build", "The backend's version and Python", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in KNOWN_METHODS else "OTHER"  # callers choose methods: keep labels bounded
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
