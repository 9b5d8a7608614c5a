"""The admin port: health, readiness, Prometheus metrics that move, the redacted effective policy."""

from __future__ import annotations

import asyncio
import logging
import re

from proxy.policy import parse_policy
from proxy.server import Sidecar
from tests.support.upstream import FaultyUpstream, free_port, hang, respond


def policy(upstream: FaultyUpstream, extra: str = "") -> str:
    return f"""
    {extra}
    upstreams:
      gemini:
        url: http://127.0.0.1:{upstream.port}
        headers: {{x-goog-api-key: "${{GEMINI_API_KEY}}", authorization: "Basic hunter2"}}
        timeouts: {{read: 200ms}}
        retry: {{attempts: 1}}
        routes:
          - name: generate
            match: POST /v1beta/models/*:generateContent
      supabase:
        url: http://127.0.0.1:{free_port()}
        retry: {{attempts: 1}}
    """


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, 0 if absent."""
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_health_and_ready(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream), {"GEMINI_API_KEY": "k"})
    async with client.get(sc.admin + "/health") as resp:
        body = await resp.json()
        assert resp.status == 200 and body["status"] == "ok" and body["version"]
        assert body["uptime_seconds"] >= 0
    async with client.get(sc.admin + "/ready") as resp:
        assert resp.status == 200


async def test_ready_is_503_before_start_and_after_stop(upstream, client):
    text = "listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nupstreams: {}\n"
    sidecar = Sidecar(parse_policy(text, "p.yaml", {}))
    await sidecar.start()
    admin = f"http://127.0.0.1:{sidecar.admin_port}"
    async with client.get(admin + "/ready") as resp:
        assert resp.status == 200
    assert sidecar.admin_state is not None
    sidecar.admin_state.ready = False  # the state stop() sets first, while in-flight requests drain
    async with client.get(admin + "/ready") as resp:
        assert resp.status == 503
    await sidecar.stop()


async def test_metrics_count_requests_durations_errors_and_inflight(upstream, make_sidecar, client):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream), {"GEMINI_API_KEY": "k"})
    for _ in range(3):
        async with client.post(sc.url + "/gemini/v1beta/models/m:generateContent") as resp:
            assert resp.status == 200
    async with client.get(sc.url + "/supabase/rest/v1/x") as resp:
        assert resp.status == 502
    upstream.default = hang()
    async with client.get(sc.url + "/gemini/other") as resp:
        assert resp.status == 504
    async with client.get(sc.admin + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    assert sample(text, "egress_requests_total", upstream="gemini", route="generate", method="POST", code="200") == 3
    assert sample(text, "egress_requests_total", upstream="gemini", route="default", code="504") == 1
    assert sample(text, "egress_request_duration_seconds_count", upstream="gemini", route="generate") == 3
    assert sample(text, "egress_request_duration_seconds_bucket", upstream="gemini", route="generate", le="0.005") >= 0
    assert 'le="60.0"' in text
    assert sample(text, "egress_upstream_errors_total", upstream="supabase", reason="upstream_connect_error") == 1
    assert sample(text, "egress_upstream_errors_total", upstream="gemini", reason="upstream_timeout") == 1
    assert sample(text, "egress_inflight_requests", upstream="gemini") == 0
    assert "/v1beta" not in text, "raw paths must never become label values"


async def test_inflight_gauge_counts_requests_in_progress(upstream, make_sidecar, client):
    import asyncio

    upstream.default = hang()
    sc = await make_sidecar(policy(upstream).replace("read: 200ms", "read: 5s"), {"GEMINI_API_KEY": "k"})
    tasks = [asyncio.create_task(client.get(sc.url + "/gemini/x")) for _ in range(3)]
    await asyncio.sleep(0.3)
    async with client.get(sc.admin + "/metrics") as resp:
        text = await resp.text()
    for task in tasks:
        task.cancel()
    assert sample(text, "egress_inflight_requests", upstream="gemini") == 3


async def test_policy_endpoint_redacts_secrets(upstream, make_sidecar, client):
    sc = await make_sidecar(
        policy(upstream, "admin: {listen: 127.0.0.1:0, token: admintoken}"), {"GEMINI_API_KEY": "s3cr3t-key"}
    )
    async with client.get(sc.admin + "/policy") as resp:
        text = await resp.text()
        data = await resp.json()
    for secret in ("s3cr3t-key", "hunter2", "admintoken"):
        assert secret not in text
    gemini = data["upstreams"]["gemini"]
    assert gemini["headers"] == {"x-goog-api-key": "<redacted>", "authorization": "<redacted>"}
    assert [r["name"] for r in gemini["routes"]] == ["generate", "default"]
    assert gemini["routes"][0]["timeouts"]["read"] == "200ms"


async def test_admin_bound_beyond_loopback_is_logged_as_a_warning(upstream, make_sidecar, caplog):
    caplog.set_level(logging.WARNING, logger="egress.server")
    await make_sidecar(policy(upstream, "admin: 0.0.0.0:0"), {"GEMINI_API_KEY": "k"})
    assert any("admin port bound to 0.0.0.0" in r.getMessage() for r in caplog.records)


async def test_admin_port_in_use_is_a_policy_error_naming_the_line(upstream):
    import socket

    import pytest

    from proxy.policy import PolicyError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = f"listen: 127.0.0.1:0\nadmin: 127.0.0.1:{port}\nupstreams: {{}}\n"
        sidecar = Sidecar(parse_policy(text, "p.yaml", {}))
        with pytest.raises(PolicyError, match=r"p.yaml:2: admin: cannot listen on .*address already in use"):
            await sidecar.start()


async def test_an_undecodable_authorization_header_is_401_not_500(upstream, make_sidecar):
    admin = "admin: {listen: 127.0.0.1:0, token: admintoken}"
    sc = await make_sidecar(policy(upstream, admin), {"GEMINI_API_KEY": "k"})
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.admin_port)
    writer.write(b"POST /breakers/gemini/open HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xe9\r\n"
                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:80]
    assert sc.runtime.breakers["gemini"].state == "closed"


async def test_the_bearer_scheme_is_case_insensitive(upstream, make_sidecar, client):
    admin = "admin: {listen: 127.0.0.1:0, token: admintoken}"
    sc = await make_sidecar(policy(upstream, admin), {"GEMINI_API_KEY": "k"})
    url = sc.admin + "/breakers/gemini/"
    async with client.post(url + "open", headers={"Authorization": "bearer admintoken"}) as resp:
        assert resp.status == 200
    async with client.post(url + "close", headers={"Authorization": "Bearer admintokenx"}) as resp:
        assert resp.status == 401
