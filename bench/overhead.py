"""What does the sidecar cost? `python -m bench.overhead [--runs N | --quick]`

Every scenario is measured three ways with wrk: `direct` to the upstream, through a bare aiohttp
`passthrough` (the ceiling of the stack, bench/passthrough.py) and through the `sidecar` (`python -m proxy`
with a shipped-style policy). The upstream is nginx serving static files (the aiohttp upstream,
bench/upstream.py, when nginx is not installed), and the aiohttp upstream for the 20 ms scenario.

The small GET is also measured through a `conforming` pass-through: the bare one plus the duties the issue
puts on every request (connect/read/total timeouts, an X-Request-ID, one access-log line, the request counter
and histogram) and none of the policy stages. It is the floor under any sidecar on this stack; the two
report-only checks split the sidecar's cost into those duties and the stages themselves.

The `cache` scenario measures, in one run, the sidecar forwarding the small JSON GET and answering it from
its cache: in memory, and (a second sidecar with the same policy) in the Redis at `--redis-url`, under keys
`bench-<pid>:*` that are deleted at the end (`--no-redis` leaves Redis out). Both caches are primed first
(the second GET must be a HIT), and each run's hit rate is read from the sidecar's
`egress_cache_requests_total` on its admin port before and after it. Identical concurrent reads share one
lookup (single-flight): a Redis HIT waits on the network, so at 32 connections most requests ride along on
another's MGET+GET, while a memory lookup never yields and each request does its own.

Core layout (2 cores): the proxy under test (pass-through or sidecar) has core 1 to itself; wrk (one
thread), this script and the upstreams (nginx and the aiohttp upstream) share core 0. In production the
upstream is another host: on the proxy's core it would take cycles that then show up as the proxy's cost,
and only on the targets that reach it (a forward, not a cache HIT nor an open breaker), skewing the ratios
between them. wrk needs little CPU at the proxies' rates; the `direct` rows, where nginx and wrk share
core 0, are a reference, not nginx's ceiling. `--upstream-on server` puts the upstreams on the proxies' core
instead (wrk then has core 0 alone, and the proxies pay for sharing theirs with the upstream alike). Redis
is the system's and is not pinned: its CPU time is not in the Redis sidecar's CPU per request.

The sidecar runs as shipped (`--log-level info`: one access-log line per request, written to a file in the
temporary directory). Each measurement is a 1 s wrk warm-up then a `--seconds` run; runs are interleaved
across a scenario's targets and the per-metric median of `--runs` is reported, with the CPU time (user +
system, from /proc) the proxy under test spent per request (a hit rate is the lowest run's). All traffic
is on 127.0.0.1. Results also go to bench/results/overhead-<timestamp>.json. Scenarios are the `SCENARIOS`
list: add one by appending a `Scenario` and, if it has a target, a `Check` (no `passes`: reported only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from bench.cache import hit_rate, lookups, prime, redacted, redis_namespace
from bench.loadgen import Sample, median_sample, require_wrk, wrk
from bench.memory import stream_check
from bench.processes import REPO_ROOT, Processes, core_layout, cpu_seconds
from bench.stack import (
    AIO,
    CACHED,
    LARGE,
    LEAN,
    SMALL,
    STATIC,
    TRIPPED,
    RedisCache,
    Sidecar,
    Stack,
    admin_post,
    build_stack,
    start_sidecar,
)

RESULTS_DIR = Path(__file__).with_name("results")
WARMUP_SECONDS = 1.0
DIRECT, PASSTHROUGH, SIDECAR = "direct", "passthrough", "sidecar"
CONFORMING = "passthrough, conforming"
RESILIENT, LEAN_LABEL = "sidecar, retry+breaker", "sidecar, both off"
HEALTHY, OPEN = "sidecar, healthy", "sidecar, breaker open"
FORWARDED, MEMORY_HIT, REDIS_HIT = "sidecar, forwarded", "sidecar, memory HIT", "sidecar, Redis HIT"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# -- scenarios -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    url: str
    pid: int | None = None  # the proxy whose CPU time per request is reported (none for direct)
    cache_of: Sidecar | None = None  # the sidecar whose cache hit rate on the `cached` route is reported


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    connections: int
    targets: Callable[[Stack], list[Target]]
    reference: str | None = None  # the scenario whose direct/pass-through rows the ratios use (default: own)
    prepare: Callable[[Stack], None] | None = None  # runs once before the scenario's first measurement


def three_ways(upstream: str, path: str, conforming: bool = False) -> Callable[[Stack], list[Target]]:
    """Direct, pass-through and sidecar; with `conforming`, also the pass-through that does every request's
    duties (timeouts, request id, access log, metrics) and nothing else: the floor under the sidecar."""

    def targets(stack: Stack) -> list[Target]:
        floor = [Target(CONFORMING, stack.via_passthrough(upstream, path, conforming=True), stack.conforming_pid)]
        return [
            Target(DIRECT, stack.direct(upstream, path)),
            Target(PASSTHROUGH, stack.via_passthrough(upstream, path), stack.passthrough_pid),
            *(floor if conforming else []),
            Target(SIDECAR, stack.via_sidecar(upstream, path), stack.sidecar.pid),
        ]

    return targets


def sidecar_pair(first: tuple[str, str], second: tuple[str, str]) -> Callable[[Stack], list[Target]]:
    """Two (label, sidecar upstream) targets getting the small JSON file through the same sidecar."""

    def targets(stack: Stack) -> list[Target]:
        pid = stack.sidecar.pid
        return [Target(label, stack.via_sidecar(upstream, SMALL), pid) for label, upstream in (first, second)]

    return targets


def open_breaker(stack: Stack) -> None:
    """Open the `tripped` upstream's breaker on the admin port and make sure it now fails fast."""
    admin_post(stack.sidecar, f"/breakers/{TRIPPED}/open")
    try:
        urllib.request.urlopen(stack.via_sidecar(TRIPPED, SMALL), timeout=5).close()
    except urllib.error.HTTPError as refused:
        if refused.code == 503 and refused.headers.get("X-Egress-Error") == "circuit_open":
            return
        raise RuntimeError(f"open breaker answered {refused.code} {refused.headers.get('X-Egress-Error')}") from None
    raise RuntimeError("the breaker was opened on the admin port but the request went through")


