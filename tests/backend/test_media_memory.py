"""Media is streamed: a 50 MB download through a backend *process* does not grow its memory by 50 MB."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from inbox_backend.settings import SIDECAR_URL_VARS
from inbox_backend.simulator import media_sha256, run_simulator
from tests.backend.harness import ROOT, USER, closed_port_url, local_policy, sidecar_environ, upstream_urls
from tests.support.sidecar import RunningSidecar, start_sidecar

MEDIA_SIZE = 50 * 1024 * 1024
MIB = 1024 * 1024


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak since start) of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture
async def backend_process(sidecar_and_sim: tuple[RunningSidecar, str]) -> AsyncIterator[tuple[str, int]]:
    sidecar, _ = sidecar_and_sim
    port = int(closed_port_url().rpartition(":")[2])
    env = {**os.environ, "SIDECAR_ADMIN_URL": sidecar.admin, "EGRESS_MODE": "sidecar"}
    env.update({var: f"{sidecar.url}/{upstream}" for upstream, var in SIDECAR_URL_VARS.items()})
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "inbox_backend", "--listen", f"127.0.0.1:{port}", "--log-level", "warning",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_until_up(f"{url}/health")
        yield url, process.pid
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def wait_until_up(url: str, seconds: float = 15.0) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(int(seconds / 0.05)):
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"{url} did not come up")


@pytest.fixture
async def sidecar_and_sim() -> AsyncIterator[tuple[RunningSidecar, str]]:
    async with run_simulator() as sim:
        sim.state.set_media("big", MEDIA_SIZE)
        sim.state.set_media("warmup", MIB)
        for message_id, media_id in ((100, "big"), (101, "warmup")):
            sim.state.db.insert("messages", {"id": message_id, "conversation_id": 1, "account_id": 1,
                                             "direction": "in", "media_id": media_id})
        sidecar = await start_sidecar(local_policy(), sidecar_environ(upstream_urls(sim)))
        try:
            yield sidecar, sim.urls["control"]
        finally:
            await sidecar.sidecar.stop()


async def download(url: str) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    async with aiohttp.ClientSession() as http, http.get(url, headers=USER) as response:
        assert response.status == 200, await response.text()
        async for chunk in response.content.iter_chunked(256 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def test_a_50_mb_media_download_keeps_the_backend_memory_flat(backend_process: tuple[str, int]) -> None:
    url, pid = backend_process
    await download(f"{url}/messages/101/media")  # warm up: code paths, buffers and pools exist now
    before = memory_kib(pid, "VmRSS")
    size, sha = await download(f"{url}/messages/100/media")
    peak = memory_kib(pid, "VmHWM")
    assert (size, sha) == (MEDIA_SIZE, await asyncio.to_thread(media_sha256, "big", MEDIA_SIZE))
    grew_mib = (peak - before) / 1024
    assert grew_mib < 16, f"the backend's peak memory grew by {grew_mib:.1f} MiB for a 50 MiB download"
