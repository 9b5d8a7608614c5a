"""Freshness and age, the arithmetic of RFC 9111 §4.2 (with RFC 5861's stale-* extensions), in one place.

Everything here is pure: header values and clock readings in, numbers out. `proxy.cache.rules` decides what
is stored and served with these numbers; nothing else computes an age or a lifetime.
"""

from __future__ import annotations

import datetime
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDictProxy

MAX_AGE = 2**31  # RFC 9111 §1.2.2: the largest delta-seconds a cache needs to tell apart ("infinity")

CacheControl = dict[str, str | None]

# Directives whose argument is delta-seconds (RFC 9111 §1.2.2). For a repeated one the most restrictive value
# counts (§4.2.1 allows treating the response as stale; the smallest lifetime is the closest safe reading):
# the smallest, except min-fresh, where the largest asks for more.
_SMALLEST_WINS = frozenset({"max-age", "s-maxage", "max-stale", "stale-while-revalidate", "stale-if-error"})
_LARGEST_WINS = frozenset({"min-fresh"})
# An invalid or missing argument: 0 for a lifetime or an allowance (stale, nothing allowed, §4.2.1, §1.2.2);
# max-stale without a value accepts any staleness (§5.2.1.2).
_VALUELESS = {"max-stale": math.inf}
DATE_RESOLUTION = 1.0


def parse_cache_control(values: Iterable[str]) -> CacheControl:
    """Every `Cache-Control` line -> {directive (lowercased): argument (unquoted) or None}; never raises.

    Commas inside a quoted argument (`no-cache="a, b"`) do not split directives (RFC 9110 §5.6.4)."""
    found: CacheControl = {}
    for value in values:
        for part in _split_outside_quotes(value):
            name, eq, argument = part.partition("=")
            name = name.strip().lower()
            if not name:
                continue
            parsed = _unquote(argument.strip()) if eq else None
            found[name] = _restrictive(name, found[name], parsed) if name in found else parsed
    return found


