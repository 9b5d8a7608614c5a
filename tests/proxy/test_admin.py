"""The admin port: health, readiness, Prometheus metrics that move, the redacted effective policy."""

from __future__ import annotations

import asyncio
import dataclasses
import re

import pytest

from proxy.policy import Address, AdminSettings, PolicyError, load_policy, parse_policy
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
    assert sample(text, "process_resident_memory_bytes") > 0
    assert re.search(r'^egress_build_info\{python="[0-9.]+",version="[^"]+"\} 1\.0$', text, re.M)


async def test_an_attempt_answered_5xx_counts_as_an_upstream_error(upstream, make_sidecar, client):
    # The error-rate alert and the "Failed attempts" panel read this counter: 70 s of Gemini answering 500 used
    # to leave it at 0. Each attempt counts (here 2: the retry of a 503 too); a 4xx does not.
    retried = policy(upstream).replace("retry: {attempts: 1}", "retry: {attempts: 2, backoff: {base: 10ms}}", 1)
    sc = await make_sidecar(retried, {"GEMINI_API_KEY": "k"})
    upstream.default = respond(503, b"busy")
    async with client.get(sc.url + "/gemini/v1beta/models") as resp:  # a GET: the 503 is retried
        assert resp.status == 503
    upstream.default = respond(404, b"no")
    async with client.get(sc.url + "/gemini/v1beta/models") as resp:
        assert resp.status == 404
    async with client.get(sc.admin + "/metrics") as resp:
        text = await resp.text()
    assert sample(text, "egress_upstream_errors_total", upstream="gemini", reason="upstream_5xx") == 2


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


@pytest.mark.parametrize("address", ["0.0.0.0:0", "'[::]:0'", "10.1.2.3:9901", "admin.internal:9901"])
async def test_admin_beyond_loopback_without_a_token_is_refused_at_start(upstream, make_sidecar, address):
    with pytest.raises(PolicyError, match=r"test-policy.yaml:\d+: admin: .* is reachable beyond this host: "
                                          r"set admin.token"):
        await make_sidecar(policy(upstream, f"admin: {address}"), {"GEMINI_API_KEY": "k"})


async def test_a_sidecar_given_a_tokenless_open_admin_by_other_means_refuses_to_start(upstream):
    loaded = parse_policy("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\nupstreams: {}\n", "p.yaml", {})
    opened = dataclasses.replace(loaded, admin=AdminSettings(Address("0.0.0.0", free_port())))
    sidecar = Sidecar(opened)
    with pytest.raises(PolicyError, match=r"p\.yaml: admin: 0\.0\.0\.0:\d+ is reachable .*: set admin\.token"):
        await sidecar.start()
    assert sidecar.admin_port == 0 and sidecar.data_port == 0  # nothing was bound


async def test_admin_beyond_loopback_with_a_token_starts_and_requires_it(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream, "admin: {listen: 0.0.0.0:0, token: admintoken}"), {"GEMINI_API_KEY": "k"})
    url = sc.admin + "/breakers/gemini/open"
    async with client.post(url) as resp:
        assert resp.status == 401
    assert sc.runtime.breakers["gemini"].state == "closed"
    async with client.post(url, headers={"Authorization": "Bearer admintoken"}) as resp:
        assert resp.status == 200
    assert sc.runtime.breakers["gemini"].state == "open"


@pytest.mark.parametrize("supplied", ["admintoke", "admintokenadmintoken", "", "a", "ADMINTOKEN", "admintoken\u00e9"])
async def test_a_wrong_token_of_any_length_is_refused(upstream, make_sidecar, client, supplied):
    sc = await make_sidecar(policy(upstream, "admin: {listen: 127.0.0.1:0, token: admintoken}"),
                            {"GEMINI_API_KEY": "k"})
    headers = {"Authorization": f"Bearer {supplied}"} if supplied.strip() else {}
    async with client.post(sc.admin + "/breakers/gemini/open", headers=headers) as resp:
        assert resp.status == 401
    assert sc.runtime.breakers["gemini"].state == "closed"


