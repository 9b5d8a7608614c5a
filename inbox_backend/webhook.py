"""WhatsApp's webhook: subscription check (GET) and inbound messages (POST).

The POST answers 200 as soon as the inbound messages are stored: the bot reply runs afterwards in the
background, so a slow or broken Gemini or WhatsApp never delays the answer, loses the message, or
makes WhatsApp deliver it again. Only a failure to *store* is answered with an error (then WhatsApp
redelivers, which is what we want; the second delivery is stored once thanks to the message id).
"""

from __future__ import annotations

import json
import logging
import time

from aiohttp import web

from inbox_backend.bot import Bot
from inbox_backend.conversations import store_inbound
from inbox_backend.errors import ApiError
from inbox_backend.state import REQUEST_ID, app_state
from inbox_backend.webhook_payload import SIGNATURE_HEADER, parse_webhook, signature_valid

log = logging.getLogger("inbox.webhook")


async def verify(request: web.Request) -> web.Response:
    """Meta's subscription handshake: echo `hub.challenge` when the verify token matches."""
    query = request.query
    token = app_state(request).settings.whatsapp_verify_token
    if query.get("hub.mode") == "subscribe" and query.get("hub.verify_token") == token and "hub.challenge" in query:
        return web.Response(text=query["hub.challenge"])
    raise ApiError(403, "forbidden", detail="webhook verification failed")


async def receive(request: web.Request) -> web.Response:
    state = app_state(request)
    raw = await request.read()
    if not signature_valid(raw, request.headers.get(SIGNATURE_HEADER), state.settings.whatsapp_app_secret):
        raise ApiError(401, "invalid_signature", detail=f"{SIGNATURE_HEADER} does not match the body")
    try:
        payload = json.loads(raw)
    except ValueError:
        raise ApiError(400, "invalid_json") from None
    rid = request[REQUEST_ID]
    # WhatsApp gives up on a webhook after a while and delivers it again: storing must end well before that.
    clients = state.clients(rid, deadline=time.monotonic() + state.settings.webhook_budget)
    results = {"stored": 0, "duplicate": 0, "unknown_account": 0}
    replies: dict[int, str] = {}  # conversation id -> the message that asks for its reply
    try:
        for inbound in parse_webhook(payload):
            stored = await store_inbound(clients.db, inbound)
            if stored is None:
                log.warning("no account for phone_number_id %s (request_id=%s)", inbound.phone_number_id, rid)
                result = "unknown_account"
            elif stored.message is None:
                result = "duplicate"  # a redelivery: stored already, and its reply was handled then
            else:
                result = "stored"
                if stored.account.get("bot_enabled") and inbound.text:
                    replies[stored.conversation["id"]] = inbound.message_id
            results[result] += 1
            state.metrics.webhook_messages.labels(result).inc()
    finally:
        # One reply per conversation, once this delivery is stored: it answers every message it brought. Also
        # when a later message could not be stored: WhatsApp delivers them all again, and those stored now are
        # duplicates then, which get no reply of their own.
        for conversation_id, message_id in replies.items():
            bot = Bot(state.clients(rid), state.settings, state.metrics)  # after the answer: not under its deadline
            state.spawn(bot.auto_reply(conversation_id), name=f"bot-reply-{message_id}")
    return web.json_response(results)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/webhook", verify)
    app.router.add_post("/webhook", receive)
