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
    launched = Launched(process, f"http://127.0.0.1:{base + 5}", f"http://127.0.0.1:{base}", log)
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
