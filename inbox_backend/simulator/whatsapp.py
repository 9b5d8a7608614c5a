"""Simulated WhatsApp Cloud API: Graph endpoints (send message, media info) and the media host."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from .config import WHATSAPP, WHATSAPP_MEDIA
from .errors import graph_error
from .media import media_chunks, media_sha256
from .routing import STATE_KEY, Reply, endpoint, json_reply, not_found_route, read_json
from .state import Delivery, SimulatorState

_VERSION: Final = r"{version:v\d+\.\d+}"
_BODY_TYPES: Final = (
    "text",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "template",
    "interactive",
    "reaction",
    "location",
    "contacts",
)


def _check_token(request: web.Request, state: SimulatorState) -> Reply | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return json_reply(
            graph_error(
                "An active access token must be used to query information about the current user.", 2500
            ),
            401,
        )
    if token.strip() != state.config.whatsapp_token:
        return json_reply(graph_error("Invalid OAuth access token - Cannot parse access token", 190), 401)
    return None


def _invalid(message: str, code: int = 100, status: int = 400) -> Reply:
    return json_reply(graph_error(message, code), status)


def _body_text(kind: str, payload: dict[str, Any]) -> str | None:
    content = payload.get(kind)
    if not isinstance(content, dict):
        return None
    for key in ("body", "caption", "name", "emoji"):
        value = content.get(key)
        if isinstance(value, str):
            return value
    return None


async def send_message(request: web.Request, state: SimulatorState) -> Reply:
    error = _check_token(request, state)
    if error is not None:
        return error
    phone_number_id = request.match_info["phone_number_id"]
    if not phone_number_id.isdigit():
        return _invalid(
            f"Unsupported post request. Object with ID '{phone_number_id}' does not exist, cannot be loaded "
            "due to missing permissions, or does not support this operation.",
        )
    ok, payload = await read_json(request)
    if not ok or not isinstance(payload, dict):
        return _invalid("(#100) The parameter messaging_product is required.")
    if payload.get("messaging_product") != "whatsapp":
        return _invalid("(#100) The parameter messaging_product is required.")
    if payload.get("status") == "read" and isinstance(payload.get("message_id"), str):
        return json_reply({"success": True})
    to = payload.get("to")
    if not isinstance(to, str) or not to.strip():
        return _invalid("(#100) The parameter to is required.")
    kind = payload.get("type", "text")
    if kind not in _BODY_TYPES:
        return _invalid(
            f'(#100) Param type must be one of {{{", ".join(_BODY_TYPES).upper()}}} - got "{kind}".'
        )
    if kind == "text":
        text = payload.get("text")
        if not isinstance(text, dict) or not isinstance(text.get("body"), str) or not text["body"]:
            return _invalid("(#100) The parameter text['body'] is required.")
    wa_id = re.sub(r"\D", "", to)
    if not wa_id:
        return _invalid("(#131030) Recipient phone number not in allowed list", 131030)
    message_id = state.next_wamid()
    state.record_delivery(
        Delivery(
            message_id=message_id,
            phone_number_id=phone_number_id,
            to=to,
            type=str(kind),
            body=_body_text(str(kind), payload),
            payload=payload,
        )
    )
    response: dict[str, Any] = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": wa_id}],
        "messages": [{"id": message_id}],
    }
    if kind == "template":
        response["messages"][0]["message_status"] = "accepted"
    return json_reply(response)


async def _sha256(state: SimulatorState, media_id: str, size: int) -> str:
    digest = state.cached_sha256(media_id, size)
    if digest is None:
        digest = await asyncio.to_thread(media_sha256, media_id, size)
        state.cache_sha256(media_id, size, digest)
    return digest


def _media_token(media_id: str, state: SimulatorState) -> str:
    return hashlib.sha256(f"{state.config.whatsapp_token}:{media_id}".encode()).hexdigest()[:32]


async def media_info(request: web.Request, state: SimulatorState) -> Reply:
    error = _check_token(request, state)
    if error is not None:
        return error
    media_id = request.match_info["media_id"]
    info = state.media_info(media_id)
    url = f"{state.media_base_url()}/media/{quote(media_id, safe='')}?token={_media_token(media_id, state)}"
    return json_reply(
        {
            "url": url,
            "mime_type": info.mime_type,
            "sha256": await _sha256(state, media_id, info.size),
            "file_size": info.size,
            "id": media_id,
            "messaging_product": "whatsapp",
        }
    )


async def media_download(request: web.Request, state: SimulatorState) -> Reply:
    error = _check_token(request, state)
    if error is not None:
        return error
    media_id = request.match_info["media_id"]
    info = state.media_info(media_id)
    chunk_size = state.config.media_chunk_size

    async def body() -> AsyncIterator[bytes]:
        for chunk in media_chunks(media_id, info.size, chunk_size):
            yield chunk

    headers = {
        "Content-Disposition": f"attachment; filename={media_id}",
        "Cache-Control": "private, no-cache, no-store, must-revalidate",
    }
    return Reply(200, body(), info.mime_type, headers, content_length=info.size)


def _graph_not_found(request: web.Request) -> Any:
    return graph_error(f"Unknown path components: {request.path}", 2500)


def create_graph_app(state: SimulatorState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_post(
        f"/{_VERSION}/{{phone_number_id}}/messages", endpoint(WHATSAPP, "send_message", send_message)
    )
    app.router.add_get(
        f"/{_VERSION}/{{media_id}}", endpoint(WHATSAPP, "media_info", media_info), allow_head=False
    )
    app.router.add_route("*", "/{tail:.*}", not_found_route(WHATSAPP, _graph_not_found, 400))
    return app


def create_media_app(state: SimulatorState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_get(
        "/media/{media_id}", endpoint(WHATSAPP_MEDIA, "media_download", media_download), allow_head=False
    )
    app.router.add_route("*", "/{tail:.*}", not_found_route(WHATSAPP_MEDIA, _graph_not_found))
    return app
