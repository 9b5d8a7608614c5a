"""Per-request accounting in batches (proxy.account.Ledger: access lines, request series, refusal counts): never
more than a batch waits, a line keeps its request's time and place, and any reader of the registry sees every
request."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.account import Ledger
from proxy.logs import AccessEntry, AccessLogHandler, JsonFormatter, access_log
from proxy.metrics import Metrics

ANSWERED = (("code", "200"), ("method", "POST"), ("route", "generate"), ("upstream", "gemini"))


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def entry(request_id: str, status: int = 200, ms: float = 3.0, **kw: object) -> AccessEntry:
    return AccessEntry(request_id, "gemini", "generate", "POST", "/gemini/x", status, ms, **kw)  # type: ignore[arg-type]


@pytest.fixture
def access_lines() -> Iterator[io.StringIO]:
    """The access log as `configure` sets it up (its one handler, JSON), into a string."""
    stream = io.StringIO()
    handler = AccessLogHandler(stream)
    handler.setFormatter(JsonFormatter())
    saved = access_log.handlers[:], access_log.propagate, access_log.level
    access_log.handlers[:] = [handler]
    access_log.propagate = False
    access_log.setLevel(logging.INFO)
    yield stream
    access_log.handlers[:], access_log.propagate, _ = saved
    access_log.setLevel(saved[2])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_entries_wait_at_most_a_batch_and_keep_their_time_and_order(access_lines):
    metrics = Metrics()
    ledger = Ledger(metrics, batch=4, interval=60)
    ledger.record(entry("r0", ms=2.0))
    await asyncio.sleep(0.3)
    for n in range(1, 3):
        ledger.record(entry(f"r{n}", ms=2.0 + n))
    assert lines(access_lines) == []  # waiting: under the batch, and the timer is a minute away
    ledger.record(entry("r3", status=503, ms=0.0123, egress_error="circuit_open"))
    written = lines(access_lines)  # the 4th filled the batch
    assert [line["request_id"] for line in written] == ["r0", "r1", "r2", "r3"]
    assert written[3]["duration_ms"] == 0.01 and written[3]["egress_error"] == "circuit_open"
    stamps = [datetime.strptime(str(line["ts"]), "%Y-%m-%dT%H:%M:%S.%fZ") for line in written]
    assert (stamps[1] - stamps[0]).total_seconds() >= 0.25  # stamped when recorded, not when settled
    found = samples(metrics)
    assert found["egress_requests_total", ANSWERED] == 3
    bucket = (("le", "0.005"), ("route", "generate"), ("upstream", "gemini"))
    assert found["egress_request_duration_seconds_bucket", bucket] == 4  # 2, 3, 4 and 0.0123 ms: raw, not rounded
    ledger.close()


async def test_a_scrape_and_any_reader_of_the_registry_see_every_request(access_lines):
    metrics = Metrics()
    ledger = Ledger(metrics, batch=1000, interval=60)
    ledger.record(entry("r1"))
    metrics.refused("gemini", "circuit_open")
    metrics.refused("gemini", "circuit_open")
    metrics.refused("gemini", "overloaded")
    labels = dict(ANSWERED)
    assert metrics.registry.get_sample_value("egress_requests_total", labels) == 1.0
    assert [line["request_id"] for line in lines(access_lines)] == ["r1"]  # settled by the read, logged too
    found = samples(metrics)
    assert found["egress_rejected_total", (("reason", "circuit_open"), ("upstream", "gemini"))] == 2
    assert found["egress_rejected_total", (("reason", "overloaded"), ("upstream", "gemini"))] == 1
    assert found["egress_requests_total", ANSWERED] == 1  # applied once, not again


async def test_the_timer_settles_a_quiet_ledger_and_close_settles_the_rest(access_lines):
    metrics = Metrics()
    ledger = Ledger(metrics, batch=1000, interval=0.05)
    ledger.record(entry("r1"))
    await asyncio.sleep(0.15)
    assert [line["request_id"] for line in lines(access_lines)] == ["r1"]
    ledger.record(entry("r2"))
    ledger.close()  # a stop: nothing is left waiting
    assert [line["request_id"] for line in lines(access_lines)] == ["r1", "r2"]


def test_without_an_event_loop_entries_are_accounted_at_once(access_lines):
    metrics = Metrics()
    Ledger(metrics, batch=1000).record(entry("r1"))
    assert [line["request_id"] for line in lines(access_lines)] == ["r1"]


async def test_a_failing_access_log_loses_its_lines_not_the_counts_nor_the_request(access_lines, monkeypatch, caplog):
    import proxy.account

    def broken(entries: object) -> None:
        raise RuntimeError("log sink failed")

    monkeypatch.setattr(proxy.account, "log_accesses", broken)
    metrics = Metrics()
    ledger = Ledger(metrics, batch=2, interval=60)
    ledger.record(entry("r1"))
    ledger.record(entry("r2"))  # fills the batch: settles here, and must not raise into this request
    assert samples(metrics)["egress_requests_total", ANSWERED] == 2
    assert any(r.getMessage() == "could not write 2 access-log lines" for r in caplog.records)


async def test_the_event_loop_task_gauge_counts_the_tasks_alive_at_scrape():
    metrics = Metrics()
    tasks = ("egress_event_loop_tasks", ())
    before = samples(metrics)[tasks]
    sleepers = [asyncio.create_task(asyncio.sleep(60)) for _ in range(5)]
    try:
        assert samples(metrics)[tasks] == before + 5
    finally:
        for sleeper in sleepers:
            sleeper.cancel()
        await asyncio.gather(*sleepers, return_exceptions=True)
    assert samples(metrics)[tasks] == before


def test_the_event_loop_task_gauge_has_no_sample_outside_a_loop():
    assert not [name for name, _ in samples(Metrics()) if name == "egress_event_loop_tasks"]


async def test_refusals_wait_in_the_ledger_until_it_settles(access_lines):
    metrics = Metrics()
    ledger = Ledger(metrics, batch=2, interval=60)
    metrics.refused("gemini", "circuit_open")
    assert ledger._refusals == {("gemini", "circuit_open"): 1}  # a plain count, no series touched yet
    ledger.record(entry("r1"))
    ledger.record(entry("r2"))  # a full batch settles everything waiting, the refusals too
    assert not ledger._refusals
    assert samples(metrics)["egress_rejected_total", (("reason", "circuit_open"), ("upstream", "gemini"))] == 1


def test_without_a_ledger_a_refusal_is_counted_at_once():
    metrics = Metrics()
    metrics.refused("", "bad_request")
    assert samples(metrics)["egress_rejected_total", (("reason", "bad_request"), ("upstream", ""))] == 1


async def test_a_batch_of_access_lines_is_one_write(access_lines, monkeypatch):
    writes: list[str] = []
    monkeypatch.setattr(access_lines, "write", writes.append)
    # As in the running sidecar: the access log's own handler alone (pytest adds its capturing ones here).
    monkeypatch.setattr(access_log, "handlers", [h for h in access_log.handlers if isinstance(h, AccessLogHandler)])
    ledger = Ledger(Metrics(), batch=3, interval=60)
    for n in range(3):
        ledger.record(entry(f"r{n}"))
    assert len(writes) == 1
    assert [json.loads(line)["request_id"] for line in writes[0].splitlines()] == ["r0", "r1", "r2"]

