"""The schema is the one declaration of the policy's keys: the loader, the effective policy and the README's table
agree with it (they are made from it), and nothing it declares is left out of `check`'s output."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.policy import Hedge, schema
from proxy.policy.loader import Inherited
from proxy.policy.reference import TABLE_END, TABLE_START, markdown_table
from proxy.policy.render import REDACTED, effective_policy
from proxy.policy.schema import Field, Group, Section
from tests.policy._helpers import FILE, load, problem

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

UPSTREAM = "upstreams:\n  g:\n    url: https://g.example\n    routes:\n"
ROUTE = "      - name: r\n        match: GET /r\n"


def readme_table() -> str:
    text = README.read_text()
    assert TABLE_START in text and TABLE_END in text, "the README lost the policy table's markers"
    return text.partition(TABLE_START)[2].partition(TABLE_END)[0].strip("\n") + "\n"


def test_the_readme_policy_table_is_the_schemas() -> None:
    assert readme_table() == markdown_table(), (
        "README.md's policy table differs from proxy/policy/schema.py: run `make policy-table`"
    )


def test_the_table_can_be_printed_and_written_from_the_command_line(tmp_path: Path) -> None:
    printed = subprocess.run([sys.executable, "-m", "proxy.policy.reference", "--markdown"], capture_output=True,
                             text=True, check=True, cwd=ROOT)
    assert printed.stdout == markdown_table()
    stale = tmp_path / "README.md"
    stale.write_text(f"before\n{TABLE_START}\n| old |\n{TABLE_END}\nafter\n")
    subprocess.run([sys.executable, "-m", "proxy.policy.reference", "--readme", str(stale)], check=True, cwd=ROOT)
    assert stale.read_text() == f"before\n{TABLE_START}\n{markdown_table()}{TABLE_END}\nafter\n"


def test_every_key_has_a_row_with_its_levels_and_a_meaning() -> None:
    rows = [line.split(" | ") for line in markdown_table().splitlines()[2:]]
    assert all(len(row) == 4 and row[1] and row[3].strip(" |") for row in rows), rows
    keys = {row[0].strip("| `") for row in rows}
    assert {"cache.namespace", "retry.budget.ratio", "routes[].hedge.after", "routes[].hedge.max",
            "upstreams.<name>.url", "limits.max_headers", "limits.max_concurrent", "throttle[].status"} <= keys
    budget = next(row for row in rows if row[0] == "| `retry.budget`")
    assert budget[1] == "defaults, upstream"  # not route: the loader refuses it there


def test_the_inherited_sections_are_the_schemas() -> None:
    assert [f.name for f in dataclasses.fields(Inherited)] == [s.key for s in schema.INHERITED]
    for section in schema.INHERITED:
        assert isinstance(getattr(Inherited(), section.key), tuple if section.many else section.model)


# -- check's output shows every key where it is decided, and only there ---------------------------------


def _leaves(section: Section, level: str) -> Iterator[tuple[str, ...]]:
    for f in section.fields:
        if f.levels and level not in f.levels:
            continue
        if isinstance(f, Section):
            yield from ((f.key, *rest) for rest in _leaves(f, level))
        else:
            yield (f.key,)


def _has(data: Any, path: tuple[str, ...]) -> bool:
    for key in path:
        if isinstance(data, list) and data:  # a list of sections (`rate_limit.limits`): its first one
            data = data[0]
        if not isinstance(data, dict) or key not in data:
            return False
        data = data[key]
    return True


FULL = """\
upstreams:
  g:
    url: https://g.example
    throttle: [{status: 429}]
    routes:
      - {name: r, match: GET /r, cache: {ttl: 5m}, hedge: {after: 200ms}, rate_limit: {limits: [{name: n, rate: 1/s}]}}
