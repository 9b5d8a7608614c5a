"""`proxy.cache.freshness`, pure: Cache-Control parsing over any header value, lifetimes and Age (RFC 9111 §4.2)."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from proxy.cache.freshness import (
    Asks,
    acceptable,
    current_age,
    explicit_lifetime,
    http_date,
    initial_age,
    parse_cache_control,
    seconds,
    targeted_directives,
)


def headers(**pairs: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({name.replace("_", "-"): value for name, value in pairs.items()}))


NAMES = st.sampled_from(["max-age", "s-maxage", "no-cache", "no-store", "private", "must-revalidate", "min-fresh"])


@given(st.lists(st.text(), max_size=4))
def test_any_header_value_parses_without_raising(values: list[str]) -> None:
    parsed = parse_cache_control(values)
    assert all(name == name.lower() and name == name.strip() and name for name in parsed)
    for name in parsed:
        seconds(parsed, name)  # never raises either


@given(NAMES, st.integers(0, 10**6), st.booleans())
def test_directive_names_are_case_insensitive(name: str, value: int, upper: bool) -> None:
    spelled = name.upper() if upper else name.title()
    assert parse_cache_control([f"{spelled}={value}"]) == {name: str(value)}


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.booleans())
def test_a_repeated_lifetime_keeps_the_most_restrictive(one: int, two: int, lines: bool) -> None:
    values = [f"max-age={one}", f"MAX-AGE={two}"] if lines else [f"max-age={one}, max-age={two}"]
    assert seconds(parse_cache_control(values), "max-age") == min(one, two)
    assert seconds(parse_cache_control([f"min-fresh={one}, min-fresh={two}"]), "min-fresh") == max(one, two)


def test_a_quoted_argument_keeps_its_commas_and_is_unquoted() -> None:
    parsed = parse_cache_control(['no-cache="Set-Cookie, X-Foo", max-age="60"', "private"])
    assert parsed == {"no-cache": "Set-Cookie, X-Foo", "max-age": "60", "private": None}
    assert seconds(parsed, "max-age") == 60


def test_an_invalid_lifetime_is_stale_and_a_bare_max_stale_accepts_any() -> None:
    parsed = parse_cache_control(["max-age=soon, max-stale"])
    assert (seconds(parsed, "max-age"), seconds(parsed, "max-stale")) == (0, float("inf"))


def test_s_maxage_beats_max_age_beats_expires() -> None:
    date = email.utils.formatdate(1_000_000, usegmt=True)
    expires = email.utils.formatdate(1_000_100, usegmt=True)
    assert explicit_lifetime(parse_cache_control(["s-maxage=5, max-age=10"]), expires, date) == 5
    assert explicit_lifetime(parse_cache_control(["max-age=10"]), expires, date) == 10
    assert explicit_lifetime({}, expires, date) == 100
    assert explicit_lifetime({}, "0", date) == 0  # an invalid Expires is already expired
    assert explicit_lifetime({}, None, date) is None


@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
    "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
    "Sun Nov  6 08:49:37 1994",  # obsolete asctime
])
def test_the_three_http_date_formats_parse(value: str) -> None:
    assert http_date(value) == 784111777.0


@pytest.mark.parametrize("value", [
    "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Nov 94 08:49:37 GMT", "Sun 06 Nov 1994 08:49:37 GMT",
    "Sun, 06 Nov  1994 08:49:37 GMT", "Sun, 06-Nov-1994 08:49:37 GMT", "Sun, 06 Nov 1994 08.49.37 GMT",
    "Sun, 06 Nov 1994 8:49:37 GMT", "0", "", "Sun, 31 Feb 1994 08:49:37 GMT",
])
def test_anything_else_is_not_an_http_date(value: str) -> None:
    # RFC 9110 §5.6.7; an Expires that is not one is already expired (RFC 9111 §5.3).
    assert http_date(value) is None


def test_the_first_member_of_age_counts_and_an_invalid_one_is_ignored() -> None:
    # RFC 9111 §5.1: additional members are discarded (`30, 0` is 30 old, `0, 30` is new); not a delta-seconds: no Age.
    assert initial_age(headers(Age="30, 0"), 0.0, 0.0) == 30
    assert initial_age(headers(Age="0, 30"), 0.0, 0.0) == 0
    for invalid in ("abc", "7200.0", "-7200"):
        assert initial_age(headers(Age=invalid), 0.0, 0.0) == 0


def test_initial_age_takes_the_origins_age_plus_the_response_delay() -> None:
    now = 1_000_000.0
    assert initial_age(headers(Age="30"), now - 2, now) == 32
    assert initial_age(headers(Date=email.utils.formatdate(now - 10, usegmt=True)), now, now) == 9  # 1 s resolution
    assert initial_age(headers(Age="-5"), now, now) == 0


@given(st.floats(-1e9, 1e9), st.floats(0, 2e9), st.floats(0, 2e9), st.floats(0, 1e6))
def test_age_is_never_negative_and_never_goes_down(initial: float, stored: float, now: float, later: float) -> None:
    age = current_age(initial, stored, now)
    assert age >= 0
    assert current_age(initial, stored, now + later) >= age


@given(st.lists(st.sampled_from(["30", "-1", "x", "1e3", " 7 ", "99999999999999999999"]), max_size=3),
       st.floats(0, 1e6), st.floats(0, 1e6))
def test_initial_age_is_never_negative_whatever_the_headers(ages: list[str], sent: float, delay: float) -> None:
    pairs = CIMultiDict([("Age", age) for age in ages] + [("Date", "garbage")])
    assert initial_age(CIMultiDictProxy(pairs), sent, sent + delay) >= 0


def test_a_callers_directives_narrow_what_is_fresh() -> None:
    assert acceptable(10, 60, Asks(), may_serve_stale=True)
    assert not acceptable(10, 60, Asks(max_age=5), may_serve_stale=True)
    assert not acceptable(10, 60, Asks(min_fresh=55), may_serve_stale=True)
    assert acceptable(70, 60, Asks(max_stale=20), may_serve_stale=True)
    assert not acceptable(70, 60, Asks(max_stale=20), may_serve_stale=False)  # must-revalidate


@given(st.text(max_size=80))
def test_any_cdn_cache_control_value_is_either_a_dictionary_or_ignored(value: str) -> None:
    said = targeted_directives([value])
    assert said is None or isinstance(said, dict)
