"""Who is calling: the bearer token is checked with Supabase auth, permissions come from that user."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inbox_backend.egress import Call, Caller
from inbox_backend.errors import ApiError, Purpose
from inbox_backend.settings import Upstream

ADMIN_ROLE = "admin"


@dataclass(frozen=True)
class User:
    id: str
    email: str | None
    roles: frozenset[str]
    raw: Mapping[str, Any]

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def can_access(self, account: Mapping[str, Any]) -> bool:
        """An account's owner, or an admin."""
        return self.is_admin or account.get("owner_id") == self.id

    def check_access(self, account: Mapping[str, Any]) -> None:
        """Another account's row is answered as if it did not exist (the same 404 as database.Database's):
        a 403 would tell a caller trying ids which ones exist, and whose they are."""
        if not self.can_access(account):
            raise ApiError(404, "not_found", detail=f"user {self.id} may not act for account {account.get('id')}")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise ApiError(403, "forbidden", detail=f"user {self.id} lacks the admin permission")


def bearer_token(headers: Mapping[str, str]) -> str:
    scheme, _, token = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", headers={"WWW-Authenticate": "Bearer"}, detail="no bearer token")
    return token.strip()


def user_from(data: Any) -> User:
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise ApiError(502, "external_api_unavailable", detail="Supabase auth answered without a user")
    roles = (data.get("app_metadata") or {}).get("roles") or []
    return User(
        id=data["id"],
        email=data.get("email"),
        roles=frozenset(str(r) for r in roles if isinstance(r, str)),
        raw=data,
    )


async def fetch_user(caller: Caller, token: str) -> User:
    """GoTrue's `GET /auth/v1/user`: a 401/403 there is the caller's 401 (mapped in errors.from_response)."""
    call = Call(Upstream.SUPABASE, "GET", "/auth/v1/user", Purpose.AUTH, headers={"Authorization": f"Bearer {token}"})
    return user_from((await caller.send(call)).data)
