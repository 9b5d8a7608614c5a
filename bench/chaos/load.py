"""The open-loop load generator: each planned request is sent at its intended time, whether or not the earlier
ones have been answered, and its latency is counted from that intended time (a slow backend cannot slow the
arrivals down and hide its queue, as a closed loop would)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench.chaos.scenario import MEDIA_MESSAGE_ID, USER_CONVERSATION, USER_MESSAGE_IDS, Planned
from inbox_backend.webhook_payload import SIGNATURE_HEADER, message_webhook, signature, text_message

USER = {"Authorization": "Bearer user-token"}  # the seed's user (owns accounts 1 and 3)
PHONE_ID = "106540352242922"  # account 1: bot on
APP_SECRET = "sim-app-secret"  # the local default the backend checks webhooks with
CLIENT_TIMEOUT = 90.0  # beyond any mode's longest chain (legacy: a 45 s Gemini timeout, then the send)


@dataclass
class Result:
    index: int
    endpoint: str
    at: float  # intended send time, seconds after the start
    latency: float  # seconds from the intended send time to the answer (or the client's failure)
    status: int  # 0: no answer (connection failed or the client timed out)
    code: str  # the backend's error code ("" on success)
    text: str = ""  # post_message / webhook: the text sent
    wa_id: str = ""  # webhook: the (unique) sender, who gets the bot's reply
    message_id: str = ""  # webhook: the WhatsApp message id


def texts(run: str, planned: Planned) -> tuple[str, str, str]:
    """(text, sender, WhatsApp message id) of a request, unique per run so deliveries can be counted."""
    return (f"chaos {run} #{planned.index}", f"1999{planned.index:07d}", f"wamid.CHAOS.{run}.{planned.index}")


async def _send(http: aiohttp.ClientSession, base: str, run: str, planned: Planned) -> Result:
    text, wa_id, message_id = texts(run, planned)
    kind = planned.endpoint
    result = Result(planned.index, kind, planned.at, 0.0, 0, "")
    method, path, headers, body = "GET", "", dict(USER), b""
    if kind == "webhook":
        payload = message_webhook(text_message(text, message_id), wa_id=wa_id, phone_number_id=PHONE_ID)
        body = json.dumps(payload).encode()
        method, path = "POST", "/webhook"
        headers = {SIGNATURE_HEADER: signature(body, APP_SECRET)}
        result.text, result.wa_id, result.message_id = text, wa_id, message_id
    elif kind == "post_message":
        method, path = "POST", "/messages"
        body = json.dumps({"conversation_id": USER_CONVERSATION, "text": text}).encode()
        result.text = text
    elif kind == "bot_reply":
        # send: false, so the generated text (which echoes the conversation) is never a second delivery of a text.
        method, path = "POST", "/bot/reply"
        body = json.dumps({"conversation_id": USER_CONVERSATION, "send": False}).encode()
    elif kind == "bot_profile":
        path = "/bot/profile?account_id=1"
    elif kind == "get_message":
        path = f"/messages/{USER_MESSAGE_IDS[planned.index % len(USER_MESSAGE_IDS)]}"
    else:
        path = f"/messages/{MEDIA_MESSAGE_ID}/media"
    if body:
        headers["Content-Type"] = "application/json"
    try:
        async with http.request(method, base + path, data=body or None, headers=headers) as response:
            raw = await response.read()
            result.status = response.status
            if response.status >= 300 and response.content_type == "application/json":
                error: Any = json.loads(raw)
                result.code = str(error.get("error", "")) if isinstance(error, dict) else ""
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        result.code = result.code or type(exc).__name__
    return result


async def drive(base: str, run: str, plan: list[Planned], started: float) -> list[Result]:
    """Send `plan` against `base`, each request at `started + at` (time.monotonic)."""
    # No connection limit: a client-side pool queue would delay sends past their intended times.
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one(planned: Planned) -> Result:
            result = await _send(http, base, run, planned)
            result.latency = time.monotonic() - (started + planned.at)
            return result

        tasks: list[asyncio.Task[Result]] = []
        for planned in plan:
            delay = started + planned.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(planned)))
        return list(await asyncio.gather(*tasks))
