"""The HTTP rules of what may be served from and stored in the cache (a small, deliberate subset of RFC 9111).

The route's `ttl` decides freshness; from the headers only these are honoured: the caller's
`Cache-Control: no-cache` (fetch and store anew) and `no-store` (leave the cache alone), and the upstream's
`no-store` / `private` (never stored unless the route says `override: true`), `Vary` and `Set-Cookie`.
"""

from __future__ import annotations

from enum import Enum

from multidict import CIMultiDictProxy

from proxy.headers import end_to_end
from proxy.policy import Route, RouteCache

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Recomputed or meaningless when replayed from the cache.
NOT_STORED_HEADERS = frozenset({"age", "set-cookie"})
# Part of every key: a ranged request and a full one are different requests (a 206 is a part of the body), so a
# stored part is only ever served to the same range (RFC 9111 §3.3 would combine parts; this cache does not).
RANGE_HEADERS = ("range", "if-range")


def may_answer(route: Route, method: str) -> bool:
    """Whether a request could be answered from the cache (a HIT, or STALE while the upstream fails): the breaker
    gate lets such a request on to the cache, which plans it as a read."""
    return method in CACHEABLE_METHODS and route.cache is not None


class Mode(Enum):
    LOOKUP = "LOOKUP"
    REFRESH = "REFRESH"  # the caller said no-cache: fetch, and store the fresh answer
    BYPASS = "BYPASS"  # the caller said no-store: neither read nor write the cache


def directives(headers: CIMultiDictProxy[str], name: str = "Cache-Control") -> set[str]:
    """Directive names, lowercased, arguments dropped: `max-age=0, No-Cache` -> {"max-age", "no-cache"}."""
    found: set[str] = set()
    for value in headers.getall(name, []):
        for part in value.split(","):
            directive = part.split("=", 1)[0].strip().lower()
            if directive:
                found.add(directive)
    return found


def request_mode(headers: CIMultiDictProxy[str]) -> Mode:
    asked = directives(headers)
    if "no-store" in asked:
        return Mode.BYPASS
    if "no-cache" in asked or "no-cache" in directives(headers, "Pragma"):
        return Mode.REFRESH
    return Mode.LOOKUP


def refusal(rule: RouteCache, status: int, headers: CIMultiDictProxy[str], ranged: bool = False) -> str | None:
    """Why this upstream answer must not be stored, or None when it may be. `ranged`: the request had a Range."""
    if status not in rule.statuses:
        return f"status {status}"
    if status == 206 and not ranged:
        return "a 206 to a request without Range"  # an upstream that lies: never a whole answer
    if "*" in vary_names(headers):
        return "Vary: *"
    if rule.override:
        return None
    said = directives(headers)
    for directive in ("no-store", "private"):
        if directive in said:
            return f"Cache-Control: {directive}"
    if "set-cookie" in headers:
        # One caller's session cookie handed to every other caller is the classic shared-cache leak.
        return "Set-Cookie"
    return None


def vary_names(headers: CIMultiDictProxy[str]) -> list[str]:
    return sorted({name.strip().lower() for value in headers.getall("Vary", []) for name in value.split(",")} - {""})


def extra_vary(headers: CIMultiDictProxy[str], rule: RouteCache) -> tuple[str, ...]:
    """The headers the upstream's `Vary` names beyond the route's own `vary` (already in the base key)."""
    return tuple(name for name in vary_names(headers) if name not in rule.vary)


def stored_headers(headers: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...]:
    return tuple(end_to_end(headers, also_drop=NOT_STORED_HEADERS).items())
