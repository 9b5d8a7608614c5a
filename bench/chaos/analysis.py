"""From one mode's raw run to its summary numbers (summary.json's per-mode object)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.chaos.load import Result
from bench.chaos.run import ModeRun

DELIVERY_UNKNOWN = "delivery_unknown"  # the backend's answer to a send that may have been delivered


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ambiguous(r: Result) -> bool:
    return r.status == 502 and r.code == DELIVERY_UNKNOWN


def failed(r: Result) -> bool:
    """A 5xx or no answer at all; an ambiguous send is neither success nor failure, and is counted apart."""
    return (r.status >= 500 or r.status == 0) and not ambiguous(r)


def latency_stats(results: Iterable[Result]) -> dict[str, Any]:
    rs = list(results)
    ms = [r.latency * 1000 for r in rs]
    return {
        "requests": len(rs),
        "five_xx_rate": sum(map(failed, rs)) / len(rs) if rs else 0.0,
        "p50_ms": round(percentile(ms, 50), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "p99_ms": round(percentile(ms, 99), 1),
    }


def by_window(results: Sequence[Result], outage: tuple[float, float]) -> dict[str, Any]:
    """5xx during the outage (by intended send time) and outside it: what the sidecar can change is mostly outside."""
    start, end = outage
    inside = [r for r in results if start <= r.at < end]
    outside = [r for r in results if not start <= r.at < end]
    return {"during_outage": sum(map(failed, inside)) / max(1, len(inside)),
            "outside_outage": sum(map(failed, outside)) / max(1, len(outside))}


def breaker_open(breakers: Sequence[tuple[float, Mapping[str, str]]], outage_end: float) -> dict[str, dict[str, float]]:
    """Per breaker, from the admin port's polls (each state held until the next poll): seconds not closed, and how
    long it stayed so after the outage ended (its trials failing, or not due yet)."""
    out: dict[str, dict[str, float]] = {}
    ends = [t for t, _ in breakers[1:]] + ([breakers[-1][0] + 1.0] if breakers else [])
    for (t, states), t_next in zip(breakers, ends, strict=True):
        for name, state in states.items():
            entry = out.setdefault(name, {"open_s": 0.0, "open_after_outage_s": 0.0})
            if state != "closed":
                entry["open_s"] = round(entry["open_s"] + t_next - t, 1)
                if t_next > outage_end:
                    entry["open_after_outage_s"] = round(t_next - outage_end, 1)
    return {name: entry for name, entry in out.items() if entry["open_s"] > 0}


def summarize(run: ModeRun, outage: tuple[float, float]) -> dict[str, Any]:
    results = run.results
    deliveries = run.stats["deliveries"]
    per_text = Counter((d["to"], d["body"]) for d in deliveries)
    to_sender = Counter(d["to"] for d in deliveries)
    delivered_bodies = {d["body"] for d in deliveries}
    stored = {m["wa_message_id"] for m in run.messages if m.get("direction") == "in"}
    webhooks = [r for r in results if r.endpoint == "webhook"]
    inbound = [r for r in webhooks if r.message_id in stored]  # whatever the answer: the bot may reply to it
    sends = [r for r in results if r.endpoint == "post_message"]
    endpoints = sorted({r.endpoint for r in results})
    errors = Counter(f"{r.endpoint} {r.status} {r.code}".strip() for r in results if r.status >= 300 or r.status == 0)
    return {
        **latency_stats(results),
        "ambiguous_sends": sum(map(ambiguous, results)),
        "duplicate_sends": sum(n - 1 for n in per_text.values()),
        "lost_inbound": sum(1 for r in webhooks if 200 <= r.status < 300 and r.message_id not in stored),
        "double_replies": sum(1 for r in inbound if to_sender[r.wa_id] > 1),
        "unanswered_inbound": sum(1 for r in inbound if to_sender[r.wa_id] == 0),
        "inbound_stored": len(inbound),
        "told_failed_but_delivered": sum(
            1 for r in sends if r.status >= 300 and not ambiguous(r) and r.text in delivered_bodies
        ),
        "upstream_requests": run.stats["total_requests"],
        "upstream_amplification": round(run.stats["total_requests"] / len(results), 3) if results else 0.0,
        "upstream_requests_by_upstream": {u: sum(routes.values()) for u, routes in run.stats["requests"].items()},
        "faults_applied": run.stats["faults_applied"],
        "errors": dict(errors.most_common()),
        "five_xx_by_window": by_window(results, outage),
        "breaker_open": breaker_open(run.breakers, outage[1]),
        "endpoints": {e: latency_stats(r for r in results if r.endpoint == e) for e in endpoints},
    }


def over_time(results: Sequence[Result], bucket: float) -> list[tuple[float, float, float]]:
    """(bucket start, 5xx rate, p95 ms) per `bucket` seconds of intended send time."""
    buckets: dict[int, list[Result]] = {}
    for r in results:
        buckets.setdefault(int(r.at // bucket), []).append(r)
    return [(k * bucket, sum(map(failed, rs)) / len(rs), percentile([r.latency * 1000 for r in rs], 95))
            for k, rs in sorted(buckets.items())]
