"""From the suite's result files to the comparison: counts per target and kind, and what the cache breaks.

Inputs are the suite's own formats. `tests.json` is the suite's test list (`tests/index.mjs`, flattened: one object
per test with `id`, `name`, `kind`, `depends_on`, `suite_id`, `suite_name`). A result file is what its runner prints:
`{test_id: true | [error_name, message]}` (`true` passed; `["Setup", ...]` failed in setup, `["Assertion", ...]`
failed, `["AbortError", ...]` timed out).

Two counts per kind, since both are quoted: `passed` is the tests whose result is `true`; `verdicts` is what the
suite's results page shows (`test-engine/lib/results.mjs`, `determineTestResult`): a test whose dependency did not
pass is `dependency_fail` whatever its own result. A test with no kind is `required`, as the suite reads it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = ("required", "optimal", "check")
CACHE = "sidecar-cache"  # the sidecar with `cache: {ttl: 60s}` on its catch-all route
PASS_THROUGH = "pass-through"  # the same policy, no cache
NGINX = "nginx"  # nginx proxy_cache, configured like the suite's own docker image
TARGETS = (CACHE, PASS_THROUGH, NGINX)

Result = Any  # True, or [name, message]: JSON as the suite's runner prints it


@dataclass(frozen=True, slots=True)
class SuiteTest:
    id: str
    name: str
    kind: str
    suite_id: str
    suite_name: str
    depends_on: tuple[str, ...] = ()


def load_tests(path: Path) -> dict[str, SuiteTest]:
    return parse_tests(json.loads(path.read_text()))


def parse_tests(raw: Sequence[Mapping[str, Any]]) -> dict[str, SuiteTest]:
    tests = {}
    for item in raw:
        test = SuiteTest(
            id=str(item["id"]), name=str(item.get("name", "")), kind=str(item.get("kind") or "required"),
            suite_id=str(item.get("suite_id", "")), suite_name=str(item.get("suite_name", "")),
            depends_on=tuple(str(d) for d in item.get("depends_on") or ()),
        )
        if test.kind not in KINDS:
            raise ValueError(f"test {test.id}: unknown kind {test.kind!r}")
        tests[test.id] = test
    return tests


def verdict(tests: Mapping[str, SuiteTest], results: Mapping[str, Result], test_id: str) -> str:
    """`determineTestResult` of the suite (with dependencies honoured), by the names of its `resultTypes`."""
    test = tests[test_id]
    if test_id not in results:
        return "untested"
    for dependency in test.depends_on:
        if verdict(tests, results, dependency) not in ("pass", "yes"):
            return "dependency_fail"
    result = results[test_id]
    if isinstance(result, list) and result and result[0] == "Setup":
        return "retry" if len(result) > 1 and result[1] == "retry" else "setup_fail"
    if isinstance(result, list) and result and result[0] == "AbortError":
        return "harness_fail"
    passed = result is True
    if test.kind == "required":
        return "pass" if passed else "fail"
    if test.kind == "optimal":
        return "pass" if passed else "optional_fail"
    return "yes" if passed else "no"


def message(result: Result) -> str:
    if result is True:
        return "passed"
    if isinstance(result, list):
        return ": ".join(str(part) for part in result)
    return str(result)


def target_counts(tests: Mapping[str, SuiteTest], results: Mapping[str, Result]) -> dict[str, dict[str, Any]]:
    """Per kind: tests run, `passed` (result `true`) and the suite's verdicts."""
    counts: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        ran = [t for t in tests.values() if t.kind == kind and t.id in results]
        verdicts = Counter(verdict(tests, results, t.id) for t in ran)
        counts[kind] = {
            "run": len(ran),
            "passed": sum(1 for t in ran if results[t.id] is True),
            "verdicts": dict(sorted(verdicts.items())),
        }
    return counts


def broken_by_cache(
    tests: Mapping[str, SuiteTest], passthrough: Mapping[str, Result], cached: Mapping[str, Result],
) -> list[dict[str, str]]:
    """Required tests the pass-through passes and the cache does not, in the suite's order."""
    return [
        {"id": t.id, "name": t.name, "group": t.suite_id, "group_name": t.suite_name,
         "cache_result": message(cached.get(t.id, "not run"))}
        for t in tests.values()
        if t.kind == "required" and passthrough.get(t.id) is True and cached.get(t.id) is not True
    ]


