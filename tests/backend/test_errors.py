"""Every failure the backend can meet on an outbound call, driven for real (simulator faults, sidecar
states, refused ports), and the API error each one becomes."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from inbox_backend.settings import Upstream
from tests.backend.harness import ADMIN, FAST_GEMINI, USER, MakeStack, Stack

REPLY = {"conversation_id": 1}
FAST_SUPABASE = {"upstreams": {"supabase": {"timeouts": {"read": "300ms", "total": "1s"}}}}


async def bot_reply(stack: Stack, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, str]]:
    status, body, response_headers = await stack.call(
        "POST", "/bot/reply", headers={**USER, **(headers or {})}, json_body=REPLY
    )
    return status, body, dict(response_headers)


async def test_a_timeout_in_the_sidecar_is_504_external_api_timeout_with_the_callers_request_id(
    make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = await make_stack(FAST_GEMINI)
    stack.sim.state.add_fault(upstream="gemini", kind="hang")
    caplog.set_level(logging.INFO, logger="egress.access")
    status, body, headers = await bot_reply(stack, {"X-Request-ID": "trace-4711"})
    assert (status, body) == (504, {"error": "external_api_timeout", "request_id": "trace-4711"})
    assert headers["X-Request-ID"] == "trace-4711"
    # the same id is in the sidecar's access log: one id follows the request through both
    assert stack.sidecar is not None
    stack.sidecar.settle()
    sidecar_lines = [r.getMessage() for r in caplog.records if r.name == "egress.access"]
    assert any("request_id=trace-4711" in line and "upstream=gemini" in line for line in sidecar_lines)


async def test_a_database_timeout_is_504_database_timeout(make_stack: MakeStack) -> None:
    stack = await make_stack(FAST_SUPABASE)
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:GET", kind="hang")
    status, body, _ = await stack.call("GET", "/messages/1", headers=USER)
    assert (status, body["error"]) == (504, "database_timeout")
    assert len(body["request_id"]) == 32  # ours, made up when the caller sent none


async def test_an_auth_check_timeout_is_an_external_api_timeout_not_a_database_one(make_stack: MakeStack) -> None:
    stack = await make_stack(FAST_SUPABASE)
    stack.sim.state.add_fault(upstream="supabase", route="auth_user", kind="hang")
    status, body, _ = await stack.call("GET", "/auth/me", headers=USER)
    assert (status, body["error"]) == (504, "external_api_timeout")


async def test_an_open_breaker_is_503_upstream_unavailable_with_retry_after(stack: Stack) -> None:
    await stack.admin("POST", "/breakers/gemini/open")
    status, body, headers = await bot_reply(stack)
    assert (status, body["error"]) == (503, "gemini_unavailable")
    assert int(headers["Retry-After"]) >= 1
    assert stack.sim.state.request_count("gemini") == 0


async def test_a_full_bulkhead_is_503_overloaded(make_stack: MakeStack) -> None:
    policy = {"upstreams": {"gemini": {**FAST_GEMINI["upstreams"]["gemini"],
                                       "limits": {"max_concurrent": 1, "max_queue": 0}}}}
    stack = await make_stack(policy)
    stack.sim.state.add_fault(upstream="gemini", kind="hang")
    first = asyncio.create_task(bot_reply(stack))
    await asyncio.sleep(0.1)  # the first holds the only slot, hanging
    status, body, _ = await bot_reply(stack)
    assert (status, body["error"]) == (503, "gemini_unavailable")
    assert (await first)[0] == 504


async def test_a_refused_connection_is_503_upstream_unavailable(make_stack: MakeStack) -> None:
    stack = await make_stack(unreachable=[Upstream.WHATSAPP])
    message = {"conversation_id": 1, "text": "hi"}
    status, body, _ = await stack.call("POST", "/messages", headers=USER, json_body=message)
    assert (status, body["error"]) == (503, "whatsapp_unavailable")


async def test_a_sidecar_that_is_not_there_is_503_upstream_unavailable(stack: Stack) -> None:
    assert stack.sidecar is not None
    await stack.sidecar.sidecar.stop()
    status, body, _ = await stack.call("GET", "/auth/me", headers=USER)
    assert (status, body["error"]) == (503, "supabase_unavailable")


async def test_an_upstream_5xx_is_502_external_api_unavailable(stack: Stack) -> None:
    stack.sim.state.add_fault(upstream="gemini", kind="status", status=500, count=1)
    status, body, _ = await bot_reply(stack)
    assert (status, body["error"]) == (502, "external_api_unavailable")


async def test_an_upstream_4xx_is_400_external_api_error(stack: Stack) -> None:
    stack.sim.state.add_fault(upstream="gemini", kind="status", status=400, count=1)
    status, body, _ = await bot_reply(stack)
    assert (status, body["error"]) == (400, "external_api_error")


async def test_a_throttled_upstream_is_503_with_retry_after(make_stack: MakeStack) -> None:
    stack = await make_stack(FAST_GEMINI)
    stack.sim.state.add_fault(upstream="gemini", kind="throttle", retry_after=5, count=1)
    # Gemini's 429 asks for 5 s, more than the policy's backoff.max: passed on, and the sidecar notes it
    status, body, _ = await bot_reply(stack)
    assert (status, body["error"]) == (503, "gemini_unavailable")
    # ...so the next call is the sidecar's own `throttled`, without reaching Gemini
    status, body, headers = await bot_reply(stack)
    assert (status, body["error"]) == (503, "gemini_unavailable")
    assert 4 <= int(headers["Retry-After"]) <= 5
    assert stack.sim.state.request_count("gemini") == 1


async def test_an_unknown_token_is_401_and_no_token_is_401(stack: Stack) -> None:
    status, body, _ = await stack.call("GET", "/auth/me", headers={"Authorization": "Bearer forged"})
    assert (status, body["error"]) == (401, "unauthorized")
    status, body, headers = await stack.call("GET", "/auth/me")
    assert (status, body["error"]) == (401, "unauthorized")
    assert headers["WWW-Authenticate"] == "Bearer"


async def test_unknown_routes_and_bad_bodies_use_the_same_error_body(stack: Stack) -> None:
    status, body, _ = await stack.call("GET", "/nope", headers={"X-Request-ID": "r-1"})
    assert (status, body) == (404, {"error": "not_found", "request_id": "r-1"})
    status, body, _ = await stack.call("POST", "/bot/reply", headers=USER, json_body=["not", "an", "object"])
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = await stack.call("GET", "/messages/abc", headers=USER)
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = await stack.call("GET", "/messages/999", headers=USER)
    assert (status, body["error"]) == (404, "not_found")


# -- direct mode: the same mapping without a sidecar ----------------------------------------------
async def test_direct_mode_timeouts_are_504_and_refusals_503(make_stack: MakeStack) -> None:
    stack = await make_stack(mode="direct", direct_timeout=0.3, unreachable=[Upstream.WHATSAPP])
    stack.sim.state.add_fault(upstream="gemini", kind="hang")
    started = time.monotonic()
    status, body, _ = await bot_reply(stack)
    assert (status, body["error"]) == (504, "external_api_timeout")
    assert time.monotonic() - started < 1.5
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:GET", kind="hang", count=1)
    status, body, _ = await stack.call("GET", "/messages/1", headers=ADMIN)
    assert (status, body["error"]) == (504, "database_timeout")
    status, body, _ = await stack.call("POST", "/messages", headers=USER, json_body={"conversation_id": 1, "text": "x"})
    assert (status, body["error"]) == (503, "whatsapp_unavailable")


async def test_direct_mode_upstream_errors_map_like_through_the_sidecar(make_stack: MakeStack) -> None:
    stack = await make_stack(mode="direct")
    stack.sim.state.add_fault(upstream="gemini", kind="status", status=503, retry_after=7, count=1)
    status, body, _ = await bot_reply(stack)
    assert (status, body["error"]) == (502, "external_api_unavailable")
    stack.sim.state.add_fault(upstream="gemini", kind="reset_after", count=1)
    status, body, _ = await bot_reply(stack)
    assert (status, body["error"]) == (502, "external_api_unavailable")
    assert stack.sim.state.request_count("gemini") == 2  # no retry in the backend, ever


async def test_a_send_whose_outcome_is_unknown_is_502_delivery_unknown_in_direct_mode_too(
    make_stack: MakeStack,
) -> None:
    # Direct mode has no sidecar to say so: any failure after the connection was made may have been processed.
    stack = await make_stack(mode="direct")
    stack.sim.state.add_fault(upstream="whatsapp", route="send_message", kind="reset_after", count=1)
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "maybe sent"})
    assert (status, body["error"]) == (502, "delivery_unknown")
    [row] = stack.rows("messages", body="maybe sent")
    assert row["status"] == "unknown"
    assert stack.sim.state.delivery_count(body="maybe sent") == 1


async def test_a_send_that_never_left_is_failed_not_unknown(make_stack: MakeStack) -> None:
    stack = await make_stack(mode="direct", unreachable=[Upstream.WHATSAPP])
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "never left"})
    assert (status, body["error"]) == (503, "whatsapp_unavailable")
    [row] = stack.rows("messages", body="never left")
    assert row["status"] == "failed"


async def test_an_ambiguous_bot_reply_is_counted_apart_from_failures(stack: Stack) -> None:
    stack.sim.state.add_fault(upstream="whatsapp", route="send_message", kind="reset_after", count=1)
    status, body, _ = await stack.call("POST", "/bot/reply", headers=USER, json_body={**REPLY, "send": True})
    assert (status, body["error"]) == (502, "delivery_unknown")
    assert stack.metric("inbox_ambiguous_sends_total") == 1
    assert stack.metric("inbox_bot_reply_failures_total", {"stage": "send"}) == 0
