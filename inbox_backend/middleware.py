"""Around every request: the request id, the access log and metrics, and the error body.

Every error answer is `{"error": "<code>", "request_id": "..."}`, the same id that went to the
sidecar in `X-Request-ID` (and comes back in our response's `X-Request-ID`), so one id finds the
request in both logs.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from inbox_backend.errors import ApiError
from inbox_backend.metrics import route_label
from inbox_backend.state import REQUEST_ID, app_state

access_log = logging.getLogger("inbox.access")
log = logging.getLogger("inbox.app")

REQUEST_ID_HEADER = "X-Request-ID"
# What we accept from a caller as its id (the sidecar applies the same rule, so it keeps ours).
_VALID_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
# aiohttp's own HTTP errors (unknown path, wrong method ...) as codes.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def request_id(incoming: str | None) -> str:
    return incoming if incoming and _VALID_ID.match(incoming) else uuid.uuid4().hex


def error_response(status: int, code: str, rid: str, headers: dict[str, str] | None = None) -> web.Response:
    body = json.dumps({"error": code, "request_id": rid}).encode()
    return web.Response(status=status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: assigns the id, then logs and counts whatever the inner layers answered."""
    rid = request[REQUEST_ID] = request_id(request.headers.get(REQUEST_ID_HEADER))
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = rid
        return response
    finally:
        elapsed = time.monotonic() - started
        route = route_label(request)
        app_state(request).metrics.observe(request.method, route, status, elapsed)
        access_log.info(
            "request_id=%s method=%s route=%s status=%d duration_ms=%.1f",
            rid, request.method, route, status, elapsed * 1000,
        )


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Any failure becomes the JSON error body; nothing internal leaks to the caller."""
    rid = request[REQUEST_ID]
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, rid, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, rid, headers)
    except Exception:
        log.exception("unhandled error (request_id=%s)", rid)
        return error_response(500, "internal_error", rid)
