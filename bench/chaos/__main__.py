"""`python -m bench.chaos [--quick] [--out DIR] [--rate R] [--seconds S] [--modes legacy,direct,sidecar]`."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

from bench.chaos import report
from bench.chaos.analysis import summarize
from bench.chaos.run import log, run_mode
from bench.chaos.scenario import Scenario
from bench.chaos.stack import MODES
from bench.processes import REPO_ROOT

FULL = (30.0, 70.0)  # (req/s, seconds): the first measurement
QUICK = (10.0, 25.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK[0]:g} req/s for {QUICK[1]:g}s per mode")
    parser.add_argument("--out", type=Path, help="report directory (default bench/results/chaos-<time>/)")
    parser.add_argument("--rate", type=float, help="requests per second")
    parser.add_argument("--seconds", type=float, help="load duration per mode")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of %(default)s")
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {', '.join(MODES)}")
    rate, seconds = QUICK if args.quick else FULL
    scenario = Scenario(args.rate or rate, args.seconds or seconds, args.seed)
    now = datetime.datetime.now().astimezone()
    out: Path = args.out or REPO_ROOT / "bench" / "results" / f"chaos-{now:%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_mode(mode, scenario, out / "logs" / mode) for mode in modes]
    summary = {run.mode: summarize(run, scenario.outage) for run in runs}
    meta = {"date": now.isoformat(timespec="seconds"), "rate": scenario.rate, "seconds": scenario.seconds,
            "seed": scenario.seed, "quick": args.quick,
            "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, Python "
                       f"{platform.python_version()})"}
    report.write(runs, summary, scenario, meta, out)
    print("\n".join(report.table(summary)))
    log(f"report: {out / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