def cache_targets(stack: Stack) -> list[Target]:
    """The small JSON GET forwarded, then answered from the memory cache and (if it runs) the Redis one."""
    targets = [Target(FORWARDED, stack.via_sidecar(STATIC, SMALL), stack.sidecar.pid)]
    for label, sidecar in ((MEMORY_HIT, stack.sidecar), (REDIS_HIT, stack.redis_sidecar)):
        if sidecar is not None:
            targets.append(Target(label, stack.via_sidecar(CACHED, SMALL, sidecar), sidecar.pid, sidecar))
    return targets


def prime_caches(stack: Stack) -> None:
    for sidecar in (stack.sidecar, stack.redis_sidecar):
        if sidecar is not None:
            prime(stack.via_sidecar(CACHED, SMALL, sidecar))


SCENARIOS: list[Scenario] = [
    Scenario("small", "small JSON GET, 32 conns", 32, three_ways(STATIC, SMALL, conforming=True)),
    Scenario("large", "1 MB body GET, 32 conns", 32, three_ways(STATIC, LARGE)),
    Scenario("single", "small JSON GET, 1 conn", 1, three_ways(STATIC, SMALL)),
    Scenario("slow", "20 ms upstream, 32 conns", 32, three_ways(AIO, "slow")),
    Scenario("resilience", "retries+breaker on vs off", 32, sidecar_pair((RESILIENT, STATIC), (LEAN_LABEL, LEAN)),
             reference="small"),
    Scenario("breaker", "open breaker vs healthy", 32, sidecar_pair((HEALTHY, STATIC), (OPEN, TRIPPED)),
             reference="small", prepare=open_breaker),
    Scenario("cache", "cached GET, 32 conns", 32, cache_targets, reference="small", prepare=prime_caches),
]


