"""`python -m bench.cache_conformance --suite DIR [--out DIR] [--targets sidecar-cache,pass-through,nginx]`

Starts the suite's origin and, in front of it, the sidecar with `cache: {ttl: 60s}` on a catch-all route, the
same sidecar without the cache (the pass-through) and nginx with `proxy_cache` (the suite's own nginx setup), each
on a free loopback port; runs the suite's runner against each, one after the other (about a minute each); saves
each result file, the suite's test list, the policies, the nginx config and every process's log in the out
directory (default `bench/results/cache-conformance-<time>/`); prints the comparison and writes it as
`summary.json` and `report.md`. `--summarize OUT_DIR` recomputes the comparison from a run's saved files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.cache_conformance import suite, summary, targets
from bench.processes import REPO_ROOT, Processes
from bench.stack import nginx_binary


def sidecar_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "proxy")
    return commit + (" (proxy/ modified)" if dirty else "")


def measure(checkout: Path, out: Path, names: list[str], route_cache: str) -> dict[str, Any]:
    suite.check(checkout)
    binary = nginx_binary()
    if summary.NGINX in names and binary is None:
        raise SystemExit("nginx is not installed: leave it out with --targets sidecar-cache,pass-through")
    tests = suite.export_tests(checkout)
    (out / "tests.json").write_text(json.dumps(tests, indent=1))
    meta: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "suite": str(checkout),
        "suite_revision": suite.describe(checkout),
        "node": suite.node_version(), "sidecar_commit": sidecar_commit(),
        "sidecar_route": f"ANY /** with cache: {route_cache} (pass-through: no cache), retry 1 attempt, breaker "
                         "counts nothing, memory backend",
    }
    if binary is not None and summary.NGINX in names:
        meta["nginx"] = targets.nginx_version(binary)
    logs = out / "logs"
    logs.mkdir()
    with tempfile.TemporaryDirectory(prefix="cache-conformance-") as name, Processes(logs) as procs:
        tmp = Path(name)
        origin = targets.start_origin(procs, checkout, tmp)
        bases = {}
        for target in names:
            if target == summary.CACHE:
                bases[target] = targets.start_sidecar(procs, tmp, "sidecar-cache", origin, route_cache)
            elif target == summary.PASS_THROUGH:
                bases[target] = targets.start_sidecar(procs, tmp, "pass-through", origin, None)
            else:
                assert binary is not None
                bases[target] = targets.start_nginx(procs, tmp, origin, binary)
        for kept in [*tmp.glob("*-policy.yaml"), tmp / "nginx.conf"]:
            if kept.exists():
                shutil.copy(kept, out / kept.name)
        results = {}
        for target, base in bases.items():
            print(f"{target}: running the suite against {base} ...", file=sys.stderr, flush=True)
            started = time.monotonic()
            results[target] = suite.run(checkout, base, logs / f"runner-{target}.log")
            (out / f"{target}.json").write_text(json.dumps(results[target], indent=2) + "\n")
            print(f"{target}: {len(results[target])} tests in {time.monotonic() - started:.0f} s", file=sys.stderr,
                  flush=True)
        if (tmp / "nginx-error.log").exists():
            shutil.copy(tmp / "nginx-error.log", logs / "nginx-error.log")
        meta["origin"] = origin
        meta["bases"] = bases
    return summary.summarize(summary.parse_tests(tests), results, meta)


def resummarize(out: Path) -> dict[str, Any]:
    tests = summary.load_tests(out / "tests.json")
    results = {t: json.loads((out / f"{t}.json").read_text()) for t in summary.TARGETS if (out / f"{t}.json").exists()}
    meta: dict[str, Any] = {}
    if (out / "summary.json").exists():
        meta = json.loads((out / "summary.json").read_text()).get("meta", {})
    return summary.summarize(tests, results, meta)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, help=f"a checkout of the suite ({suite.GET_IT})")
    parser.add_argument("--out", type=Path, help="results directory (default: bench/results/cache-conformance-<time>)")
    parser.add_argument("--targets", default=",".join(summary.TARGETS),
                        help="comma-separated, of: %(default)s")
    parser.add_argument("--route-cache", default=targets.ROUTE_CACHE, metavar="YAML",
                        help="the cached run's route `cache:` setting, a YAML flow mapping (default: %(default)s)")
    parser.add_argument("--summarize", type=Path, metavar="OUT_DIR", help="recompute a saved run's comparison only")
    args = parser.parse_args()
    if args.summarize is not None:
        result = resummarize(args.summarize)
        out: Path = args.summarize
    else:
        if args.suite is None:
            parser.error(f"--suite DIR is required (get one: {suite.GET_IT})")
        names = [n.strip() for n in args.targets.split(",") if n.strip()]
        unknown = sorted(set(names) - set(summary.TARGETS))
        if unknown or not names:
            parser.error(f"--targets: expected some of {', '.join(summary.TARGETS)}, got {args.targets!r}")
        out = args.out or REPO_ROOT / "bench" / "results" / f"cache-conformance-{time.strftime('%Y%m%d-%H%M%S')}"
        out.mkdir(parents=True, exist_ok=False)
        try:
            result = measure(args.suite.resolve(), out, names, args.route_cache)
        except suite.SuiteError as exc:
            raise SystemExit(str(exc)) from None
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(summary.report(result))
    print(summary.table(result))
    print(f"results: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
