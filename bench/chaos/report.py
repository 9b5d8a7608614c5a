"""summary.json, report.md and the plots of a chaos run."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.chaos.analysis import failed, over_time
from bench.chaos.run import ModeRun
from bench.chaos.scenario import Scenario

COLUMNS = ("requests", "five_xx_rate", "ambiguous_sends", "p50_ms", "p95_ms", "p99_ms", "duplicate_sends",
           "lost_inbound", "double_replies", "unanswered_inbound", "told_failed_but_delivered",
           "upstream_amplification")
ZERO_GOALS = ("duplicate_sends", "lost_inbound", "double_replies", "told_failed_but_delivered")
MAX_AMPLIFICATION = 1.3
STATE_LEVEL = {"closed": 0, "half-open": 1, "half_open": 1, "open": 2}


def goals(summary: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, bool | None]]:
    """The issue's goals for the sidecar mode: (goal, met), met None when a mode it compares with did not run."""
    side = summary.get("sidecar")
    if side is None:
        return []
    legacy, direct = summary.get("legacy"), summary.get("direct")

    def compare(other: Mapping[str, Any] | None, key: str, factor: float) -> bool | None:
        return None if other is None else side[key] <= factor * other[key] and (factor < 1 or side[key] < other[key]
                                                                                 or other[key] == 0)

    out: list[tuple[str, bool | None]] = [
        ("5xx rate at most 10% of legacy's", compare(legacy, "five_xx_rate", 0.10)),
        ("p95 at most 50% of legacy's", compare(legacy, "p95_ms", 0.50)),
        ("5xx rate better than direct's", compare(direct, "five_xx_rate", 1.0)),
        ("p95 better than direct's", compare(direct, "p95_ms", 1.0)),
    ]
    out += [(f"{key} == 0", side[key] == 0) for key in ZERO_GOALS]
    # Each backend request makes several upstream calls by design (a webhook: four Supabase writes, then the bot
    # reply's reads, Gemini and WhatsApp), so the goal is read against legacy, which never retries: what the
    # sidecar's retries and hedges add on top, its cache taken off.
    ratio = None if legacy is None else side["upstream_amplification"] / legacy["upstream_amplification"]
    out.append((f"upstream amplification at most {MAX_AMPLIFICATION}x legacy's"
                + ("" if ratio is None else f" ({ratio:.2f}x)"), None if ratio is None else ratio <= MAX_AMPLIFICATION))
    return out


# What each of the backend's error codes says about the sidecar's stages (inbox_backend/errors.py maps them).
STAGE_OF_CODE = {
    "unavailable": "refused at once (the breaker open, a bulkhead full or a throttle): the upstream was down or over "
                   "its limits",
    "external_api_timeout": "timeouts: attempts hung past their read timeout until the deadline",
    "database_timeout": "timeouts: attempts hung past their read timeout until the deadline",
    "external_api_unavailable": "retries: the upstream's 5xx or resets outlasted the attempts (or it was not "
                                "idempotent)",
}


def _stage_of(code: str) -> str:
    key = "unavailable" if code.endswith("_unavailable") and code != "external_api_unavailable" else code
    return STAGE_OF_CODE.get(key, "no answer from the backend" if not code else "the backend's own answer")


