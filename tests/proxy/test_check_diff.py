"""`check --diff OLD NEW`: what a policy change does in operator terms, and what a reload would carry over, from
two files or from a running sidecar's `/policy`; and the runtime's table of lifetimes held to what a reload does."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from proxy.diff import diff
from proxy.policy import parse_policy
from proxy.policy.render import effective_policy
from proxy.runtime import LIFETIMES, Runtime
from tests.support.sidecar import policy_text

ROOT = Path(__file__).resolve().parents[2]

OLD = """\
shutdown_grace: 1s
listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  gemini:
    url: http://127.0.0.1:9
    timeouts: {read: 15s}
    routes:
      - {name: generate, match: POST /v1beta/models/*:generateContent}
  media:
    url: http://127.0.0.1:10
"""
# A timeout changed, a route (with its own breaker) added, an upstream removed.
NEW = """\
shutdown_grace: 1s
listen: 127.0.0.1:0
admin: 127.0.0.1:0
upstreams:
  gemini:
    url: http://127.0.0.1:9
    timeouts: {read: 20s}
    routes:
      - {name: generate, match: POST /v1beta/models/*:generateContent}
      - {name: count, match: POST /v1beta/models/*:countTokens, breaker: {failures: 3}}
"""


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "check", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(OLD)
    new.write_text(NEW)
    return old, new


EXPECTED_CHANGES = [
    "  upstream removed: media (http://127.0.0.1:10)",
    "  gemini: route added: count (POST /v1beta/models/*:countTokens)",
    "  gemini.generate: timeouts.read 15s -> 20s",
    "  gemini.default: timeouts.read 15s -> 20s",
]


def test_diff_of_two_files_says_what_changes_and_what_a_reload_carries(pair):
    old, new = pair
    done = check("--diff", str(old), str(new))
    assert done.returncode == 1, done.stderr  # like diff(1): 1 when they differ
    lines = done.stdout.splitlines()
    assert lines[0] == f"{old} -> {new}: 4 change(s)"
    assert lines[1:5] == EXPECTED_CHANGES
    carry = lines[6:]
    assert "  breakers: carried gemini; new (closed) gemini.count; dropped media" in carry
    assert "  bulkhead: carried gemini; closed media" in carry
    assert "  response cache: carried" in carry
    assert len(carry) == len(LIFETIMES)  # one line per row of the runtime's table


def test_diff_of_a_file_with_itself_is_no_change_and_exit_0(pair):
    old, _ = pair
    done = check("--diff", str(old), str(old))
    assert (done.returncode, done.stdout.strip()) == (0, f"{old} -> {old}: no change")


def test_diff_with_a_broken_side_is_trouble_exit_2(pair, tmp_path):
    old, _ = pair
    broken = tmp_path / "broken.yaml"
    broken.write_text("upstreams:\n  g: {url: ftp://x}\n")
    done = check("--diff", str(old), str(broken))
    assert done.returncode == 2
    assert done.stderr.startswith(f"{broken}:2: upstreams.g.url: ")
    unreachable = check("--diff", "http://127.0.0.1:9/policy", str(old))
    assert unreachable.returncode == 2 and "cannot read the running policy" in unreachable.stderr


def test_limits_and_breaker_thresholds_name_what_a_reload_starts_anew(pair, tmp_path):
    old, _ = pair
    new = tmp_path / "limits.yaml"
    new.write_text(OLD.replace("    timeouts: {read: 15s}\n", "    limits: {max_queue: 5, keepalive: 2s}\n"
                                                                  "    breaker: {failures: 2}\n"))
    done = check("--diff", str(old), str(new))
    assert done.returncode == 1
    out = done.stdout.splitlines()
    assert "  gemini: limits.max_queue 50 -> 5" in out
    assert "  gemini.generate: breaker.failures 5 -> 2" in out
    assert "  bulkhead: carried media; started anew gemini (limits.max_queue, limits.keepalive changed)" in out
    assert "  connection pools: carried media; started anew gemini (limits.keepalive changed)" in out
    assert "  breakers: carried gemini, media (new thresholds apply to gemini)" in out


async def check_async(*args: str) -> tuple[int, str, str]:
    """`check` while this process's event loop serves the sidecar it reads."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "proxy", "check", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_diff_against_a_running_sidecar_reads_its_policy_endpoint(pair, make_sidecar, client):
    old, new = pair
    sc = await make_sidecar(OLD)
    async with client.post(sc.admin + "/reload") as resp:  # its reload status is on /policy: not a change
        assert resp.status == 400  # its file is not on disk: refused, and recorded
    for url in (sc.admin + "/policy", sc.admin):  # the admin URL alone means its /policy
        code, out, err = await check_async("--diff", url, str(new))
        assert code == 1, err
        assert out.splitlines()[1:5] == EXPECTED_CHANGES
    code, out, _ = await check_async("--diff", sc.admin + "/policy", str(old))
    assert (code, out.strip()) == (0, f"{sc.admin}/policy -> {old}: no change")


# -- the table of lifetimes is what a reload does ----------------------------------------------------------

BASE = """\
cache: {max_entries: 100}
upstreams:
  g:
    url: http://127.0.0.1:9
    retry: {budget: {ratio: 0.2}}
    limits: {max_queue: 50}
    routes:
      - {name: r, match: GET /r, breaker: {failures: 3}}
  gone:
    url: http://127.0.0.1:10
"""
VARIANTS = {
    "timeout": BASE.replace("    limits:", "    timeouts: {read: 3s}\n    limits:"),
    "max_queue": BASE.replace("max_queue: 50", "max_queue: 5"),
    "keepalive": BASE.replace("max_queue: 50", "max_queue: 50, keepalive: 1s"),
    "url": BASE.replace("127.0.0.1:9\n", "127.0.0.1:11\n"),
    "budget": BASE.replace("ratio: 0.2", "ratio: 0.5"),
    "cache": BASE.replace("max_entries: 100", "max_entries: 200"),
    "breaker": BASE.replace("failures: 3", "failures: 4"),
    "route_breaker_gone": BASE.replace(", breaker: {failures: 3}", ""),
    "upstream_gone": BASE.split("  gone:")[0],
}
# Each row's piece, as the runtime holds it (per upstream, per breaker, or once).
PIECES = {
    "metrics registry": lambda rt, name: rt.metrics,
    "last minute of traffic (status page)": lambda rt, name: rt.traffic,
    "router, routes": lambda rt, name: rt.router,
    "breakers": lambda rt, name: rt.breakers.get(name),
    "bulkhead": lambda rt, name: rt.upstreams[name].bulkhead if name in rt.upstreams else None,
    "retry budget window": lambda rt, name: rt.upstreams[name].budget if name in rt.upstreams else None,
    "throttle clock": lambda rt, name: rt.upstreams[name].throttle if name in rt.upstreams else None,
    "connection pools": lambda rt, name: rt.upstreams[name].forwarder.pools if name in rt.upstreams else None,
    "response cache": lambda rt, name: rt.cache,
    "recent attempt counts": lambda rt, name: rt.upstreams[name]._recent if name in rt.upstreams else None,
    "rate limit budgets": lambda rt, name: rt.upstreams[name].pacer if name in rt.upstreams else None,
}


def test_every_row_of_the_table_has_a_piece_here():
    assert [row.piece for row in LIFETIMES] == list(PIECES)


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_the_reported_carry_is_what_a_reload_does(variant):
    old_policy = parse_policy(policy_text(BASE), "old.yaml", {})
    new_policy = parse_policy(policy_text(VARIANTS[variant]), "new.yaml", {})
    report = dict(line.strip().split(": ", 1) for line in diff(effective_policy(old_policy),
                                                               effective_policy(new_policy)).carry)
    old = Runtime(old_policy)
    new = old.successor(new_policy)
    try:
        for row in LIFETIMES:
            said = report[row.piece]
            names = {"upstream": list(old.upstreams), "breaker": list(old.breakers)}.get(row.scope, [""])
            for name in names:
                kept = PIECES[row.piece](new, name)
                carried = kept is not None and kept is PIECES[row.piece](old, name)
                if row.scope in ("upstream", "breaker"):
                    carried_names = said.split("; ")[0].removeprefix("carried ").split(" (")[0].split(", ")
                    assert (name in carried_names and said.startswith("carried")) == carried, (row.piece, name, said)
                else:
                    assert said.startswith("carried") == carried, (row.piece, said)
    finally:
        await new.retire(new)
        await old.close()
        await new.close()
