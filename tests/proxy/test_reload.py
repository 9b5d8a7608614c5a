"""Reload without restart: a good policy takes effect for the next request and keeps breakers, pools and the
cache; a bad one changes nothing and says why."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest

from proxy.policy import Policy, load_policy, parse_policy
from proxy.server import Sidecar
from tests.support.sidecar import RunningSidecar, policy_text
from tests.support.upstream import FaultyUpstream, delay, echo, free_port, hang, respond

SECRET = {"EGRESS_CACHE_KEY_SECRET": "reload-test"}  # for policies with a Redis cache


class Reloadable(RunningSidecar):
    """A sidecar whose policy file is a string the test rewrites."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(Sidecar(self.load(), loader=self.load))

    def load(self) -> Policy:
        return parse_policy(policy_text(self.text), "reload.yaml", SECRET)


@pytest.fixture
async def reloadable() -> AsyncIterator[list[Reloadable]]:
    made: list[Reloadable] = []
    yield made
    for r in made:
        await r.sidecar.stop()


async def start(made: list[Reloadable], text: str) -> Reloadable:
    r = Reloadable(text)
    await r.sidecar.start()
    made.append(r)
    return r


def policy(url: str, version: str, extra: str = "", token: str = "") -> str:
    admin = f"admin: {{listen: 127.0.0.1:0, token: {token}}}\n" if token else ""
    return admin + f"""
upstreams:
  gemini:
    url: {url}
    headers: {{x-policy-version: "{version}"}}
    retry: {{attempts: 1}}
    breaker: {{failures: 2, reset_after: 30s}}
{extra}
"""


async def test_a_reload_applies_to_the_next_request(upstream, reloadable, client):
    upstream.default = echo()
    r = await start(reloadable, policy(upstream.url, "1"))
    async with client.get(r.url + "/gemini/x") as resp:
        assert (await resp.json())["headers"]["x-policy-version"] == ["1"]
    r.text = policy(upstream.url, "2")
    async with client.post(r.admin + "/reload") as resp:
        assert resp.status == 200
        assert (await resp.json())["applied"] is True
    async with client.get(r.url + "/gemini/x") as resp:
        assert (await resp.json())["headers"]["x-policy-version"] == ["2"]
    async with client.get(r.admin + "/policy") as resp:
        assert "x-policy-version" in (await resp.json())["upstreams"]["gemini"]["headers"]


async def test_breakers_and_pools_survive_a_reload(upstream, reloadable, client):
    upstream.default = respond(500)
    r = await start(reloadable, policy(upstream.url, "1"))
    for _ in range(2):
        async with client.get(r.url + "/gemini/x") as resp:
            assert resp.status == 500
    session_before = r.sidecar.runtime.upstreams["gemini"].forwarder.pools  # type: ignore[union-attr]
    r.text = policy(upstream.url, "2")
    assert (await r.sidecar.reload()).applied
    async with client.get(r.url + "/gemini/x") as resp:
        assert resp.status == 503 and resp.headers["X-Egress-Error"] == "circuit_open"
    assert r.sidecar.runtime.upstreams["gemini"].forwarder.pools is session_before  # type: ignore[union-attr]
    async with client.get(r.admin + "/metrics") as resp:
        text = await resp.text()
    assert 'egress_requests_total{code="500",method="GET",route="default",upstream="gemini"} 2.0' in text


async def test_a_bad_policy_is_refused_and_the_running_one_stays(upstream, reloadable, client):
    upstream.default = echo()
    r = await start(reloadable, policy(upstream.url, "1"))
    r.text = policy(upstream.url, "2").replace("retry: {attempts: 1}", "retry: {attempts: many}")
    async with client.post(r.admin + "/reload") as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["applied"] is False
    assert body["problems"][0].startswith("reload.yaml:")
    assert "upstreams.gemini.retry.attempts: expected a whole number" in body["problems"][0]
    async with client.get(r.url + "/gemini/x") as resp:
        assert (await resp.json())["headers"]["x-policy-version"] == ["1"]
    async with client.get(r.admin + "/metrics") as resp:
        assert 'egress_policy_reloads_total{result="refused"} 1.0' in await resp.text()


async def test_reload_needs_the_admin_token(upstream, reloadable, client):
    r = await start(reloadable, policy(upstream.url, "1", token="t0k"))
    async with client.post(r.admin + "/reload") as resp:
        assert resp.status == 401
    async with client.post(r.admin + "/reload", headers={"Authorization": "Bearer t0k"}) as resp:
        assert resp.status == 200


