"""`python -m inbox_backend.stack`: the whole local stack, for `make run`.

Starts the upstream simulator, the egress sidecar (config/policy.local.yaml) and the backend as child
processes, waits until each is ready, prints where they are and what to try, and stops all three on
Ctrl-C or SIGTERM (exit 0). If one of them dies, the others are stopped and the exit status is 1.

Every port is checked before anything starts (one in use: exit 1, naming it), and a child is ready only when
its own pid answers its health URL: another stack already on these ports is never taken for this one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp

from inbox_backend.settings import REAL_URLS, SIDECAR_URL_VARS, Upstream

STOP_GRACE = 8.0  # seconds a child gets after SIGTERM before SIGKILL
READY_WITHIN = 30.0
# The simulator's servers, from its control port on: control, gemini, whatsapp, whatsapp_media, supabase.
SIMULATOR_OFFSETS = {Upstream.GEMINI: 1, Upstream.WHATSAPP: 2, Upstream.WHATSAPP_MEDIA: 3, Upstream.SUPABASE: 4}
SIMULATOR_FLAGS = {Upstream.GEMINI: "--gemini-port", Upstream.WHATSAPP: "--whatsapp-port",
                   Upstream.WHATSAPP_MEDIA: "--media-port", Upstream.SUPABASE: "--supabase-port"}
LOCAL_SECRETS = {"GEMINI_API_KEY": "sim-gemini-key"}  # the sidecar injects it; the simulator's sample key


def log(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Ports:
    backend: int = 8000
    sidecar: int = 8081
    admin: int = 9901
    simulator: int = 9100  # the control port; the upstreams take the next four

    def named(self) -> list[tuple[int, str, str]]:
        """Every port the stack listens on: (port, what it is, the option that moves it)."""
        simulator = [(self.simulator, "upstream simulator control", "--simulator-port")]
        simulator += [(self.simulator + offset, f"simulated {upstream}", "--simulator-port")
                      for upstream, offset in SIMULATOR_OFFSETS.items()]
        return [(self.backend, "inbox backend", "--backend-port"), (self.sidecar, "egress sidecar", "--sidecar-port"),
                (self.admin, "sidecar admin", "--admin-port"), *simulator]

    def simulator_url(self, upstream: Upstream) -> str:
        return f"http://127.0.0.1:{self.simulator + SIMULATOR_OFFSETS[upstream]}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.simulator}"

    @property
    def backend_url(self) -> str:
        return f"http://127.0.0.1:{self.backend}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin}"


@dataclass(frozen=True)
class Child:
    name: str
    args: tuple[str, ...]  # after `python -m`
    env: Mapping[str, str]
    ready_url: str


def children(ports: Ports, policy: str, environ: Mapping[str, str]) -> list[Child]:
    """In start order: each one's dependencies come before it."""
    real = {var: ports.simulator_url(upstream) for upstream, (var, _) in REAL_URLS.items()}
    simulator_args = ["inbox_backend.simulator", "--control-port", str(ports.simulator)]
    for upstream, flag in SIMULATOR_FLAGS.items():
        simulator_args += [flag, str(ports.simulator + SIMULATOR_OFFSETS[upstream])]
    sidecar_env = {**LOCAL_SECRETS, **environ, **real,
                   "EGRESS_LISTEN": f"127.0.0.1:{ports.sidecar}", "EGRESS_ADMIN": f"127.0.0.1:{ports.admin}"}
    backend_env = {
        **environ,
        **real,  # where EGRESS_MODE=direct would send calls
        **{var: f"http://127.0.0.1:{ports.sidecar}/{upstream}" for upstream, var in SIDECAR_URL_VARS.items()},
        "SIDECAR_ADMIN_URL": ports.admin_url,
        "INBOX_LISTEN": f"127.0.0.1:{ports.backend}",
    }
    return [
        Child("simulator", tuple(simulator_args), dict(environ), f"{ports.control_url}/healthz"),
        Child("sidecar", ("proxy", "--policy", policy), sidecar_env, f"{ports.admin_url}/ready"),
        Child("backend", ("inbox_backend",), backend_env, f"{ports.backend_url}/health"),
    ]


class ChildDied(Exception):
    pass


def ports_in_use(ports: Ports) -> list[str]:
    """Why the stack cannot start: one line per port something else listens on (or that is taken twice)."""
    problems = []
    seen: set[int] = set()
    for port, what, option in ports.named():
        if port in seen:
            problems.append(f"port {port} ({what}) is given to two processes: pick another with {option}")
            continue
        seen.add(port)
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the children bind: TIME_WAIT is free
            try:
                sock.bind(("127.0.0.1", port))
            except OSError as exc:
                problems.append(f"port {port} ({what}) is not free: {exc.strerror}. Stop what holds it (another "
                                f"`make run`? `ss -ltnp 'sport = :{port}'` names it) or pick another with {option}")
    return problems


# Linux: the child asks the kernel for SIGTERM when its parent (this launcher) dies, even by SIGKILL, then
# becomes the real program (the request survives exec). Without it a killed launcher leaves three servers
# holding the stack's ports. Elsewhere the children are only stopped by a live launcher.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM); "  # 1: PR_SET_PDEATHSIG
    "os.getppid() == int(sys.argv[1]) or sys.exit('the launcher is gone'); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


