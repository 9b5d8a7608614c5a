"""Reading what a caller sent: the JSON body, ids in paths and queries, and who the caller is."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from multidict import MultiMapping

from inbox_backend import bounded_json
from inbox_backend.auth import User, bearer_token, fetch_user
from inbox_backend.errors import ApiError
from inbox_backend.state import app_state, clients


def invalid(detail: str) -> ApiError:
    return ApiError(400, "invalid_request", detail=detail)


async def read_body(request: web.Request) -> bytes:
    """The whole body: at most the app's client_max_size (413), within the body timeout (408). The header
    timeout (serving.py) ends where the handler starts: without this, a body trickled a byte at a time would
    hold the request, and its connection, for as long as the caller likes."""
    try:
        async with asyncio.timeout(app_state(request).settings.body_timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, "body_timeout", headers={"Connection": "close"},
                       detail="the request body did not arrive in time") from None


def parsed_json(raw: bytes) -> Any:
    """The body's JSON, within bounded_json's limits (400 invalid_json beyond them)."""
    try:
        return bounded_json.parse(raw)
    except bounded_json.InvalidJson as exc:
        raise ApiError(400, "invalid_json", detail=str(exc)) from None


async def json_object(request: web.Request) -> dict[str, Any]:
    data = parsed_json(await read_body(request) or b"null")
    if not isinstance(data, dict):
        raise invalid("the body must be a JSON object")
    return data


def positive_int(value: Any, name: str) -> int:
    """An id from JSON (an integer) or from a path or query (digits)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:  # not "²", not 10**5000
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid(f"{name} must be a positive integer")
    return value


def path_id(request: web.Request, name: str = "id") -> int:
    return positive_int(request.match_info[name], name)


def query_id(query: MultiMapping[str], name: str) -> int:
    values = query.getall(name, [])
    if len(values) != 1:  # `?account_id=1&account_id=2`: which one is meant is the caller's to say
        raise invalid(f"the query parameter {name} is required, once")
    return positive_int(values[0], name)


def text_field(data: Mapping[str, Any], name: str, max_length: int = 4096) -> str:
    """WhatsApp's text body limit is 4096 characters."""
    value = data.get(name)
    if not isinstance(value, str) or not value.strip() or len(value) > max_length:
        raise invalid(f"{name} must be a non-empty string of at most {max_length} characters")
    return value


async def current_user(request: web.Request) -> User:
    """The caller, checked with Supabase auth (401 without a valid bearer token)."""
    token = bearer_token(request.headers)
    return await fetch_user(clients(request).caller, token)
