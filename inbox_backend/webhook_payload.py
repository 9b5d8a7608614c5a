"""WhatsApp Cloud API webhook payloads: the signature, parsing inbound messages, and building test ones.

Shape (https://developers.facebook.com/docs/whatsapp/cloud-api/webhooks/payload-examples):
`{"object": "whatsapp_business_account", "entry": [{"id", "changes": [{"field": "messages", "value":
{"messaging_product", "metadata": {"display_phone_number", "phone_number_id"}, "contacts": [{"profile":
{"name"}, "wa_id"}], "messages": [{"from", "id", "timestamp", "type", "text": {"body"}}]}}]}]}`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

SIGNATURE_HEADER = "X-Hub-Signature-256"
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
# The ids this inbox stores or puts in a URL, in the shapes WhatsApp sends; a message with any other is skipped.
# Phone number ids and wa_ids are digits; message ids are "wamid." and base64. A media id goes into a Graph
# path: no dot (no "..") and no slash.
_DIGITS = re.compile(r"[0-9]{1,32}")
_MESSAGE_ID = re.compile(r"[A-Za-z0-9._=+/-]{1,256}")
MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01: a later one is no WhatsApp timestamp


def signature(body: bytes, app_secret: str) -> str:
    """The `X-Hub-Signature-256` value Meta sends: HMAC-SHA256 of the raw body with the app secret."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, header: str | None, app_secret: str) -> bool:
    # As bytes: compare_digest refuses str that is not ASCII, and anyone can send such a header.
    supplied = header.strip().lower().encode("utf-8", "surrogateescape") if header is not None else None
    return supplied is not None and hmac.compare_digest(supplied, signature(body, app_secret).encode())


@dataclass(frozen=True)
class Inbound:
    """One inbound message, as the inbox stores it."""

    phone_number_id: str
    wa_id: str
    contact_name: str | None
    message_id: str
    timestamp: int
    type: str
    text: str | None
    media_id: str | None

    def created_at(self) -> str:
        return datetime.fromtimestamp(self.timestamp, UTC).isoformat()


def parse_webhook(payload: Any) -> list[Inbound]:
    """Inbound messages of a webhook call; status updates and unknown fields are skipped."""
    found: list[Inbound] = []
    for entry in _dicts(payload.get("entry") if isinstance(payload, dict) else None):
        for change in _dicts(entry.get("changes")):
            value = change.get("value")
            if change.get("field") == "messages" and isinstance(value, dict):
                found.extend(_messages(value))
    return found


def _messages(value: dict[str, Any]) -> list[Inbound]:
    phone_number_id = _id(_dict(value.get("metadata")).get("phone_number_id"), _DIGITS)
    names = {c.get("wa_id"): _str(_dict(c.get("profile")).get("name")) for c in _dicts(value.get("contacts"))}
    found = []
    for message in _dicts(value.get("messages")):
        kind = _str(message.get("type")) or ""
        sender, message_id = _id(message.get("from"), _DIGITS), _id(message.get("id"), _MESSAGE_ID)
        if phone_number_id is None or sender is None or message_id is None:
            continue  # not a message this inbox can store or answer: skipped, like a status update
        text, media_id = _content(kind, message)
        found.append(
            Inbound(
                phone_number_id=phone_number_id,
                wa_id=sender,
                contact_name=names.get(sender),
                message_id=message_id,
                timestamp=_timestamp(message.get("timestamp")),
                type=kind,
                text=text,
                media_id=media_id,
            )
        )
    return found


def _content(kind: str, message: dict[str, Any]) -> tuple[str | None, str | None]:
    body = message.get(kind)
    if not isinstance(body, dict):
        return None, None
    if kind == "text":
        return _str(body.get("body")), None
    if kind in MEDIA_TYPES:
        return _str(body.get("caption")), _id(body.get("id"), MEDIA_ID)
    return None, None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _id(value: Any, shape: re.Pattern[str]) -> str | None:
    return value if isinstance(value, str) and shape.fullmatch(value) else None


def _timestamp(value: Any) -> int:
    """WhatsApp's epoch seconds (a digit string). Anything else, or out of range, is the time of receipt:
    a date is not worth refusing a message for, and `1e400` or `10**20` must not reach `datetime`."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TIMESTAMP:
        return value
    return int(time.time())


# -- building payloads (the `send_webhook` helper and the tests) ------------------------------------
def message_webhook(
    message: dict[str, Any],
    *,
    wa_id: str,
    phone_number_id: str,
    name: str = "Alice",
    display_phone_number: str = "15550009999",
) -> dict[str, Any]:
    """A webhook call carrying one inbound message (`message` holds its type-specific fields)."""
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "102290129340398",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {
                                "display_phone_number": display_phone_number,
                                "phone_number_id": phone_number_id,
                            },
                            "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
                            "messages": [
                                {"from": wa_id, "id": new_message_id(), "timestamp": str(int(time.time())), **message}
                            ],
                        },
                    }
                ],
            }
        ],
    }


def text_message(text: str, message_id: str | None = None) -> dict[str, Any]:
    return {"type": "text", "text": {"body": text}, **({"id": message_id} if message_id else {})}


def media_message(media_id: str, kind: str = "image", caption: str | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"id": media_id, "mime_type": "image/jpeg"}
    if caption:
        media["caption"] = caption
    return {"type": kind, kind: media}


def new_message_id() -> str:
    return "wamid.HBgL" + secrets.token_hex(12).upper()