def _dying_with(parent: int) -> tuple[str, ...]:
    return ("-c", _DIE_WITH_PARENT, str(parent)) if sys.platform == "linux" else ()


class Supervisor:
    def __init__(self) -> None:
        self.running: list[tuple[Child, asyncio.subprocess.Process]] = []

    async def start(self, child: Child, http: aiohttp.ClientSession) -> None:
        # Its own session: a Ctrl-C in the terminal reaches only us, and we stop the children in order.
        process = await asyncio.create_subprocess_exec(
            sys.executable, *_dying_with(os.getpid()), "-m", *child.args, env=dict(child.env), start_new_session=True
        )
        self.running.append((child, process))
        await self._wait_ready(child, process, http)
        log(f"{child.name} ready (pid {process.pid})")

    async def _wait_ready(self, child: Child, process: asyncio.subprocess.Process, http: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + READY_WITHIN
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise ChildDied(f"{child.name} exited with status {process.returncode} while starting")
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                async with http.get(child.ready_url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                    body = await response.json(content_type=None)
                    answered = body.get("pid") if isinstance(body, dict) else None
                    if answered != process.pid:
                        # Someone else's server on the child's port (it took it after the check): never "ready".
                        raise ChildDied(f"{child.ready_url} is answered by another process (pid {answered}), not "
                                        f"the {child.name} just started (pid {process.pid}): is another stack running?")
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
        raise ChildDied(f"{child.name} not ready at {child.ready_url} within {READY_WITHIN:.0f}s")

    async def first_exit(self) -> str:
        """Wait until any child exits; its description."""
        waits = {asyncio.create_task(p.wait()): (c, p) for c, p in self.running}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        child, process = waits[next(iter(done))]
        return f"{child.name} exited with status {process.returncode}"

    async def stop_all(self) -> None:
        """Newest first (the backend drains while its sidecar is still there): SIGTERM, wait, then SIGKILL."""
        for child, process in reversed(self.running):
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), STOP_GRACE)
                except TimeoutError:
                    log(f"{child.name} did not stop within {STOP_GRACE:.0f}s: killing it")
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            log(f"{child.name} stopped")


def _python() -> str:
    """The interpreter to type: the project's venv one (relative when it is), which has the package."""
    here = os.path.relpath(sys.executable)
    return here if not here.startswith("..") else sys.executable


def banner(ports: Ports) -> str:
    b = ports.backend_url
    return f"""
Inbox stack is up (Ctrl-C stops all three):
  backend            {b}
  egress sidecar     http://127.0.0.1:{ports.sidecar}/<upstream>   admin {ports.admin_url}
  upstream simulator control {ports.control_url}   upstreams on ports {ports.simulator + 1}-{ports.simulator + 4}

Try:
  curl -H 'Authorization: Bearer user-token' {b}/auth/me
  {_python()} -m inbox_backend.send_webhook "hello" --url {b}/webhook
  curl {ports.control_url}/deliveries          # the bot's reply, as WhatsApp received it
  curl {ports.admin_url}/breakers              # the sidecar's circuit breakers
  curl {b}/health
Walkthrough (break Gemini, watch the breaker): docs/walkthrough.md
""".strip("\n")


async def run(ports: Ports, policy: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    taken = ports_in_use(ports)
    if taken:
        for problem in taken:
            log(problem)
        log("nothing was started")
        return 1
    supervisor = Supervisor()
    status = 0
    try:
        async with aiohttp.ClientSession() as http:
            for child in children(ports, policy, os.environ):
                starting = asyncio.create_task(supervisor.start(child, http))
                stopping = asyncio.create_task(stop.wait())
                await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if stop.is_set():
                    starting.cancel()
                    await asyncio.gather(starting, return_exceptions=True)
                    return 0
                starting.result()
        print(banner(ports), flush=True)
        stopping = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(supervisor.first_exit())
        await asyncio.wait({stopping, exited}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not stop.is_set():
            log(f"{exited.result()}: stopping the others")
            status = 1
        else:
            exited.cancel()
            log("stopping")
    except ChildDied as exc:
        log(str(exc))
        status = 1
    finally:
        await supervisor.stop_all()
    return status


def main(argv: list[str] | None = None) -> int:
    defaults = Ports()
    parser = argparse.ArgumentParser(prog="python -m inbox_backend.stack", description=__doc__.split("\n")[0])
    parser.add_argument("--backend-port", type=int, default=defaults.backend,
                        help="the inbox backend (default %(default)s)")
    parser.add_argument("--sidecar-port", type=int, default=defaults.sidecar,
                        help="the egress sidecar's data plane (default %(default)s)")
    parser.add_argument("--admin-port", type=int, default=defaults.admin,
                        help="the sidecar's admin port (default %(default)s)")
    parser.add_argument("--simulator-port", type=int, default=defaults.simulator,
                        help="the simulator's control port; its upstreams use the next four (default %(default)s)")
    parser.add_argument("--policy", default="config/policy.local.yaml",
                        help="sidecar policy (default %(default)s)")
    args = parser.parse_args(argv)
    ports = Ports(args.backend_port, args.sidecar_port, args.admin_port, args.simulator_port)
    return asyncio.run(run(ports, args.policy))


if __name__ == "__main__":
    sys.exit(main())
