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

from proxy.policy import Policy, parse_policy
from proxy.server import Sidecar
from tests.support.sidecar import RunningSidecar, policy_text
from tests.support.upstream import FaultyUpstream, echo, free_port, respond


class Reloadable(RunningSidecar):
    """A sidecar whose policy file is a string the test rewrites."""

    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(Sidecar(self.load(), loader=self.load))

    def load(self) -> Policy:
        return parse_policy(policy_text(self.text), "reload.yaml", {})


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
    session_before = r.sidecar.runtime.upstreams["gemini"].forwarder.session  # type: ignore[union-attr]
    r.text = policy(upstream.url, "2")
    assert (await r.sidecar.reload()).applied
    async with client.get(r.url + "/gemini/x") as resp:
        assert resp.status == 503 and resp.headers["X-Egress-Error"] == "circuit_open"
    assert r.sidecar.runtime.upstreams["gemini"].forwarder.session is session_before  # type: ignore[union-attr]
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
    old_session = r.sidecar.runtime.upstreams["gemini"].forwarder.session  # type: ignore[union-attr]
    assert (await r.sidecar.reload()).applied
    async with client.get(r.url + "/supabase/x") as resp:
        assert await resp.read() == b"second"
    async with client.get(r.url + "/gemini/x") as resp:
        assert resp.status == 404
    await asyncio.sleep(0.3)
    assert old_session.closed  # the dropped upstream's pool is closed after the grace period


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