# -- measuring --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Options:
    runs: int
    seconds: float
    client_core: int | None
    server_core: int | None
    upstream_core: int | None
    only: frozenset[str]
    memory: bool
    nginx: bool
    redis_url: str | None  # None: the cache scenario without its Redis-backed target


@dataclass(slots=True)
class Results:
    runs: dict[str, dict[str, list[Sample]]] = field(default_factory=dict)
    urls: dict[str, dict[str, str]] = field(default_factory=dict)
    memory: dict[str, Any] | None = None
    redis: RedisCache | None = None

    def median(self, key: str, label: str) -> Sample | None:
        samples = self.runs.get(key, {}).get(label)
        return median_sample(samples) if samples else None

    def ratio(self, key: str, label: str, base_key: str, base_label: str) -> float | None:
        value, base = self.median(key, label), self.median(base_key, base_label)
        return value.rps / base.rps if value and base and base.rps else None

    def hit_rate(self, key: str, label: str) -> float | None:
        value = self.median(key, label)
        return value.hit_rate if value else None

    def added_p50(self, key: str) -> float | None:
        value, base = self.median(key, SIDECAR), self.median(key, DIRECT)
        return value.p50_ms - base.p50_ms if value and base else None

    def growth(self, direction: str) -> float | None:
        transfers = (self.memory or {}).get("transfers", [])
        return next((float(t["growth_mib"]) for t in transfers if t["direction"] == direction), None)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(scenario: Scenario, stack: Stack, opts: Options, results: Results) -> None:
    targets = scenario.targets(stack)
    if scenario.prepare is not None:
        scenario.prepare(stack)
    runs: dict[str, list[Sample]] = {t.label: [] for t in targets}
    results.runs[scenario.key] = runs
    results.urls[scenario.key] = {t.label: t.url for t in targets}
    for run in range(1, opts.runs + 1):
        for target in targets:  # interleaved, so drift over time hits every target alike
            wrk(target.url, scenario.connections, WARMUP_SECONDS, opts.client_core)
            sample = measured_run(target, scenario.connections, opts)
            runs[target.label].append(sample)
            log(f"  [{scenario.key}] {target.label} run {run}/{opts.runs}: {describe(sample)}")


def measured_run(target: Target, connections: int, opts: Options) -> Sample:
    """One wrk run, plus the CPU time the proxy under test spent per request and the cache hit rate during it
    (the metrics are read outside the CPU time's window)."""
    counts = lookups(target.cache_of) if target.cache_of is not None else None
    cpu = cpu_seconds(target.pid) if target.pid is not None else None
    sample = wrk(target.url, connections, opts.seconds, opts.client_core)
    if target.pid is not None and cpu is not None:
        spent = cpu_seconds(target.pid) - cpu
        sample = dataclasses.replace(sample, cpu_us=spent * 1e6 / sample.requests if sample.requests else None)
    if target.cache_of is not None and counts is not None:
        sample = dataclasses.replace(sample, hit_rate=hit_rate(counts, lookups(target.cache_of)))
    return sample


def describe(sample: Sample) -> str:
    errors = f"  errors {sample.errors} non-2xx {sample.non_2xx}" if sample.errors or sample.non_2xx else ""
    cpu = f"  cpu {sample.cpu_us:.0f} us/req" if sample.cpu_us is not None else ""
    hits = f"  hit rate {sample.hit_rate:.2%}" if sample.hit_rate is not None else ""
    return f"{sample.rps:,.0f} req/s  p50 {sample.p50_ms:.3f} ms  p99 {sample.p99_ms:.3f} ms{cpu}{hits}{errors}"


