"""What one caller may hold on the data port before any route is known: the head's size, header count and
time, idle keep-alive, and the number of open connections. Each excess is refused cleanly, and others stay fast."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest

from tests.support.upstream import FaultyUpstream, delay, respond


def policy(upstream: FaultyUpstream, limits: str = "") -> str:
    return f"""
    {f"limits: {{{limits}}}" if limits else ""}
    upstreams:
      api:
        url: {upstream.url}
        retry: {{attempts: 1}}
    """


async def _exchange(port: int, data: bytes, within: float = 5) -> bytes:
    """Write `data` on a new connection and read until the sidecar closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    """Everything until the sidecar closes (a reset after its answer keeps what arrived before it)."""
    parts = []
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(4096):
            parts.append(chunk)
    return b"".join(parts)


def _get(headers: str = "", path: str = "/api/x") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n".encode()


def _rejected(sc, reason: str) -> float:
    sc.settle()
    labels = {"upstream": "", "reason": reason}
    return sc.runtime.metrics.registry.get_sample_value("egress_rejected_total", labels) or 0


async def test_100_headers_of_8kb_are_refused_431_and_nothing_is_sent_upstream(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream))
    many = "".join(f"X-Filler-{i}: {'v' * 8000}\r\n" for i in range(100))  # 800 KB of head
    answer = await _exchange(sc.sidecar.data_port, _get(many))
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"X-Egress-Error: headers_too_large" in answer
    assert b'"error": "headers_too_large"' in answer
    assert upstream.requests == []
    assert _rejected(sc, "headers_too_large") == 1


async def test_one_header_larger_than_the_head_bound_is_431(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream, "max_header_bytes: 16KiB"))
    answer = await _exchange(sc.sidecar.data_port, _get(f"X-Big: {'v' * 20000}\r\n"))
    assert answer.startswith((b"HTTP/1.1 431", b"HTTP/1.0 431")), answer[:200]
    assert upstream.requests == []


async def test_more_headers_than_max_headers_is_431(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream, "max_headers: 20"))
    answer = await _exchange(sc.sidecar.data_port, _get("".join(f"X-H{i}: v\r\n" for i in range(30))))
    assert answer.startswith((b"HTTP/1.1 431", b"HTTP/1.0 431")), answer[:200]  # aiohttp's parser answers 1.0
    assert b"X-Egress-Error: headers_too_large" in answer
    assert upstream.requests == []


async def test_a_head_just_under_the_bound_with_its_body_in_the_same_write_is_served(upstream, make_sidecar):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream, "max_header_bytes: 16KiB"))
    headers = "".join(f"X-H{i}: {'v' * 1000}\r\n" for i in range(14))  # ~14.2 KB of head
    body = b"b" * 50_000  # the body arrives with the head: it must not count as head bytes
    head = (f"POST /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode()
    answer = await _exchange(sc.sidecar.data_port, head + body)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert upstream.requests[-1].body == body


async def test_a_malformed_request_gets_the_sidecars_error_body(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream))
    answer = await _exchange(sc.sidecar.data_port, b"GET /api/x HTTP/1.1\r\nHost x-no-colon\r\n\r\n")
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), answer[:200]
    assert b"X-Egress-Error: bad_request" in answer
    assert upstream.requests == []


