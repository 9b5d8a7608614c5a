"""Storing what comes in and sending what goes out: the two writes every path of the inbox shares."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from inbox_backend.database import Database, Row
from inbox_backend.errors import DELIVERY_UNKNOWN, RATE_LIMITED, RETRY_AFTER, ApiError
from inbox_backend.webhook_payload import Inbound
from inbox_backend.whatsapp import WhatsApp

log = logging.getLogger("inbox.conversations")


@dataclass(frozen=True)
class Stored:
    account: Row
    conversation: Row
    message: Row | None  # None: a redelivery of a message already stored


async def store_inbound(db: Database, inbound: Inbound) -> Stored | None:
    """Store one inbound message (once per WhatsApp id). None when no account has that phone number."""
    account = await db.account_by_phone(inbound.phone_number_id)
    if account is None:
        return None
    contact = await db.upsert_contact(account["id"], inbound.wa_id, inbound.contact_name)
    conversation = await db.open_conversation(account["id"], contact["id"])
    message = await db.insert_inbound(
        {
            "conversation_id": conversation["id"],
            "account_id": account["id"],
            "direction": "in",
            "body": inbound.text,
            "wa_message_id": inbound.message_id,
            "media_id": inbound.media_id,
            "created_at": inbound.created_at(),
            "status": "received",
        }
    )
    return Stored(account, conversation, message)


async def send_text(
    db: Database, whatsapp: WhatsApp, account: Row, contact: Row, conversation_id: int, text: str,
    rate_limited_retry_within: float = 0.0,
) -> Row:
    """Record the message, send it, then record its WhatsApp id.

    Recorded first so that nothing is ever sent that the inbox does not show. A send that fails marks
    the row `failed`. One whose outcome is unknown (a reset or timeout after the request left: WhatsApp may have
    delivered it, and the sidecar never retries it, so at most once) marks it `unknown` and is answered
    502 `delivery_unknown`: the caller must not take it for failed and send it again.

    A send the sidecar refused `rate_limited` never left it, so sending it again cannot make a duplicate: when its
    `Retry-After` fits in `rate_limited_retry_within` seconds (a background bot reply's remaining budget; a user's
    request, waiting for the answer, gives none), it is tried once more after that wait, for the same row.
    """
    row = await db.insert_outgoing(
        {
            "conversation_id": conversation_id,
            "account_id": account["id"],
            "direction": "out",
            "body": text,
            "status": "sending",
        }
    )
    try:
        try:
            wa_message_id = await whatsapp.send_text(account["phone_number_id"], contact["wa_id"], text)
        except ApiError as exc:
            wait = _rate_limited_wait(exc)
            if wait is None or wait > rate_limited_retry_within:
                raise
            log.info("message %s: rate limited, sending it again in %.0fs", row["id"], wait)
            await asyncio.sleep(wait)
            wa_message_id = await whatsapp.send_text(account["phone_number_id"], contact["wa_id"], text)
    except ApiError as exc:
        await _record(db, row, {"status": "unknown" if exc.code == DELIVERY_UNKNOWN else "failed"})
        raise
    return await _record(db, row, {"wa_message_id": wa_message_id, "status": "sent"})


def _rate_limited_wait(error: ApiError) -> float | None:
    """The wait before a `rate_limited` send may go again (it never left the sidecar), or None for any other
    failure."""
    if error.reason != RATE_LIMITED or error.delivery != "none":
        return None
    advised = error.headers.get(RETRY_AFTER, "")
    return float(advised) if advised.isascii() and advised.isdigit() else 1.0


async def _record(db: Database, row: Row, changes: dict[str, Any]) -> Row:
    """Best effort: the send already happened (or failed), the caller must hear about that, not this."""
    try:
        return await db.update_message(row["id"], changes)
    except ApiError as exc:
        log.error("message %s: could not record %s: %s %s", row["id"], changes, exc.code, exc.detail)
        return {**row, **changes}
