"""Retries: safe, bounded and cheap. A non-idempotent send is never duplicated."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time

import aiohttp
import pytest
from aiohttp import web

from proxy.policy import load_policy
from proxy.server import Sidecar
from tests.support.upstream import FaultyUpstream, Recorded, delay, echo, free_port, hang, reset_after_body, respond

FAST_BACKOFF = "backoff: {base: 10ms, max: 2s}"


def policy(url: str, retry: str = "", routes: str = "", extra: str = "", attempts: int = 3) -> str:
    return f"""
    upstreams:
      gemini:
        url: {url}
        timeouts: {{read: 2s, total: 10s}}
        retry: {{attempts: {attempts}, {FAST_BACKOFF}, budget: {{ratio: 1.0, min_per_second: 100}} {retry}}}
        breaker: {{failures: 10000}}
        {extra}
        routes:
          - name: generate
            match: POST /v1beta/models/*:generateContent
            idempotent: true
          - name: send_message
            match: POST /v19.0/*/messages
          {routes}
    """


async def call(client: aiohttp.ClientSession, method: str, url: str, **kw) -> tuple[int, dict[str, str], bytes]:
    async with client.request(method, url, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_get_is_retried_on_503_then_succeeds(upstream, make_sidecar, client):
    upstream.script(respond(503), respond(200, b"fine"))
    sc = await make_sidecar(policy(upstream.url))
    status, headers, body = await call(client, "GET", sc.url + "/gemini/x")
    assert (status, body) == (200, b"fine")
    assert headers["X-Egress-Attempts"] == "2"
    assert len(upstream.requests) == 2


async def test_retries_stop_after_attempts_and_return_the_last_answer(upstream, make_sidecar, client):
    upstream.default = respond(503, b"down")
    sc = await make_sidecar(policy(upstream.url))
    status, headers, body = await call(client, "GET", sc.url + "/gemini/x")
    assert (status, body) == (503, b"down")
    assert "X-Egress-Error" not in headers  # the upstream's own answer, passed on as is
    assert headers["X-Egress-Attempts"] == "3"
    assert len(upstream.requests) == 3


async def test_statuses_not_listed_are_not_retried(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url))
    status, headers, _ = await call(client, "GET", sc.url + "/gemini/x")
    assert status == 500 and headers["X-Egress-Attempts"] == "1"


async def test_retry_after_seconds_is_honoured(upstream, make_sidecar, client):
    upstream.script(respond(503, headers={"Retry-After": "1"}), respond(200))
    sc = await make_sidecar(policy(upstream.url))
    started = time.monotonic()
    status, headers, _ = await call(client, "GET", sc.url + "/gemini/x")
    waited = time.monotonic() - started
    assert status == 200 and headers["X-Egress-Attempts"] == "2"
    assert 0.95 <= waited < 2.0


async def test_retry_after_http_date_is_honoured(upstream, make_sidecar, client):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    upstream.script(respond(503, headers={"Retry-After": when}), respond(200))
    sc = await make_sidecar(policy(upstream.url))
    started = time.monotonic()
    status, _, _ = await call(client, "GET", sc.url + "/gemini/x")
    waited = time.monotonic() - started
    assert status == 200
    assert 0.9 <= waited < 2.6  # an HTTP date has one-second resolution


async def test_retry_after_beyond_backoff_max_returns_the_answer_as_is(upstream, make_sidecar, client):
    upstream.script(respond(503, b"later", headers={"Retry-After": "30"}), respond(200))
    sc = await make_sidecar(policy(upstream.url))
    started = time.monotonic()
    status, headers, body = await call(client, "GET", sc.url + "/gemini/x")
    assert (status, body) == (503, b"later")
    assert headers["Retry-After"] == "30"
    assert headers["X-Egress-Attempts"] == "1"
    assert time.monotonic() - started < 0.5


GEMINI_429 = {
    "error": {
        "code": 429,
        "message": "Resource has been exhausted",
        "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}],
    }
}
WHATSAPP_THROTTLE = {
    "error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429, "fbtrace_id": "A"}
}
THROTTLE_RULES = """throttle:
          - {status: 429, delay_field: "error.details[].retryDelay"}
          - {status: 400, field: error.code, codes: [130429, 131056], delay: 300ms}"""


async def test_gemini_retry_delay_in_a_429_body_is_honoured(upstream, make_sidecar, client):
    upstream.script(respond(429, GEMINI_429), respond(200, b"generated"))
    sc = await make_sidecar(policy(upstream.url, extra=THROTTLE_RULES))
    started = time.monotonic()
    status, headers, body = await call(client, "POST", sc.url + "/gemini/v1beta/models/m:generateContent", data=b"{}")
    assert (status, body) == (200, b"generated")
    assert headers["X-Egress-Attempts"] == "2"
    assert time.monotonic() - started >= 0.95


async def test_whatsapp_130429_is_throttling_and_a_throttled_post_is_delivered_once(upstream, make_sidecar, client):
    upstream.script(respond(400, WHATSAPP_THROTTLE), respond(200, {"messages": [{"id": "wamid.1"}]}))
    sc = await make_sidecar(policy(upstream.url, extra=THROTTLE_RULES))
    started = time.monotonic()
    status, headers, body = await call(client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b'{"to": "1"}')
    assert status == 200 and b"wamid.1" in body
    assert headers["X-Egress-Attempts"] == "2"
    assert time.monotonic() - started >= 0.29
    accepted = [r for r in upstream.requests if r.delivered]
    assert len(accepted) == 2 and upstream.requests[0].body == upstream.requests[1].body
    # the first was rejected (400 throttle), only the second was processed: one message delivered


async def test_a_plain_400_is_not_throttling(upstream, make_sidecar, client):
    upstream.script(respond(400, {"error": {"code": 100, "message": "Invalid parameter"}}), respond(200))
    sc = await make_sidecar(policy(upstream.url, extra=THROTTLE_RULES))
    status, headers, body = await call(client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b"{}")
    assert status == 400 and b"Invalid parameter" in body
    assert headers["X-Egress-Attempts"] == "1"


async def test_a_large_body_on_a_throttle_status_is_streamed_on_whole_not_held(upstream, make_sidecar, client):
    # Throttle signals are small JSON errors: a larger body is read no further than 64 KiB, then streamed on.
    half = bytes(range(256)) * 512  # 128 KiB, then a pause, then as much again

    async def large_400(request: web.BaseRequest, record: Recorded) -> web.StreamResponse:
        response = web.StreamResponse(status=400)
        await response.prepare(request)
        await response.write(half)
        await asyncio.sleep(1.0)
        await response.write(half)
        await response.write_eof()
        return response

    upstream.script(large_400, respond(200))
    sc = await make_sidecar(policy(upstream.url, extra=THROTTLE_RULES))
    started = time.monotonic()
    async with client.post(sc.url + "/gemini/v19.0/123/messages", data=b"{}") as resp:
        first = await resp.content.readexactly(len(half))
        first_at = time.monotonic() - started
        body = first + await resp.read()
    assert resp.status == 400 and body == half + half
    assert resp.headers["X-Egress-Attempts"] == "1"
    assert first_at < 0.8, "the body was held until it ended"


async def test_a_post_reset_after_its_body_was_sent_is_never_retried(upstream, make_sidecar, client):
    upstream.script(reset_after_body(), respond(200))
    sc = await make_sidecar(policy(upstream.url))
    status, headers, _ = await call(client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b'{"to": "1"}')
    assert status == 502
    assert headers["X-Egress-Error"] == "upstream_reset"
    assert headers["X-Egress-Attempts"] == "1"
    assert upstream.deliveries == 1 and len(upstream.requests) == 1


async def test_a_post_that_timed_out_after_sending_is_never_retried(upstream, make_sidecar, client):
    upstream.default = hang()
    sc = await make_sidecar(policy(upstream.url).replace("read: 2s", "read: 200ms"))
    status, headers, _ = await call(client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b"{}")
    assert status == 504 and headers["X-Egress-Attempts"] == "1"
    assert len(upstream.requests) == 1


async def test_a_post_with_a_503_is_not_retried(upstream, make_sidecar, client):
    upstream.default = respond(503)
    sc = await make_sidecar(policy(upstream.url))
    status, headers, _ = await call(client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b"{}")
    assert status == 503 and headers["X-Egress-Attempts"] == "1"


async def test_a_post_whose_connection_was_refused_is_retried(make_sidecar, client, caplog):
    caplog.set_level(logging.WARNING, logger="egress.retry")
    port = free_port()
    # Full jitter draws each wait from [0, 100-150 ms]: with 20 attempts, the odds that all of them are spent
    # before the upstream comes up at 250 ms are nil (with 6 they were not, and the test failed now and then).
    text = policy(f"http://127.0.0.1:{port}", attempts=20).replace(
        FAST_BACKOFF, "backoff: {base: 100ms, max: 150ms}"
    )
    sc = await make_sidecar(text)
    late = FaultyUpstream(port=port)
    late.default = respond(200, b"sent")

    async def come_up_later() -> None:
        await asyncio.sleep(0.25)
        await late.start()

    starter = asyncio.create_task(come_up_later())
    try:
        status, headers, body = await call(client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b"{}")
    finally:
        await starter
        await late.stop()
    assert (status, body) == (200, b"sent")
    assert int(headers["X-Egress-Attempts"]) >= 2
    assert late.deliveries == 1
    assert any("reason: connect_error" in r.getMessage() for r in caplog.records)


async def test_a_post_with_an_idempotency_key_is_retried_after_a_reset(upstream, make_sidecar, client):
    upstream.script(reset_after_body(), respond(200, b"ok"))
    sc = await make_sidecar(policy(upstream.url))
    status, headers, _ = await call(
        client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b"{}", headers={"Idempotency-Key": "k-1"}
    )
    assert status == 200 and headers["X-Egress-Attempts"] == "2"
    assert upstream.requests[1].headers["Idempotency-Key"] == "k-1"


async def test_idempotent_route_post_is_retried_with_the_same_body(upstream, make_sidecar, client):
    upstream.script(reset_after_body(), echo())
    sc = await make_sidecar(policy(upstream.url))
    status, _, body = await call(client, "POST", sc.url + "/gemini/v1beta/models/m:generateContent", data=b"same")
    assert status == 200 and b'"body": "same"' in body


async def test_a_streamed_body_over_max_body_is_not_replayed(upstream, make_sidecar, client):
    upstream.script(reset_after_body(), respond(200))
    sc = await make_sidecar(policy(upstream.url, retry=", max_body: 1KiB"))
    status, headers, _ = await call(
        client, "POST", sc.url + "/gemini/v1beta/models/m:generateContent", data=b"x" * 4096
    )
    assert status == 502 and headers["X-Egress-Attempts"] == "1"


async def test_all_attempts_fit_the_deadline(upstream, make_sidecar, client):
    upstream.default = delay(0.15, respond(503))
    sc = await make_sidecar(policy(upstream.url, attempts=20).replace("total: 10s", "total: 600ms"))
    started = time.monotonic()
    status, _, _ = await call(client, "GET", sc.url + "/gemini/x")
    took = time.monotonic() - started
    assert status in (503, 504)
    assert took < 0.6 + 0.25


async def test_x_egress_timeout_shortens_the_deadline_but_never_lengthens_it(upstream, make_sidecar, client):
    upstream.default = hang()
    sc = await make_sidecar(policy(upstream.url).replace("read: 2s, total: 10s", "read: 5s, total: 1s"))
    started = time.monotonic()
    status, headers, _ = await call(client, "GET", sc.url + "/gemini/x", headers={"X-Egress-Timeout": "300ms"})
    assert status == 504 and headers["X-Egress-Error"] == "upstream_timeout"
    assert 0.25 < time.monotonic() - started < 0.7
    assert "X-Egress-Timeout" not in upstream.requests[-1].headers
    started = time.monotonic()
    status, _, _ = await call(client, "GET", sc.url + "/gemini/x", headers={"X-Egress-Timeout": "30s"})
    assert status == 504
    assert time.monotonic() - started < 1.5


async def test_the_retry_budget_stops_a_storm(upstream, make_sidecar, client):
    upstream.default = respond(503)
    text = policy(upstream.url).replace(
        "budget: {ratio: 1.0, min_per_second: 100}", "budget: {ratio: 0.2, min_per_second: 0}"
    )
    sc = await make_sidecar(text)
    for _ in range(100):
        await call(client, "GET", sc.url + "/gemini/x")
    extra = len(upstream.requests) - 100
    assert extra <= 22, f"{extra} retries for 100 requests with a 20% budget"
    assert extra >= 10  # the budget allows some retries; it is not simply off
    async with client.get(sc.admin + "/metrics") as resp:
        text = await resp.text()
    assert 'egress_retry_budget_exhausted_total{upstream="gemini"}' in text


async def test_attempts_is_the_most_the_upstream_ever_sees_even_when_it_resets(upstream, make_sidecar, client):
    # aiohttp would replay an idempotent request once by itself on a dropped connection, behind the retry
    # policy's back: past `attempts`, uncounted by the retry budget and X-Egress-Attempts.
    upstream.default = reset_after_body()
    sc = await make_sidecar(policy(upstream.url, attempts=1))
    status, headers, _ = await call(client, "GET", sc.url + "/gemini/x")
    assert (status, headers["X-Egress-Error"], headers["X-Egress-Attempts"]) == (502, "upstream_reset", "1")
    assert len(upstream.requests) == 1
    upstream.requests.clear()
    sc3 = await make_sidecar(policy(upstream.url, attempts=3))
    status, headers, _ = await call(client, "PUT", sc3.url + "/gemini/x", data=b"{}")
    assert (status, headers["X-Egress-Attempts"]) == (502, "3")
    assert len(upstream.requests) == 3


async def test_every_retry_logs_one_line(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.WARNING, logger="egress.retry")
    upstream.script(respond(502), respond(503), respond(200))
    sc = await make_sidecar(policy(upstream.url))
    await call(client, "GET", sc.url + "/gemini/x", headers={"X-Request-ID": "rid-retry-1"})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Retrying")]
    assert len(lines) == 2
    assert lines[0].startswith("Retrying gemini GET default attempt 2/3 in ")
    assert lines[0].endswith("ms (reason: 502) request_id=rid-retry-1")  # the caller's id: grep one request
    assert lines[1].startswith("Retrying gemini GET default attempt 3/3 in ") and "(reason: 503)" in lines[1]


async def test_retries_are_counted_in_metrics(upstream, make_sidecar, client):
    upstream.script(respond(503), respond(200))
    sc = await make_sidecar(policy(upstream.url))
    await call(client, "GET", sc.url + "/gemini/x")
    async with client.get(sc.admin + "/metrics") as resp:
        text = await resp.text()
    assert 'egress_retries_total{reason="503",route="default",upstream="gemini"} 1.0' in text


async def test_a_throttled_upstream_holds_other_requests_or_fails_them_fast(upstream, make_sidecar, client):
    upstream.script(respond(429, b"slow down", headers={"Retry-After": "1"}))
    upstream.default = respond(200, b"ok")
    text = policy(upstream.url).replace(FAST_BACKOFF, "backoff: {base: 10ms, max: 100ms}")
    sc = await make_sidecar(text)
    started = time.monotonic()
    # 1 s of quiet does not fit a 300 ms deadline: 503 throttled, the first caller as every one after it
    status, headers, body = await call(client, "GET", sc.url + "/gemini/x", headers={"X-Egress-Timeout": "300ms"})
    assert status == 503 and headers["X-Egress-Error"] == "throttled", body
    assert int(headers["Retry-After"]) >= 1
    status, headers, _ = await call(client, "GET", sc.url + "/gemini/x", headers={"X-Egress-Timeout": "300ms"})
    assert status == 503 and headers["X-Egress-Error"] == "throttled"
    assert int(headers["Retry-After"]) >= 1
    assert time.monotonic() - started < 0.3
    assert len(upstream.requests) == 1  # the second failed fast without touching the upstream
    status, _, _ = await call(client, "GET", sc.url + "/gemini/x")
    assert status == 200
    assert time.monotonic() - started >= 0.7  # waited out the rest of the second


async def test_a_throttle_delay_that_fits_the_deadline_is_waited_out_even_past_backoff_max(
    upstream, make_sidecar, client
):
    upstream.script(respond(400, WHATSAPP_THROTTLE), respond(200, {"messages": [{"id": "wamid.1"}]}))
    rules = THROTTLE_RULES.replace("delay: 300ms", "delay: 600ms")
    text = policy(upstream.url, extra=rules).replace(FAST_BACKOFF, "backoff: {base: 10ms, max: 100ms}")
    sc = await make_sidecar(text)
    started = time.monotonic()
    status, headers, body = await call(client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b'{"to": "1"}')
    assert status == 200 and b"wamid.1" in body
    assert headers["X-Egress-Attempts"] == "2"
    assert time.monotonic() - started >= 0.55  # the provider's delay, not backoff.max
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("why", ["deadline", "attempts"])
async def test_a_throttle_that_cannot_be_waited_out_is_503_throttled_never_the_providers_400(
    upstream, make_sidecar, client, why
):
    upstream.default = respond(400, WHATSAPP_THROTTLE)
    rules = THROTTLE_RULES.replace("delay: 300ms", "delay: 5s" if why == "deadline" else "delay: 100ms")
    sc = await make_sidecar(policy(upstream.url, extra=rules, attempts=3 if why == "deadline" else 1))
    headers_in = {"X-Egress-Timeout": "1s"} if why == "deadline" else {}
    started = time.monotonic()
    status, headers, body = await call(
        client, "POST", sc.url + "/gemini/v19.0/123/messages", data=b'{"to": "1"}', headers=headers_in
    )
    assert status == 503, body
    assert headers["X-Egress-Error"] == "throttled"
    assert int(headers["Retry-After"]) == (5 if why == "deadline" else 1)
    assert b"130429" not in body  # the sidecar's answer, not the provider's: the caller is not at fault
    assert time.monotonic() - started < 0.9  # not waited for: it could not have fitted
    assert len(upstream.requests) == 1


async def test_with_the_shipped_policy_a_throttled_whatsapp_send_is_delivered_exactly_once(upstream, client):
    upstream.script(respond(400, WHATSAPP_THROTTLE), respond(200, {"messages": [{"id": "wamid.9"}]}))
    environ = {"WHATSAPP_URL": upstream.url, "EGRESS_LISTEN": "127.0.0.1:0", "EGRESS_ADMIN": "127.0.0.1:0"}
    sidecar = Sidecar(load_policy("config/policy.yaml", environ))
    await sidecar.start()
    try:
        url = f"http://127.0.0.1:{sidecar.data_port}/whatsapp/v19.0/123/messages"
        status, headers, body = await call(client, "POST", url, data=b'{"to": "1", "text": {"body": "hi"}}')
    finally:
        await sidecar.stop()
    assert status == 200 and b"wamid.9" in body  # the shipped 5 s delay fits the shipped 30 s deadline
    assert headers["X-Egress-Attempts"] == "2"
    assert len(upstream.requests) == 2  # one rejected (throttled, not processed), one delivered