async def test_trickling_headers_are_cut_off_at_header_timeout_and_others_stay_fast(upstream, make_sidecar, client):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream, "header_timeout: 300ms"))
    port = sc.sidecar.data_port
    head = _get()

    async def trickle() -> tuple[bytes, float]:
        """1 byte each 50 ms, never the final CRLF; what the sidecar answers is read meanwhile."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        reading = asyncio.create_task(_read_all(reader))
        try:
            for byte in head[:-2]:
                if reading.done():
                    break
                writer.write(bytes([byte]))
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                await asyncio.sleep(0.05)
            else:
                return b"still open", time.monotonic() - started
            answer = await reading
            trickled.append(answer)
            return answer, time.monotonic() - started
        finally:
            reading.cancel()
            writer.close()

    trickled: list[bytes] = []
    slow = [asyncio.create_task(trickle()) for _ in range(20)]
    await asyncio.sleep(0.1)
    started = time.monotonic()
    async with client.get(sc.url + "/api/fast") as resp:  # a normal caller meanwhile
        assert resp.status == 200
    assert time.monotonic() - started < 1.0
    results = await asyncio.wait_for(asyncio.gather(*slow), 10)
    assert all(status != b"still open" for status, _ in results)
    assert all(took < 2.0 for _, took in results)  # 300 ms, plus generous slack
    assert sum(1 for answer in trickled if answer.startswith(b"HTTP/1.1 408")) >= 15
    assert upstream.requests[-1].raw_path == "/fast" and len(upstream.requests) == 1


async def test_a_connection_that_never_sends_a_byte_is_closed_after_header_timeout(upstream, make_sidecar):
    sc = await make_sidecar(policy(upstream, "header_timeout: 200ms"))
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port)
    try:
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, nothing to answer
        assert time.monotonic() - started < 2.0
    finally:
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(upstream, make_sidecar):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream, "idle_timeout: 300ms, header_timeout: 5s"))
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port)
    try:
        writer.write(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert head.startswith(b"HTTP/1.1 200")
        await asyncio.wait_for(reader.readexactly(2), 3)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.2 < time.monotonic() - started < 3.0
    finally:
        writer.close()


async def test_a_slow_second_request_on_a_kept_alive_connection_is_cut_off_too(upstream, make_sidecar):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream, "idle_timeout: 10s, header_timeout: 300ms"))
    reader, writer = await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port)
    try:
        writer.write(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        await asyncio.wait_for(reader.readuntil(b"ok"), 3)
        await asyncio.sleep(0.5)  # idle for longer than header_timeout: fine, the idle clock is the other one
        writer.write(b"GET /api/y HT")  # ... but once a head starts it must finish in time
        answer = await asyncio.wait_for(reader.read(), 3)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        writer.close()
    assert len(upstream.requests) == 1


async def test_connections_beyond_max_connections_are_refused_503_and_closed(upstream, make_sidecar, client):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream, "max_connections: 5, header_timeout: 5s"))
    held = [await asyncio.open_connection("127.0.0.1", sc.sidecar.data_port) for _ in range(5)]
    try:
        await asyncio.sleep(0.05)
        answer = await _exchange(sc.sidecar.data_port, _get())
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"X-Egress-Error: overloaded" in answer
    finally:
        for _, writer in held:
            writer.close()
    await asyncio.sleep(0.1)
    async with client.get(sc.url + "/api/again") as resp:  # the freed places are available again
        assert resp.status == 200


async def test_a_thousand_concurrent_connections_are_all_served_or_refused_cleanly(upstream, make_sidecar):
    upstream.default = delay(0.05, respond(200, b"ok"))
    sc = await make_sidecar(policy(upstream, "max_connections: 600"))
    port = sc.sidecar.data_port

    async def one(i: int) -> bytes:
        try:
            answer = await _exchange(port, _get(path=f"/api/{i}"), within=20)
        except ConnectionError:
            return b"reset"
        return answer[:12]

    started = time.monotonic()
    answers = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(1000))), 30)
    statuses = {a[9:12] for a in answers}
    assert statuses <= {b"200", b"503"}, statuses  # no hang, no reset, no half answer
    assert answers.count(b"HTTP/1.1 200") >= 100
    assert time.monotonic() - started < 25


@pytest.mark.parametrize("value", ["0", "100", "-1"])
async def test_the_limits_section_refuses_bad_values(value):
    from proxy.policy import PolicyError, parse_policy

    with pytest.raises(PolicyError, match=r"limits\.max_header_bytes"):
        parse_policy(f"limits: {{max_header_bytes: {value}}}\nupstreams: {{}}\n", "p.yaml")


async def test_the_sidecar_answers_normally_under_the_default_limits(upstream, make_sidecar, client):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(policy(upstream))
    async with client.get(sc.url + "/api/x", headers={"X-Some": "v" * 8000}) as resp:
        assert resp.status == 200
    with pytest.raises(aiohttp.ClientResponseError):
        async with client.get(sc.url + "/api/x", headers={"X-Some": "v" * 70_000}) as resp:
            resp.raise_for_status()


async def test_a_crafted_path_against_a_pathological_glob_stalls_nobody(upstream, make_sidecar, client):
    upstream.default = respond(200, b"ok")
    sc = await make_sidecar(f"""
    upstreams:
      api:
        url: {upstream.url}
        retry: {{attempts: 1}}
        routes:
          - {{name: nested, match: "GET /**/a/**/b/**/c"}}
    """)
    crafted = "/api" + "/a/b" * 1950 + "/x"  # 7.8 KB: a backtracking matcher tries ~n^3 splits, then fails
    started = time.monotonic()
    async with client.get(sc.url + crafted) as resp:
        assert resp.status == 200  # no route matched it: the upstream's default route answers
        assert resp.headers["X-Egress-Attempts"] == "1"
    async with client.get(sc.url + "/api/q/a/r/b/s/c") as resp:
        assert resp.status == 200
    assert time.monotonic() - started < 1.0  # it was 7.6 s of a frozen event loop
