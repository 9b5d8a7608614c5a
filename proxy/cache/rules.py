"""The HTTP rules of what may be stored in and served from the cache: RFC 9111 as a shared cache, RFC 5861's
stale-* directives, with the route's policy where the origin is silent (docs/caching.md says which rules and why).

Freshness comes from the origin (s-maxage, max-age, Expires - Date: `proxy.cache.freshness`); the route's `ttl`
is the heuristic for an answer that says nothing, and replaces what the origin said only with `override: true`
(which also stores past `no-store` / `private` / `no-cache`). `no-cache`, `must-revalidate`, `proxy-revalidate`
and `s-maxage` answers are never served stale, the route's `stale_if_error` included, unless the route
overrides. The caller's `no-cache` fetches and stores anew, its `no-store` leaves the cache alone, and its
`max-age` / `min-fresh` / `max-stale` / `only-if-cached` are honoured (`freshness.acceptable`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum

from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache.entry import Entry
from proxy.cache.freshness import (
    NO_ASKS,
    Asks,
    CacheControl,
    explicit_lifetime,
    http_date,
    parse_cache_control,
    seconds,
    targeted_directives,
)
from proxy.headers import end_to_end
from proxy.policy import Route, RouteCache

CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
# RFC 9110 §9.2.1: every other method, an unknown one included, is unsafe and invalidates (RFC 9111 §4.4).
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
# RFC 9110 §15.1: statuses a cache may give a heuristic lifetime (here the route's ttl) without explicit freshness.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# What makes a response explicitly cacheable, whatever its status (RFC 9111 §3).
EXPLICIT_DIRECTIVES = ("public", "max-age", "s-maxage")
# The origin forbids serving it stale (RFC 9111 §4.2.4: no-cache, must-revalidate, and for a shared cache
# proxy-revalidate and s-maxage, §5.2.2.8 and §5.2.2.10).
NO_STALE_DIRECTIVES = ("no-cache", "must-revalidate", "proxy-revalidate", "s-maxage")
# RFC 9110 §15.4.5: what a 304 carries of the 200 it stands for.
NOT_MODIFIED_HEADERS = frozenset({"cache-control", "content-location", "date", "etag", "expires", "vary",
                                  "last-modified"})
# Recomputed or meaningless when replayed from the cache.
NOT_STORED_HEADERS = frozenset({"age", "set-cookie"})
# Part of every key: a ranged request and a full one are different requests (a 206 is a part of the body), so a
# stored part is only ever served to the same range (RFC 9111 §3.3 would combine parts; this cache does not).
RANGE_HEADERS = ("range", "if-range")


def is_unsafe(method: str) -> bool:
    return method not in SAFE_METHODS


def may_answer(route: Route, method: str) -> bool:
    """Whether a request could be answered from the cache (a HIT, or STALE while the upstream fails): the breaker
    gate lets such a request on to the cache, which plans it as a read."""
    return method in CACHEABLE_METHODS and route.cache is not None


class Mode(Enum):
    LOOKUP = "LOOKUP"
    REFRESH = "REFRESH"  # the caller said no-cache: fetch, and store the fresh answer
    BYPASS = "BYPASS"  # the caller said no-store: neither read nor write the cache


def cache_control(headers: CIMultiDictProxy[str] | CIMultiDict[str], name: str = "Cache-Control") -> CacheControl:
    return parse_cache_control(headers.getall(name, []))


# RFC 9213 §2.1: a targeted field, when the origin sent a valid one, replaces Cache-Control *and* Expires for the
# caches it targets. CDN-Cache-Control targets every cache between the origin and its clients that is not the
# client's own: the sidecar is one, so it obeys what an origin tells its CDNs.
TARGETED_FIELD = "CDN-Cache-Control"


@dataclass(frozen=True, slots=True)
class Directives:
    """What the origin said to this cache about one answer: its directives, and whether Expires counts."""

    said: CacheControl
    expires: str | None  # the Expires to honour (None: absent, or overridden by the targeted field)


def response_directives(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> Directives:
    targeted = targeted_directives(headers.getall(TARGETED_FIELD, []))
    if targeted is not None:
        return Directives(targeted, None)
    expires = headers.getall("Expires", [])
    # Repeated Expires fields are as good as an invalid one (§5.3: already expired).
    return Directives(cache_control(headers), (expires[0] if len(expires) == 1 else "invalid") if expires else None)


def directives(headers: CIMultiDictProxy[str], name: str = "Cache-Control") -> set[str]:
    """Directive names, lowercased, arguments dropped: `max-age=0, No-Cache` -> {"max-age", "no-cache"}."""
    return set(cache_control(headers, name))


def asks(headers: CIMultiDictProxy[str]) -> Asks:
    """The caller's max-age / min-fresh / max-stale / only-if-cached; most requests send none."""
    return Asks.of(cache_control(headers)) if "Cache-Control" in headers else NO_ASKS


def request_mode(headers: CIMultiDictProxy[str]) -> Mode:
    asked = directives(headers)
    if "no-store" in asked:
        return Mode.BYPASS
    if "no-cache" in asked or "no-cache" in directives(headers, "Pragma"):
        return Mode.REFRESH
    return Mode.LOOKUP


