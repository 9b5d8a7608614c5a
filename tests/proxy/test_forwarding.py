"""Forwarding is faithful: method, raw path and query, body, headers both ways, statuses, Host, request ids."""

from __future__ import annotations

import asyncio
import gzip
import socket

import aiohttp
from yarl import URL

from tests.support.upstream import FaultyUpstream, echo, respond, stream


def policy(upstream: FaultyUpstream, extra: str = "") -> str:
    return f"""
    upstreams:
      gemini:
        url: {upstream.url}
        headers: {{x-goog-api-key: sidecar-secret}}
        retry: {{attempts: 1}}
        {extra}
    """


async def test_method_path_query_and_body_reach_the_upstream_unchanged(upstream, make_sidecar, client):
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream))
    target = "/v1beta/models/gemini-pro:generateContent?alt=sse&x=%2Fa%20b&x=2"
    url = URL(sc.url + "/gemini" + target, encoded=True)  # the test client must not re-encode either
    async with client.post(url, data=b'{"contents": []}') as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["method"] == "POST"
    assert seen["path"] == target
    assert seen["body"] == '{"contents": []}'


async def test_every_method_is_forwarded(upstream, make_sidecar, client):
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream))
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        async with client.request(method, sc.url + "/gemini/x") as resp:
            assert (await resp.json())["method"] == method


async def test_host_is_the_upstreams_and_policy_headers_override_the_callers(upstream, make_sidecar, client):
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream))
    headers = {"x-goog-api-key": "caller-key", "X-Custom": "kept", "Authorization": "Bearer user"}
    async with client.get(sc.url + "/gemini/x", headers=headers) as resp:
        seen = (await resp.json())["headers"]
    assert seen["host"] == [f"127.0.0.1:{upstream.port}"]
    assert seen["x-goog-api-key"] == ["sidecar-secret"]
    assert seen["x-custom"] == ["kept"]
    assert seen["authorization"] == ["Bearer user"]


SKIP = ["User-Agent", "Content-Type", "Accept", "Accept-Encoding"]


async def test_no_headers_are_invented(upstream, make_sidecar, client):
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream))
    async with client.post(sc.url + "/gemini/x", data=b"raw", skip_auto_headers=SKIP) as r:
        seen = (await r.json())["headers"]
    for invented in ("user-agent", "accept", "accept-encoding", "content-type"):
        assert invented not in seen
    assert "x-egress-timeout" not in seen


async def test_hop_by_hop_headers_are_dropped_both_ways(upstream, make_sidecar, client):
    upstream.default = respond(200, b"ok", {"Keep-Alive": "timeout=5", "X-Secret-Hop": "1",
                                             "Connection": "X-Secret-Hop", "Proxy-Authenticate": "Basic",
                                             "X-End": "kept"})
    sc = await make_sidecar(policy(upstream))
    headers = {"Connection": "X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "300", "TE": "trailers",
               "Proxy-Authorization": "Basic abc", "Upgrade": "websocket", "X-Keep": "yes"}
    async with client.get(sc.url + "/gemini/x", headers=headers) as resp:
        assert resp.headers["X-End"] == "kept"
        for name in ("Keep-Alive", "X-Secret-Hop", "Proxy-Authenticate"):
            assert name not in resp.headers
    seen = upstream.requests[-1].headers
    assert seen["X-Keep"] == "yes"
    for name in ("X-Drop-Me", "Keep-Alive", "TE", "Proxy-Authorization", "Upgrade"):
        assert name not in seen


async def test_statuses_and_multi_valued_headers_pass_through(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream))
    for status in (201, 302, 400, 404, 418, 500, 503):
        upstream.script(respond(status, b"body", {"Location": "/elsewhere", "X-Code": str(status)}))
        async with client.get(sc.url + "/gemini/x", allow_redirects=False) as resp:
            assert resp.status == status
            assert resp.headers["X-Code"] == str(status)
            assert "X-Egress-Error" not in resp.headers
    upstream.script(respond(200, b"", {"Set-Cookie": "a=1"}))
    async with client.get(sc.url + "/gemini/x") as resp:
        assert resp.headers.getall("Set-Cookie") == ["a=1"]


