"""The inbox's tables in Supabase, through PostgREST: the few queries the backend makes, typed by intent.

Rows stay plain JSON dicts: they are passed back to the API's callers as they are.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping
from typing import Any

from inbox_backend.egress import Call, Caller
from inbox_backend.errors import ApiError, Purpose
from inbox_backend.settings import Upstream

Row = dict[str, Any]
REPRESENTATION = "return=representation"
IDEMPOTENCY_KEY = "Idempotency-Key"  # the sidecar's mark of a request safe to replay


# A filter value is sent as `eq.<value>`, URL-encoded by yarl (so `&` or `=` cannot start another parameter).
# PostgREST reads the rest of an `eq.` filter literally; still, only values with none of its reserved characters
# (, . : ( ) " and spaces) are ever built into one, so no value can read as a list, a logic tree or an operator.
_LITERAL = re.compile(r"[A-Za-z0-9_-]{1,64}")


def eq(value: int | str) -> str:
    text = str(value)
    if isinstance(value, bool) or not _LITERAL.fullmatch(text):
        raise ValueError(f"not a filter value: {text[:80]!r}")  # a bug of ours: callers validate ids first
    return f"eq.{text}"


class Database:
    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    # -- the operations -------------------------------------------------------------------------
    async def account(self, account_id: int) -> Row:
        return await self._get("accounts", account_id)

    async def account_by_phone(self, phone_number_id: str) -> Row | None:
        rows = await self._select("accounts", {"phone_number_id": eq(phone_number_id)}, limit=1)
        return rows[0] if rows else None

    async def update_account(self, account_id: int, changes: Mapping[str, Any]) -> Row:
        return await self._update("accounts", account_id, changes)

    async def bot_profile(self, account_id: int) -> Row | None:
        # Exactly this query every time, so the sidecar's cache (route bot_profile) can answer it.
        rows = await self._select("bot_profiles", {"account_id": eq(account_id)}, limit=1)
        return rows[0] if rows else None

    async def contact(self, contact_id: int) -> Row:
        return await self._get("contacts", contact_id)

    async def upsert_contact(self, account_id: int, wa_id: str, name: str | None) -> Row:
        row: Row = {"account_id": account_id, "wa_id": wa_id}
        if name:
            row["name"] = name
        rows = await self._insert("contacts", row, on_conflict="account_id,wa_id", resolution="merge-duplicates")
        return rows[0]

    async def conversation(self, conversation_id: int) -> Row:
        return await self._get("conversations", conversation_id)

    async def open_conversation(self, account_id: int, contact_id: int) -> Row:
        """The contact's conversation with the account, started if there is none. The table allows one per
        contact: when two first messages start it at once, the second insert is ignored and reads the first's."""
        where = {"account_id": eq(account_id), "contact_id": eq(contact_id)}
        rows = await self._select("conversations", where, order="updated_at.desc", limit=1)
        if rows:
            return rows[0]
        rows = await self._insert(
            "conversations", {"account_id": account_id, "contact_id": contact_id},
            on_conflict="account_id,contact_id", resolution="ignore-duplicates",
        )
        if rows:
            return rows[0]
        rows = await self._select("conversations", where, limit=1)
        if not rows:  # ignored as a duplicate, yet not there: a read that lags the write (a replica)
            detail = "supabase: the conversation a concurrent insert started is not readable yet"
            raise ApiError(502, "external_api_unavailable", detail=detail)
        return rows[0]

    async def message(self, message_id: int) -> Row:
        return await self._get("messages", message_id)

    async def insert_inbound(self, row: Row) -> Row | None:
        """Store an inbound message once per WhatsApp id: None when it was already stored (a redelivery)."""
        rows = await self._insert("messages", row, on_conflict="wa_message_id", resolution="ignore-duplicates")
        return rows[0] if rows else None

    async def insert_outgoing(self, row: Row) -> Row:
        """Store an outgoing message under an id of the backend's choosing (`client_ref`), so the insert is
        idempotent: sent twice (a retry, a hedge's twin) it stores one row, and the sidecar may replay it."""
        ref = uuid.uuid4().hex
        rows = await self._insert(
            "messages", {**row, "client_ref": ref}, on_conflict="client_ref", resolution="ignore-duplicates"
        )
        if rows:
            return rows[0]
        # Ignored as a duplicate: the other copy of this very insert landed first.
        rows = await self._select("messages", {"client_ref": eq(ref)}, limit=1)
        if not rows:
            raise ApiError(502, "external_api_unavailable", detail="supabase: a stored message is not readable yet")
        return rows[0]

    async def update_message(self, message_id: int, changes: Mapping[str, Any]) -> Row:
        """A message's status after its send. It sets values, and only the send's outcome writes them, so it is
        idempotent: sent with an Idempotency-Key, the sidecar may retry and hedge it."""
        return await self._update("messages", message_id, changes, idempotent=True)

    async def recent_messages(self, conversation_id: int, limit: int) -> list[Row]:
        """The last `limit` messages, oldest first.

        In the order the inbox stored them (ids grow), not by `created_at`: an inbound message's is
        WhatsApp's timestamp, whole seconds, and a reply's is the database's clock, so sorting on it can
        put a reply before the question it answers.
        """
        rows = await self._select("messages", {"conversation_id": eq(conversation_id)}, order="id.desc", limit=limit)
        return rows[::-1]

    # -- PostgREST verbs --------------------------------------------------------------------------
    async def _select(
        self, table: str, filters: Mapping[str, str], *, order: str | None = None, limit: int | None = None
    ) -> list[Row]:
        params = {"select": "*", **filters}
        if order:
            params["order"] = order
        if limit is not None:
            params["limit"] = str(limit)
        return _rows(await self._send("GET", table, params))

    async def _get(self, table: str, row_id: int) -> Row:
        rows = await self._select(table, {"id": eq(row_id)}, limit=1)
        if not rows:
            raise ApiError(404, "not_found", detail=f"{table} {row_id} does not exist")
        return rows[0]

    async def _insert(
        self, table: str, row: Row, *, on_conflict: str | None = None, resolution: str | None = None
    ) -> list[Row]:
        params = {"on_conflict": on_conflict} if on_conflict else {}
        prefer = f"{REPRESENTATION},resolution={resolution}" if resolution else REPRESENTATION
        # An insert that resolves duplicates on its conflict target can be sent twice and store one row: say so,
        # and the sidecar may retry (and hedge) it like a read instead of treating it as a one-shot write.
        key = None
        if resolution and on_conflict:
            key = _idempotency_key(table, {column: row.get(column) for column in on_conflict.split(",")})
        return _rows(await self._send("POST", table, params, body=row, prefer=prefer, idempotency_key=key))

    async def _update(self, table: str, row_id: int, changes: Mapping[str, Any], *, idempotent: bool = False) -> Row:
        key = _idempotency_key(table, {"id": row_id, **changes}) if idempotent else None
        params = {"id": eq(row_id)}
        rows = _rows(await self._send("PATCH", table, params, body=dict(changes), prefer=REPRESENTATION,
                                      idempotency_key=key))
        if not rows:
            raise ApiError(404, "not_found", detail=f"{table} {row_id} does not exist")
        return rows[0]

    async def _send(
        self, method: str, table: str, params: Mapping[str, str], *, body: Any = None, prefer: str | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        headers = {"Prefer": prefer} if prefer else {}
        if idempotency_key is not None:
            headers[IDEMPOTENCY_KEY] = idempotency_key
        call = Call(Upstream.SUPABASE, method, f"/rest/v1/{table}", Purpose.DATA, params, body, headers)
        return (await self.caller.send(call)).data


def _idempotency_key(table: str, identity_columns: Row) -> str:
    """`messages:<digest>`: what makes the write the same write (a row's identity on its conflict target; an
    update's row id and values), hashed (a header carries no phone number, and no byte a webhook chose)."""
    identity = json.dumps(identity_columns, default=str, sort_keys=True)
    return f"{table}:{hashlib.sha256(identity.encode()).hexdigest()[:32]}"


def _rows(data: Any) -> list[Row]:
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise ApiError(502, "external_api_unavailable", detail="PostgREST answered without a list of rows")
    return data