def refusal(rule: RouteCache, status: int, headers: CIMultiDictProxy[str], ranged: bool = False) -> str | None:
    """Why this upstream answer must not be stored, or None when it may be. `ranged`: the request had a Range.

    A status the route lists gets the route's ttl when the origin says nothing, if HTTP allows a heuristic for
    it (`HEURISTIC_STATUSES`); any final status the origin marks explicitly cacheable is stored (RFC 9111 §3)."""
    if status < 200 or status == 304 or (rule.override and status not in rule.statuses):
        return f"status {status}"  # not final, or not an answer of its own (a 304 updates an entry: `updated`)
    if status == 206 and not ranged:
        return "a 206 to a request without Range"  # an upstream that lies: never a whole answer
    if "*" in vary_names(headers):
        return "Vary: *"
    if rule.override:
        return None
    origin = response_directives(headers)
    said = origin.said
    if not _explicitly_cacheable(origin) and (status not in rule.statuses or status not in HEURISTIC_STATUSES):
        return f"status {status}"
    for directive in ("no-store", "private"):
        if directive in said:
            return f"Cache-Control: {directive}"
    if "set-cookie" in headers:
        # One caller's session cookie handed to every other caller is the classic shared-cache leak.
        return "Set-Cookie"
    return None


def _explicitly_cacheable(origin: Directives) -> bool:
    return any(name in origin.said for name in EXPLICIT_DIRECTIVES) or origin.expires is not None


def forbids_stale(cc: CacheControl) -> bool:
    return any(name in cc for name in NO_STALE_DIRECTIVES)


def may_serve_stale(entry: Entry, rule: RouteCache) -> bool:
    """Whether the origin let this entry be served stale at all (the route's override says yes regardless)."""
    return rule.override or not forbids_stale(response_directives(CIMultiDict(entry.headers)).said)


def entry_for(
    rule: RouteCache,
    status: int,
    headers: CIMultiDictProxy[str],
    body: bytes,
    stored_at: float,
    initial_age: float,
    vary: tuple[str, ...],
) -> Entry:
    """The entry for an answer `refusal` allowed: its freshness from the origin, else the route's ttl.

    With `override: true` the route's ttl is the lifetime and the route's stale_if_error applies whatever the
    origin said. Else the origin's no-cache / must-revalidate (and kin) take away every stale window, the
    route's stale_if_error included: RFC 9111 §4.2.4 is a MUST, and the origin said so for this very answer."""
    origin = response_directives(headers)
    cc = origin.said
    explicit = None if rule.override else explicit_lifetime(cc, origin.expires, headers.get("Date"))
    no_stale = not rule.override and forbids_stale(cc)
    stale_if_error = 0.0 if no_stale else max(rule.stale_if_error, seconds(cc, "stale-if-error") or 0.0)
    stored = stored_headers(headers)
    entry = Entry(
        status, stored, body, stored_at, rule.ttl if explicit is None else explicit, stale_if_error, vary,
        initial_age=initial_age,
        revalidate=not rule.override and "no-cache" in cc,
        stale_while_revalidate=0.0 if no_stale else seconds(cc, "stale-while-revalidate") or 0.0,
    )
    # An answer that can be revalidated stays for the route's ttl past its stale windows: a conditional
    # request then costs the origin a 304 instead of the body.
    return dataclasses.replace(entry, keep=rule.ttl) if entry.validators else entry


def updated(entry: Entry, not_modified: CIMultiDictProxy[str]) -> CIMultiDictProxy[str]:
    """The stored headers refreshed by a 304 (RFC 9111 §3.2, §4.3.4): each header the 304 carries replaces the
    stored one of that name, except Content-Length (the stored body's own)."""
    fresh = [(name, value) for name, value in stored_headers(not_modified) if name.lower() != "content-length"]
    replaced = {name.lower() for name, _ in fresh}
    merged = CIMultiDict((name, value) for name, value in entry.headers if name.lower() not in replaced)
    merged.extend(fresh)
    return CIMultiDictProxy(merged)


def not_modified_for(entry: Entry, request: CIMultiDictProxy[str]) -> Entry | None:
    """A 304 for a caller whose conditional request the entry satisfies (RFC 9111 §4.3.2, RFC 9110 §13.2.2):
    If-None-Match (weak comparison) wins over If-Modified-Since; None to answer with the entry itself."""
    if not 200 <= entry.status < 300 or ("If-None-Match" not in request and "If-Modified-Since" not in request):
        return None
    if "If-None-Match" in request:
        asked = {_weak(tag) for value in request.getall("If-None-Match") for tag in value.split(",")}
        etag = entry.header("ETag")
        matched = "*" in asked or (etag is not None and _weak(etag) in asked)
    else:
        since = http_date(request.get("If-Modified-Since"))
        # §4.3.2: the stored Last-Modified, else its Date, else when it was stored.
        changed = http_date(entry.header("Last-Modified")) or http_date(entry.header("Date")) or entry.stored_at
        matched = since is not None and changed <= since
    if not matched:
        return None
    kept = tuple((name, value) for name, value in entry.headers if name.lower() in NOT_MODIFIED_HEADERS)
    return dataclasses.replace(entry, status=304, headers=kept, body=b"")


def _weak(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith("W/") else tag


def vary_names(headers: CIMultiDictProxy[str]) -> list[str]:
    return sorted({name.strip().lower() for value in headers.getall("Vary", []) for name in value.split(",")} - {""})


def extra_vary(headers: CIMultiDictProxy[str], rule: RouteCache) -> tuple[str, ...]:
    """The headers the upstream's `Vary` names beyond the route's own `vary` (already in the base key)."""
    return tuple(name for name in vary_names(headers) if name not in rule.vary)


def stored_headers(headers: CIMultiDictProxy[str]) -> tuple[tuple[str, str], ...]:
    return tuple(end_to_end(headers, also_drop=NOT_STORED_HEADERS).items())
