"""Edges found in review: encoded media, hostile headers and ids, settings that are not numbers, one reply per
delivery. Each test failed before its fix."""

from __future__ import annotations

import asyncio
import gzip

import aiohttp
import pytest
from aiohttp import web

from inbox_backend.settings import Settings, SettingsError, Upstream
from inbox_backend.simulator import SimulatorConfig, run_simulator
from inbox_backend.webhook_payload import SIGNATURE_HEADER, message_webhook, new_message_id, text_message
from tests.backend.harness import (
    ALICE,
    PHONE_ID,
    USER,
    Stack,
    backend_settings,
    eventually,
    serve_backend,
    upstream_urls,
)

ORIGINAL = b"%PDF-1.4 " + b"hello world, compressible text " * 2000


async def test_gzip_encoded_media_is_passed_on_intact() -> None:
    # The media host answers with Content-Encoding: gzip (aiohttp asks for it: Accept-Encoding: gzip). The
    # backend used to decompress it and pass the compressed length on: 228 of 62,009 bytes, with a 200.
    async def media(request: web.Request) -> web.Response:
        body = gzip.compress(ORIGINAL)
        return web.Response(body=body, headers={"Content-Type": "application/pdf", "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/{tail:.*}", media)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    media_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with run_simulator(config=SimulatorConfig(default_media_size=1024)) as sim:
            urls = {**upstream_urls(sim), Upstream.WHATSAPP_MEDIA: media_url}
            settings = backend_settings(urls, None, egress_mode="direct")
            async with (
                serve_backend(settings) as (url, _state),
                aiohttp.ClientSession(auto_decompress=False) as http,
                http.get(f"{url}/messages/3/media", headers=USER) as r,
            ):
                assert r.status == 200
                raw = await r.read()
                encoding = r.headers.get("Content-Encoding")
                got = gzip.decompress(raw) if encoding == "gzip" else raw
                assert got == ORIGINAL, (len(raw), r.headers.get("Content-Length"), encoding, len(ORIGINAL))
    finally:
        await runner.cleanup()


async def test_two_messages_in_one_webhook_get_one_reply_not_two(stack: Stack) -> None:
    payload = message_webhook(text_message("first"), wa_id=ALICE, phone_number_id=PHONE_ID)
    msgs = payload["entry"][0]["changes"][0]["value"]["messages"]
    msgs.append({**msgs[0], "id": new_message_id(), "text": {"body": "second"}})
    status, body = await stack.signed_webhook(payload)
    assert (status, body["stored"]) == (200, 2), body
    await eventually(lambda: stack.sim.state.delivery_count(to=ALICE) >= 1)
    await asyncio.sleep(1.0)
    bodies = [d.body for d in stack.sim.state.deliveries_to(ALICE)]
    assert len(bodies) == 1, bodies


async def test_signature_header_with_non_ascii_is_401_not_500(stack: Stack) -> None:
    payload = b'{"object": "whatsapp_business_account", "entry": []}'
    async with stack.http.post(f"{stack.url}/webhook", data=payload,
                               headers={SIGNATURE_HEADER: "sha256=\u00e9"}) as r:
        assert r.status == 401, (r.status, await r.text())


async def test_unicode_digit_path_id_is_400_not_500(stack: Stack) -> None:
    status, body, _ = await stack.call("GET", "/messages/%C2%B2", headers=USER)
    assert status == 400, (status, body)


async def test_unicode_digit_query_id_is_400_not_500(stack: Stack) -> None:
    status, body, _ = await stack.call("GET", "/bot/profile?account_id=%C2%B2", headers=USER)
    assert status == 400, (status, body)


@pytest.mark.parametrize(("name", "value"), [("SIDECAR_BACKSTOP_TIMEOUT", "inf"), ("DIRECT_TIMEOUT", "nan")])
def test_timeouts_that_are_not_finite_are_refused_by_settings(name: str, value: str) -> None:
    # inf made every outbound call fail with OverflowError (a 500 on every route); nan was accepted too.
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


async def test_media_response_carries_the_request_id(stack: Stack) -> None:
    ok, body, _ = await stack.call("GET", "/messages/3", headers=USER)
    assert ok == 200, body
    status, _, headers = await stack.call("GET", "/messages/3/media", headers={**USER, "X-Request-ID": "rid-media-1"})
    assert status == 200
    assert headers.get("X-Request-ID") == "rid-media-1", dict(headers)


async def test_a_delivery_stored_in_part_still_answers_what_it_stored_once(stack: Stack) -> None:
    # Two contacts in one delivery; the second message cannot be stored, so WhatsApp is told to deliver again.
    first, second = "15550007001", "15550007002"
    payload = message_webhook(text_message("from the first"), wa_id=first, phone_number_id=PHONE_ID)
    msgs = payload["entry"][0]["changes"][0]["value"]["messages"]
    msgs.append({**msgs[0], "from": second, "id": new_message_id(), "text": {"body": "from the second"}})
    # A 500 is not retried (a 503 would be: an inbound insert is idempotent, sent with an Idempotency-Key).
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:POST", kind="status", status=500,
                              ratio=0.5, count=1)  # the 2nd insert of this delivery
    status, body = await stack.signed_webhook(payload)
    assert (status, body["error"]) == (502, "external_api_unavailable")
    # The first contact's message was stored: its conversation is answered now (a redelivery finds a duplicate).
    await eventually(lambda: stack.sim.state.delivery_count(to=first) == 1, message="reply to the stored message")
    status, body = await stack.signed_webhook(payload)  # WhatsApp's redelivery
    assert (status, body["stored"], body["duplicate"]) == (200, 1, 1), body
    await eventually(lambda: stack.sim.state.delivery_count(to=second) == 1, message="reply to the redelivered one")
    await asyncio.sleep(0.5)
    assert stack.sim.state.delivery_count(to=first) == 1  # one reply, not two


