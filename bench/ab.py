"""A/B two builds of the sidecar: `python -m bench.ab TREE_A TREE_B [--target refusal|forward|hit] [--rounds 6]`.

On a noisy machine one run of the overhead benchmark differs from the next by more than a hot-path change is
worth. An A/B cancels the drift: both builds' sidecars run side by side on the proxy core (one loaded at a time),
wrk runs alternate between them, and the medians of their CPU time per request are compared. A tree is any
checkout (`git worktree add DIR REV`, or `git archive REV | tar -x -C DIR`): its `proxy/` package is the one that
runs. Policy, upstream (nginx, else the aiohttp one) and core layout are the overhead benchmark's. Targets:
`refusal` (the `tripped` upstream, its breaker opened on the admin port), `forward` (the small JSON file,
through the `static` upstream) and `hit` (the same file on the `cached` upstream's caching route, stored before
anything is measured, so every measured request is a memory-cache HIT).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench.loadgen import require_wrk, wrk
from bench.processes import LOOPBACK, Processes, core_layout, cpu_seconds, free_ports, wait_http
from bench.stack import (
    CACHED,
    SMALL,
    STATIC,
    TRIPPED,
    Sidecar,
    admin_post,
    sidecar_policy,
    start_aio_upstream,
    start_nginx,
    write_files,
)

CONNECTIONS = 32
PATHS = {"refusal": TRIPPED, "forward": STATIC, "hit": CACHED}  # the upstream each target's requests name
CACHE_HEADER = "X-Egress-Cache"


@dataclass
class Build:
    label: str
    sidecar: Sidecar
    url: str
    cpu_us: list[float]


def start_build(
    procs: Processes, tmp: Path, label: str, tree: Path, upstream: str, core: int | None, python: Sequence[str] = ()
) -> Sidecar:
    """One build's sidecar on the bench policy; `python`: interpreter options before `-m proxy` (a profiler)."""
    port, admin = free_ports(2)
    policy = tmp / f"{label}-policy.yaml"
    policy.write_text(sidecar_policy(port, admin, upstream, upstream))
    argv = [sys.executable, *python, "-m", "proxy", "--policy", str(policy)]
    proc = procs.start(f"sidecar-{label}", argv, core, cwd=tree)
    sidecar = Sidecar(f"http://{LOOPBACK}:{port}", f"http://{LOOPBACK}:{admin}", proc.pid)
    wait_http(f"{sidecar.admin}/ready", proc, f"sidecar {label}", procs)
    return sidecar


def require_hit(url: str) -> None:
    """Store the cached route's answer (the first GET is a MISS that fills) and check the next one is a HIT: a
    build that does not cache the route would otherwise be measured forwarding, and the A/B would mean nothing."""
    results = []
    for _ in range(2):
        with urllib.request.urlopen(url, timeout=5) as response:
            response.read()
            results.append(response.headers.get(CACHE_HEADER))
    if results[-1] != "HIT":
        raise SystemExit(f"{url}: expected a cache HIT once stored, got {CACHE_HEADER}: {results}")


def measure(build: Build, seconds: float, core: int | None) -> float:
    before = cpu_seconds(build.sidecar.pid)
    sample = wrk(build.url, CONNECTIONS, seconds, core)
    return (cpu_seconds(build.sidecar.pid) - before) / max(sample.requests, 1) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs=2, type=Path, help="two checkouts: A (the baseline) and B")
    parser.add_argument("--target", choices=sorted(PATHS), default="refusal")
    parser.add_argument("--rounds", type=int, default=6, help="runs per build, alternating (default: 6)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per run (default: 3)")
    args = parser.parse_args()
    require_wrk()
    for tree in args.trees:
        if not (tree / "proxy" / "__main__.py").is_file():
            raise SystemExit(f"{tree} has no proxy/ package")
    client, server = core_layout()
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as name, Processes(Path(name)) as procs:
        tmp = Path(name)
        write_files(tmp / "www", huge=False)
        upstream = start_nginx(procs, tmp, tmp / "www", client) or start_aio_upstream(procs, tmp / "www", client)
        builds = []
        for label, tree in zip(("A", "B"), args.trees, strict=True):
            sidecar = start_build(procs, tmp, label, tree.resolve(), upstream, server)
            if args.target == "refusal":
                admin_post(sidecar, f"/breakers/{TRIPPED}/open")
            url = f"{sidecar.url}/{PATHS[args.target]}/{SMALL}"
            if args.target == "hit":
                require_hit(url)
            builds.append(Build(label, sidecar, url, []))
        for build in builds:
            wrk(build.url, CONNECTIONS, 1.0, client)  # warm-up
        for _ in range(args.rounds):
            for build in builds:
                build.cpu_us.append(measure(build, args.seconds, client))
        a, b = (median(build.cpu_us) for build in builds)
        for build, tree in zip(builds, args.trees, strict=True):
            runs = " ".join(f"{x:.1f}" for x in build.cpu_us)
            print(f"{build.label} {tree}: {args.target} CPU µs/request {runs}  median {median(build.cpu_us):.2f}")
        print(f"B - A: {b - a:+.2f} µs/request ({(b - a) / a:+.1%})")


if __name__ == "__main__":
    main()
