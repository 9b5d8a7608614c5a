"""Does the sidecar stream? 100 MB down and 100 MB up through it, with its RSS sampled every 50 ms.

The far end consumes at a paced `RATE` (slower than the sidecar can move bytes) so that backpressure,
not speed, is what keeps memory flat: a sidecar that buffers would grow by the difference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp

from bench.processes import PeakRss, status_kib
from bench.stack import AIO, HUGE, HUGE_BYTES, LARGE, SMALL, STATIC, Sidecar
from bench.upstream import pace

RATE = 100 * 1024 * 1024  # bytes/s at the consuming end
CHUNK = 256 * 1024
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Transfer:
    direction: str
    bytes: int
    seconds: float
    before_mib: float
    peak_mib: float
    samples: int

    @property
    def growth_mib(self) -> float:
        return self.peak_mib - self.before_mib

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "growth_mib": round(self.growth_mib, 2)}


async def _download(session: aiohttp.ClientSession, url: str) -> int:
    received, started = 0, time.monotonic()
    async with session.get(url) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_chunked(CHUNK):
            received += len(chunk)
            await pace(started, received, RATE)
    return received


async def _zeros(total: int) -> AsyncIterator[bytes]:
    block = bytes(CHUNK)
    for _ in range(total // CHUNK):
        yield block


async def _upload(session: aiohttp.ClientSession, url: str) -> int:
    headers = {"Content-Length": str(HUGE_BYTES), "Content-Type": "application/octet-stream"}
    async with session.post(f"{url}?rate={RATE}", data=_zeros(HUGE_BYTES), headers=headers) as response:
        response.raise_for_status()
        return int((await response.json())["bytes"])


async def _warm_up(session: aiohttp.ClientSession, sidecar: Sidecar) -> None:
    """Let the sidecar allocate what any request needs (pools, buffers) before the baseline is read."""
    for path in (SMALL, LARGE) * 5:
        async with session.get(f"{sidecar.url}/{STATIC}/{path}") as response:
            await response.read()
    async with session.post(f"{sidecar.url}/{AIO}/sink", data=bytes(2 * MIB)) as response:
        await response.read()
    await asyncio.sleep(0.3)


async def _measure(direction: str, pid: int, transfer: Awaitable[int]) -> Transfer:
    started = time.monotonic()
    with PeakRss(pid) as rss:
        moved = await transfer
    seconds = time.monotonic() - started
    if moved != HUGE_BYTES:
        raise RuntimeError(f"{direction}: {moved} bytes arrived, expected {HUGE_BYTES}")
    return Transfer(direction, moved, round(seconds, 2), rss.before_kib / 1024, rss.peak_kib / 1024, rss.samples)


async def stream_check(sidecar: Sidecar) -> dict[str, Any]:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        await _warm_up(session, sidecar)
        down = await _measure("download", sidecar.pid, _download(session, f"{sidecar.url}/{STATIC}/{HUGE}"))
        up = await _measure("upload", sidecar.pid, _upload(session, f"{sidecar.url}/{AIO}/sink"))
    return {
        "rate_mib_s": RATE / MIB,
        "transfers": [down.as_dict(), up.as_dict()],
        "vm_hwm_mib": round(status_kib(sidecar.pid, "VmHWM") / 1024, 2),
    }
