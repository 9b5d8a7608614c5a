"""Table schemas, sample rows and GoTrue users the simulator starts with (and ``reset`` restores)."""

from __future__ import annotations

import copy
from typing import Any, Final

from .postgrest import Column, Database, ForeignKey, Row, TableSchema, now_iso

USER_ID: Final = "8d0fd2b3-9ca9-4a52-9c5c-2f4b3a7b0001"
ADMIN_ID: Final = "8d0fd2b3-9ca9-4a52-9c5c-2f4b3a7b0002"
USER_TOKEN: Final = "user-token"
ADMIN_TOKEN: Final = "admin-token"
USER_EMAIL: Final = "owner@example.com"
ADMIN_EMAIL: Final = "admin@example.com"
#: Password of every sample user (for ``POST /auth/v1/token?grant_type=password``).
SAMPLE_PASSWORD: Final = "sim-password"
DEFAULT_MODEL: Final = "gemini-2.0-flash"


def _id(name: str) -> Column:
    return Column(name, "int", nullable=False)


SCHEMAS: Final[tuple[TableSchema, ...]] = (
    TableSchema(
        "accounts",
        (
            _id("id"),
            Column("name", "text", nullable=False),
            Column("phone_number_id", "text", nullable=False),
            Column("bot_enabled", "bool", nullable=False, default=lambda: True),
            Column("owner_id", "uuid"),
        ),
        unique=(("id",), ("phone_number_id",)),
    ),
    TableSchema(
        "bot_profiles",
        (
            _id("id"),
            _id("account_id"),
            Column("system_prompt", "text", nullable=False, default=lambda: ""),
            Column("model", "text", nullable=False, default=lambda: DEFAULT_MODEL),
            Column("enabled", "bool", nullable=False, default=lambda: True),
        ),
        unique=(("id",), ("account_id",)),
        foreign_keys=(ForeignKey("account_id", "accounts"),),
    ),
    TableSchema(
        "contacts",
        (
            _id("id"),
            _id("account_id"),
            Column("wa_id", "text", nullable=False),
            Column("name", "text"),
        ),
        unique=(("id",), ("account_id", "wa_id")),
        foreign_keys=(ForeignKey("account_id", "accounts"),),
    ),
    TableSchema(
        "conversations",
        (
            _id("id"),
            _id("account_id"),
            _id("contact_id"),
            Column("updated_at", "timestamptz", nullable=False, default=now_iso),
        ),
        # One conversation per contact and account: two first messages arriving at once must not start two.
        unique=(("id",), ("account_id", "contact_id")),
        foreign_keys=(ForeignKey("account_id", "accounts"), ForeignKey("contact_id", "contacts")),
    ),
    TableSchema(
        "messages",
        (
            _id("id"),
            _id("conversation_id"),
            _id("account_id"),
            Column("direction", "text", nullable=False, choices=("in", "out")),
            Column("body", "text"),
            Column("wa_message_id", "text"),
            Column("media_id", "text"),
            Column("created_at", "timestamptz", nullable=False, default=now_iso),
            Column("status", "text"),
            Column("client_ref", "text"),  # an outgoing message's id chosen by the backend: its insert is idempotent
        ),
        unique=(("id",), ("wa_message_id",), ("client_ref",)),
        foreign_keys=(ForeignKey("conversation_id", "conversations"), ForeignKey("account_id", "accounts")),
    ),
)

_ACCOUNTS: Final[list[Row]] = [
    {
        "id": 1,
        "name": "Acme Bakery",
        "phone_number_id": "106540352242922",
        "bot_enabled": True,
        "owner_id": USER_ID,
    },
    {
        "id": 2,
        "name": "Globex Support",
        "phone_number_id": "106540352242923",
        "bot_enabled": True,
        "owner_id": ADMIN_ID,
    },
    {
        "id": 3,
        "name": "Initech (bot off)",
        "phone_number_id": "106540352242924",
        "bot_enabled": False,
        "owner_id": USER_ID,
    },
]

