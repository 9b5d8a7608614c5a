"""One mode's run: its stack, the faults, the traffic, the breaker timeline, and what the simulator saw."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.chaos import stack as chaos_stack
from bench.chaos.load import Result, drive
from bench.chaos.scenario import OUTAGE_FAULT, Scenario, steady_faults
from bench.processes import Processes

SERVICE_KEY = "sim-service-key"  # the simulator's Supabase service key: reads every row
SETTLE_QUIET = 4.0  # seconds without a new delivery: the background bot replies are done
SETTLE_MAX = 60.0


@dataclass
class ModeRun:
    mode: str
    results: list[Result]
    stats: dict[str, Any]  # the simulator's GET /stats: requests per upstream and route, deliveries
    messages: list[dict[str, Any]]  # the messages table at the end
    breakers: list[tuple[float, dict[str, str]]] = field(default_factory=list)  # (seconds, name -> state)


def log(message: str) -> None:
    print(f"[chaos] {message}", file=sys.stderr, flush=True)


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Any:
    async with http.request(method, url, **kwargs) as response:
        if response.status >= 300:
            raise RuntimeError(f"{method} {url}: {response.status} {await response.text()}")
        return await response.json()


async def _outage(http: aiohttp.ClientSession, control: str, scenario: Scenario, started: float) -> None:
    start, end = scenario.outage
    await asyncio.sleep(max(0.0, started + start - time.monotonic()))
    fault = await _json(http, "POST", f"{control}/faults", json=OUTAGE_FAULT)
    log(f"Gemini outage for {end - start:.0f}s")
    await asyncio.sleep(max(0.0, started + end - time.monotonic()))
    await _json(http, "DELETE", f"{control}/faults/{fault['id']}")
    log("Gemini outage over")


async def _poll_breakers(http: aiohttp.ClientSession, admin: str, started: float,
                         into: list[tuple[float, dict[str, str]]]) -> None:
    while True:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            snapshot = await _json(http, "GET", f"{admin}/breakers", timeout=aiohttp.ClientTimeout(total=1))
            into.append((time.monotonic() - started, {name: str(b["state"]) for name, b in snapshot.items()}))
        await asyncio.sleep(1.0)


async def _settle(http: aiohttp.ClientSession, control: str) -> None:
    """Wait until no delivery came for SETTLE_QUIET seconds (bot replies run after the webhook's answer)."""
    deadline = time.monotonic() + SETTLE_MAX
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = (await _json(http, "GET", f"{control}/stats"))["delivery_count"]
        if count != last:
            last, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since >= SETTLE_QUIET:
            return
        await asyncio.sleep(0.5)


async def _measure(stack: chaos_stack.ModeStack, scenario: Scenario) -> ModeRun:
    plan = scenario.plan()
    breakers: list[tuple[float, dict[str, str]]] = []
    async with aiohttp.ClientSession() as http:
        await _json(http, "POST", f"{stack.control}/faults", json=steady_faults())
        started = time.monotonic() + 0.5  # the first send after the helpers are running
        helpers = [asyncio.create_task(_outage(http, stack.control, scenario, started))]
        if stack.admin is not None:
            helpers.append(asyncio.create_task(_poll_breakers(http, stack.admin, started, breakers)))
        try:
            results = await drive(stack.backend, stack.mode, plan, started)
            log(f"{stack.mode}: {len(results)} requests answered; waiting for background replies")
            await _settle(http, stack.control)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        stats = await _json(http, "GET", f"{stack.control}/stats")
        auth = {"apikey": SERVICE_KEY, "Authorization": f"Bearer {SERVICE_KEY}"}
        messages = await _json(http, "GET", f"{stack.supabase}/rest/v1/messages", headers=auth,
                               params={"select": "id,wa_message_id,body,direction,status"})
    return ModeRun(stack.mode, results, stats, messages, breakers)


def run_mode(mode: str, scenario: Scenario, logdir: Path) -> ModeRun:
    """Start the mode's processes, measure, stop them (always)."""
    logdir.mkdir(parents=True, exist_ok=True)
    with Processes(logdir) as procs:
        stack = chaos_stack.start(procs, mode)
        log(f"{mode}: stack up (backend {stack.backend}); {scenario.rate:g} req/s for {scenario.seconds:g}s")
        return asyncio.run(_measure(stack, scenario))