async def raw_admin(port: int, head: str, body: bytes = b"") -> bytes:
    """One request written byte for byte, as a browser would send it (aiohttp's client adds headers of its own)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.replace("\n", "\r\n").encode() + f"Content-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    answer = await reader.read()
    writer.close()
    return answer


@pytest.mark.parametrize(
    "headers",
    [
        # A foreign page's form or no-cors fetch: text/plain needs no preflight, so the browser just sends it.
        "Origin: http://evil.example\nContent-Type: text/plain\n",
        "Origin: http://evil.example\n",
        "Origin: null\nContent-Type: application/json\n",
        "Sec-Fetch-Site: cross-site\n",
        "Sec-Fetch-Site: same-site\nContent-Type: text/plain\n",
        # A browser that sends no Origin still labels a form's body with a type no script here sends.
        "Content-Type: text/plain\n",
        "Content-Type: application/x-www-form-urlencoded\n",
        "Content-Type: Multipart/Form-Data; boundary=x\n",
    ],
)
async def test_a_cross_site_request_cannot_open_a_breaker(upstream, make_sidecar, headers):
    sc = await make_sidecar(policy(upstream), {"GEMINI_API_KEY": "k"})
    port = sc.sidecar.admin_port
    answer = await raw_admin(port, f"POST /breakers/gemini/open HTTP/1.1\nHost: 127.0.0.1:{port}\n{headers}", b"x=1")
    assert answer.split(b" ", 2)[1] in (b"403", b"415"), answer[:200]
    assert sc.runtime.breakers["gemini"].state == "closed"


async def test_cross_site_requests_cannot_reload_or_purge(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream), {"GEMINI_API_KEY": "k"})
    foreign = {"Origin": "http://evil.example"}
    async with client.post(sc.admin + "/reload", headers=foreign) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "cross_origin"
    async with client.delete(sc.admin + "/cache?upstream=gemini", headers=foreign) as resp:
        assert resp.status == 403
    async with client.get(sc.admin + "/breakers", headers=foreign) as resp:
        assert resp.status == 200  # reads change nothing: a dashboard elsewhere may show them


@pytest.mark.parametrize(
    "headers",
    [
        "",  # curl -X POST, Prometheus' tooling, scripts
        "Content-Type: application/json\n",
        "Origin: http://127.0.0.1:{port}\nSec-Fetch-Site: same-origin\nContent-Type: application/json\n",
        "Sec-Fetch-Site: none\n",
    ],
)
async def test_same_origin_and_non_browser_requests_still_work(upstream, make_sidecar, headers):
    sc = await make_sidecar(policy(upstream), {"GEMINI_API_KEY": "k"})
    port = sc.sidecar.admin_port
    head = f"POST /breakers/gemini/open HTTP/1.1\nHost: 127.0.0.1:{port}\n{headers.format(port=port)}"
    answer = await raw_admin(port, head)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert sc.runtime.breakers["gemini"].state == "open"


async def test_the_origin_is_compared_by_host_not_scheme(upstream, make_sidecar):
    """A TLS-terminating proxy in front: the page's Origin says https, the admin itself speaks http."""
    sc = await make_sidecar(policy(upstream), {"GEMINI_API_KEY": "k"})
    port = sc.sidecar.admin_port
    head = (f"POST /breakers/gemini/open HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: https://127.0.0.1:{port}\n"
            "Sec-Fetch-Site: same-origin\n")
    assert (await raw_admin(port, head)).startswith(b"HTTP/1.1 200")
    foreign = f"POST /breakers/gemini/close HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: https://127.0.0.1:1\n"
    assert (await raw_admin(port, foreign)).startswith(b"HTTP/1.1 403")


