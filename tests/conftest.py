"""Shared fixtures: real loopback upstreams that fail on command, real sidecars, a real client."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from hypothesis import HealthCheck, settings

from tests.support.redis import make_redis, redis_namespace, redis_url  # noqa: F401  (fixtures, for every test)
from tests.support.sidecar import RunningSidecar, start_sidecar
from tests.support.upstream import FaultyUpstream

# Property tests: bounded examples everywhere; in CI (CI=true) the same examples every run (a fixed seed), so a red
# run is reproducible. HYPOTHESIS_PROFILE=deep explores more for a local hunt.
settings.register_profile("default", max_examples=100, deadline=None)
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True)
settings.register_profile("deep", max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default"))

MakeUpstream = Callable[[], Awaitable[FaultyUpstream]]
MakeSidecar = Callable[..., Awaitable[RunningSidecar]]


@pytest.fixture
async def make_upstream() -> AsyncIterator[MakeUpstream]:
    started: list[FaultyUpstream] = []

    async def make() -> FaultyUpstream:
        upstream = await FaultyUpstream().start()
        started.append(upstream)
        return upstream

    yield make
    for upstream in started:
        await upstream.stop()


@pytest.fixture
async def upstream(make_upstream: MakeUpstream) -> FaultyUpstream:
    return await make_upstream()


@pytest.fixture
async def make_sidecar() -> AsyncIterator[MakeSidecar]:
    running: list[RunningSidecar] = []

    async def make(body: str, environ: dict[str, str] | None = None) -> RunningSidecar:
        sidecar = await start_sidecar(body, environ)
        running.append(sidecar)
        return sidecar

    yield make
    for sidecar in running:
        await sidecar.sidecar.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        yield session
