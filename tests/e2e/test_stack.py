"""`python -m inbox_backend.stack` (what `make run` runs) as a real process tree on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.backend.harness import ROOT


def free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports (the simulator takes five in a row)."""
    for _ in range(100):
        base = random.randint(20_000, 60_000)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no free port range")


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@dataclass
class Launched:
    process: asyncio.subprocess.Process
    backend: str
    control: str
    log: Path
    sidecar: str = ""
    children: list[int] = field(default_factory=list)


@pytest.fixture
async def launched(tmp_path: Path) -> AsyncIterator[Launched]:
    base = free_ports(8)
    ports = {"--backend-port": base + 5, "--sidecar-port": base + 6, "--admin-port": base + 7, "--simulator-port": base}
    log = tmp_path / "stack.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "inbox_backend.stack", *(str(x) for kv in ports.items() for x in kv),
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
    launched = Launched(process, f"http://127.0.0.1:{base + 5}", f"http://127.0.0.1:{base}", log,
                        f"http://127.0.0.1:{base + 6}")
    try:
        await wait_for_banner(launched)
        launched.children = children_of(process.pid)
        yield launched
    finally:
        await cleanup(launched)


async def cleanup(launched: Launched) -> None:
    """Whatever a failing test left: the launcher stops its children on SIGTERM; stragglers are killed."""
    process = launched.process
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()
    for pid in launched.children:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def wait_for_banner(launched: Launched) -> None:
    for _ in range(300):
        if "Inbox stack is up" in launched.log.read_text(errors="replace"):
            return
        if launched.process.returncode is not None:
            break
        await asyncio.sleep(0.05)
    raise AssertionError(f"the stack did not come up:\n{launched.log.read_text(errors='replace')}")


async def test_make_run_stack_answers_a_signed_webhook_and_stops_cleanly_on_ctrl_c(launched: Launched) -> None:
    children = launched.children
    assert len(children) == 3
    # The backend names where its calls go (the data plane), not the sidecar's admin port.
    assert f"egress through the sidecar at {launched.sidecar} (" in launched.log.read_text(errors="replace")

    helper = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inbox_backend.send_webhook", "hello from the e2e test",
        "--url", f"{launched.backend}/webhook", "--from", "15550009876", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await helper.communicate()
    assert helper.returncode == 0
    assert out.decode().startswith("200 ")

    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            async with http.get(f"{launched.control}/deliveries", params={"to": "15550009876"}) as response:
                deliveries = json.loads(await response.read())
            if deliveries:
                break
            await asyncio.sleep(0.05)
        assert [d["body"] for d in deliveries] == ["Echo: hello from the e2e test"]
        async with http.get(f"{launched.backend}/auth/me", headers={"Authorization": "Bearer user-token"}) as me:
            assert me.status == 200

    launched.process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(launched.process.wait(), 20) == 0
    assert not [pid for pid in children if alive(pid)]


async def test_when_a_child_dies_the_stack_stops_the_others_and_fails(launched: Launched) -> None:
    children = launched.children
    sidecar = next(pid for pid in children if "proxy" in command_line(pid))
    os.kill(sidecar, signal.SIGKILL)
    assert await asyncio.wait_for(launched.process.wait(), 20) == 1
    assert not [pid for pid in children if alive(pid)]
    assert "sidecar exited with status -9" in launched.log.read_text(errors="replace")


async def test_a_killed_launcher_takes_its_children_with_it(launched: Launched) -> None:
    children = launched.children
    assert len(children) == 3 and all(alive(pid) for pid in children)
    launched.process.kill()  # SIGKILL: the launcher gets no chance to stop anything itself
    await launched.process.wait()
    for _ in range(100):
        if not any(alive(pid) for pid in children):
            break
        await asyncio.sleep(0.1)
    assert [pid for pid in children if alive(pid)] == [], "children outlived a SIGKILLed launcher"


def run_stack(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "inbox_backend.stack", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_shows_every_port_default() -> None:
    done = run_stack("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for default in ("(default 8000)", "(default 8081)", "(default 9901)", "(default 9100)",
                    "(default config/policy.local.yaml)"):
        assert default in text, default


def test_a_port_in_use_stops_the_stack_before_anything_starts() -> None:
    base = free_ports(8)
    ports = ["--simulator-port", str(base), "--backend-port", str(base + 5), "--sidecar-port", str(base + 6),
             "--admin-port", str(base + 7)]
    with socket.socket() as holder:  # another process's sidecar, say, on the data port
        holder.bind(("127.0.0.1", base + 6))
        holder.listen(1)
        done = run_stack(*ports, timeout=15)
    assert done.returncode == 1
    assert f"port {base + 6} (egress sidecar) is not free" in done.stderr
    assert "--sidecar-port" in done.stderr and "nothing was started" in done.stderr
    assert "ready (pid" not in done.stderr and "Inbox stack is up" not in done.stdout
    for port in (base, base + 5, base + 7):  # no child got as far as binding
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


async def test_a_child_is_not_ready_when_another_process_answers_its_url() -> None:
    from aiohttp import web

    from inbox_backend.stack import Child, ChildDied, Supervisor

    async def impostor(_: web.Request) -> web.Response:  # a server left over from another run
        return web.json_response({"status": "ok", "pid": 1})

    app = web.Application()
    app.router.add_get("/health", impostor)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(30)")
    try:
        started = Child("backend", (), {}, f"http://127.0.0.1:{port}/health")
        async with aiohttp.ClientSession() as http:
            with pytest.raises(ChildDied, match=rf"answered by another process \(pid 1\), not the backend just "
                                                rf"started \(pid {child.pid}\)"):
                await asyncio.wait_for(Supervisor()._wait_ready(started, child, http), 10)
    finally:
        child.kill()
        await child.wait()
        await runner.cleanup()
