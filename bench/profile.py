"""Where one sidecar's CPU goes: `python -m bench.profile [--target forward|refusal|hit] [--seconds 10] [--top 30]`.

Runs the overhead benchmark's sidecar under cProfile (the standard library's profiler) on the proxy core, drives it
with wrk on the other core for `--seconds`, and prints the functions with the most own time and the stages' cumulative
share. cProfile adds a constant cost per Python call, so read the shares, not the absolute figures, and compare two
builds with `bench.ab`.
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import tempfile
from pathlib import Path

from bench.ab import CONNECTIONS, PATHS, require_hit, start_build
from bench.loadgen import require_wrk, wrk
from bench.processes import REPO_ROOT, Processes, core_layout
from bench.stack import SMALL, TRIPPED, admin_post, start_aio_upstream, start_nginx, write_files

# The stage modules and the layers around them, each reported with its cumulative share of the profile.
LAYERS = ("proxy/pipeline.py", "proxy/stages/", "proxy/forward.py", "proxy/respond.py", "proxy/account.py",
          "proxy/listener.py", "aiohttp/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(PATHS), default="forward")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    require_wrk()
    client, server = core_layout()
    with tempfile.TemporaryDirectory(prefix="bench-profile-") as name, Processes(Path(name)) as procs:
        tmp = Path(name)
        write_files(tmp / "www", huge=False)
        upstream = start_nginx(procs, tmp, tmp / "www", client) or start_aio_upstream(procs, tmp / "www", client)
        out = tmp / "sidecar.prof"
        python = ("-m", "cProfile", "-o", str(out))
        sidecar = start_build(procs, tmp, "profiled", REPO_ROOT, upstream, server, python)
        if args.target == "refusal":
            admin_post(sidecar, f"/breakers/{TRIPPED}/open")
        url = f"{sidecar.url}/{PATHS[args.target]}/{SMALL}"
        if args.target == "hit":
            require_hit(url)
        wrk(url, CONNECTIONS, 1.0, client)  # warm-up
        sample = wrk(url, CONNECTIONS, args.seconds, client)
        os.kill(sidecar.pid, signal.SIGTERM)  # a graceful stop: cProfile writes its file on exit
        os.waitpid(sidecar.pid, 0)
        stats = pstats.Stats(str(out))
        print(f"{sample.requests} requests in {args.seconds:g}s ({args.target})\n")
        report_layers(stats)
        stats.sort_stats("tottime").print_stats(args.top)


def report_layers(stats: pstats.Stats) -> None:
    """Each layer's own time (functions defined in it), as a share of all the profile's own time."""
    entries = stats.stats  # type: ignore[attr-defined]  # pstats keeps its table public but untyped
    total = sum(row[2] for row in entries.values()) or 1.0
    for layer in LAYERS:
        own = sum(row[2] for (file, _, _), row in entries.items() if layer in file)
        print(f"  {layer:<22} own time {own / total:6.1%}")
    print()


if __name__ == "__main__":
    main()