_BOT_PROFILES: Final[list[Row]] = [
    {
        "id": 1,
        "account_id": 1,
        "model": DEFAULT_MODEL,
        "enabled": True,
        "system_prompt": "You are the friendly assistant of Acme Bakery. Answer briefly.",
    },
    {
        "id": 2,
        "account_id": 2,
        "model": DEFAULT_MODEL,
        "enabled": True,
        "system_prompt": "You are Globex's support bot. Be precise and polite.",
    },
    {
        "id": 3,
        "account_id": 3,
        "model": DEFAULT_MODEL,
        "enabled": False,
        "system_prompt": "You are Initech's assistant.",
    },
]

_CONTACTS: Final[list[Row]] = [
    {"id": 1, "account_id": 1, "wa_id": "15550001001", "name": "Alice"},
    {"id": 2, "account_id": 1, "wa_id": "15550001002", "name": "Bob"},
    {"id": 3, "account_id": 2, "wa_id": "15550002001", "name": "Carol"},
    {"id": 4, "account_id": 3, "wa_id": "15550003001", "name": "Dave"},
]

_CONVERSATIONS: Final[list[Row]] = [
    {"id": 1, "account_id": 1, "contact_id": 1, "updated_at": "2024-05-01T09:02:00+00:00"},
    {"id": 2, "account_id": 1, "contact_id": 2, "updated_at": "2024-05-01T10:00:00+00:00"},
    {"id": 3, "account_id": 2, "contact_id": 3, "updated_at": "2024-05-02T08:31:00+00:00"},
    {"id": 4, "account_id": 3, "contact_id": 4, "updated_at": "2024-05-03T12:00:00+00:00"},
]


def _msg(
    mid: int, conv: int, account: int, direction: str, body: str | None, at: str, media_id: str | None = None
) -> Row:
    return {
        "id": mid,
        "conversation_id": conv,
        "account_id": account,
        "direction": direction,
        "body": body,
        "wa_message_id": f"wamid.SEED{mid:06d}",
        "media_id": media_id,
        "created_at": at,
        "status": "received" if direction == "in" else "delivered",
    }


_MESSAGES: Final[list[Row]] = [
    _msg(1, 1, 1, "in", "Hi, are you open today?", "2024-05-01T09:00:00+00:00"),
    _msg(2, 1, 1, "out", "Echo: Hi, are you open today?", "2024-05-01T09:00:05+00:00"),
    _msg(3, 1, 1, "in", "Here is the cake I want", "2024-05-01T09:02:00+00:00", media_id="media-seed-1"),
    _msg(4, 2, 1, "in", "Do you deliver?", "2024-05-01T10:00:00+00:00"),
    _msg(5, 3, 2, "in", "My order has not arrived", "2024-05-02T08:30:00+00:00"),
    _msg(6, 3, 2, "out", "Echo: My order has not arrived", "2024-05-02T08:31:00+00:00"),
    _msg(7, 4, 3, "in", "Hello?", "2024-05-03T12:00:00+00:00"),
]


def seed_database() -> Database:
    """A fresh database with the sample rows (accounts 1 and 3 belong to the user, 2 to the admin)."""
    data = {
        "accounts": _ACCOUNTS,
        "bot_profiles": _BOT_PROFILES,
        "contacts": _CONTACTS,
        "conversations": _CONVERSATIONS,
        "messages": _MESSAGES,
    }
    return Database(SCHEMAS, copy.deepcopy(data))


def _user(uid: str, email: str, roles: list[str], name: str) -> dict[str, Any]:
    ts = "2024-01-01T00:00:00.000000Z"
    return {
        "id": uid,
        "aud": "authenticated",
        "role": "authenticated",
        "email": email,
        "email_confirmed_at": ts,
        "phone": "",
        "confirmed_at": ts,
        "last_sign_in_at": ts,
        "app_metadata": {"provider": "email", "providers": ["email"], "roles": roles},
        "user_metadata": {"name": name, "email": email, "email_verified": True},
        "identities": [],
        "created_at": ts,
        "updated_at": ts,
        "is_anonymous": False,
    }


def seed_users() -> dict[str, dict[str, Any]]:
    """GoTrue users keyed by their access token."""
    return {
        USER_TOKEN: _user(USER_ID, USER_EMAIL, ["user"], "Olivia Owner"),
        ADMIN_TOKEN: _user(ADMIN_ID, ADMIN_EMAIL, ["admin", "user"], "Adam Admin"),
    }
