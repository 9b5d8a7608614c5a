"""wrk as the load generator: one run -> one `Sample` (requests/s, latency percentiles, errors)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

from bench.processes import pinned

LUA = Path(__file__).with_name("wrk_report.lua")
MARKER = "BENCH_RESULT "


@dataclass(frozen=True, slots=True)
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors and timeouts
    non_2xx: int  # wrk's "status" errors: responses with a status >= 400
    cpu_us: float | None = None  # CPU time (user + system) the proxy under test spent per request
    hit_rate: float | None = None  # cache HIT / all cache lookups on the route, from the sidecar's metrics

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def median_sample(samples: list[Sample]) -> Sample:
    """Each metric's median over the runs (so p50 and rps may come from different runs); errors and the hit
    rate are the worst run's."""
    return Sample(
        rps=median(s.rps for s in samples),
        p50_ms=median(s.p50_ms for s in samples),
        p99_ms=median(s.p99_ms for s in samples),
        requests=round(median(s.requests for s in samples)),
        errors=max(s.errors for s in samples),
        non_2xx=max(s.non_2xx for s in samples),
        cpu_us=median(cpus) if (cpus := [s.cpu_us for s in samples if s.cpu_us is not None]) else None,
        hit_rate=min(rates) if (rates := [s.hit_rate for s in samples if s.hit_rate is not None]) else None,
    )


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")


def wrk(url: str, connections: int, seconds: float, core: int | None) -> Sample:
    """One wrk run, one thread (it has one core to itself), `connections` keep-alive connections."""
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s", "-s", str(LUA), url]
    done = subprocess.run(
        pinned(argv, core), capture_output=True, text=True, timeout=seconds + 30, check=False,
        env={**os.environ, "WRK_METHOD": "", "WRK_BODY_FILE": ""},
    )
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return _sample(json.loads(line[len(MARKER):]))
    raise RuntimeError(f"wrk failed on {url} (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


def _sample(raw: dict[str, int | float]) -> Sample:
    seconds = raw["duration_us"] / 1e6
    return Sample(
        rps=raw["requests"] / seconds if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        requests=int(raw["requests"]),
        errors=int(raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]),
        non_2xx=int(raw["status"]),
    )
