"""The inbox team's four acceptance checks, at the sidecar level, with the shipped Gemini settings scaled down."""

from __future__ import annotations

import logging
import time

from tests.support.upstream import free_port, hang, respond


def gemini_policy(url: str, read: str = "300ms") -> str:
    # The shipped gemini block (config/policy.yaml) with a short read timeout so the test runs in milliseconds.
    return f"""
    defaults:
      retry:
        attempts: 3
        backoff: {{base: 20ms, max: 100ms}}
        on: [connect_error, reset, timeout, 502, 503, 504]
    upstreams:
      gemini:
        url: {url}
        timeouts: {{connect: 3s, read: {read}, write: 5s, pool: 5s, total: 2s}}
        breaker: {{failures: 5, reset_after: 30s, count: [connect_error, timeout, 5xx, 401, 403]}}
        routes:
          - name: generate
            match: POST /v1beta/models/*:generateContent
    """


async def test_a_hanging_gemini_returns_504_within_the_policy_timeout(upstream, make_sidecar, client):
    upstream.default = hang()
    sc = await make_sidecar(gemini_policy(upstream.url))
    started = time.monotonic()
    async with client.post(sc.url + "/gemini/v1beta/models/gemini-pro:generateContent", data=b"{}") as resp:
        assert resp.status == 504
        assert resp.headers["X-Egress-Error"] == "upstream_timeout"
    assert time.monotonic() - started < 1.0  # read timeout 300 ms; a POST that was sent is not replayed


async def test_five_wrong_key_failures_open_the_breaker_and_then_calls_fail_fast(upstream, make_sidecar, client):
    upstream.default = respond(403, {"error": {"code": 403, "status": "PERMISSION_DENIED"}})
    sc = await make_sidecar(gemini_policy(upstream.url))
    url = sc.url + "/gemini/v1beta/models/gemini-pro:generateContent"
    for _ in range(5):
        async with client.post(url, data=b"{}") as resp:
            assert resp.status == 403
    reached = len(upstream.requests)
    for _ in range(3):
        started = time.monotonic()
        async with client.post(url, data=b"{}") as resp:
            assert resp.status == 503 and resp.headers["X-Egress-Error"] == "circuit_open"
        assert time.monotonic() - started < 1.0
    assert len(upstream.requests) == reached == 5
    async with client.get(sc.admin + "/breakers") as resp:
        assert (await resp.json())["gemini"]["state"] == "open"


async def test_network_errors_are_retried_with_a_log_line(make_sidecar, client, caplog):
    caplog.set_level(logging.WARNING, logger="egress.retry")
    sc = await make_sidecar(gemini_policy(f"http://127.0.0.1:{free_port()}"))
    async with client.post(sc.url + "/gemini/v1beta/models/gemini-pro:generateContent", data=b"{}") as resp:
        assert resp.status == 502
        assert resp.headers["X-Egress-Attempts"] == "3"
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Retrying gemini POST generate attempt 2/3") for m in messages)
    assert any(m.startswith("Retrying gemini POST generate attempt 3/3") for m in messages)