def summarize(
    tests: Mapping[str, SuiteTest], results: Mapping[str, Mapping[str, Result]], meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`results`: target name -> its result file. The cache comparisons need CACHE and PASS_THROUGH (and NGINX)."""
    counts = {name: target_counts(tests, res) for name, res in results.items()}
    summary: dict[str, Any] = {"meta": dict(meta or {}), "targets": counts}
    if CACHE in results and PASS_THROUGH in results:
        broken = broken_by_cache(tests, results[PASS_THROUGH], results[CACHE])
        summary["broken_by_cache"] = broken
        summary["broken_by_cache_groups"] = dict(Counter(item["group"] for item in broken))
    if CACHE in results and NGINX in results:
        # Where the pass-through cannot tell (revalidation, 304s: nothing is stored), nginx is the reference.
        summary["nginx_passes_cache_fails"] = broken_by_cache(tests, results[NGINX], results[CACHE])
        summary["optimal_vs_nginx"] = {
            CACHE: counts[CACHE]["optimal"]["passed"], NGINX: counts[NGINX]["optimal"]["passed"]}
        summary["required_vs_nginx"] = {
            CACHE: counts[CACHE]["required"]["passed"], NGINX: counts[NGINX]["required"]["passed"]}
    return summary


def _verdicts_text(verdicts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in verdicts.items())


def table(summary: Mapping[str, Any]) -> str:
    """The summary as Markdown: the counts table, then the tests the cache breaks (also the console output)."""
    lines = ["| target | " + " | ".join(f"{kind} passed" for kind in KINDS) + " |",
             "|---|" + "---:|" * len(KINDS)]
    for name, counts in summary["targets"].items():
        cells = [f"{counts[kind]['passed']} / {counts[kind]['run']}" for kind in KINDS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Verdicts as the suite's results page shows them (a test whose dependency did not pass is "
              "`dependency_fail`):", ""]
    lines += ["| target | kind | verdicts |", "|---|---|---|"]
    for name, counts in summary["targets"].items():
        for kind in KINDS:
            lines.append(f"| {name} | {kind} | {_verdicts_text(counts[kind]['verdicts'])} |")
    if "optimal_vs_nginx" in summary:
        opt, req = summary["optimal_vs_nginx"], summary["required_vs_nginx"]
        lines += ["", f"Optimal passed: {CACHE} {opt[CACHE]}, {NGINX} {opt[NGINX]}. "
                  f"Required passed: {CACHE} {req[CACHE]}, {NGINX} {req[NGINX]}."]
    if "broken_by_cache" in summary:
        broken = summary["broken_by_cache"]
        groups = ", ".join(f"{g} {n}" for g, n in summary["broken_by_cache_groups"].items())
        lines += ["", f"Required tests the {PASS_THROUGH} passes that fail through the {CACHE}: {len(broken)}"
                  + (f" ({groups})" if groups else ""), ""]
        if broken:
            lines += ["| id | group | name | result through the cache |", "|---|---|---|---|"]
            lines += [f"| `{b['id']}` | {b['group']} | {_cell(b['name'])} | {_cell(b['cache_result'])} |"
                      for b in broken]
    if "nginx_passes_cache_fails" in summary:
        listed = {b["id"] for b in summary.get("broken_by_cache", ())}
        more = [b for b in summary["nginx_passes_cache_fails"] if b["id"] not in listed]
        lines += ["", f"Required tests {NGINX} passes that fail through the {CACHE}: "
                  f"{len(summary['nginx_passes_cache_fails'])}, of which not listed above: {len(more)}", ""]
        if more:
            lines += ["| id | group | name | result through the cache |", "|---|---|---|---|"]
            lines += [f"| `{b['id']}` | {b['group']} | {_cell(b['name'])} | {_cell(b['cache_result'])} |"
                      for b in more]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report(summary: Mapping[str, Any]) -> str:
    meta = summary.get("meta", {})
    head = ["# HTTP caching conformance: sidecar cache, pass-through, nginx proxy_cache", ""]
    head += [f"- {key}: {value}" for key, value in meta.items()]
    return "\n".join(head) + "\n\n" + table(summary)