def causes(runs: list[ModeRun], summary: Mapping[str, Mapping[str, Any]], scenario: Scenario) -> list[str]:
    """In words, for each goal not met, where the sidecar mode's misses come from (which stage, which endpoint)."""
    side, legacy = summary.get("sidecar"), summary.get("legacy")
    run = next((r for r in runs if r.mode == "sidecar"), None)
    if side is None or legacy is None or run is None:
        return []
    met = dict(goals(summary))
    lines: list[str] = []
    if not met.get("5xx rate at most 10% of legacy's", True) or not met.get("5xx rate better than direct's", True):
        windows = side["five_xx_by_window"]
        lines.append(f"- **5xx**: {side['five_xx_rate']:.2%} in all, {windows['during_outage']:.2%} of the requests "
                     f"sent during the outage, {windows['outside_outage']:.2%} outside it.")
        failures: Counter[tuple[str, int, str]] = Counter()
        for r in run.results:
            if failed(r):
                failures[(r.endpoint, r.status, r.code)] += 1
        total = sum(failures.values())
        for (endpoint, status, code), n in failures.most_common(4):
            lines.append(f"  - `{endpoint}` {status} `{code}`: {n} ({n / total:.0%} of the 5xx), {_stage_of(code)}.")
        for name, b in side["breaker_open"].items():
            lines.append(f"  - breaker `{name}`: not closed for {b['open_s']:.0f}s, {b['open_after_outage_s']:.0f}s of "
                         "them after the outage ended (its trial failed, or was not due yet).")
    if not met.get("p95 at most 50% of legacy's", True):
        threshold = 0.5 * legacy["p95_ms"] / 1000
        slow = Counter(r.endpoint for r in run.results if r.latency > threshold)
        share = sum(slow.values()) / len(run.results)
        by_endpoint = ", ".join(f"`{e}` {n}" for e, n in slow.most_common())
        lines.append(f"- **p95**: {share:.1%} of the requests took longer than half legacy's p95 "
                     f"({threshold:.2f} s; at most 5% may): {by_endpoint}. Supabase's 3 s delays on calls that are "
                     "neither cached nor hedged (writes without an Idempotency-Key) and the hedges' "
                     "thresholds set this tail.")
    return lines