async def test_head_204_and_304_are_correct(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream))
    upstream.script(respond(200, b"twelve bytes"))
    async with client.head(sc.url + "/gemini/x") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == "12"
        assert await resp.read() == b""
    upstream.script(respond(204))
    async with client.delete(sc.url + "/gemini/x") as resp:
        assert resp.status == 204 and await resp.read() == b""
    upstream.script(respond(304, headers={"ETag": '"v1"'}))
    async with client.get(sc.url + "/gemini/x", headers={"If-None-Match": '"v1"'}) as resp:
        assert resp.status == 304 and resp.headers["ETag"] == '"v1"'
    # the connection is still usable afterwards
    upstream.script(respond(200, b"after"))
    async with client.get(sc.url + "/gemini/x") as resp:
        assert await resp.read() == b"after"


async def test_compressed_bodies_pass_byte_for_byte(upstream, make_sidecar, client):
    payload = gzip.compress(b'{"hello": "world"}' * 100)
    upstream.default = respond(200, payload, {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    sc = await make_sidecar(policy(upstream))
    async with client.get(sc.url + "/gemini/x", headers={"Accept-Encoding": "gzip"}) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert await resp.read() == payload
    assert upstream.requests[-1].headers["Accept-Encoding"] == "gzip"


async def test_request_id_is_kept_or_generated_and_returned(upstream, make_sidecar, client):
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream))
    async with client.get(sc.url + "/gemini/x", headers={"X-Request-ID": "abc-123"}) as resp:
        assert resp.headers["X-Request-ID"] == "abc-123"
        assert (await resp.json())["headers"]["x-request-id"] == ["abc-123"]
    async with client.get(sc.url + "/gemini/x") as resp:
        generated = resp.headers["X-Request-ID"]
        assert len(generated) >= 16
        assert (await resp.json())["headers"]["x-request-id"] == [generated]


async def test_connections_to_the_upstream_are_pooled(upstream, make_sidecar, client):
    ports = set()

    async def remember_peer(request, record):
        ports.add(request.transport.get_extra_info("peername")[1])
        return await respond()(request, record)

    upstream.default = remember_peer
    sc = await make_sidecar(policy(upstream))
    for _ in range(10):
        async with client.get(sc.url + "/gemini/x") as resp:
            await resp.read()
    assert len(ports) == 1


async def test_upstream_base_path_is_prefixed(upstream, make_sidecar, client):
    upstream.default = echo()
    sc = await make_sidecar(f"""
    upstreams:
      supabase:
        url: {upstream.url}/base/
    """)
    async with client.get(sc.url + "/supabase/rest/v1/accounts?id=eq.1") as resp:
        assert (await resp.json())["path"] == "/base/rest/v1/accounts?id=eq.1"


async def test_server_sent_events_reach_the_caller_as_they_arrive(upstream, make_sidecar, client):
    events = [f"data: {{\"n\": {i}}}\r\n\r\n".encode() for i in range(4)]
    upstream.default = stream(events, gap=0.3)
    sc = await make_sidecar(policy(upstream))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.post(sc.url + "/gemini/v1beta/models/m:streamGenerateContent?alt=sse") as resp:
        first = await resp.content.readuntil(b"\r\n\r\n")
        first_at = loop.time() - started
        rest = await resp.read()
        total = loop.time() - started
    assert first == events[0]
    assert first + rest == b"".join(events)
    assert first_at < 0.25, "the first event was held back"
    assert total >= 0.9


async def test_a_stream_s_headers_reach_the_caller_before_its_first_event(upstream, make_sidecar, client):
    # Headers travel with the first body bytes only when those are already there; a model still thinking
    # about its first token must not keep the caller from seeing the 200.
    upstream.default = stream([b"data: {}\r\n\r\n"], first_after=0.6)
    sc = await make_sidecar(policy(upstream))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client.post(sc.url + "/gemini/v1beta/models/m:streamGenerateContent?alt=sse") as resp:
        headers_at = loop.time() - started
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        assert await resp.read() == b"data: {}\r\n\r\n"
    assert headers_at < 0.4, "the response headers waited for the first event"


