"""Start and stop all simulated servers in the current event loop."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from . import control, gemini, supabase, whatsapp
from .config import CONTROL, GEMINI, SERVERS, SUPABASE, WHATSAPP, WHATSAPP_MEDIA, SimulatorConfig
from .state import SimulatorState

log = logging.getLogger("inbox_backend.simulator")

_FACTORIES: dict[str, Callable[[SimulatorState], web.Application]] = {
    GEMINI: gemini.create_app,
    WHATSAPP: whatsapp.create_graph_app,
    WHATSAPP_MEDIA: whatsapp.create_media_app,
    SUPABASE: supabase.create_app,
    CONTROL: control.create_app,
}


@dataclass
class Simulator:
    """A running simulator: ``urls`` by server name and the shared ``state``."""

    state: SimulatorState
    urls: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    if infos:
        family = infos[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(256)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@asynccontextmanager
async def run_simulator(
    host: str = "127.0.0.1",
    ports: Mapping[str, int] | None = None,
    *,
    config: SimulatorConfig | None = None,
    state: SimulatorState | None = None,
    access_log: bool = False,
) -> AsyncIterator[Simulator]:
    """Run every simulated upstream plus the control API; ports missing or 0 are picked by the OS.

    >>> async with run_simulator(ports={"gemini": 0}) as sim:   # doctest: +SKIP
    ...     sim.urls["gemini"], sim.state.request_count("gemini")
    """
    ports = dict(ports or {})
    unknown = set(ports) - set(SERVERS)
    if unknown:
        raise ValueError(
            f"unknown server name(s): {', '.join(sorted(unknown))}; expected {', '.join(SERVERS)}"
        )
    if state is None:
        state = SimulatorState(config)
    elif config is not None:
        raise ValueError("pass either config or state, not both")
    state.closing = asyncio.Event()  # fresh: an Event must not outlive the loop it was used in
    sim = Simulator(state)
    runners: list[web.AppRunner] = []
    try:
        for name in SERVERS:
            runner = web.AppRunner(
                _FACTORIES[name](state),
                handle_signals=False,
                access_log=logging.getLogger("aiohttp.access") if access_log else None,
                shutdown_timeout=state.config.shutdown_timeout,
            )
            await runner.setup()
            runners.append(runner)
            sock = _bind(host, ports.get(name, 0))
            port = sock.getsockname()[1]
            await web.SockSite(runner, sock).start()
            sim.ports[name] = port
            sim.urls[name] = _url(host, port)
        state.urls.clear()
        state.urls.update(sim.urls)
        yield sim
    finally:
        state.closing.set()
        results = await asyncio.gather(*(r.cleanup() for r in runners), return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # pragma: no cover - best effort on shutdown
                log.error("error while stopping a simulator server: %r", result)
