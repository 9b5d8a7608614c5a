"""proxy/traffic.py: the last minute's summaries behind the status page (percentiles, window, reservoir, reasons)."""

from __future__ import annotations

import pytest

from proxy.logs import AccessEntry
from proxy.traffic import LAST_ERRORS, SAMPLES, WINDOW, Traffic, error_reason, weighted_percentile


def entry(ms: float = 1.0, status: int = 200, *, error: str | None = None, cache: str | None = None,
          route: str = "default", rid: str = "r") -> AccessEntry:
    return AccessEntry(rid, "api", route, "GET", "/api/x", status, ms, egress_error=error, cache=cache)


def test_a_busy_slow_second_weighs_what_it_was_not_what_its_reservoir_kept():
    traffic = Traffic()
    for second in range(WINDOW - 1):  # 59 s at 100 requests/s, 10 ms each
        traffic.record([(0.0, entry(10.0))] * 100, second_now=second)
    traffic.record([(0.0, entry(1000.0))] * 5000, second_now=WINDOW - 1)  # then 5000 in one second, 1 s each
    minute = traffic.summary("api", second_now=WINDOW - 1)
    assert minute["requests"] == 59 * 100 + 5000
    assert minute["p95_ms"] == 1000.0  # 46% of the minute's requests took 1 s
    assert minute["p50_ms"] == 10.0


def test_the_window_forgets_what_is_older_than_a_minute():
    traffic = Traffic()
    traffic.record([(0.0, entry(status=500))], second_now=100)
    assert traffic.summary("api", second_now=100 + WINDOW - 1)["requests"] == 1
    gone = traffic.summary("api", second_now=100 + WINDOW)
    assert (gone["requests"], gone["errors"], gone["p95_ms"]) == (0, {}, None)
    # A bucket reused a minute later starts empty, and one "from the future" never shows.
    traffic.record([(0.0, entry())], second_now=100 + WINDOW)
    assert traffic.summary("api", second_now=100 + WINDOW)["requests"] == 1
    assert traffic.summary("api", second_now=50)["requests"] == 0


def test_buckets_follow_the_monotonic_clock_not_the_entries_wall_time():
    traffic = Traffic()
    # A wall clock stepped back an hour (the entries' `at`) changes nothing: they count in the second they settle.
    traffic.record([(1_000_000.0, entry())], second_now=10)
    traffic.record([(1_000_000.0 - 3600, entry())], second_now=11)
    assert traffic.summary("api", second_now=11)["requests"] == 2


def test_the_reservoir_keeps_a_bounded_uniform_sample():
    traffic = Traffic()
    traffic.record([(0.0, entry(float(i))) for i in range(20_000)], second_now=5)
    minute = traffic.summary("api", second_now=5)
    assert minute["requests"] == 20_000
    assert traffic.summary("api", second_now=5)["latency_samples"] == SAMPLES
    # A uniform sample of 0..19999: its median lands near 10000 (8 standard errors of slack).
    assert 6_500 < minute["p50_ms"] < 13_500


def test_percentile_is_nearest_rank():
    assert weighted_percentile([], 95) is None
    assert weighted_percentile([(float(v), 1.0) for v in range(1, 101)], 95) == 95.0
    assert weighted_percentile([(float(v), 1.0) for v in range(1, 101)], 50) == 50.0
    assert weighted_percentile([(5.0, 1.0)], 50) == 5.0
    assert weighted_percentile([(1.0, 1.0), (9.0, 3.0)], 50) == 9.0  # weight, not count, decides


@pytest.mark.parametrize(("status", "error", "reason"), [
    (200, None, None), (404, None, None), (304, None, None),
    (500, None, "upstream_5xx"), (503, None, "upstream_5xx"), (429, None, "upstream_429"),
    (499, None, "client_disconnected"), (503, "circuit_open", "circuit_open"), (504, "upstream_timeout",
                                                                                "upstream_timeout"),
    (413, "body_too_large", "body_too_large"),
])
def test_what_counts_as_an_error_and_under_which_reason(status, error, reason):
    assert error_reason(entry(status=status, error=error)) == reason


def test_cache_hit_ratio_per_route_leaves_out_requests_that_did_not_ask_the_cache():
    traffic = Traffic()
    batch = [entry(cache="HIT", route="media"), entry(cache="STALE", route="media"), entry(cache="MISS", route="media"),
             entry(cache="BYPASS", route="media"), entry(cache="REVALIDATED", route="other"), entry(route="plain")]
    traffic.record([(0.0, e) for e in batch], second_now=1)
    assert traffic.summary("api", second_now=1)["cache"] == {
        "media": {"served": 2, "lookups": 3, "hit_ratio": 0.6667},
        "other": {"served": 1, "lookups": 1, "hit_ratio": 1.0},
    }


def test_the_last_errors_are_bounded_newest_first_with_their_detail():
    traffic = Traffic()
    traffic.record([(1_796_318_817.5 + i, entry(status=502, error="upstream_reset", rid=f"r{i}"))
                    for i in range(LAST_ERRORS + 5)], second_now=1)
    traffic.record([(0.0, AccessEntry("r-last", "api", "default", "GET", "/x", 503, 1.0, egress_error="overloaded",
                                      egress_detail="no slot within 1s"))], second_now=1)
    last = traffic.summary("api", second_now=1)["last_errors"]
    assert len(last) == LAST_ERRORS
    newest = last[0]
    assert (newest["request_id"], newest["detail"], newest["reason"]) == ("r-last", "no slot within 1s", "overloaded")
    assert last[1]["request_id"] == f"r{LAST_ERRORS + 4}" and last[1]["at"] == "2026-12-03T17:27:21.500Z"
    assert last[-1]["request_id"] == "r6"  # the oldest five fell off


def test_requests_without_an_upstream_are_left_out_and_unknown_upstreams_are_empty():
    traffic = Traffic()
    traffic.record([(0.0, AccessEntry("r", "", "", "GET", "/nope", 404, 1.0, egress_error="no_route"))], second_now=1)
    assert traffic.summary("anything", second_now=1)["requests"] == 0
