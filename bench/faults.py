"""The soak's upstreams: loopback aiohttp servers that misbehave by path, and on a schedule.

Each path is one behaviour of the proxy tests' fault server (`tests/support/upstream.py`), so the soak's faults
are the ones the suite pins down: `/hang` past the read timeout, `/stall` (headers, then a body that stops),
`/cut` (reset mid-body), `/drop` (reset before any answer), `/error` (503), `/throttle` (429 + Retry-After),
`/stream` (a slow-streaming body), and the healthy `/fast`, `/item/<n>` and `/echo` (POST: the body's length).
That server itself is not reused: it records every request, which over a long soak would grow without bound.

An upstream with an `Outages` schedule answers everything with a fault during the last part of each period,
so breakers open, stale entries stand in and breakers close again, over and over.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from bench.processes import LOOPBACK
from tests.support.upstream import (
    Behaviour,
    Recorded,
    cut_stream,
    echo,
    hang,
    reset_after_body,
    respond,
    stalled_body,
    stream,
)

SMALL: dict[str, object] = {"id": "wamid.HBgMMzQ2MDAwMDAwMDAwFQIAEhgUM0VCMEI2", "status": "delivered"}
STREAM_CHUNKS, STREAM_GAP = 10, 0.1  # a 1 s body: slow, but each gap well inside the soak's read timeout

BEHAVIOURS: dict[str, Behaviour] = {
    "fast": respond(200, SMALL),
    "item": respond(200, SMALL),
    "echo": echo(),
    "stream": stream([b"x" * 1024] * STREAM_CHUNKS, gap=STREAM_GAP, headers={"Content-Type": "text/plain"}),
    "hang": hang(),
    "stall": stalled_body(200, length=4096),
    "cut": cut_stream(b"x" * 512, 4096),
    "drop": reset_after_body(),
    "error": respond(503, {"error": "unavailable"}),
    "throttle": respond(429, {"error": "slow down"}, headers={"Retry-After": "1"}),
}
OUTAGE_FAULTS = ("error", "hang", "drop")  # what an upstream in an outage answers, in turn

# aiohttp logs a handler's exception with its traceback: a drop is the point here, not news.
QUIET = logging.getLogger("bench.faults.server")
QUIET.disabled = True


@dataclass(frozen=True, slots=True)
class Outages:
    """Down for the last `length` seconds of every `period` seconds counted from `started`."""

    started: float
    period: float
    length: float

    def down(self, now: float) -> bool:
        return (now - self.started) % self.period >= self.period - self.length


class FaultServer:
    def __init__(self, outages: Outages | None = None) -> None:
        self.outages = outages
        self._turn = itertools.cycle(OUTAGE_FAULTS)
        self._runner: web.ServerRunner | None = None
        self.url = ""

    async def start(self) -> FaultServer:
        # handler_cancellation: a hung behaviour ends when the sidecar gives up on it, instead of sleeping on
        # for an hour per request in this process.
        server = web.Server(self._handle, handler_cancellation=True, logger=QUIET)
        self._runner = web.ServerRunner(server, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        self.url = f"http://{LOOPBACK}:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        name = request.path.strip("/").split("/", 1)[0]
        if self.outages is not None and self.outages.down(time.monotonic()):
            name = next(self._turn)
        behaviour = BEHAVIOURS.get(name)
        if behaviour is None:
            return web.Response(status=404, text=json.dumps({"error": f"no behaviour {name!r}"}))
        response = await behaviour(request, Recorded(request.method, request.raw_path, request.headers))
        if response is None:  # the behaviour dropped the connection
            raise ConnectionResetError("dropped on purpose")
        return response
