"""The inbox team's acceptance checks, at the backend's level: what a user of the API sees."""

from __future__ import annotations

import asyncio
import time

from tests.backend.harness import ADMIN, ALICE, FAST_GEMINI, USER, MakeStack, Stack

REPLY = {"conversation_id": 1}
# A short read timeout and total deadline; a breaker that stays open for the length of a test.
HANG_POLICY = FAST_GEMINI
THROTTLE_FAST = {"upstreams": {"whatsapp": {"throttle": [
    {"status": 400, "field": "error.code", "codes": [130429, 131056], "delay": "100ms"}]}}}


async def test_a_hanging_gemini_makes_bot_reply_answer_within_the_policy_timeout(make_stack: MakeStack) -> None:
    stack = await make_stack(HANG_POLICY)  # gemini: read 300ms, total 1s
    stack.sim.state.add_fault(upstream="gemini", kind="hang")
    started = time.monotonic()
    status, body, _ = await stack.call("POST", "/bot/reply", headers=USER, json_body=REPLY)
    elapsed = time.monotonic() - started
    assert (status, body["error"]) == (504, "external_api_timeout")
    assert elapsed < 1.0 + 0.4, elapsed


async def test_five_failures_open_the_breaker_then_replies_fail_fast_without_reaching_gemini(stack: Stack) -> None:
    stack.sim.state.add_fault(upstream="gemini", kind="status", status=500)
    for _ in range(5):
        status, body, _ = await stack.call("POST", "/bot/reply", headers=USER, json_body=REPLY)
        assert (status, body["error"]) == (502, "external_api_unavailable")
    reached = stack.sim.state.request_count("gemini", "generate")
    assert reached == 5

    for _ in range(3):
        started = time.monotonic()
        status, body, headers = await stack.call("POST", "/bot/reply", headers=USER, json_body=REPLY)
        assert time.monotonic() - started < 1.0
        assert (status, body["error"]) == (503, "gemini_unavailable")
        assert "Retry-After" in headers
    assert stack.sim.state.request_count("gemini", "generate") == reached

    status, body, _ = await stack.call("GET", "/admin/circuit-breakers", headers=ADMIN)
    assert status == 200
    assert body["breakers"]["gemini"]["state"] == "open"
    assert body["breakers"]["gemini"]["consecutive_failures"] >= 5


async def test_a_second_bot_profile_read_is_a_sidecar_cache_hit(stack: Stack) -> None:
    first = await stack.call("GET", "/bot/profile?account_id=1", headers=USER)
    assert first[0] == 200 and first[1]["account_id"] == 1
    second = await stack.call("GET", "/bot/profile?account_id=1", headers=USER)
    assert second[:2] == first[:2]
    assert stack.sim.state.request_count("supabase", "rest:bot_profiles:GET") == 1
    assert sidecar_cache_results(stack, "bot_profile") == {"MISS": 1.0, "HIT": 1.0}


def sidecar_cache_results(stack: Stack, route: str) -> dict[str, float]:
    """The sidecar's `egress_cache_requests_total` (one per X-Egress-Cache it answered) for a route."""
    assert stack.sidecar is not None
    registry = stack.sidecar.runtime.metrics.registry
    results = {}
    for result in ("HIT", "MISS", "STALE", "BYPASS", "REFRESH"):
        value = registry.get_sample_value(
            "egress_cache_requests_total", {"upstream": "supabase", "route": route, "result": result}
        )
        if value:
            results[result] = value
    return results


async def test_a_send_reset_after_the_request_left_is_not_retried_and_is_delivered_once(stack: Stack) -> None:
    stack.sim.state.add_fault(upstream="whatsapp", route="send_message", kind="reset_after", count=1)
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "your cake is ready"})
    # Not "failed": the sidecar says the send reached WhatsApp (X-Egress-Delivery: unknown); a caller that took a
    # plain 502 for "not sent" and retried would send it twice.
    assert (status, body["error"]) == (502, "delivery_unknown")
    assert stack.sim.state.request_count("whatsapp", "send_message") == 1
    assert stack.sim.state.delivery_count(to=ALICE, body="your cake is ready") == 1
    # the inbox shows it, marked unknown: WhatsApp may have delivered it (here it did), never twice
    [row] = stack.rows("messages", body="your cake is ready")
    assert row["status"] == "unknown"


async def test_a_send_reset_before_the_body_was_read_is_still_never_duplicated(stack: Stack) -> None:
    # The connection is reset before the simulator reads the body. To the sidecar this looks exactly like
    # reset_after: the whole request was written, then RST. It cannot prove the send did not happen, so
    # it does not replay a non-idempotent POST: at most once (here: not delivered, and the caller knows).
    stack.sim.state.add_fault(upstream="whatsapp", route="send_message", kind="reset_before", count=1)
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "reset before"})
    assert (status, body["error"]) == (502, "delivery_unknown")  # the sidecar cannot tell: unknown, not failed
    assert stack.sim.state.request_count("whatsapp", "send_message") == 1
    assert stack.sim.state.delivery_count(body="reset before") == 0
    [row] = stack.rows("messages", body="reset before")
    assert row["status"] == "unknown"


async def test_a_send_that_provably_did_not_happen_is_retried_and_delivered_once(make_stack: MakeStack) -> None:
    # WhatsApp's rate-limit answer (#130429) means "rejected, not processed": the one case the sidecar
    # replays a send. (The other, a refused connection, cannot be switched off mid-request here.)
    stack = await make_stack(THROTTLE_FAST)
    stack.sim.state.add_fault(upstream="whatsapp", route="send_message", kind="throttle", count=1)
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "after the throttle"})
    assert status == 201, body
    assert body["status"] == "sent" and body["wa_message_id"].startswith("wamid.")
    assert stack.sim.state.request_count("whatsapp", "send_message") == 2
    assert stack.sim.state.delivery_count(to=ALICE, body="after the throttle") == 1


async def test_a_slow_outgoing_insert_is_hedged_and_stores_the_message_once(stack: Stack) -> None:
    # The insert carries a client-side id (client_ref) and an Idempotency-Key, so the shipped policy's `rest`
    # route hedges it after 300 ms. The slow first copy lands after its twin and is ignored as a duplicate.
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:POST", kind="delay", delay=2.0, count=1)
    started = time.monotonic()
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "hedged insert"})
    elapsed = time.monotonic() - started
    assert status == 201, body
    assert elapsed < 1.8, elapsed  # the twin's answer, not the 2 s copy's
    assert stack.sim.state.request_count("supabase", "rest:messages:POST") == 2
    assert stack.sim.state.delivery_count(to=ALICE, body="hedged insert") == 1
    await asyncio.sleep(2.2)  # the slow copy has landed by now
    [row] = stack.rows("messages", body="hedged insert")
    assert row["status"] == "sent" and row["client_ref"] == body["client_ref"]


async def test_the_status_update_after_a_send_is_retried_so_a_sent_message_is_not_left_sending(stack: Stack) -> None:
    # The PATCH sets fixed values and carries an Idempotency-Key: a 503 is retried, not left as `sending`.
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:PATCH", kind="status", status=503, count=1)
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "status retried"})
    assert (status, body["status"]) == (201, "sent"), body
    assert stack.sim.state.request_count("supabase", "rest:messages:PATCH") == 2
    [row] = stack.rows("messages", body="status retried")
    assert row["status"] == "sent"