async def test_with_a_token_a_proxy_rewriting_host_does_not_break_the_pages_buttons(upstream, make_sidecar):
    # nginx's default `proxy_set_header Host $proxy_host`: the page is https://admin.example.com, the Host is ours.
    sc = await make_sidecar(policy(upstream, "admin: {listen: 127.0.0.1:0, token: admintoken}"),
                            {"GEMINI_API_KEY": "k"})
    port = sc.sidecar.admin_port
    base = f"POST /breakers/gemini/open HTTP/1.1\nHost: 127.0.0.1:{port}\nOrigin: https://admin.example.com\n"
    answer = await raw_admin(port, base + "Sec-Fetch-Site: same-origin\nAuthorization: Bearer admintoken\n")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    # The token is what a foreign page cannot send; and a cross-site fetch still says so itself.
    assert (await raw_admin(port, base + "Sec-Fetch-Site: same-origin\n")).startswith(b"HTTP/1.1 401")
    answer = await raw_admin(port, base + "Sec-Fetch-Site: cross-site\nAuthorization: Bearer admintoken\n")
    assert answer.startswith(b"HTTP/1.1 403")


async def test_without_a_token_a_rebound_host_name_is_refused(upstream, make_sidecar):
    """DNS rebinding: a page on evil.example re-resolves its name to 127.0.0.1; its requests are same-origin."""
    sc = await make_sidecar(policy(upstream), {"GEMINI_API_KEY": "k"})
    port = sc.sidecar.admin_port
    origin = f"http://evil.example:{port}"
    answer = await raw_admin(port, f"POST /breakers/gemini/open HTTP/1.1\nHost: evil.example:{port}\n"
                                   f"Origin: {origin}\n")
    assert answer.startswith(b"HTTP/1.1 403") and b"bad_host" in answer, answer[:200]
    assert sc.runtime.breakers["gemini"].state == "closed"
    for host in (f"localhost:{port}", f"[::1]:{port}", f"127.0.0.2:{port}"):
        answer = await raw_admin(port, f"POST /breakers/gemini/reset HTTP/1.1\nHost: {host}\n")
        assert answer.startswith(b"HTTP/1.1 200"), (host, answer[:200])


async def test_a_reload_to_an_open_admin_without_a_token_is_refused(upstream, tmp_path, client):
    file = tmp_path / "policy.yaml"
    base = f"listen: 127.0.0.1:0\nshutdown_grace: 1s\nupstreams:\n  gemini: {{url: 'http://127.0.0.1:{upstream.port}'}}\n"
    file.write_text("admin: 127.0.0.1:0\n" + base)
    sidecar = Sidecar(load_policy(file, {}), loader=lambda: load_policy(file, {}))
    await sidecar.start()
    try:
        file.write_text("admin: 0.0.0.0:9901\n" + base)
        async with client.post(f"http://127.0.0.1:{sidecar.admin_port}/reload") as resp:
            body = await resp.json()
        assert resp.status == 400 and not body["applied"]
        assert body["problems"] == [f"{file}:1: admin: 0.0.0.0:9901 is reachable beyond this host: set admin.token "
                                    "(mutating endpoints then need it) or listen on a loopback address"]
    finally:
        await sidecar.stop()


async def test_a_reload_that_drops_the_token_of_an_open_admin_is_refused(upstream, tmp_path, client):
    """The new file says loopback, but the port stays bound beyond loopback until a restart: keep the token."""
    file = tmp_path / "policy.yaml"
    base = f"listen: 127.0.0.1:0\nshutdown_grace: 1s\nupstreams:\n  gemini: {{url: 'http://127.0.0.1:{upstream.port}'}}\n"
    file.write_text("admin: {listen: 0.0.0.0:0, token: admintoken}\n" + base)
    sidecar = Sidecar(load_policy(file, {}), loader=lambda: load_policy(file, {}))
    await sidecar.start()
    admin = f"http://127.0.0.1:{sidecar.admin_port}"
    auth = {"Authorization": "Bearer admintoken"}
    try:
        file.write_text("admin: 127.0.0.1:0\n" + base)
        async with client.post(admin + "/reload", headers=auth) as resp:
            body = await resp.json()
        assert resp.status == 400 and "stays bound to 0.0.0.0:0" in body["problems"][0], body
        async with client.post(admin + "/breakers/gemini/open") as resp:
            assert resp.status == 401  # the token still guards it
    finally:
        await sidecar.stop()


async def test_admin_port_in_use_is_a_policy_error_naming_the_line(upstream):
    import socket

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
