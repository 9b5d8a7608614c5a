"""WhatsApp's webhook end to end: simulator + sidecar + backend on real loopback ports."""

from __future__ import annotations

import asyncio
import json

from inbox_backend.webhook_payload import SIGNATURE_HEADER, message_webhook, text_message
from tests.backend.harness import ALICE, BOT_OFF_PHONE_ID, PHONE_ID, MakeStack, Stack, eventually


async def test_subscription_check_echoes_the_challenge_only_for_the_verify_token(stack: Stack) -> None:
    token = stack.state.settings.whatsapp_verify_token
    query = f"hub.mode=subscribe&hub.verify_token={token}&hub.challenge=1158201444"
    async with stack.http.get(f"{stack.url}/webhook?{query}") as response:
        assert response.status == 200
        assert await response.text() == "1158201444"
    status, body, _ = await stack.call("GET", "/webhook?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=1")
    assert (status, body["error"]) == (403, "forbidden")


async def test_inbound_message_is_stored_then_answered_by_the_bot_through_the_sidecar(stack: Stack) -> None:
    status, body = await stack.webhook("Do you have croissants?", message_id="wamid.IN1")
    assert (status, body) == (200, {"stored": 1, "duplicate": 0, "unknown_account": 0})
    [inbound] = stack.rows("messages", wa_message_id="wamid.IN1")
    assert (inbound["direction"], inbound["body"], inbound["conversation_id"]) == ("in", "Do you have croissants?", 1)

    await eventually(lambda: stack.sim.state.delivery_count(to=ALICE) == 1, message="bot reply delivered")
    [delivery] = stack.sim.state.deliveries_to(ALICE)
    # Alice's previous message (seeded) and this one are one user turn: Gemini expects turns to alternate
    assert delivery.body == "Echo: Here is the cake I want Do you have croissants?"
    assert delivery.phone_number_id == PHONE_ID
    await eventually(lambda: bool(stack.rows("messages", wa_message_id=delivery.message_id, status="sent")))
    [reply] = stack.rows("messages", wa_message_id=delivery.message_id)
    assert (reply["direction"], reply["body"], reply["conversation_id"]) == ("out", delivery.body, 1)
    # every call went through the sidecar (the bot profile and the account are its cacheable reads)
    upstreams = await stack.admin("GET", "/upstreams")
    assert set(upstreams) == {"gemini", "whatsapp", "whatsapp_media", "supabase"}
    assert stack.sim.state.request_count("gemini", "generate") == 1


async def test_a_new_contact_gets_a_contact_row_and_a_conversation(stack: Stack) -> None:
    status, _ = await stack.webhook("first time here", wa_id="15550007777")
    assert status == 200
    [contact] = stack.rows("contacts", wa_id="15550007777")
    assert (contact["account_id"], contact["name"]) == (1, "Alice")
    [conversation] = stack.rows("conversations", contact_id=contact["id"])
    assert len(stack.rows("messages", conversation_id=conversation["id"], direction="in")) == 1
    await eventually(lambda: stack.sim.state.delivery_count(to="15550007777", body="Echo: first time here") == 1)


async def test_a_redelivered_message_is_stored_once_and_answered_once(stack: Stack) -> None:
    for _ in range(3):
        status, _ = await stack.webhook("same message", message_id="wamid.DUP")
        assert status == 200
    assert len(stack.rows("messages", wa_message_id="wamid.DUP")) == 1
    await eventually(lambda: stack.sim.state.delivery_count(to=ALICE) == 1)
    assert stack.metric("inbox_webhook_messages_total", {"result": "duplicate"}) == 2


async def test_a_bad_or_missing_signature_is_refused_and_nothing_is_stored(stack: Stack) -> None:
    status, body = await stack.webhook("forged", message_id="wamid.FORGED", secret="not-the-app-secret")
    assert (status, body["error"]) == (401, "invalid_signature")
    payload = json.dumps(message_webhook(text_message("unsigned"), wa_id=ALICE, phone_number_id=PHONE_ID))
    async with stack.http.post(f"{stack.url}/webhook", data=payload) as response:
        assert response.status == 401
    async with stack.http.post(f"{stack.url}/webhook", data=payload, headers={SIGNATURE_HEADER: "sha256=00"}) as r:
        assert r.status == 401
    assert stack.rows("messages", wa_message_id="wamid.FORGED") == []
    assert stack.sim.state.request_count("supabase") == 0


async def test_a_message_for_an_account_with_the_bot_off_is_stored_without_a_reply(stack: Stack) -> None:
    status, body = await stack.webhook("hello?", message_id="wamid.OFF", wa_id="15550003001",
                                       phone_number_id=BOT_OFF_PHONE_ID)
    assert (status, body["stored"]) == (200, 1)
    assert len(stack.rows("messages", wa_message_id="wamid.OFF")) == 1
    assert stack.sim.state.request_count("gemini") == 0
    assert stack.sim.state.delivery_count() == 0


async def test_a_message_to_an_unknown_number_is_acknowledged_and_dropped(stack: Stack) -> None:
    status, body = await stack.webhook("who?", phone_number_id="999")
    assert (status, body) == (200, {"stored": 0, "duplicate": 0, "unknown_account": 1})


