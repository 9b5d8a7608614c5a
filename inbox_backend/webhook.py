"""WhatsApp's webhook: subscription check (GET) and inbound messages (POST).

The POST answers 200 as soon as the inbound messages are stored: the bot reply runs afterwards in the
background, so a slow or broken Gemini or WhatsApp never delays the answer, loses the message, or
makes WhatsApp deliver it again. Only a failure to *store* is answered with an error (then WhatsApp
redelivers, which is what we want; the second delivery is stored once thanks to the message id).
"""

from __future__ import annotations

import logging

from aiohttp import web

from inbox_backend.bot import Bot
from inbox_backend.conversations import store_inbound
from inbox_backend.errors import ApiError
from inbox_backend.inputs import parsed_json, read_body
from inbox_backend.state import REQUEST_ID, app_state
from inbox_backend.webhook_payload import SIGNATURE_HEADER, Inbound, parse_webhook, signature_valid

log = logging.getLogger("inbox.webhook")


async def verify(request: web.Request) -> web.Response:
    """Meta's subscription handshake: echo `hub.challenge` when the verify token matches."""
    query = request.query
    token = app_state(request).settings.whatsapp_verify_token
    if query.get("hub.mode") == "subscribe" and query.get("hub.verify_token") == token and "hub.challenge" in query:
        return web.Response(text=query["hub.challenge"])
    raise ApiError(403, "forbidden", detail="webhook verification failed")


Contact = tuple[str, str]  # (the business's phone_number_id, the sender's wa_id): one conversation


def _sender(inbound: Inbound) -> Contact:
    return inbound.phone_number_id, inbound.wa_id


async def receive(request: web.Request) -> web.Response:
    state = app_state(request)
    raw = await read_body(request)
    # Checked over these bytes, and these same bytes are parsed: nothing unsigned is ever read.
    if not signature_valid(raw, request.headers.get(SIGNATURE_HEADER), state.settings.whatsapp_app_secret):
        raise ApiError(401, "invalid_signature", detail=f"{SIGNATURE_HEADER} does not match the body")
    payload = parsed_json(raw)
    rid = request[REQUEST_ID]
    clients = state.clients(rid)
    inbounds = list(parse_webhook(payload))
    results = {"stored": 0, "duplicate": 0, "unknown_account": 0}
    replies: dict[int, tuple[str, Contact]] = {}  # conversation id -> (the message asking for a reply, its sender)
    done = 0
    try:
        for inbound in inbounds:
            stored = await store_inbound(clients.db, inbound)
            if stored is None:
                log.warning("no account for phone_number_id %s (request_id=%s)", inbound.phone_number_id, rid)
                result = "unknown_account"
            elif stored.message is None:
                result = "duplicate"  # a redelivery: stored already, and its reply was handled then
            else:
                result = "stored"
                if stored.account.get("bot_enabled") and inbound.text:
                    replies[stored.conversation["id"]] = (inbound.message_id, _sender(inbound))
            results[result] += 1
            state.metrics.webhook_messages.labels(result).inc()
            done += 1
    finally:
        # One reply per conversation, once this delivery is stored: it answers every message it brought. When a
        # message could not be stored, WhatsApp delivers them all again: a contact with a message still to store
        # is answered then (the reply reads the whole conversation), every other one now, as on the redelivery
        # its stored messages are duplicates, which get no reply of their own.
        unstored = {_sender(inbound) for inbound in inbounds[done:]}
        for conversation_id, (message_id, sender) in replies.items():
            if sender not in unstored:
                bot = Bot(clients, state.settings, state.metrics)
                state.spawn(bot.auto_reply(conversation_id), name=f"bot-reply-{message_id}")
    return web.json_response(results)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/webhook", verify)
    app.router.add_post("/webhook", receive)
