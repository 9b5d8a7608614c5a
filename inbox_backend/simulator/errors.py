"""Provider-specific error bodies (Google RPC, Graph API, PostgREST, GoTrue, Supabase gateway)."""

from __future__ import annotations

import math
import secrets
from http import HTTPStatus
from typing import Any, Final

from .config import GEMINI, SUPABASE, WHATSAPP, WHATSAPP_MEDIA

JSON = Any

_GOOGLE_STATUS: Final[dict[int, tuple[str, str]]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    409: ("ABORTED", "The operation was aborted."),
    429: ("RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."),
    499: ("CANCELLED", "The operation was cancelled."),
    500: (
        "INTERNAL",
        "An internal error has occurred. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting",
    ),
    501: ("UNIMPLEMENTED", "Operation is not implemented, or supported, or enabled."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


def fbtrace_id() -> str:
    return "A" + secrets.token_urlsafe(15)


def google_error(
    code: int, message: str | None = None, status: str | None = None, details: list[JSON] | None = None
) -> JSON:
    default_status, default_message = _GOOGLE_STATUS.get(code, ("UNKNOWN", _phrase(code)))
    error: dict[str, JSON] = {
        "code": code,
        "message": message if message is not None else default_message,
        "status": status or default_status,
    }
    if details:
        error["details"] = details
    return {"error": error}


def google_throttle(retry_after: float) -> JSON:
    return google_error(
        429,
        "Resource has been exhausted",
        "RESOURCE_EXHAUSTED",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"}],
    )


def graph_error(
    message: str,
    code: int,
    *,
    type_: str = "OAuthException",
    subcode: int | None = None,
    error_data: dict[str, JSON] | None = None,
) -> JSON:
    error: dict[str, JSON] = {"message": message, "type": type_, "code": code}
    if subcode is not None:
        error["error_subcode"] = subcode
    if error_data is not None:
        error["error_data"] = error_data
    error["fbtrace_id"] = fbtrace_id()
    return {"error": error}


def graph_throttle(variant: str | None) -> JSON:
    if variant == "pair":
        return graph_error(
            "(#131056) (Business Account, Consumer Account) pair rate limit hit",
            131056,
            error_data={
                "messaging_product": "whatsapp",
                "details": "Message failed to send because there were too many messages sent from this "
                "phone number to the same phone number in a short period of time.",
            },
        )
    return graph_error("(#130429) Rate limit hit", 130429, subcode=2494055)


def graph_status_error(status: int) -> JSON:
    if status == 401:
        return graph_error("Error validating access token: Session has expired.", 190, subcode=463)
    if status == 403:
        return graph_error("(#200) Permissions error", 200)
    if status == 404:
        return graph_error("Unknown path components", 2500)
    if status == 429:
        return graph_error("(#4) Application request limit reached", 4, type_="OAuthException")
    if status == 503:
        return graph_error("Service temporarily unavailable", 2, type_="OAuthException")
    if status >= 500:
        return graph_error("An unexpected error has occurred. Please retry your request later.", 1)
    return graph_error("(#100) Invalid parameter", 100)


def postgrest_error(code: str, message: str, details: str | None = None, hint: str | None = None) -> JSON:
    return {"code": code, "details": details, "hint": hint, "message": message}


def postgrest_status_error(status: int) -> JSON:
    if status == 503:
        return postgrest_error(
            "PGRST001", "Database client error. Retrying the connection.", "no connection to the server\n"
        )
    if status == 504:
        return postgrest_error("PGRST003", "Timed out acquiring connection from connection pool.")
    if status in (502, 520, 521, 522, 523, 524):
        return {"message": "An invalid response was received from the upstream server"}
    return postgrest_error(str(status), _phrase(status))


def gotrue_error(status: int, error_code: str, msg: str) -> JSON:
    return {"code": status, "error_code": error_code, "msg": msg}


def supabase_missing_apikey() -> JSON:
    return {
        "message": "No API key found in request",
        "hint": "No `apikey` request header or url param was found.",
        "code": "401",
        "details": None,
    }


def supabase_invalid_apikey() -> JSON:
    return {
        "message": "Invalid API key",
        "hint": "Double check your Supabase `anon` or `service_role` API key.",
        "code": "401",
        "details": None,
    }


def status_body(upstream: str, route: str, status: int) -> JSON:
    """Default body of a ``status`` fault: the provider's own error shape for that status."""
    if upstream == GEMINI:
        return google_error(status)
    if upstream in (WHATSAPP, WHATSAPP_MEDIA):
        return graph_status_error(status)
    if upstream == SUPABASE:
        if route.startswith("auth"):
            return gotrue_error(status, "unexpected_failure", _phrase(status))
        return postgrest_status_error(status)
    return {"error": _phrase(status)}


def throttle_response(
    upstream: str, route: str, retry_after: float | None, variant: str | None
) -> tuple[int, JSON, dict[str, str]]:
    """Status, body and headers of a provider's rate-limit answer."""
    delay = 1.0 if retry_after is None else retry_after
    if upstream == GEMINI:
        return 429, google_throttle(delay), {}
    if upstream in (WHATSAPP, WHATSAPP_MEDIA):
        return 400, graph_throttle(variant), {}
    if route.startswith("auth"):
        body = gotrue_error(429, "over_request_rate_limit", "Request rate limit reached")
    else:
        body = {"message": "API rate limit exceeded"}
    return 429, body, {"Retry-After": f"{math.ceil(delay)}"}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