"""


def test_every_key_of_the_schema_is_in_the_effective_policy() -> None:
    rendered = effective_policy(load(FULL))
    upstream = rendered["upstreams"]["g"]
    route = upstream["routes"][0]
    for node in schema.SCHEMA:
        for level in node.levels:
            if isinstance(node, Group) or level == "defaults":  # defaults are shown merged, at each upstream
                continue
            where = {"top": rendered, "upstream": upstream, "route": route}[level]
            if isinstance(node, Field):
                assert node.key in where, (level, node.key)
                continue
            shown = where.get(node.key, {})  # an upstream leaves out a section its routes show whole
            value = shown[0] if node.many else shown
            for path in _leaves(node, level):
                decided_below = level == "upstream" and "route" in node.levels and _has(route[node.key], path)
                assert decided_below or _has(value, path), (level, node.key, path)


def test_cache_namespace_is_shown() -> None:
    assert effective_policy(load("cache: {namespace: fleet-a}\n"))["cache"]["namespace"] == "fleet-a"


def test_the_retry_budget_is_shown_on_the_upstream_not_on_its_routes() -> None:
    rendered = effective_policy(load(UPSTREAM.replace("    routes:\n", "    retry: {budget: {ratio: 0.5}}\n")))
    upstream = rendered["upstreams"]["g"]
    assert upstream["retry"] == {"budget": {"ratio": 0.5, "min_per_second": 5.0}}
    assert all("budget" not in route["retry"] for route in upstream["routes"])
    assert "timeouts" not in upstream and "breaker" not in upstream  # each route shows its own


def test_every_secret_field_is_redacted() -> None:
    text = """\
    admin: {listen: 127.0.0.1:9911, token: t0ken}
    cache: {redis_url: "redis://u:pa55@h:6379/0"}
    upstreams:
      g: {url: https://g.example, headers: {x-key: k3y}}
    """
    dumped = json.dumps(effective_policy(load(text)))
    for secret in ("t0ken", "pa55", "k3y"):
        assert secret not in dumped
    assert REDACTED in dumped
    secrets = {f.key for node in schema.SCHEMA for f in ([node] if isinstance(node, Field) else
               node.fields if isinstance(node, Section) else []) if isinstance(f, Field) and f.secret}
    assert secrets == {"token", "redis_url", "url", "headers"}


# -- routes[].hedge ------------------------------------------------------------------------------------


def test_a_hedge_is_read_with_max_defaulting_to_one() -> None:
    policy = load(UPSTREAM + ROUTE + "        hedge: {after: 200ms}\n      - {name: s, match: GET /s, hedge: "
                  "{after: 1s, max: 3}}\n      - {name: t, match: GET /t}\n")
    r, s, t = policy.upstreams["g"].routes
    assert r.hedge == Hedge(after=0.2, max=1)
    assert s.hedge == Hedge(after=1.0, max=3)
    assert t.hedge is None and policy.upstreams["g"].default_route.hedge is None
    rendered = effective_policy(policy)["upstreams"]["g"]["routes"]
    assert rendered[0]["hedge"] == {"after": "200ms", "max": 1}
    assert "hedge" not in rendered[2]


@pytest.mark.parametrize(
    ("hedge", "message"),
    [
        ("{after: 200ms, max: 4}", "hedge.max: expected a whole number from 1 to 3, got 4"),
        ("{after: 200ms, max: 0}", "hedge.max: expected a whole number from 1 to 3, got 0"),
        ("{after: 0ms}", "hedge.after: expected a duration greater than 0"),
        ("{after: soon}", "hedge.after: expected a duration like '15s' or '150ms', got 'soon'"),
        ("{max: 1}", "hedge: a hedge needs an 'after', e.g. hedge: {after: 200ms}"),
        ("{after: 1s, mx: 2}", "hedge.mx: unknown key (did you mean 'max'?); expected one of: after, max"),
    ],
)
def test_a_bad_hedge_is_reported_at_its_key(hedge: str, message: str) -> None:
    assert problem(UPSTREAM + ROUTE + f"        hedge: {hedge}\n") == f"{FILE}:7: upstreams.g.routes[0].{message}"


def test_a_hedge_is_a_routes_setting_only() -> None:
    found = problem("defaults:\n  hedge: {after: 1s}\n")
    assert found.startswith(f"{FILE}:2: defaults.hedge: unknown key; expected one of: breaker, limits, retry")
    found = problem(UPSTREAM.replace("    routes:\n", "    hedge: {after: 1s}\n"))
    assert found.startswith(f"{FILE}:4: upstreams.g.hedge: unknown key"), found
