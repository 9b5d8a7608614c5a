"""The user API through the sidecar: auth, permissions, the bot, messages, media, accounts."""

from __future__ import annotations

import hashlib
import time

from inbox_backend.simulator import media_bytes
from tests.backend.harness import ADMIN, ALICE, USER, MakeStack, Stack

OTHERS_MESSAGE = 5  # in account 2, the admin's


async def test_auth_me_is_the_supabase_user(stack: Stack) -> None:
    status, body, _ = await stack.call("GET", "/auth/me", headers=USER)
    assert (status, body["email"], body["admin"]) == (200, "owner@example.com", False)
    status, body, _ = await stack.call("GET", "/auth/me", headers=ADMIN)
    assert (status, body["admin"], body["roles"]) == (200, True, ["admin", "user"])


async def test_users_act_only_for_their_own_accounts_admins_for_all(stack: Stack) -> None:
    # Each route, for another account's rows: test_authorization.py
    status, body, _ = await stack.call("GET", f"/messages/{OTHERS_MESSAGE}", headers=USER)
    assert (status, body["error"]) == (404, "not_found")
    status, body, _ = await stack.call("GET", f"/messages/{OTHERS_MESSAGE}", headers=ADMIN)
    assert status == 200 and body["account"]["id"] == 2
    status, body, _ = await stack.call("GET", "/bot/profile?account_id=2", headers=ADMIN)
    assert (status, body["account_id"]) == (200, 2)


async def test_bot_reply_drafts_and_with_send_also_sends_and_stores(stack: Stack) -> None:
    status, body, _ = await stack.call("POST", "/bot/reply", headers=USER, json_body={"conversation_id": 2})
    assert (status, body) == (200, {"conversation_id": 2, "reply": "Echo: Do you deliver?"})
    assert stack.sim.state.delivery_count() == 0
    status, body, _ = await stack.call("POST", "/bot/reply", headers=USER,
                                       json_body={"conversation_id": 2, "send": True})
    assert status == 201
    assert body["message"]["status"] == "sent" and body["message"]["body"] == "Echo: Do you deliver?"
    assert stack.sim.state.delivery_count(to="15550001002", body="Echo: Do you deliver?") == 1


async def test_post_message_sends_with_whatsapp_and_stores_it_with_its_whatsapp_id(stack: Stack) -> None:
    status, body, _ = await stack.call("POST", "/messages", headers=USER,
                                       json_body={"conversation_id": 1, "text": "Yes, until 6pm"})
    assert status == 201
    [delivery] = stack.sim.state.deliveries_to(ALICE)
    assert (delivery.body, delivery.phone_number_id) == ("Yes, until 6pm", "106540352242922")
    assert (body["wa_message_id"], body["direction"], body["status"]) == (delivery.message_id, "out", "sent")
    assert stack.rows("messages", id=body["id"])[0]["wa_message_id"] == delivery.message_id
    status, body, _ = await stack.call("POST", "/messages", headers=USER, json_body={"conversation_id": 1})
    assert (status, body["error"]) == (400, "invalid_request")


async def test_get_message_reads_conversation_and_account_concurrently(stack: Stack) -> None:
    for table in ("conversations", "accounts"):
        stack.sim.state.add_fault(upstream="supabase", route=f"rest:{table}:GET", kind="delay", delay=0.3, count=1)
    started = time.monotonic()
    status, body, _ = await stack.call("GET", "/messages/1", headers=USER)
    elapsed = time.monotonic() - started
    assert status == 200
    assert (body["message"]["id"], body["conversation"]["id"], body["account"]["id"]) == (1, 1, 1)
    assert stack.sim.state.fault_count("supabase", "delay") == 2
    # about the slowest read (0.3 s), far from the sum (0.6 s)
    assert 0.3 <= elapsed < 0.5, elapsed


async def test_media_is_streamed_through_the_whatsapp_media_upstream(stack: Stack) -> None:
    stack.sim.state.set_media("media-seed-1", 300_000, "image/jpeg")
    async with stack.http.get(f"{stack.url}/messages/3/media", headers=USER) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["Content-Length"] == "300000"
        body = await response.read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(media_bytes("media-seed-1", 300_000)).digest()
    # Graph's URL points at the media host; the backend fetched it through the sidecar's whatsapp_media
    assert stack.sim.state.request_count("whatsapp_media", "media_download") == 1
    assert stack.sidecar is not None
    sidecar_metrics = stack.sidecar.runtime.metrics.registry
    labels = {"upstream": "whatsapp_media", "route": "default", "method": "GET", "code": "200"}
    assert sidecar_metrics.get_sample_value("egress_requests_total", labels) == 1.0
    status, body, _ = await stack.call("GET", "/messages/1/media", headers=USER)
    assert (status, body["error"]) == (404, "no_media")


async def test_media_in_direct_mode_goes_to_the_url_graph_gave(make_stack: MakeStack) -> None:
    stack = await make_stack(mode="direct")
    async with stack.http.get(f"{stack.url}/messages/3/media", headers=USER) as response:
        assert response.status == 200
        assert len(await response.read()) == 64 * 1024
    assert stack.sim.state.request_count("whatsapp_media", "media_download") == 1


async def test_patch_account_updates_it_and_the_sidecar_drops_its_cached_reads(stack: Stack) -> None:
    for _ in range(2):
        assert (await stack.call("GET", "/bot/profile?account_id=1", headers=USER))[0] == 200
    reads = stack.sim.state.request_count("supabase", "rest:accounts:GET")
    assert reads == 1  # the second read of account 1 was the sidecar's cache
    status, body, _ = await stack.call("PATCH", "/accounts/1", headers=USER, json_body={"bot_enabled": False})
    assert (status, body["bot_enabled"], body["id"]) == (200, False, 1)
    assert stack.rows("accounts", id=1)[0]["bot_enabled"] is False
    assert (await stack.call("GET", "/bot/profile?account_id=1", headers=USER))[0] == 200
    assert stack.sim.state.request_count("supabase", "rest:accounts:GET") == reads + 1


async def test_patch_account_checks_fields_and_ownership(stack: Stack) -> None:
    status, body, _ = await stack.call("PATCH", "/accounts/1", headers=USER, json_body={"owner_id": "someone"})
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = await stack.call("PATCH", "/accounts/1", headers=USER, json_body={"bot_enabled": "no"})
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = await stack.call("PATCH", "/accounts/2", headers=USER, json_body={"name": "mine now"})
    assert (status, body["error"]) == (404, "not_found")
    assert stack.rows("accounts", id=2)[0]["name"] == "Globex Support"
