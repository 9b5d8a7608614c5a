"""Header hygiene for both directions: hop-by-hop headers stay on their hop, secrets stay out of logs."""

from __future__ import annotations

import random
import re

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_ID = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _dropped(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    """Hop-by-hop names, plus any header the `Connection` header names (RFC 9110 §7.6.1)."""
    names = set(HOP_BY_HOP)
    for value in headers.getall("Connection", ()):
        names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], also_drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """`also_drop` holds lowercase names."""
    dropped = (_dropped(headers) if "Connection" in headers else HOP_BY_HOP) | also_drop
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in dropped)


def request_id(incoming: str | None) -> str:
    """Keep the caller's id so one id follows a request through every log; else make one."""
    if incoming and _VALID_REQUEST_ID.match(incoming):
        return incoming
    # 128 random bits, as many as a uuid4, from the process's generator (reseeded at fork): an id needs to be
    # unique, not secret, and os.urandom is a system call on every request.
    return f"{random.getrandbits(128):032x}"