def run_memory_check(procs: Processes, tmp: Path, stack: Stack, opts: Options) -> dict[str, Any]:
    """On a fresh sidecar, so earlier load has not already grown its heap."""
    sidecar = start_sidecar(procs, tmp, "sidecar-memory", stack.static, stack.aio, opts.server_core)
    log("  [memory] 100 MB download and upload through a fresh sidecar")
    return asyncio.run(stream_check(sidecar))


def redis_for(opts: Options, scenarios: list[Scenario]) -> contextlib.AbstractContextManager[RedisCache | None]:
    """A namespace on the Redis (emptied on the way out) when the cache scenario runs with Redis, else None."""
    if opts.redis_url is None or not any(s.key == "cache" for s in scenarios):
        return contextlib.nullcontext()
    return redis_namespace(opts.redis_url)


def run_all(opts: Options) -> tuple[Results, Stack]:
    results = Results()
    scenarios = [s for s in SCENARIOS if not opts.only or s.key in opts.only]
    # Redis outermost: its keys are deleted once every sidecar that could still write them has stopped.
    with (redis_for(opts, scenarios) as redis, tempfile.TemporaryDirectory(prefix="egress-bench-") as tmp_name,
          Processes(Path(tmp_name)) as procs):
        tmp = Path(tmp_name)
        stack = build_stack(procs, tmp, opts.server_core, opts.upstream_core, opts.nginx, redis)
        log(f"upstream: {stack.upstream_kind} (static files), aiohttp+uvloop (20 ms endpoint, upload sink)")
        if redis is not None:
            log(f"redis {redis.version} at {redacted(redis.url)}: the Redis sidecar's cache, under {redis.namespace}:")
        for scenario in scenarios:
            log(f"{scenario.title}:")
            measure(scenario, stack, opts, results)
        if opts.memory:
            results.memory = run_memory_check(procs, tmp, stack, opts)
    results.redis = redis
    return results, stack


# -- checks -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    goal: str
    value: Callable[[Results], float | None]
    passes: Callable[[float], bool] | None  # None: reported, no target (verdict INFO)
    unit: str  # "x", "ms", "MiB" or "%"


CHECKS: list[Check] = [
    # The target is against the conforming pass-through: the floor of this stack, doing only what every request
    # must (timeouts, request id, access line, counters). The bare pass-through's ratio is still printed.
    Check("small GET vs conforming pass-through", ">= 0.85x",
          lambda r: r.ratio("small", SIDECAR, "small", CONFORMING), lambda v: v >= 0.85, "x"),
    Check("small GET vs pass-through", "report", lambda r: r.ratio("small", SIDECAR, "small", PASSTHROUGH),
          None, "x"),
    Check("conforming pass-through vs pass-through", "report",
          lambda r: r.ratio("small", CONFORMING, "small", PASSTHROUGH), None, "x"),
    Check("added p50 at 1 conn vs direct", "<= 0.50 ms", lambda r: r.added_p50("single"), lambda v: v <= 0.5, "ms"),
    Check("20 ms upstream vs direct", ">= 0.95x", lambda r: r.ratio("slow", SIDECAR, "slow", DIRECT),
          lambda v: v >= 0.95, "x"),
    Check("1 MB body vs pass-through", ">= 0.80x", lambda r: r.ratio("large", SIDECAR, "large", PASSTHROUGH),
          lambda v: v >= 0.80, "x"),
    Check("retry+breaker on vs off", ">= 0.90x",
          lambda r: r.ratio("resilience", RESILIENT, "resilience", LEAN_LABEL), lambda v: v >= 0.90, "x"),
    Check("open breaker vs healthy forward", ">= 5x", lambda r: r.ratio("breaker", OPEN, "breaker", HEALTHY),
          lambda v: v >= 5.0, "x"),
    Check("memory-cache HIT vs forwarded", ">= 2x", lambda r: r.ratio("cache", MEMORY_HIT, "cache", FORWARDED),
          lambda v: v >= 2.0, "x"),
    Check("Redis-cache HIT vs forwarded", "report", lambda r: r.ratio("cache", REDIS_HIT, "cache", FORWARDED),
          None, "x"),
    Check("Redis-cache hit rate", "report", lambda r: r.hit_rate("cache", REDIS_HIT), None, "%"),
    Check("100 MB download: RSS growth", "< 20 MiB", lambda r: r.growth("download"), lambda v: v < 20, "MiB"),
    Check("100 MB upload: RSS growth", "< 20 MiB", lambda r: r.growth("upload"), lambda v: v < 20, "MiB"),
]