async def test_added_upstreams_answer_and_removed_ones_are_gone(make_upstream, reloadable, client):
    first, second = await make_upstream(), await make_upstream()
    first.default = respond(200, b"first")
    second.default = respond(200, b"second")
    r = await start(reloadable, policy(first.url, "1") + "shutdown_grace: 100ms\n")
    r.text = f"""
shutdown_grace: 100ms
upstreams:
  supabase:
    url: {second.url}
"""
    old_pools = r.sidecar.runtime.upstreams["gemini"].forwarder.pools  # type: ignore[union-attr]
    assert (await r.sidecar.reload()).applied
    async with client.get(r.url + "/supabase/x") as resp:
        assert await resp.read() == b"second"
    async with client.get(r.url + "/gemini/x") as resp:
        assert resp.status == 404
    await asyncio.sleep(0.3)
    assert old_pools.closed  # the dropped upstream's pools are closed after the grace period


def _wait_ready(admin: str) -> None:
    import time
    import urllib.request

    for _ in range(100):
        try:
            with urllib.request.urlopen(admin + "/ready", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("sidecar never became ready")


async def test_sighup_reloads_the_policy_file(tmp_path, upstream: FaultyUpstream, client):
    upstream.default = echo()
    data, admin = free_port(), free_port()
    path = tmp_path / "policy.yaml"
    head = f"listen: 127.0.0.1:{data}\nadmin: 127.0.0.1:{admin}\n"
    path.write_text(head + policy(upstream.url, "1"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "--policy", str(path), stderr=subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        await asyncio.to_thread(_wait_ready, f"http://127.0.0.1:{admin}")
        path.write_text(head + policy(upstream.url, "2"))
        proc.send_signal(signal.SIGHUP)
        version = None
        for _ in range(50):
            async with client.get(f"http://127.0.0.1:{data}/gemini/x") as resp:
                version = (await resp.json())["headers"]["x-policy-version"]
            if version == ["2"]:
                break
            await asyncio.sleep(0.05)
        assert version == ["2"]
        path.write_text(head + "upstreams: [not, a, mapping]\n")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)
        async with client.get(f"http://127.0.0.1:{data}/gemini/x") as resp:
            assert (await resp.json())["headers"]["x-policy-version"] == ["2"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, raw = await asyncio.wait_for(proc.communicate(), 10)
    stderr = raw.decode()
    assert proc.returncode == 0
    assert "policy reloaded from" in stderr
    assert "policy reload refused, the running policy stays" in stderr
    assert "upstreams: expected a mapping" in stderr
    # each signal's audit line, as for POST /reload
    assert "admin SIGHUP reload from the process's signal: applied" in stderr
    assert "admin SIGHUP reload from the process's signal: refused (1 problem(s))" in stderr




async def test_a_reload_that_repoints_an_upstream_does_not_serve_the_old_ones_cached_answers(
    make_upstream, reloadable, client
):
    staging, prod = await make_upstream(), await make_upstream()
    staging.default = respond(200, b"staging")
    prod.default = respond(200, b"prod")

    def text(url: str) -> str:
        return f"""
upstreams:
  supabase:
    url: {url}
    routes:
      - {{name: profiles, match: GET /rest/v1/bot_profiles, cache: {{ttl: 5m}}}}
"""

    r = await start(reloadable, text(staging.url))
    for expected in ("MISS", "HIT"):
        async with client.get(r.url + "/supabase/rest/v1/bot_profiles") as resp:
            assert resp.headers["X-Egress-Cache"] == expected and await resp.read() == b"staging"
    r.text = text(prod.url)
    assert (await r.sidecar.reload()).applied
    async with client.get(r.url + "/supabase/rest/v1/bot_profiles") as resp:
        assert resp.headers["X-Egress-Cache"] == "MISS"
        assert await resp.read() == b"prod"


# -- reload and stop: found in review --------------------------------------------------------------------


async def test_a_reload_of_a_file_that_is_not_utf8_is_refused_and_counted(tmp_path, upstream, client):
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(policy(upstream.url, "v1")))
    running = RunningSidecar(Sidecar(load_policy(path, {}), loader=lambda: load_policy(path, {})))
    await running.sidecar.start()
    try:
        path.write_bytes(path.read_bytes().replace(b'"v1"', b'"caf\xe9"'))
        async with client.post(running.admin + "/reload") as resp:
            assert resp.status == 400  # was a 500: UnicodeDecodeError escaped the reload
            assert "not UTF-8" in (await resp.json())["problems"][0]
        async with client.get(running.admin + "/metrics") as resp:
            assert 'egress_policy_reloads_total{result="refused"} 1.0' in await resp.text()
    finally:
        await running.sidecar.stop()


async def test_a_breaker_the_policy_dropped_is_no_longer_exported(make_upstream, reloadable, client):
    a, b = await make_upstream(), await make_upstream()
    r = await start(reloadable, "shutdown_grace: 100ms\n" + policy(a.url, "v1"))
    async with client.post(r.admin + "/breakers/gemini/open") as resp:
        assert resp.status == 200
    r.text = "shutdown_grace: 100ms\n" + policy(b.url, "v2").replace("gemini:", "supabase:")
    assert (await r.sidecar.reload()).applied
    await asyncio.sleep(0.3)  # the old runtime is retired after the grace
    async with client.get(r.admin + "/metrics") as resp:
        text = await resp.text()
    assert 'egress_breaker_state{breaker="gemini"}' not in text  # else "open" forever, and its alert with it
    assert 'egress_breaker_state{breaker="supabase"} 0.0' in text


async def test_stop_closes_the_pools_of_a_runtime_still_to_be_retired(make_upstream, reloadable):
    a, b = await make_upstream(), await make_upstream()
    r = await start(reloadable, "shutdown_grace: 30s\n" + policy(a.url, "v1"))
    old_pools = r.runtime.upstreams["gemini"].forwarder.pools
    r.text = "shutdown_grace: 30s\n" + policy(b.url, "v1")  # re-pointed: its old pool retires in 30 s
    assert (await r.sidecar.reload()).applied
    await r.sidecar.stop()
    assert old_pools.closed


async def raw_get(port: int, path: str) -> bytes:
    """HTTP/1.1 on a plain socket: no client-side replay hides what happened to the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return answer


async def test_stop_keeps_the_reloaded_shutdown_grace(upstream, reloadable):
    upstream.default = delay(1.5, respond(200, b"done"))
    r = await start(reloadable, "shutdown_grace: 300ms\n" + policy(upstream.url, "v1"))
    r.text = "shutdown_grace: 5s\n" + policy(upstream.url, "v1")
    assert (await r.sidecar.reload()).applied
    call = asyncio.create_task(raw_get(r.sidecar.data_port, "/gemini/x"))
    await asyncio.sleep(0.2)
    await r.sidecar.stop()
    answer = await call
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done"), answer  # was cut at 300 ms


async def test_stop_ends_within_the_grace_not_twice_it(upstream, reloadable, client):
    upstream.default = hang()
    r = await start(reloadable, "shutdown_grace: 1s\n" + policy(upstream.url, "v1", "    timeouts: {read: 60s}"))
    call = asyncio.create_task(raw_get(r.sidecar.data_port, "/gemini/x"))
    await asyncio.sleep(0.3)
    started = asyncio.get_running_loop().time()
    stopping = asyncio.create_task(r.sidecar.stop())
    await asyncio.sleep(0.3)
    async with client.get(r.admin + "/ready") as resp:
        assert resp.status == 503
    await stopping
    assert asyncio.get_running_loop().time() - started < 1.6  # aiohttp alone waited the grace twice
    await call


async def test_concurrent_reloads_apply_one_after_the_other(upstream, redis_url, redis_namespace):
    # A Redis cache's warm-up yields mid-reload: a second reload then started from the same runtime as the
    # first, and the first's new pools and cache were never retired.
    def text(version: str) -> str:
        cache = f"cache: {{backend: redis, redis_url: '{redis_url}', namespace: '{redis_namespace}-{version}'}}\n"
        return policy_text(cache + policy(upstream.url, version))

    texts = [text("v2"), text("v3")]
    sidecar = Sidecar(parse_policy(policy_text(policy(upstream.url, "v1")), "reload.yaml", {}),
                      loader=lambda: parse_policy(texts.pop(0), "reload.yaml", SECRET))
    await sidecar.start()
    try:
        first, second = await asyncio.gather(sidecar.reload(), sidecar.reload())
        assert first.applied and second.applied
        [(_, after_first), (before_second, _)] = sidecar._retiring.values()
        assert before_second is after_first
    finally:
        await sidecar.stop()


async def test_an_address_change_is_noted_on_every_reload_until_a_restart(upstream, reloadable):
    r = await start(reloadable, policy(upstream.url, "v1"))
    r.text = f"listen: 127.0.0.1:{free_port()}\n" + policy(upstream.url, "v1")
    for _ in range(2):  # the second reload compared with the first's unapplied address, and said nothing
        result = await r.sidecar.reload()
        assert result.applied and [n for n in result.notes if n.startswith("listen changed")], result.notes


async def test_a_reload_that_shortens_reset_after_brings_an_open_breakers_trial_forward(upstream, reloadable, client):
    upstream.default = respond(500)
    r = await start(reloadable, policy(upstream.url, "1"))  # failures: 2, reset_after: 30s
    for _ in range(2):
        async with client.get(r.url + "/gemini/x") as resp:
            assert resp.status == 500
    async with client.get(r.url + "/gemini/x") as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (503, "30")
    r.text = policy(upstream.url, "1").replace("reset_after: 30s", "reset_after: 300ms")
    assert (await r.sidecar.reload()).applied
    async with client.get(r.url + "/gemini/x") as resp:
        assert (resp.status, resp.headers["Retry-After"]) == (503, "1")
    await asyncio.sleep(0.35)
    upstream.default = respond(200)
    async with client.get(r.url + "/gemini/x") as resp:
        assert resp.status == 200  # the trial, on the new schedule
