"""Accounting, the pipeline's last stage, and the one place where the sidecar defers work: what the request path
counts and logs waits in the `Ledger` and is settled in batches.

    record(AccessEntry)   every request answered: its access-log line, `egress_requests_total` and
                          `egress_request_duration_seconds`
    refuse(upstream, why) every request refused without contacting the upstream: `egress_rejected_total`
                          (the request path calls `metrics.refused`, which hands it here)
    and, from the same entries, the last minute of each upstream's traffic for the status page (`proxy.traffic`)

Everything waiting is settled at once: when `BATCH` entries are waiting, `INTERVAL` after the first one, before
anything reads the metrics (a scrape, `registry.get_sample_value`: the registry settles its ledger first), and
at a stop (`close`). A settle writes the batch's access-log lines with one write, so the log handler buffers
nothing of its own, and nothing else in the sidecar holds work back.

Why batches: the work is the same either way, but a batch runs it warm, where each request doing its own between
two network events paid for cold caches every time. Measured on the open-breaker refusal, where accounting is
most of the work: about 1.7 µs of 31 per request. A line keeps the time its request was answered.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from proxy.logs import AccessEntry, log_accesses
from proxy.metrics import Metrics, method_label
from proxy.traffic import Traffic

log = logging.getLogger("egress.account")

BATCH = 256  # access-log lines of 200-400 bytes: one write of 50-100 KiB
INTERVAL = 0.1  # seconds an entry waits at most, with the event loop running (nginx's `access_log ... flush=`)


class Ledger:
    def __init__(
        self, metrics: Metrics, traffic: Traffic | None = None, batch: int = BATCH, interval: float = INTERVAL
    ) -> None:
        self._metrics = metrics
        self._traffic = traffic
        self._batch = batch
        self._interval = interval
        self._entries: list[tuple[float, AccessEntry]] = []
        self._refusals: collections.Counter[tuple[str, str]] = collections.Counter()
        self._timer: asyncio.TimerHandle | None = None
        metrics.account_with(self)  # refusals come here, and a read of the registry settles first

    def record(self, entry: AccessEntry) -> None:
        self._entries.append((time.time(), entry))
        if len(self._entries) >= self._batch:
            self.settle()
        elif self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(self._interval, self._on_timer)
            except RuntimeError:  # no event loop (start-up, shutdown, a unit test): at once
                self.settle()

    def refuse(self, upstream: str, reason: str) -> None:
        """A plain count, applied at the next settle: refusals come by the thousand in an outage, and only a
        reader of the registry needs them (they have their access-log lines through `record`)."""
        self._refusals[upstream, reason] += 1

    def settle(self) -> None:
        """Account everything waiting: one counter increment per series, one histogram observation per entry and
        the entries' access-log lines. A failure is logged and stays here: the request that filled the batch, the
        scrape or the timer that settled it goes on."""
        if self._timer is not None:  # settled early (a full batch, a scrape): the next entry starts a new wait
            self._timer.cancel()
            self._timer = None
        entries, self._entries = self._entries, []
        refusals, self._refusals = self._refusals, collections.Counter()
        try:
            self._count(entries, refusals)
        except Exception:
            log.exception("could not count %d requests", len(entries) + refusals.total())
        if self._traffic is not None and entries:
            try:
                self._traffic.record(entries)
            except Exception:
                log.exception("could not summarise %d requests for the status page", len(entries))
        if not entries:
            return
        try:
            log_accesses(entries)
        except Exception:
            log.exception("could not write %d access-log lines", len(entries))

    def _count(self, entries: list[tuple[float, AccessEntry]], refusals: collections.Counter[tuple[str, str]]) -> None:
        metrics = self._metrics
        for (upstream, reason), count in refusals.items():
            metrics.child(metrics.rejected, upstream, reason).inc(count)
        requests: collections.Counter[tuple[str, str, str, int]] = collections.Counter()
        durations: collections.defaultdict[tuple[str, str], list[float]] = collections.defaultdict(list)
        for _, entry in entries:
            requests[entry.upstream, entry.route, entry.method, entry.status] += 1
            durations[entry.upstream, entry.route].append(entry.duration_ms / 1000)
        route = metrics.route
        for (upstream, name, method, status), count in requests.items():
            route(upstream, name).count(method_label(method), str(status), count)
        for (upstream, name), seconds in durations.items():
            route(upstream, name).took(seconds)

    def close(self) -> None:
        """At a stop: account what is waiting (the timer is stopped with it)."""
        self.settle()

    def _on_timer(self) -> None:
        self._timer = None
        self.settle()