def evaluate(results: Results) -> list[dict[str, Any]]:
    verdicts = []
    for check in CHECKS:
        value = check.value(results)
        verdict = ("SKIP" if value is None else "INFO" if check.passes is None
                   else "PASS" if check.passes(value) else "FAIL")
        verdicts.append({"check": check.name, "goal": check.goal, "value": value, "unit": check.unit,
                         "verdict": verdict})
    return verdicts


# -- reporting --------------------------------------------------------------------------------------------


def _ratio_text(value: Sample, base: Sample | None) -> str:
    return f"{value.rps / base.rps:.2f}x" if base and base.rps else "-"


def _value_text(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.2%}"
    return f"{value:+.3f} ms" if unit == "ms" else f"{value:.1f} MiB" if unit == "MiB" else f"{value:.3f}x"


def table(results: Results, verdicts: list[dict[str, Any]]) -> str:
    head = f"{'scenario':<28} {'target':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x direct':>8} " \
           f"{'x pass':>7} {'cpu us/req':>10} {'hit rate':>8} {'errors':>7}"
    lines = [head, "-" * len(head)]
    titles = {s.key: s for s in SCENARIOS}
    for key, runs in results.runs.items():
        ref = titles[key].reference or key
        direct, passthrough = results.median(ref, DIRECT), results.median(ref, PASSTHROUGH)
        for label in runs:
            m = results.median(key, label)
            assert m is not None
            errors = f"{m.errors + m.non_2xx}" if m.errors or m.non_2xx else "0"
            cpu = f"{m.cpu_us:.0f}" if m.cpu_us is not None else "-"
            hits = f"{m.hit_rate:.2%}" if m.hit_rate is not None else "-"
            lines.append(f"{titles[key].title:<28} {label:<24} {m.rps:>9,.0f} {m.p50_ms:>8.3f} {m.p99_ms:>8.3f} "
                         f"{_ratio_text(m, direct):>8} {_ratio_text(m, passthrough):>7} {cpu:>10} {hits:>8} "
                         f"{errors:>7}")
    if results.memory:
        lines += ["", f"100 MB streams through a fresh sidecar (far end paced at {results.memory['rate_mib_s']:.0f} "
                      f"MiB/s, RSS sampled every 50 ms; VmHWM at the end {results.memory['vm_hwm_mib']:.1f} MiB):"]
        for t in results.memory["transfers"]:
            lines.append(f"  {t['direction']:<9} {t['seconds']:>5.2f} s  RSS before {t['before_mib']:.1f} MiB, "
                         f"peak {t['peak_mib']:.1f} MiB, growth {t['growth_mib']:.1f} MiB ({t['samples']} samples)")
    lines += ["", f"{'check':<40} {'goal':<11} {'measured':>11}  verdict", "-" * 72]
    for v in verdicts:
        lines.append(f"{v['check']:<40} {v['goal']:<11} {_value_text(v['value'], v['unit']):>11}  {v['verdict']}")
    return "\n".join(lines)