async def test_unknown_upstream_is_404_no_route(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream))
    async with client.get(sc.url + "/evil/x") as resp:
        assert resp.status == 404
        assert resp.headers["X-Egress-Error"] == "no_route"
        body = await resp.json()
        assert body["error"] == "no_route"
    assert upstream.requests == []


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)  # with Connection: close; a half-close would read as the client leaving
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


async def test_absolute_form_and_connect_are_refused(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream))
    port = sc.sidecar.data_port
    absolute = await asyncio.to_thread(
        raw_request, port, f"GET {upstream.url}/x HTTP/1.1\r\nHost: evil\r\nConnection: close\r\n\r\n".encode()
    )
    assert absolute.startswith(b"HTTP/1.1 400") and b"X-Egress-Error: bad_request" in absolute
    connect = await asyncio.to_thread(
        raw_request, port,
        f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(),
    )
    assert connect.split(b" ")[1] in (b"400", b"405")
    assert upstream.requests == []


async def test_path_escapes_never_leave_the_prefix(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream))
    port = sc.sidecar.data_port
    for target in ("/gemini/../x", "/gemini/%2e%2e/x", "/gemini/a/%2E%2E%2Fb", "/gemini/..%2f..%2fetc",
                   "/gemini/a/..%5c..%5cx", "/gemini/./x"):
        reply = await asyncio.to_thread(
            raw_request, port, f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        assert reply.split(b" ")[1] in (b"400", b"404"), (target, reply[:100])
    assert upstream.requests == []


async def test_egress_error_body_names_reason_upstream_and_detail(make_sidecar, client):
    from tests.support.upstream import free_port

    sc = await make_sidecar(f"""
    upstreams:
      whatsapp:
        url: http://127.0.0.1:{free_port()}
        retry: {{attempts: 1}}
    """)
    async with client.get(sc.url + "/whatsapp/v19.0/me") as resp:
        assert resp.status == 502
        assert resp.headers["X-Egress-Error"] == "upstream_connect_error"
        body = await resp.json()
    assert body["error"] == "upstream_connect_error"
    assert body["upstream"] == "whatsapp"
    assert "connect" in body["detail"]


async def test_caller_cannot_reach_hosts_other_than_configured(upstream, make_sidecar, client):
    upstream.default = echo()
    sc = await make_sidecar(policy(upstream))
    async with client.get(sc.url + "/gemini//127.0.0.1:1/x") as resp:
        assert resp.status == 200  # still the configured upstream: the path is only a path
    assert upstream.requests[-1].raw_path == "//127.0.0.1:1/x"


async def test_client_disconnect_mid_stream_frees_everything(upstream, make_sidecar):
    upstream.default = stream([b"x" * 65536] * 200, gap=0.01, headers={"Content-Type": "application/octet-stream"})
    sc = await make_sidecar(policy(upstream))
    async with aiohttp.ClientSession() as session:
        resp = await session.get(sc.url + "/gemini/big")
        await resp.content.read(65536)
        resp.close()
    for _ in range(50):
        if sc.runtime.upstreams["gemini"].bulkhead.inflight == 0:
            break
        await asyncio.sleep(0.05)
    assert sc.runtime.upstreams["gemini"].bulkhead.inflight == 0
    upstream.default = respond(200, b"still fine")
    async with aiohttp.ClientSession() as session, session.get(sc.url + "/gemini/x") as resp:
        assert await resp.read() == b"still fine"


async def test_a_caller_hanging_up_is_logged_as_499_and_cancels_the_upstream_call(upstream, make_sidecar, caplog):
    import logging

    from tests.support.upstream import hang

    caplog.set_level(logging.INFO, logger="egress.access")
    upstream.default = hang()
    sc = await make_sidecar(policy(upstream))
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(session.get(sc.url + "/gemini/slow"))
        await asyncio.sleep(0.2)
        task.cancel()
    for _ in range(50):
        if any("status=499" in r.getMessage() for r in caplog.records):
            break
        await asyncio.sleep(0.02)
    assert any("status=499" in r.getMessage() for r in caplog.records)
    assert sc.runtime.upstreams["gemini"].bulkhead.inflight == 0
