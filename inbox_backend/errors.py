"""The backend's API errors, and how a failed upstream call becomes one.

A failed call is either the sidecar's own answer (it sets `X-Egress-Error`), an upstream's error
status passed through, or (direct mode, or the sidecar unreachable) an aiohttp exception. All three
land here, so the mapping is one table:

    sidecar upstream_timeout / our timeout        504 external_api_timeout (database_timeout for data calls)
    circuit_open, overloaded, throttled,
      rate_limited, shutting_down,
      upstream_connect_error,
      can't connect (direct or to the sidecar)    503 <upstream>_unavailable (+ Retry-After passed on)
    upstream_reset, connection lost, upstream 5xx 502 external_api_unavailable
    upstream 429                                  503 <upstream>_unavailable (+ Retry-After)
    upstream 401/403 on the user-token check      401 unauthorized
    other upstream 4xx                            400 external_api_error

Whether the request may have been processed travels with the error (`ApiError.delivery`): the sidecar says so in
`X-Egress-Delivery: unknown` (a reset or timeout after the request was sent); in direct mode any failure but a
failed connect is taken as unknown. A WhatsApp send with an unknown outcome is `502 delivery_unknown`, never
"failed" (see `conversations.send_text`). The sidecar's reason travels too (`ApiError.reason`): a send refused
`rate_limited` was provably never sent, and a bot reply may try it once more (see `conversations.send_text`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from enum import Enum

import aiohttp

from inbox_backend.settings import Upstream

EGRESS_ERROR = "X-Egress-Error"
EGRESS_DELIVERY = "X-Egress-Delivery"
DELIVERY_UNKNOWN = "delivery_unknown"
RETRY_AFTER = "Retry-After"
# The sidecar's fast refusals: it did not (or could not) reach the upstream, so "unavailable".
UNAVAILABLE_REASONS = frozenset(
    {"circuit_open", "overloaded", "throttled", "rate_limited", "shutting_down", "upstream_connect_error"}
)
RATE_LIMITED = "rate_limited"  # the sidecar's: the send's turn under its rate limits was too far off; never sent


class Purpose(Enum):
    """Why a call is made: decides the few mappings that differ (database timeout, login check)."""

    API = "api"  # Gemini, WhatsApp
    DATA = "data"  # Supabase PostgREST
    AUTH = "auth"  # Supabase GoTrue: checking the caller's own token


class ApiError(Exception):
    """An error answer of the backend: `{"error": code, "request_id": ...}` with `status`."""

    def __init__(
        self, status: int, code: str, *, headers: Mapping[str, str] | None = None, detail: str = "",
        delivery: str = "none", reason: str | None = None,
    ) -> None:
        super().__init__(detail or code)
        self.status = status
        self.code = code
        self.headers = dict(headers or {})
        self.detail = detail
        # "unknown": the request reached the upstream and may have been processed (no answer came back).
        self.delivery = delivery
        self.reason = reason  # the sidecar's X-Egress-Error, when the sidecar answered itself


def unavailable(upstream: Upstream, retry_after: str | None, detail: str) -> ApiError:
    headers = {RETRY_AFTER: retry_after} if retry_after else None
    return ApiError(503, f"{upstream}_unavailable", headers=headers, detail=detail)


def timeout(purpose: Purpose, detail: str) -> ApiError:
    code = "database_timeout" if purpose is Purpose.DATA else "external_api_timeout"
    return ApiError(504, code, detail=detail)


def from_response(upstream: Upstream, purpose: Purpose, status: int, headers: Mapping[str, str]) -> ApiError:
    """A non-2xx answer, from the sidecar itself or passed through from the upstream."""
    reason = headers.get(EGRESS_ERROR)
    retry_after = headers.get(RETRY_AFTER)
    if reason is not None:
        error = _sidecar_error(upstream, purpose, status, reason, retry_after)
        error.delivery = headers.get(EGRESS_DELIVERY, "none")
        error.reason = reason
        return error
    detail = f"{upstream} answered {status}"
    if status >= 500:
        return ApiError(502, "external_api_unavailable", detail=detail)
    if status == 429:
        return unavailable(upstream, retry_after, detail)
    if purpose is Purpose.AUTH and status in (401, 403):
        return ApiError(401, "unauthorized", detail=detail)
    return ApiError(400, "external_api_error", detail=detail)


def _sidecar_error(upstream: Upstream, purpose: Purpose, status: int, reason: str, retry_after: str | None) -> ApiError:
    detail = f"sidecar: {reason} ({status})"
    if reason == "upstream_timeout":
        return timeout(purpose, detail)
    if reason in UNAVAILABLE_REASONS or status == 503:
        return unavailable(upstream, retry_after, detail)
    # upstream_reset, and the sidecar refusing our request (no_route, bad_request, body_too_large):
    # the call could not be made; nothing the backend's caller can fix.
    return ApiError(502, "external_api_unavailable", detail=detail)


def from_exception(upstream: Upstream, purpose: Purpose, exc: BaseException) -> ApiError:
    """No answer at all: our own timeout, or the connection to the sidecar / upstream failed. Only a failed
    connect proves nothing was sent: anything else may have been processed."""
    detail = f"{upstream}: {type(exc).__name__}: {exc}"
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        error = timeout(purpose, detail)
        error.delivery = "none" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "unknown"
        return error
    if isinstance(exc, aiohttp.ClientConnectorError):
        return unavailable(upstream, None, detail)
    return ApiError(502, "external_api_unavailable", detail=detail, delivery="unknown")