async def test_gemini_down_the_message_is_stored_whatsapp_gets_200_and_the_failure_is_counted(stack: Stack) -> None:
    stack.sim.state.add_fault(upstream="gemini", kind="status", status=500)
    status, body = await stack.webhook("anyone there?", message_id="wamid.GEMDOWN")
    assert (status, body["stored"]) == (200, 1)
    assert len(stack.rows("messages", wa_message_id="wamid.GEMDOWN")) == 1
    await eventually(lambda: stack.metric("inbox_bot_reply_failures_total", {"stage": "generate"}) == 1)
    assert stack.sim.state.delivery_count() == 0
    assert stack.metric("http_requests_total", {"method": "POST", "route": "/webhook", "status": "200"}) == 1


async def test_whatsapp_down_the_reply_fails_at_send_and_the_inbound_message_stays(stack: Stack) -> None:
    stack.sim.state.add_fault(upstream="whatsapp", route="send_message", kind="status", status=400)
    status, _ = await stack.webhook("hello", message_id="wamid.WADOWN")
    assert status == 200
    await eventually(lambda: stack.metric("inbox_bot_reply_failures_total", {"stage": "send"}) == 1)
    assert len(stack.rows("messages", wa_message_id="wamid.WADOWN")) == 1
    # the reply was recorded before the send, and marked failed after it
    await eventually(lambda: len(stack.rows("messages", conversation_id=1, direction="out", status="failed")) == 1)


async def test_when_the_message_cannot_be_stored_whatsapp_is_told_to_redeliver(make_stack: MakeStack) -> None:
    stack = await make_stack()
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:POST", kind="status", status=503)
    status, body = await stack.webhook("lost?", message_id="wamid.RETRYME")
    assert (status, body["error"]) == (502, "external_api_unavailable")  # not 200: WhatsApp redelivers
    stack.sim.state.clear_faults()
    status, body = await stack.webhook("lost?", message_id="wamid.RETRYME")
    assert (status, body["stored"]) == (200, 1)


async def test_the_bot_sees_the_conversation_in_arrival_order_not_by_whatsapps_coarse_timestamps(
    stack: Stack,
) -> None:
    contact = "15550005555"
    await stack.webhook("first question", wa_id=contact)
    await eventually(lambda: stack.sim.state.delivery_count(to=contact) == 1)
    # WhatsApp's timestamps are whole seconds (and phones' clocks drift): this one predates the reply
    payload = message_webhook(text_message("second question"), wa_id=contact, phone_number_id=PHONE_ID)
    message = payload["entry"][0]["changes"][0]["value"]["messages"][0]
    message["timestamp"] = str(int(message["timestamp"]) - 5)
    assert (await stack.signed_webhook(payload))[0] == 200
    await eventually(lambda: stack.sim.state.delivery_count(to=contact) == 2)
    assert [d.body for d in stack.sim.state.deliveries_to(contact)] == ["Echo: first question", "Echo: second question"]


async def test_two_first_messages_at_once_start_one_conversation(stack: Stack) -> None:
    newcomer = "15550009999"
    # Both lookups find no conversation (each is answered only after both were asked), so both try to start one.
    stack.sim.state.add_fault(upstream="supabase", route="rest:conversations:GET", kind="delay", delay=0.3, count=2)
    results = await asyncio.gather(
        stack.webhook("hello?", message_id="wamid.FIRST-A", wa_id=newcomer),
        stack.webhook("anyone?", message_id="wamid.FIRST-B", wa_id=newcomer),
    )
    assert [status for status, _ in results] == [200, 200]
    [contact] = stack.rows("contacts", wa_id=newcomer)
    [conversation] = stack.rows("conversations", contact_id=contact["id"])
    inbound = stack.rows("messages", conversation_id=conversation["id"], direction="in")
    assert sorted(m["wa_message_id"] for m in inbound) == ["wamid.FIRST-A", "wamid.FIRST-B"]


async def test_a_reply_refused_by_an_open_gemini_breaker_goes_out_once_the_breaker_closes(
    make_stack: MakeStack,
) -> None:
    stack = await make_stack(reply_retry_interval=0.2, reply_retry_for=10.0)
    await stack.admin("POST", "/breakers/gemini/open")  # Gemini "down": every generation refused 503 at once
    status, body = await stack.webhook("still there?", message_id="wamid.WAITOUT")
    assert (status, body["stored"]) == (200, 1)
    await asyncio.sleep(0.6)  # refused a few times meanwhile
    assert stack.sim.state.delivery_count() == 0
    await stack.admin("POST", "/breakers/gemini/close")
    await eventually(lambda: stack.sim.state.delivery_count() == 1, message="the reply, once Gemini is back")
    await asyncio.sleep(0.5)
    assert stack.sim.state.delivery_count() == 1  # answered once


async def test_a_reply_gives_up_after_reply_retry_for(make_stack: MakeStack) -> None:
    stack = await make_stack(reply_retry_interval=0.1, reply_retry_for=0.5)
    await stack.admin("POST", "/breakers/gemini/open")
    status, _ = await stack.webhook("anyone?", message_id="wamid.GIVEUP")
    assert status == 200
    await asyncio.sleep(1.0)
    await stack.admin("POST", "/breakers/gemini/close")
    await asyncio.sleep(0.5)
    assert stack.sim.state.delivery_count() == 0  # gave up within its window: no reply long after the fact