def _split_outside_quotes(value: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in value:
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(argument: str) -> str:
    if len(argument) >= 2 and argument[0] == argument[-1] == '"':
        inner = argument[1:-1]
        out, escaped = [], False
        for char in inner:
            if char == "\\" and not escaped:
                escaped = True
                continue
            out.append(char)
            escaped = False
        return "".join(out)
    return argument


def _restrictive(name: str, old: str | None, new: str | None) -> str | None:
    if name not in _SMALLEST_WINS and name not in _LARGEST_WINS:
        return old if old is not None else new  # `no-cache` beats `no-cache="Set-Cookie"`: keep the unqualified
    pick = min if name in _SMALLEST_WINS else max
    value = pick(_seconds_of(name, old), _seconds_of(name, new))
    return "inf" if value == math.inf else str(int(value))


def seconds(cc: CacheControl, name: str) -> float | None:
    """A delta-seconds directive's value, None when absent (see `_VALUELESS` for one without a value)."""
    if name not in cc:
        return None
    return _seconds_of(name, cc[name])


def _seconds_of(name: str, argument: str | None) -> float:
    if argument is None:
        return _VALUELESS.get(name, 0.0)
    if argument == "inf":  # what `_restrictive` writes back for an unbounded max-stale
        return math.inf
    # RFC 9111 §1.2.2: digits only; a value too large to represent is "infinity" (2^31 is the suggested cap).
    return float(min(int(argument), MAX_AGE)) if argument.isdigit() else 0.0


# CDN-Cache-Control is a Structured Field Dictionary (RFC 9213 §2.1, RFC 8941 §3.2); one that does not parse, or
# gives a lifetime as anything but an Integer, is ignored as a whole (then Cache-Control applies).
_SF_KEY = r"[a-z*][a-z0-9_\-.*]*"
_SF_STRING = r"\"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\"\\])*\""
_SF_ITEM = (rf"(?:-?\d{{1,15}}(?:\.\d{{1,3}})?|{_SF_STRING}|[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*"
            r"|:[A-Za-z0-9+/=]*:|\?[01])")
_SF_MEMBER = rf"{_SF_KEY}(?:={_SF_ITEM})?(?:;\s*{_SF_KEY}(?:={_SF_ITEM})?)*"
_SF_DICTIONARY = re.compile(rf"[ \t]*{_SF_MEMBER}(?:[ \t]*,[ \t]*{_SF_MEMBER})*[ \t]*")
# A lifetime directive whose value is not an Integer (`max-age="10000"`, `max-age=1.5`).
_NOT_INTEGER = re.compile(r"(?:^|,)[ \t]*(?:max-age|s-maxage|stale-while-revalidate|stale-if-error)"
                          r"(?:[;,]|$|=(?!-?\d{1,15}[ \t]*(?:[;,]|$)))")


def targeted_directives(values: list[str]) -> CacheControl | None:
    """A CDN-Cache-Control's directives, or None when it is absent or not a valid Structured Field Dictionary."""
    joined = ", ".join(values)
    if not joined.strip() or _SF_DICTIONARY.fullmatch(joined) is None:
        return None
    if _NOT_INTEGER.search(joined):
        return None  # `max-age="10000"`: a String where RFC 9213 wants an Integer
    return parse_cache_control(values)


_DAY = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_MONTH = r"(?P<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
_TIME = r"(?P<hour>\d\d):(?P<minute>\d\d):(?P<second>\d\d)"
# RFC 9110 §5.6.7: exactly these three; anything else (a `UTC`, a two-digit year in the first form, a missing comma,
# doubled spaces) is not an HTTP-date. email.utils accepts all of those, which made a bad Expires read as valid.
_HTTP_DATES = (
    re.compile(rf"{_DAY}, (?P<day>\d\d) {_MONTH} (?P<year>\d{{4}}) {_TIME} GMT"),  # IMF-fixdate
    re.compile(rf"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (?P<day>\d\d)-{_MONTH}-"
               rf"(?P<year>\d\d) {_TIME} GMT"),  # obsolete RFC 850
    re.compile(rf"{_DAY} {_MONTH} (?P<day>[ \d]\d) {_TIME} (?P<year>\d{{4}})"),  # obsolete asctime
)
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7) as a POSIX time; None when absent or invalid."""
    if not value:
        return None
    for form in _HTTP_DATES:
        found = form.fullmatch(value)
        if found is not None:
            break
    else:
        return None
    year = int(found["year"])
    if year < 100:  # RFC 850's two digits: the most recent year with them not over 50 years ahead
        year += 2000 if year + 2000 <= time.gmtime().tm_year + 50 else 1900
    try:
        moment = datetime.datetime(year, _MONTHS.index(found["month"]) + 1, int(found["day"]), int(found["hour"]),
                                   int(found["minute"]), int(found["second"]), tzinfo=datetime.UTC)
    except ValueError:  # 31 February, 25 o'clock
        return None
    return moment.timestamp()


def explicit_lifetime(cc: CacheControl, expires_value: str | None, date_value: str | None) -> float | None:
    """§4.2.1 for a shared cache: s-maxage, else max-age, else Expires - Date; None when the origin said none
    (then a heuristic, the route's `ttl`, may apply: §4.2.2). An invalid Expires is already expired (§5.3)."""
    for name in ("s-maxage", "max-age"):
        value = seconds(cc, name)
        if value is not None:
            return value
    if expires_value is None:
        return None
    expires = http_date(expires_value)
    if expires is None:
        return 0.0
    date = http_date(date_value)
    return max(0.0, expires - date) if date is not None else 0.0


def initial_age(headers: CIMultiDictProxy[str], request_time: float, response_time: float) -> float:
    """§4.2.3 `corrected_initial_age`: the larger of the apparent age (from Date) and the origin's Age plus the
    response delay, never negative."""
    date = http_date(headers.get("Date"))
    # Date has a one-second resolution (the origin's clock, truncated): the answer may be up to a second
    # younger than it says, and an answer that arrived within the second it was dated is no age at all. Without
    # this a sub-second freshness would start out stale.
    apparent_age = max(0.0, response_time - date - DATE_RESOLUTION) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    corrected_age_value = _age_value(headers.getall("Age", [])) + response_delay
    return max(apparent_age, corrected_age_value)


def _age_value(values: list[str]) -> float:
    """§5.1: non-negative delta-seconds, the first member only (of a list, or of repeated lines): `7200, 0` is
    7200 old. An invalid one (`abc`, `-7200`, `7200.0`) is ignored, as the public cache test suite and nginx read it."""
    if not values:
        return 0.0
    first = values[0].split(",", 1)[0].strip()
    return float(min(int(first), MAX_AGE)) if first.isascii() and first.isdigit() else 0.0


def current_age(initial: float, response_time: float, now: float) -> float:
    """§4.2.3 `current_age = corrected_initial_age + resident_time`; a clock stepping back adds no negative time."""
    return max(0.0, initial) + max(0.0, now - response_time)


@dataclass(frozen=True, slots=True)
class Asks:
    """The caller's freshness directives (§5.2.1): what it accepts from the cache."""

    max_age: float | None = None
    min_fresh: float = 0.0
    max_stale: float = 0.0
    only_if_cached: bool = False

    @property
    def freshness(self) -> bool:
        """Whether the caller asks for freshness of its own (max-age, min-fresh): then no stale answer is served
        while a revalidation runs; unknown directives (`Cache-Control: foo`) ask nothing."""
        return self.max_age is not None or self.min_fresh > 0

    @classmethod
    def of(cls, cc: CacheControl) -> Asks:
        return cls(seconds(cc, "max-age"), seconds(cc, "min-fresh") or 0.0, seconds(cc, "max-stale") or 0.0,
                   "only-if-cached" in cc)


NO_ASKS = Asks()


def acceptable(age: float, lifetime: float, asks: Asks, may_serve_stale: bool) -> bool:
    """Whether a stored answer of `age` and freshness `lifetime` may answer a caller asking `asks` without
    validation: fresh enough for its max-age / min-fresh (§5.2.1.1, §5.2.1.3), or stale within its max-stale
    when the origin allowed stale answers at all (§4.2.4, §5.2.1.2)."""
    if asks.max_age is not None and age > asks.max_age:
        return False
    if lifetime - age >= max(asks.min_fresh, 0.0) and age < lifetime:
        return True
    return may_serve_stale and age - lifetime <= asks.max_stale and asks.max_stale > 0