async def test_a_contact_with_a_message_still_to_store_is_answered_once_on_the_redelivery(stack: Stack) -> None:
    # Both messages are one conversation; the second cannot be stored. Answering the first now would race the
    # redelivery's reply (both reading "first second"): the contact is answered once, when all is stored.
    who = "15550007301"
    payload = message_webhook(text_message("first"), wa_id=who, phone_number_id=PHONE_ID)
    msgs = payload["entry"][0]["changes"][0]["value"]["messages"]
    msgs.append({**msgs[0], "id": new_message_id(), "text": {"body": "second"}})
    # A 500 is not retried (a 503 would be: an inbound insert is idempotent, sent with an Idempotency-Key).
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:POST", kind="status", status=500,
                              ratio=0.5, count=1)  # the 2nd insert of this delivery
    assert (await stack.signed_webhook(payload))[0] == 502
    status, body = await stack.signed_webhook(payload)  # WhatsApp's redelivery, at once
    assert (status, body["stored"], body["duplicate"]) == (200, 1, 1), body
    await eventually(lambda: stack.sim.state.delivery_count(to=who) == 1, message="the reply")
    await asyncio.sleep(1.0)
    [reply] = [d.body for d in stack.sim.state.deliveries_to(who)]
    assert "first" in reply and "second" in reply  # one reply to both


async def test_an_inbound_insert_is_idempotent_so_the_sidecar_retries_a_503_and_the_message_is_answered_once(
    stack: Stack,
) -> None:
    who = "15550007401"
    stack.sim.state.add_fault(upstream="supabase", route="rest:messages:POST", kind="status", status=503, count=1)
    status, body = await stack.signed_webhook(
        message_webhook(text_message("retried insert"), wa_id=who, phone_number_id=PHONE_ID)
    )
    assert (status, body["stored"]) == (200, 1), body  # stored on the retry: no redelivery needed
    await eventually(lambda: stack.sim.state.delivery_count(to=who) == 1, message="the reply")
    assert len(stack.rows("messages", body="retried insert")) == 1