def _first_line(argv: list[str]) -> str:
    """The first line a command prints (stdout or stderr), or "" when it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False, cwd=REPO_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def write_json(results: Results, verdicts: list[dict[str, Any]], stack: Stack, opts: Options) -> Path:
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    scenarios = {
        s.key: {
            "title": s.title, "connections": s.connections, "reference": s.reference or s.key,
            "targets": {label: {"url": results.urls[s.key][label],
                                "median": median_sample(samples).as_dict(),
                                "runs": [x.as_dict() for x in samples]}
                        for label, samples in results.runs[s.key].items()},
        }
        for s in SCENARIOS if s.key in results.runs
    }
    document = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": {
            "cpus": os.cpu_count(), "client_core": opts.client_core,
            "server_core": opts.server_core, "upstream_core": opts.upstream_core,
            "upstream": stack.upstream_kind, "python": sys.version.split()[0],
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
            "wrk": _first_line(["wrk", "-v"]),
            "nginx": _first_line(["nginx", "-v"]) if stack.upstream_kind == "nginx" else "",
            "commit": _first_line(["git", "rev-parse", "HEAD"]),
            "proxy_changed_since_commit": bool(_first_line(["git", "status", "--porcelain", "proxy"])),
            "redis": {"url": redacted(results.redis.url), "namespace": results.redis.namespace,
                      "version": results.redis.version} if results.redis else None,
        },
        "options": {"runs": opts.runs, "seconds": opts.seconds, "warmup_seconds": WARMUP_SECONDS},
        "scenarios": scenarios,
        "memory": results.memory,
        "checks": verdicts,
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


# -- command line -----------------------------------------------------------------------------------------


def parse_options(argv: list[str] | None) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description="Measure the sidecar's overhead")
    parser.add_argument("--runs", type=int, default=3, help="runs per target, median reported (default: 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per run (default: 5)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 run of 2 s")
    parser.add_argument("--only", default="", help="comma-separated scenario keys: "
                        + ",".join(s.key for s in SCENARIOS))
    parser.add_argument("--no-memory", action="store_true", help="skip the 100 MB streaming memory check")
    parser.add_argument("--no-nginx", action="store_true", help="use the aiohttp upstream even if nginx is installed")
    parser.add_argument("--upstream-on", choices=("client", "server"), default="client",
                        help="core for the upstreams: with wrk (default: the proxy under test has a core of its "
                             "own) or with the proxies")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS,
                        help=f"Redis for the Redis-backed cache target (default: {DEFAULT_REDIS})")
    parser.add_argument("--no-redis", action="store_true", help="cache scenario without the Redis-backed target")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any check fails")
    args = parser.parse_args(argv)
    client, server = core_layout()
    opts = Options(
        runs=1 if args.quick else max(1, args.runs),
        seconds=2.0 if args.quick else args.seconds,
        client_core=client,
        server_core=server,
        upstream_core=client if args.upstream_on == "client" else server,
        only=frozenset(k for k in args.only.split(",") if k),
        memory=not args.no_memory,
        nginx=not args.no_nginx,
        redis_url=None if args.no_redis else args.redis_url,
    )
    return opts, args.strict


def _interrupt(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opts, strict = parse_options(argv)
    require_wrk()
    signal.signal(signal.SIGTERM, _interrupt)  # stopped from outside: still reap every child (finally blocks)
    signal.signal(signal.SIGINT, _interrupt)  # even when started with SIGINT ignored (a background job)
    if opts.client_core is None:
        log("warning: fewer than 2 CPUs or no taskset: nothing is pinned, numbers are noisier")
    else:
        os.sched_setaffinity(0, {opts.client_core})
        log(f"cores: wrk + this script on {opts.client_core}; proxies on {opts.server_core}; "
            f"upstreams on {opts.upstream_core}")
    try:
        results, stack = run_all(opts)
    except KeyboardInterrupt:
        log("interrupted: every process the benchmark started has been stopped")
        return 130
    verdicts = evaluate(results)
    print(table(results, verdicts))
    print(f"\nresults: {write_json(results, verdicts, stack, opts)}")
    return 1 if strict and any(v["verdict"] == "FAIL" for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
