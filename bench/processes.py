"""Child processes of the benchmark: pinned to a core, each in its own process group, always reaped.

`Processes` is a context manager: leaving it (normally, on an exception or on Ctrl-C) stops every
process it started, SIGTERM first, then SIGKILL for any that ignore it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

LOOPBACK = "127.0.0.1"  # every listener and every request of the benchmark stays on this address
REPO_ROOT = Path(__file__).resolve().parent.parent  # children run here, so `-m bench.x` / `-m proxy` resolve


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (bound all at once so they differ), released for a child to bind."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def free_port() -> int:
    return free_ports(1)[0]


def free_port_run(count: int, attempts: int = 100) -> int:
    """The first of `count` consecutive free loopback ports (the upstream simulator takes five in a row)."""
    for _ in range(attempts):
        base = free_port()
        if base + count > 65536:
            continue
        with contextlib.ExitStack() as held:
            try:
                for port in range(base, base + count):
                    held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)).bind((LOOPBACK, port))
            except OSError:
                continue
            return base
    raise RuntimeError(f"no {count} consecutive free ports")


def pinned(argv: Sequence[str], core: int | None) -> list[str]:
    """`taskset -c CORE argv...` (taskset execs, so the pid stays the program's), or argv as is."""
    if core is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", str(core), *argv]


def core_layout() -> tuple[int | None, int | None]:
    """(client core, server core): the first two CPUs this process may use, or (None, None) with one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or shutil.which("taskset") is None:
        return None, None
    return cpus[0], cpus[1]


class Processes:
    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self._running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(
        self, name: str, argv: Sequence[str], core: int | None, cwd: Path = REPO_ROOT,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start `argv` in a new session (its own process group); output goes to `<logdir>/<name>.log`.
        `env`: the child's whole environment (default: ours)."""
        with open(self.log_path(name), "wb") as log:
            proc = subprocess.Popen(
                pinned(argv, core), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=cwd, env=None if env is None else dict(env),
            )
        self._running.append((name, proc))
        return proc

    def log_path(self, name: str) -> Path:
        return self.logdir / f"{name}.log"

    def log_tail(self, name: str, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        return ""

    def close(self) -> None:
        while self._running:
            _, proc = self._running.pop()
            stop(proc)


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, logs: Processes, timeout: float = 20.0) -> None:
    """Poll `url` until it answers with any HTTP status; fail (with its log) if `proc` exits, also just after
    the first answer: a child that lost its port to another process must not pass for ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _alive(proc, what, logs)
        try:
            with urllib.request.urlopen(url, timeout=1.0):
                pass
        except urllib.error.HTTPError:
            pass
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
            continue
        time.sleep(0.2)
        _alive(proc, what, logs)
        return
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f}s:\n{logs.log_tail(what)}")


def _alive(proc: subprocess.Popen[bytes], what: str, logs: Processes) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}:\n{logs.log_tail(what)}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (from /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` size field (VmRSS, VmHWM) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class PeakRss:
    """Samples a process's VmRSS every `interval` seconds in a thread while the block runs."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.before_kib = 0
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakRss:
        self.before_kib = self.peak_kib = status_kib(self.pid, "VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._take()

    def _take(self) -> None:
        with contextlib.suppress(OSError, KeyError):
            self.peak_kib = max(self.peak_kib, status_kib(self.pid, "VmRSS"))
            self.samples += 1

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._take()
