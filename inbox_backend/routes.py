"""The inbox's user API: every route here acts for a user, so each starts with `current_user`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
from aiohttp import web

from inbox_backend.bot import Bot
from inbox_backend.conversations import send_text
from inbox_backend.errors import ApiError
from inbox_backend.inputs import current_user, invalid, json_object, path_id, positive_int, query_id, text_field
from inbox_backend.middleware import REQUEST_ID_HEADER
from inbox_backend.state import app_state, clients

log = logging.getLogger("inbox.routes")

ACCOUNT_FIELDS = {"name": str, "bot_enabled": bool}
MEDIA_CHUNK = 64 * 1024
# Copied from the media host's answer to ours; everything else (cookies, its caching rules) is its own.
MEDIA_HEADERS = ("Content-Type", "Content-Length", "Content-Encoding", "Content-Disposition")


async def me(request: web.Request) -> web.Response:
    user = await current_user(request)
    return web.json_response({"id": user.id, "email": user.email, "roles": sorted(user.roles), "admin": user.is_admin})


async def bot_profile(request: web.Request) -> web.Response:
    user = await current_user(request)
    account_id = query_id(request.query, "account_id")
    db = clients(request).db
    account, profile = await asyncio.gather(db.account(account_id), db.bot_profile(account_id))
    user.check_access(account)
    if profile is None:
        raise ApiError(404, "bot_profile_not_found")
    return web.json_response(profile)


async def bot_reply(request: web.Request) -> web.Response:
    """Gemini's reply for a conversation; with `"send": true` it is also sent and stored."""
    user = await current_user(request)
    data = await json_object(request)
    conversation_id = positive_int(data.get("conversation_id"), "conversation_id")
    send = data.get("send", False)
    if not isinstance(send, bool):
        raise invalid("send must be true or false")
    state = app_state(request)
    bot = Bot(clients(request), state.settings, state.metrics)
    ctx = await bot.load(conversation_id)
    user.check_access(ctx.account)
    text = await bot.generate(ctx)
    answer: dict[str, Any] = {"conversation_id": conversation_id, "reply": text}
    if send:
        answer["message"] = await bot.send(ctx, text)
    return web.json_response(answer, status=201 if send else 200)


async def post_message(request: web.Request) -> web.Response:
    user = await current_user(request)
    data = await json_object(request)
    conversation_id = positive_int(data.get("conversation_id"), "conversation_id")
    text = text_field(data, "text")
    c = clients(request)
    conversation = await c.db.conversation(conversation_id)
    account, contact = await asyncio.gather(
        c.db.account(conversation["account_id"]), c.db.contact(conversation["contact_id"])
    )
    user.check_access(account)
    message = await send_text(c.db, c.whatsapp, account, contact, conversation_id, text)
    return web.json_response(message, status=201)


async def get_message(request: web.Request) -> web.Response:
    user = await current_user(request)
    db = clients(request).db
    message = await db.message(path_id(request))
    # Both only need the message's ids: read at once, not one after the other.
    conversation, account = await asyncio.gather(
        db.conversation(message["conversation_id"]), db.account(message["account_id"])
    )
    user.check_access(account)
    return web.json_response({"message": message, "conversation": conversation, "account": account})


async def message_media(request: web.Request) -> web.StreamResponse:
    """Stream the media to the caller as it arrives: never more than a chunk of it in memory."""
    user = await current_user(request)
    c = clients(request)
    message = await c.db.message(path_id(request))
    user.check_access(await c.db.account(message["account_id"]))
    media_id = message.get("media_id")
    if not media_id:
        raise ApiError(404, "no_media", detail=f"message {message['id']} has no media")
    path = await c.whatsapp.media_path(str(media_id))
    async with c.whatsapp.download(path) as media:
        headers = {h: media.headers[h] for h in MEDIA_HEADERS if h in media.headers}
        headers[REQUEST_ID_HEADER] = c.caller.request_id  # sent with prepare(): the middleware would be too late
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        try:
            async for chunk in media.content.iter_chunked(MEDIA_CHUNK):
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Headers are gone: the only honest signal left is a connection closed short of Content-Length.
            log.warning("media %s broke mid-stream: %r (request_id=%s)", media_id, exc, c.caller.request_id)
            response.force_close()
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
    return response


async def patch_account(request: web.Request) -> web.Response:
    user = await current_user(request)
    account_id = path_id(request)
    data = await json_object(request)
    unknown = sorted(set(data) - set(ACCOUNT_FIELDS))
    if unknown or not data:
        raise invalid(f"only {', '.join(ACCOUNT_FIELDS)} can be changed")
    for name, kind in ACCOUNT_FIELDS.items():
        if name in data and not isinstance(data[name], kind):
            raise invalid(f"{name} must be a {kind.__name__}")
    db = clients(request).db
    user.check_access(await db.account(account_id))
    # A write through the sidecar: it drops its cached reads of accounts (invalidate_on_write).
    return web.json_response(await db.update_account(account_id, data))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/auth/me", me)
    app.router.add_get("/bot/profile", bot_profile)
    app.router.add_post("/bot/reply", bot_reply)
    app.router.add_post("/messages", post_message)
    app.router.add_get("/messages/{id}", get_message)
    app.router.add_get("/messages/{id}/media", message_media)
    app.router.add_patch("/accounts/{id}", patch_account)
