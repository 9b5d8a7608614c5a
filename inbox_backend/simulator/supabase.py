"""Simulated Supabase: PostgREST at ``/rest/v1`` and GoTrue at ``/auth/v1``."""

from __future__ import annotations

import secrets
import time
from typing import Any, Final, Literal

from aiohttp import web

from .config import SUPABASE
from .errors import gotrue_error, postgrest_error, supabase_invalid_apikey, supabase_missing_apikey
from .postgrest import PostgrestError, Query, Row, parse_query
from .routing import STATE_KEY, Reply, empty_reply, endpoint, json_reply, not_found_route, read_json
from .seed import SAMPLE_PASSWORD
from .state import SimulatorState

OBJECT_TYPE: Final = "application/vnd.pgrst.object+json"


def _rest_route(request: web.Request) -> str:
    return f"rest:{request.match_info.get('table', '')}:{request.method.upper()}"


def _check_apikey(request: web.Request, state: SimulatorState) -> Reply | None:
    key = request.headers.get("apikey") or request.query.get("apikey")
    if not key:
        return json_reply(supabase_missing_apikey(), 401)
    if key not in (state.config.supabase_anon_key, state.config.supabase_service_key):
        return json_reply(supabase_invalid_apikey(), 401)
    return None


def _bearer(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _check_rest_auth(request: web.Request, state: SimulatorState) -> Reply | None:
    error = _check_apikey(request, state)
    if error is not None:
        return error
    token = _bearer(request)
    known = (state.config.supabase_anon_key, state.config.supabase_service_key)
    if token is not None and token not in known and token not in state.users:
        return json_reply(
            postgrest_error("PGRST301", "No suitable key or wrong key type", None, None),
            401,
            {
                "WWW-Authenticate": 'Bearer error="invalid_token", '
                'error_description="No suitable key or wrong key type"'
            },
        )
    return None


def _prefer(request: web.Request) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getall("Prefer", []):
        for token in header.split(","):
            name, _, value = token.strip().partition("=")
            if name:
                prefs[name.strip()] = value.strip()
    return prefs


def _singular(request: web.Request) -> bool:
    return OBJECT_TYPE in request.headers.get("Accept", "")


def _rows_reply(request: web.Request, rows: list[Row], status: int, headers: dict[str, str]) -> Reply:
    if _singular(request):
        if len(rows) != 1:
            raise PostgrestError(
                406,
                "PGRST116",
                "Cannot coerce the result to a single JSON object",
                f"The result contains {len(rows)} rows",
            )
        return json_reply(rows[0], status, headers, f"{OBJECT_TYPE}; charset=utf-8")
    return json_reply(rows, status, headers)


def _content_range(offset: int, count: int, total: int | None) -> str:
    total_text = "*" if total is None else str(total)
    if count == 0:
        return f"*/{total_text}"
    return f"{offset}-{offset + count - 1}/{total_text}"


async def rest(request: web.Request, state: SimulatorState) -> Reply:
    error = _check_rest_auth(request, state)
    if error is not None:
        return error
    table = request.match_info["table"]
    try:
        return await _rest(request, state, table)
    except PostgrestError as exc:
        return json_reply(exc.body(), exc.status)


async def _rest(request: web.Request, state: SimulatorState, table: str) -> Reply:
    db = state.db
    db.table(table)
    query = parse_query(request.query.items())
    prefs = _prefer(request)
    single = _singular(request)
    representation = prefs.get("return") == "representation"
    method = request.method.upper()
    if method in ("GET", "HEAD"):
        rows, total = db.select(table, query)
        exact = prefs.get("count") in ("exact", "planned", "estimated")
        headers = {"Content-Range": _content_range(query.offset, len(rows), total if exact else None)}
        if method == "HEAD":
            return empty_reply(200, headers)
        return _rows_reply(request, rows, 200, headers)
    if method not in ("POST", "PATCH", "DELETE"):
        raise PostgrestError(405, "PGRST117", f"Unsupported HTTP method: {method}")
    payload: Any = None
    if method != "DELETE":
        ok, payload = await read_json(request)
        if not ok:
            raise PostgrestError(400, "PGRST102", "Empty or invalid json")
    if method == "POST":
        resolution = _resolution(prefs.get("resolution"))
        rows = db.insert(
            table,
            payload,
            resolution=resolution,
            on_conflict=query.on_conflict,
            single=single and representation,
        )
        headers = {"Content-Range": f"*/{len(rows)}" if not rows else f"0-{len(rows) - 1}/*"}
        return _write_reply(request, state, table, query, rows, 201, representation, headers)
    if method == "PATCH":
        rows = db.update(table, payload, query, single=single and representation)
        return _write_reply(request, state, table, query, rows, 200, representation, {})
    rows = db.delete(table, query, single=single and representation)
    return _write_reply(request, state, table, query, rows, 200, representation, {})


def _resolution(value: str | None) -> Literal["ignore", "merge"] | None:
    if value == "ignore-duplicates":
        return "ignore"
    if value == "merge-duplicates":
        return "merge"
    return None


def _write_reply(
    request: web.Request,
    state: SimulatorState,
    table: str,
    query: Query,
    rows: list[Row],
    status: int,
    representation: bool,
    headers: dict[str, str],
) -> Reply:
    if not representation:
        return empty_reply(201 if status == 201 else 204, headers)
    projected = state.db.project(table, rows, query.select)
    return _rows_reply(request, projected, status, headers)


# -- GoTrue ------------------------------------------------------------------------------------
def _gotrue_user(request: web.Request, state: SimulatorState) -> tuple[dict[str, Any] | None, Reply | None]:
    error = _check_apikey(request, state)
    if error is not None:
        return None, error
    token = _bearer(request)
    if token is None:
        return None, json_reply(
            gotrue_error(401, "no_authorization", "This endpoint requires a Bearer token"), 401
        )
    user = state.users.get(token)
    if user is not None:
        return user, None
    if token in (state.config.supabase_anon_key, state.config.supabase_service_key):
        return None, json_reply(gotrue_error(403, "bad_jwt", "invalid claim: missing sub claim"), 403)
    return None, json_reply(
        gotrue_error(
            401,
            "bad_jwt",
            "invalid JWT: unable to parse or verify signature, token is malformed: "
            "token contains an invalid number of segments",
        ),
        401,
    )


async def auth_user(request: web.Request, state: SimulatorState) -> Reply:
    user, error = _gotrue_user(request, state)
    if error is not None:
        return error
    return json_reply(user)


async def auth_token(request: web.Request, state: SimulatorState) -> Reply:
    """``POST /auth/v1/token?grant_type=password`` for the sample users (password ``sim-password``)."""
    error = _check_apikey(request, state)
    if error is not None:
        return error
    grant = request.query.get("grant_type")
    if grant != "password":
        return json_reply(gotrue_error(400, "validation_failed", "unsupported_grant_type"), 400)
    ok, body = await read_json(request)
    email = body.get("email") if ok and isinstance(body, dict) else None
    password = body.get("password") if ok and isinstance(body, dict) else None
    for token, user in state.users.items():
        if email is not None and user.get("email") == email and password == SAMPLE_PASSWORD:
            now = int(time.time())
            return json_reply(
                {
                    "access_token": token,
                    "token_type": "bearer",
                    "expires_in": 3600,
                    "expires_at": now + 3600,
                    "refresh_token": secrets.token_urlsafe(12),
                    "user": user,
                }
            )
    return json_reply(gotrue_error(400, "invalid_credentials", "Invalid login credentials"), 400)


def _not_found(request: web.Request) -> Any:
    return {"message": "no Route matched with those values"}


def create_app(state: SimulatorState) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_route("*", "/rest/v1/{table}", endpoint(SUPABASE, _rest_route, rest))
    app.router.add_get("/auth/v1/user", endpoint(SUPABASE, "auth_user", auth_user), allow_head=False)
    app.router.add_post("/auth/v1/token", endpoint(SUPABASE, "auth_token", auth_token))
    app.router.add_route("*", "/{tail:.*}", not_found_route(SUPABASE, _not_found))
    return app
