"""The inbox backend's real stack on loopback, for tests: simulator + in-process sidecar (running the local
policy, optionally with overrides) + the backend app on a real port. No HTTP mocks anywhere."""

from __future__ import annotations

import asyncio
import copy
import json
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from aiohttp import web

from inbox_backend.app import create_app
from inbox_backend.serving import ConnectionLimits, GuardedRunner
from inbox_backend.settings import Settings, Upstream
from inbox_backend.simulator import Simulator, SimulatorConfig, run_simulator
from inbox_backend.state import APP, AppState
from inbox_backend.webhook_payload import SIGNATURE_HEADER, message_webhook, signature, text_message
from tests.support.sidecar import RunningSidecar, start_sidecar

ROOT = Path(__file__).resolve().parents[2]
LOCAL_POLICY = ROOT / "config" / "policy.local.yaml"
PRODUCTION_POLICY = ROOT / "config" / "policy.yaml"

USER = {"Authorization": "Bearer user-token"}
ADMIN = {"Authorization": "Bearer admin-token"}
# Sample data (inbox_backend/simulator/seed.py): account 1 (user's, bot on) has Alice in conversation 1.
PHONE_ID = "106540352242922"
BOT_OFF_PHONE_ID = "106540352242924"
ALICE = "15550001001"
# The policy environment variable of each upstream's URL (the same names as the backend's direct URLs).
URL_VARS = {Upstream.GEMINI: "GEMINI_URL", Upstream.WHATSAPP: "WHATSAPP_URL",
            Upstream.WHATSAPP_MEDIA: "WHATSAPP_MEDIA_URL", Upstream.SUPABASE: "SUPABASE_URL"}
# Short timeouts so a hanging upstream costs a test a second, not the production policy's 15 s.
FAST_GEMINI = {"upstreams": {"gemini": {"timeouts": {"connect": "300ms", "read": "300ms", "total": "1s"}}}}


class _Yaml12Loader(yaml.SafeLoader):
    """Booleans are only true/false (YAML 1.2, like the sidecar's loader): `on:` stays the key "on"."""


_Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def merged(base: Any, override: Any) -> Any:
    """`override` laid over `base`: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            out[key] = merged(base.get(key), value)
        return out
    return copy.deepcopy(override)


def local_policy(overrides: Mapping[str, Any] | None = None) -> str:
    """config/policy.local.yaml, with `overrides` merged in (still with its ${VAR:-default} references)."""
    data = yaml.load(LOCAL_POLICY.read_text(), Loader=_Yaml12Loader)
    return yaml.safe_dump(merged(data, dict(overrides or {})), sort_keys=False)


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def upstream_urls(sim: Simulator, unreachable: Iterable[Upstream] = ()) -> dict[Upstream, str]:
    """Where each upstream really is: the simulator, or a refused port for those listed as unreachable."""
    dead = set(unreachable)
    return {u: closed_port_url() if u in dead else sim.urls[u] for u in Upstream}


def sidecar_environ(urls: Mapping[Upstream, str], **extra: str) -> dict[str, str]:
    env = {var: urls[upstream] for upstream, var in URL_VARS.items()}
    return {"EGRESS_LISTEN": "127.0.0.1:0", "EGRESS_ADMIN": "127.0.0.1:0", "GEMINI_API_KEY": "sim-gemini-key",
            **env, **extra}


def backend_settings(urls: Mapping[Upstream, str], sidecar: RunningSidecar | None, **changes: Any) -> Settings:
    base = Settings()
    sidecar_urls = base.sidecar_urls if sidecar is None else tuple((u, f"{sidecar.url}/{u}") for u in Upstream)
    return replace(
        base,
        port=0,
        sidecar_urls=sidecar_urls,
        direct_urls=tuple(urls.items()),
        sidecar_admin_url=sidecar.admin if sidecar is not None else "http://127.0.0.1:1",
        **changes,
    )


@asynccontextmanager
async def serve_backend(settings: Settings) -> AsyncIterator[tuple[str, AppState]]:
    app = create_app(settings)
    runner = GuardedRunner(app, ConnectionLimits.of(settings), access_log=None, shutdown_timeout=1)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}", app[APP]
    finally:
        await runner.cleanup()


@dataclass
class Stack:
    sim: Simulator
    sidecar: RunningSidecar | None
    url: str
    state: AppState
    http: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, json_body: Any = None
    ) -> tuple[int, Any, Mapping[str, str]]:
        async with self.http.request(method, self.url + path, headers=headers, json=json_body) as response:
            raw = await response.read()
            body = json.loads(raw) if raw and response.content_type == "application/json" else raw
            return response.status, body, response.headers

    async def webhook(self, text: str, *, message_id: str | None = None, wa_id: str = ALICE,
                      phone_number_id: str = PHONE_ID, secret: str | None = None) -> tuple[int, Any]:
        payload = message_webhook(text_message(text, message_id), wa_id=wa_id, phone_number_id=phone_number_id)
        return await self.signed_webhook(payload, secret)

    async def signed_webhook(self, payload: Any, secret: str | None = None) -> tuple[int, Any]:
        raw = json.dumps(payload).encode()
        sig = signature(raw, secret if secret is not None else self.state.settings.whatsapp_app_secret)
        headers = {SIGNATURE_HEADER: sig, "Content-Type": "application/json"}
        async with self.http.post(f"{self.url}/webhook", data=raw, headers=headers) as response:
            return response.status, await response.json()

    async def admin(self, method: str, path: str) -> Any:
        assert self.sidecar is not None
        async with self.http.request(method, self.sidecar.admin + path) as response:
            assert response.status == 200, await response.text()
            return await response.json()

    def metric(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        return self.state.metrics.registry.get_sample_value(name, dict(labels or {})) or 0.0

    def rows(self, table: str, **where: Any) -> list[dict[str, Any]]:
        return [r for r in self.sim.state.db.rows(table) if all(r.get(k) == v for k, v in where.items())]


MakeStack = Callable[..., Awaitable[Stack]]


async def eventually(check: Callable[[], bool], within: float = 5.0, message: str = "") -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within}s: {message}")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def stack_factory() -> AsyncIterator[MakeStack]:
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def make(
            policy: Mapping[str, Any] | None = None,
            *,
            mode: str = "sidecar",
            sim_config: SimulatorConfig | None = None,
            unreachable: Iterable[Upstream] = (),
            **settings: Any,
        ) -> Stack:
            config = sim_config or SimulatorConfig(default_media_size=64 * 1024)
            sim = await stack.enter_async_context(run_simulator(config=config))
            urls = upstream_urls(sim, unreachable)
            sidecar: RunningSidecar | None = None
            if mode == "sidecar":
                sidecar = await start_sidecar(local_policy(policy), sidecar_environ(urls))
                stack.push_async_callback(sidecar.sidecar.stop)
            backend = backend_settings(urls, sidecar, egress_mode=mode, **settings)
            url, state = await stack.enter_async_context(serve_backend(backend))
            return Stack(sim, sidecar, url, state, http)

        yield make


T = TypeVar("T")


@dataclass
class ThreadedStack:
    """A stack on an event loop of its own thread, for hypothesis tests: they run each example synchronously,
    and one stack serves all of a test's examples (starting one per example would take most of the time)."""

    stack: Stack
    loop: asyncio.AbstractEventLoop

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(timeout=60)


@contextmanager
def threaded_stack(policy: Mapping[str, Any] | None = None, **settings: Any) -> Iterator[ThreadedStack]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="stack-loop", daemon=True)
    thread.start()
    factory = stack_factory()
    try:
        make = asyncio.run_coroutine_threadsafe(factory.__aenter__(), loop).result(timeout=60)
        try:
            stack = asyncio.run_coroutine_threadsafe(make(policy, **settings), loop).result(timeout=60)
            yield ThreadedStack(stack, loop)
        finally:
            asyncio.run_coroutine_threadsafe(factory.__aexit__(None, None, None), loop).result(timeout=60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# -- fixtures (imported by the conftest of tests/backend and tests/e2e) ------------------------------
@pytest.fixture
async def make_stack() -> AsyncIterator[MakeStack]:
    async with stack_factory() as make:
        yield make


@pytest.fixture
async def stack(make_stack: MakeStack) -> Stack:
    return await make_stack()
