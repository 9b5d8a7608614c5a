"""The cache conformance harness's comparison, on a tiny fixture in the suite's own formats (no suite, no node)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.cache_conformance import summary
from bench.cache_conformance.__main__ import resummarize
from bench.cache_conformance.targets import policy
from proxy.policy import parse_policy

# The suite's test list, flattened as the harness exports it (`kind` may be missing: required).
TESTS: list[dict[str, Any]] = [
    {"id": "freshness-none", "name": "An HTTP cache should not store a response without freshness",
     "suite_id": "cc-freshness", "suite_name": "Cache-Control Freshness"},
    {"id": "freshness-max-age", "name": "An optimal HTTP cache reuses a response with `max-age`", "kind": "optimal",
     "suite_id": "cc-freshness", "suite_name": "Cache-Control Freshness"},
    {"id": "freshness-max-age-0", "name": "HTTP cache must not reuse a response with `max-age=0`", "kind": "required",
     "depends_on": ["freshness-max-age"], "suite_id": "cc-freshness", "suite_name": "Cache-Control Freshness"},
    {"id": "conditional-etag", "name": "HTTP cache must | answer a conditional request", "kind": "required",
     "suite_id": "conditional-etag", "suite_name": "Conditional Requests: If-None-Match"},
    {"id": "stale-close", "name": "Does HTTP cache serve stale when the server closes?", "kind": "check",
     "suite_id": "stale", "suite_name": "Serving Stale"},
    {"id": "browser-only", "name": "not run by the command line", "kind": "required", "suite_id": "other",
     "suite_name": "Other"},
]
RESULTS: dict[str, dict[str, Any]] = {
    summary.PASS_THROUGH: {
        "freshness-none": True, "freshness-max-age": ["Assertion", "Response 2 does not come from cache"],
        "freshness-max-age-0": True, "conditional-etag": True, "stale-close": ["Setup", "retry"],
    },
    summary.CACHE: {
        "freshness-none": ["Assertion", "Response 2 comes from cache"], "freshness-max-age": True,
        "freshness-max-age-0": ["Assertion", "Response 2 comes from cache"],
        "conditional-etag": ["Assertion", "Response 2 status is 200, not 304"], "stale-close": True,
    },
    summary.NGINX: {
        "freshness-none": True, "freshness-max-age": True, "freshness-max-age-0": True,
        "conditional-etag": ["Setup", "Request 2 should have been conditional, but it was not."],
        "stale-close": ["AbortError", "This operation was aborted"],
    },
}


def test_counts_passes_per_kind_and_the_suites_verdicts() -> None:
    result = summary.summarize(summary.parse_tests(TESTS), RESULTS)
    cache, passthrough, nginx = (result["targets"][t] for t in summary.TARGETS)
    assert cache["required"] == {"run": 3, "passed": 0, "verdicts": {"fail": 3}}
    assert cache["optimal"] == {"run": 1, "passed": 1, "verdicts": {"pass": 1}}
    assert cache["check"] == {"run": 1, "passed": 1, "verdicts": {"yes": 1}}
    # A passed test whose dependency did not pass is a dependency failure on the suite's page, still counted passed.
    assert passthrough["required"] == {"run": 3, "passed": 3, "verdicts": {"dependency_fail": 1, "pass": 2}}
    assert passthrough["optimal"]["verdicts"] == {"optional_fail": 1}
    assert passthrough["check"]["verdicts"] == {"retry": 1}
    assert nginx["required"]["verdicts"] == {"pass": 2, "setup_fail": 1}
    assert nginx["check"]["verdicts"] == {"harness_fail": 1}
    assert result["optimal_vs_nginx"] == {summary.CACHE: 1, summary.NGINX: 1}
    assert result["required_vs_nginx"] == {summary.CACHE: 0, summary.NGINX: 2}


def test_lists_the_required_tests_the_cache_breaks() -> None:
    result = summary.summarize(summary.parse_tests(TESTS), RESULTS)
    assert [(b["id"], b["group"]) for b in result["broken_by_cache"]] == [
        ("freshness-none", "cc-freshness"), ("freshness-max-age-0", "cc-freshness"),
        ("conditional-etag", "conditional-etag")]
    assert result["broken_by_cache"][2]["cache_result"] == "Assertion: Response 2 status is 200, not 304"
    assert result["broken_by_cache_groups"] == {"cc-freshness": 2, "conditional-etag": 1}
    text = summary.table(result)
    assert "| sidecar-cache | 0 / 3 | 1 / 1 | 1 / 1 |" in text
    assert "fail through the sidecar-cache: 3 (cc-freshness 2, conditional-etag 1)" in text
    assert "HTTP cache must \\| answer" in text  # a `|` in a name does not break the Markdown table
    # nginx passes freshness-none and freshness-max-age-0, both already listed; conditional-etag fails there too.
    assert [b["id"] for b in result["nginx_passes_cache_fails"]] == ["freshness-none", "freshness-max-age-0"]
    assert "fail through the sidecar-cache: 2, of which not listed above: 0" in text


def test_recomputes_a_saved_run(tmp_path: Path) -> None:
    (tmp_path / "tests.json").write_text(json.dumps(TESTS))
    for target in (summary.CACHE, summary.PASS_THROUGH):  # nginx left out of this run
        (tmp_path / f"{target}.json").write_text(json.dumps(RESULTS[target]))
    (tmp_path / "summary.json").write_text(json.dumps({"meta": {"suite_revision": "abc"}}))
    result = resummarize(tmp_path)
    assert set(result["targets"]) == {summary.CACHE, summary.PASS_THROUGH}
    assert "optimal_vs_nginx" not in result
    assert len(result["broken_by_cache"]) == 3
    assert summary.report(result).startswith("# HTTP caching conformance")
    assert "- suite_revision: abc" in summary.report(result)


def test_the_sidecar_policy_is_one_catch_all_route_cached_or_not() -> None:
    """Read by the sidecar's own loader: one attempt, a breaker that counts nothing, the route's cache as given."""
    cached = parse_policy(policy(1, 2, "http://127.0.0.1:3", "{ttl: 60s}"))
    assert cached.cache.backend == "memory"
    (upstream,) = cached.upstreams.values()
    assert str(upstream.url) == "http://127.0.0.1:3"
    route = upstream.routes[0]
    assert (route.name, route.method, route.glob) == ("all", None, "/**")
    assert route.retry.attempts == 1
    assert route.breaker.count.describe() == []
    assert route.cache is not None and route.cache.ttl == 60.0
    passthrough = parse_policy(policy(1, 2, "http://127.0.0.1:3", None))
    assert next(iter(passthrough.upstreams.values())).routes[0].cache is None