def table(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    modes = list(summary)
    lines = ["| | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for key in COLUMNS:
        cells = [f"{summary[m][key]:.2%}" if key == "five_xx_rate" else str(summary[m][key]) for m in modes]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def markdown(summary: Mapping[str, Mapping[str, Any]], scenario: Scenario, meta: Mapping[str, Any],
             plots: list[str], why: list[str]) -> str:
    start, end = scenario.outage
    lines = [
        "# Chaos benchmark", "",
        f"{meta['date']} on {meta['machine']}; {scenario.rate:g} req/s (open loop) for {scenario.seconds:g}s per "
        f"mode, seed {scenario.seed}.",
        "Faults: Gemini 20% 503 and 5% hangs; WhatsApp sends 5% connection resets (half after the message was "
        f"stored); Supabase 10% delayed 3 s; Gemini down (503) from {start:.0f}s to {end:.0f}s.",
        "Latency counts from each request's intended send time. `five_xx_rate` counts 5xx answers and requests "
        "with no answer; 502 `delivery_unknown` answers are `ambiguous_sends`, counted apart.", "",
        *table(summary), "",
    ]
    found = goals(summary)
    if found:
        lines += ["## Goals (sidecar mode)", ""]
        for goal, met in found:
            lines.append(f"- {'n/a (mode not run)' if met is None else 'met' if met else '**not met**'}: {goal}")
        lines.append("")
    if why:
        lines += ["## Why (the goals not met, by stage)", "", *why, ""]
    lines += ["## Per endpoint", "", "| mode | endpoint | requests | 5xx | p50 ms | p95 ms | p99 ms |",
              "|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        for endpoint, e in s["endpoints"].items():
            lines.append(f"| {mode} | {endpoint} | {e['requests']} | {e['five_xx_rate']:.2%} | {e['p50_ms']} | "
                         f"{e['p95_ms']} | {e['p99_ms']} |")
    lines += ["", "## Errors (endpoint, status, code: count)", ""]
    for mode, s in summary.items():
        errors = ", ".join(f"`{k}`: {v}" for k, v in s["errors"].items()) or "none"
        lines.append(f"- {mode}: {errors}")
    lines += ["", "## Upstream requests (what the simulator saw)", ""]
    for mode, s in summary.items():
        lines.append(f"- {mode}: {s['upstream_requests_by_upstream']} (faults applied: {s['faults_applied']})")
    if plots:
        lines += ["", "## Plots", "", *(f"![{p}]({p})" for p in plots)]
    else:
        lines += ["", "(No plots: matplotlib is not installed; `pip install -e '.[bench]'`.)"]
    return "\n".join(lines) + "\n"


def plot(runs: list[ModeRun], scenario: Scenario, summary: Mapping[str, Mapping[str, Any]], out: Path) -> list[str]:
    """The PNGs, by file name; none when matplotlib is missing (the numbers do not need it)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written: list[str] = []
    bucket = max(1.0, scenario.seconds / 35)
    start, end = scenario.outage

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for run in runs:
        series = over_time(run.results, bucket)
        top.plot([t for t, _, _ in series], [rate * 100 for _, rate, _ in series], label=run.mode)
        bottom.plot([t for t, _, _ in series], [p95 / 1000 for _, _, p95 in series], label=run.mode)
    for ax in (top, bottom):
        ax.axvspan(start, end, color="red", alpha=0.08, label="Gemini outage")
        ax.grid(alpha=0.3)
    top.set_ylabel(f"5xx rate, % (per {bucket:.0f}s)")
    bottom.set_ylabel("p95 latency, s")
    bottom.set_xlabel("intended send time, s")
    top.legend()
    fig.tight_layout()
    written.append(_save(fig, out, "over_time.png"))

    endpoints = sorted({r.endpoint for run in runs for r in run.results})
    fig, axes = plt.subplots(1, len(endpoints), figsize=(3 * len(endpoints), 4), sharey=True)
    for ax, endpoint in zip(axes if len(endpoints) > 1 else [axes], endpoints, strict=True):
        data = [[max(r.latency, 1e-3) for r in run.results if r.endpoint == endpoint] or [1e-3] for run in runs]
        ax.boxplot(data, whis=(1, 99), showfliers=False)
        ax.set_xticks(range(1, len(runs) + 1), [run.mode for run in runs])
        ax.set_yscale("log")
        ax.set_title(endpoint)
        ax.grid(alpha=0.3)
    axes_list = axes if len(endpoints) > 1 else [axes]
    axes_list[0].set_ylabel("latency, s (box: p25-p75, whiskers: p1-p99)")
    fig.tight_layout()
    written.append(_save(fig, out, "latency_by_endpoint.png"))

    sidecar = next((run for run in runs if run.breakers), None)
    if sidecar is not None:
        names = sorted({name for _, states in sidecar.breakers for name in states})
        fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) + 1.5))
        colors = {0: "tab:green", 1: "tab:orange", 2: "tab:red"}
        # Each poll's state holds until the next poll (the last one for a second, the poll interval).
        ends = [t for t, _ in sidecar.breakers[1:]] + [sidecar.breakers[-1][0] + 1.0]
        for row, name in enumerate(names):
            for (t, states), t_next in zip(sidecar.breakers, ends, strict=True):
                level = STATE_LEVEL.get(states.get(name, "closed"), 0)
                ax.broken_barh([(t, t_next - t)], (row - 0.4, 0.8), color=colors[level])
        ax.set_yticks(range(len(names)), names)
        ax.axvspan(start, end, color="red", alpha=0.08)
        ax.set_xlabel("s (green closed, orange half-open, red open; shaded: Gemini outage)")
        ax.set_title("sidecar breakers")
        fig.tight_layout()
        written.append(_save(fig, out, "breakers.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    modes = list(summary)
    upstreams = sorted({u for s in summary.values() for u in s["upstream_requests_by_upstream"]})
    bottoms = [0.0] * len(modes)
    for upstream in upstreams:
        heights = [summary[m]["upstream_requests_by_upstream"].get(upstream, 0) / summary[m]["requests"]
                   for m in modes]
        ax.bar(modes, heights, bottom=bottoms, label=upstream)
        bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
    if "legacy" in summary:
        goal = MAX_AMPLIFICATION * summary["legacy"]["upstream_amplification"]
        ax.axhline(goal, color="black", linestyle="--", linewidth=1, label=f"goal: {MAX_AMPLIFICATION}x legacy")
    ax.set_ylabel("upstream requests per backend request")
    ax.legend(fontsize="small")
    fig.tight_layout()
    written.append(_save(fig, out, "amplification.png"))
    return written


def _save(fig: Any, out: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write(runs: list[ModeRun], summary: Mapping[str, Mapping[str, Any]], scenario: Scenario,
          meta: Mapping[str, Any], out: Path) -> None:
    plots = plot(runs, scenario, summary, out)
    document = {"meta": dict(meta), "goals": [{"goal": g, "met": m} for g, m in goals(summary)],
                "modes": dict(summary)}
    (out / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary, scenario, meta, plots, causes(runs, summary, scenario)))
