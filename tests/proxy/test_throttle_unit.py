"""Throttle signals, pure: how `Retry-After` and providers' bodies become one delay (`throttle_delay`,
`retry_after_seconds`, `needs_body`), and the per-upstream `ThrottleClock` that holds the next requests back.
No sidecar and no sockets; the clock's waits are a fraction of a second."""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import textwrap
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.deadline import Deadline
from proxy.errors import Throttled
from proxy.policy import ThrottleRule, parse_policy
from proxy.policy.units import MAX_DURATION
from proxy.throttle import ThrottleClock, Throttling, needs_body, retry_after_seconds, throttle_delay, throttling

# The shipped policy's two shapes of "slow down": Gemini's RetryInfo in a 429 body, WhatsApp's 400 + error.code.
POLICY = parse_policy(
    """
upstreams:
  gemini:
    url: http://127.0.0.1:1
    throttle:
      - {status: 429, delay_field: "error.details[].retryDelay", delay: 1s}
  whatsapp:
    url: http://127.0.0.1:2
    throttle:
      - {status: 400, field: error.code, codes: [130429, 131056], delay: 300ms}
      - {status: 503, delay: 2s}
""",
    "p.yaml",
    {},
)
GEMINI = POLICY.upstreams["gemini"].throttle
WHATSAPP = POLICY.upstreams["whatsapp"].throttle


def body(data: object) -> bytes:
    return json.dumps(data).encode()


def retry_info(delay: object) -> bytes:
    return body({"error": {"code": 429, "details": [{"@type": "type.googleapis.com/google.rpc.Debug"},
                                                    {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                                     "retryDelay": delay}]}})


def whatsapp_error(code: object) -> bytes:
    return body({"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": code}})


# -- retry_after_seconds ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "seconds"), [("7", 7.0), (" 7 ", 7.0), ("0", 0.0), ("120", 120.0)])
def test_retry_after_delta_seconds_are_seconds(header: str, seconds: float) -> None:
    assert retry_after_seconds(header) == seconds


def test_retry_after_http_date_is_the_time_left_until_then() -> None:
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    seconds = retry_after_seconds(when)
    assert seconds is not None and 3.9 < seconds <= 5.0  # an HTTP date has a one-second resolution


def test_retry_after_http_date_in_the_past_is_no_wait() -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


@pytest.mark.parametrize("header", [None, "", "   ", "soon", "-5", "1.5", "5s", "0x10", "Wed, 32 Foo 2026", "\x00"])
def test_retry_after_garbage_negative_or_fractional_is_none(header: str | None) -> None:
    assert retry_after_seconds(header) is None


def test_retry_after_non_ascii_digits_are_none_not_a_crash() -> None:
    """Regression: `"²".isdigit()` is True and `float("²")` raises: an upstream sending `Retry-After: ²` (its UTF-8
    bytes decode to it) crashed the retry loop into a bare 500."""
    assert retry_after_seconds("²") is None
    assert retry_after_seconds("١٢") is None  # Arabic-Indic digits: DIGIT in HTTP is ASCII only


def test_retry_after_huge_is_bounded_to_a_year_not_infinite() -> None:
    """Regression: `float("9" * 400)` is inf, which stuck the upstream's ThrottleClock for ever and crashed the
    refusal's Retry-After advice (`round(inf)` raises OverflowError): every later request got a bare 500."""
    assert retry_after_seconds("9" * 400) == MAX_DURATION
    assert retry_after_seconds(str(10**12)) == MAX_DURATION
    assert retry_after_seconds("Fri, 31 Dec 9999 23:59:59 GMT") == MAX_DURATION
    assert retry_after_seconds("86400") == 86400.0  # a day is a day


@given(st.text(max_size=60))
def test_retry_after_never_raises_and_is_none_or_a_finite_non_negative_float(text: str) -> None:
    seconds = retry_after_seconds(text)
    assert seconds is None or (isinstance(seconds, float) and math.isfinite(seconds) and seconds >= 0.0)


@given(st.one_of(st.integers(min_value=0).map(str), st.text("0123456789", min_size=1, max_size=500)))
def test_retry_after_any_decimal_integer_is_a_finite_delay(text: str) -> None:
    seconds = retry_after_seconds(text)
    assert seconds is not None and math.isfinite(seconds) and 0.0 <= seconds <= MAX_DURATION


# -- throttle_delay ----------------------------------------------------------------------------------------


def test_a_bare_429_is_throttled_with_no_delay() -> None:
    assert throttle_delay((), 429, None, None) == 0.0


def test_a_429_retry_after_is_its_delay_without_any_rule() -> None:
    assert throttle_delay((), 429, "3", None) == 3.0


@pytest.mark.parametrize("status", [200, 400, 500, 503])
def test_other_statuses_without_a_rule_are_not_throttled_even_with_retry_after(status: int) -> None:
    assert throttle_delay((), status, "3", None) is None


@pytest.mark.parametrize(("delay", "seconds"), [("7s", 7.0), ("1.5s", 1.5), ("500ms", 0.5), (2, 2.0), (0.25, 0.25)])
def test_the_delay_field_in_the_body_is_the_delay(delay: object, seconds: float) -> None:
    assert throttle_delay(GEMINI, 429, None, retry_info(delay)) == seconds


def test_retry_after_wins_over_the_bodys_delay_field() -> None:
    assert throttle_delay(GEMINI, 429, "4", retry_info("1s")) == 4.0


def test_the_rules_delay_when_neither_header_nor_body_says() -> None:
    assert throttle_delay(GEMINI, 429, None, body({"error": {"code": 429}})) == 1.0
    assert throttle_delay(GEMINI, 429, None, retry_info("not a duration")) == 1.0


def test_a_body_that_is_not_json_falls_back_to_the_rules_delay() -> None:
    assert throttle_delay(GEMINI, 429, None, b"<html>slow down</html>") == 1.0
    assert throttle_delay(GEMINI, 429, None, b"\xff\xfe") == 1.0


@pytest.mark.parametrize("code", [130429, "130429", 131056])
def test_whatsapps_400_with_a_throttle_code_is_throttled_whatever_the_codes_json_type(code: object) -> None:
    assert throttle_delay(WHATSAPP, 400, None, whatsapp_error(code)) == pytest.approx(0.3)


def test_whatsapps_400_with_a_throttle_code_honours_retry_after() -> None:
    assert throttle_delay(WHATSAPP, 400, "6", whatsapp_error(130429)) == 6.0


@pytest.mark.parametrize("payload", [whatsapp_error(100), whatsapp_error(None), body({"error": "x"}), b"", b"{", None])
def test_a_400_without_a_throttle_code_is_an_ordinary_400(payload: bytes | None) -> None:
    assert throttle_delay(WHATSAPP, 400, "6", payload) is None


def test_a_rule_without_a_field_matches_on_the_status_alone() -> None:
    assert throttle_delay(WHATSAPP, 503, None, None) == 2.0
    assert throttle_delay(WHATSAPP, 503, "1", b"anything") == 1.0


@pytest.mark.parametrize("raw", ["1e400", "1" + "0" * 400, "Infinity", "-Infinity", "NaN", "-3"],
                         ids=["1e400", "10**400", "Infinity", "-Infinity", "NaN", "-3"])
def test_a_bodys_unusable_numeric_delay_never_becomes_an_infinite_nan_or_negative_delay(raw: str) -> None:
    """Regression (with the huge Retry-After): JSON numbers parse to inf and NaN too, and a JSON integer past a
    float's range made `float()` raise OverflowError (a bare 500)."""
    data = b'{"error": {"details": [{"retryDelay": ' + raw.encode() + b"}]}}"
    delay = throttle_delay(GEMINI, 429, None, data)
    assert delay is not None and math.isfinite(delay) and 0.0 <= delay <= MAX_DURATION


# -- needs_body ----------------------------------------------------------------------------------------------


def test_needs_body_only_for_a_status_whose_rule_reads_the_body() -> None:
    assert needs_body(GEMINI, 429)  # delay_field
    assert needs_body(WHATSAPP, 400)  # field
    assert not needs_body(WHATSAPP, 503)  # a rule on the status alone: the headers say everything
    assert not needs_body(WHATSAPP, 429)
    assert not needs_body((), 429)
    assert not needs_body((ThrottleRule(status=200, delay=1.0),), 200)


# -- ThrottleClock -----------------------------------------------------------------------------------------


def test_a_new_clock_holds_nothing() -> None:
    assert ThrottleClock("g").remaining() == 0.0


def test_note_holds_the_upstream_for_the_delay_and_remaining_counts_down() -> None:
    clock = ThrottleClock("g")
    clock.note(0.2)
    first = clock.remaining()
    assert 0.15 < first <= 0.2
    time.sleep(0.05)
    assert clock.remaining() < first
    time.sleep(0.2)
    assert clock.remaining() == 0.0


def test_a_shorter_note_never_shortens_a_longer_hold() -> None:
    clock = ThrottleClock("g")
    clock.note(5.0)
    clock.note(0.1)
    assert clock.remaining() > 4.9
    clock.note(10.0)
    assert clock.remaining() > 9.9


async def test_wait_returns_at_once_when_nothing_is_held() -> None:
    started = time.monotonic()
    await ThrottleClock("g").wait(Deadline.start(5.0))
    assert time.monotonic() - started < 0.05


async def test_wait_sleeps_out_a_hold_that_fits_the_deadline() -> None:
    clock = ThrottleClock("g")
    clock.note(0.2)
    started = time.monotonic()
    await clock.wait(Deadline.start(5.0))
    assert 0.18 <= time.monotonic() - started < 0.5
    assert clock.remaining() == 0.0


async def test_wait_refuses_at_once_with_throttled_when_the_hold_outlasts_the_deadline() -> None:
    clock = ThrottleClock("whatsapp")
    clock.note(0.2)
    started = time.monotonic()
    with pytest.raises(Throttled) as refused:
        await clock.wait(Deadline.start(0.1))
    assert time.monotonic() - started < 0.05  # fail fast: no time spent waiting for what cannot come
    error = refused.value
    assert (error.status, error.reason, error.upstream, error.sent) == (503, "throttled", "whatsapp", False)
    assert error.retry_after is not None and 0.1 < error.retry_after <= 0.2
    assert error.advice() == "1"  # whole seconds, rounded up


async def test_a_huge_noted_delay_still_refuses_with_usable_advice() -> None:
    """What a bounded Retry-After leads to: a refusal whose advice renders (inf made `advice()` raise)."""
    clock = ThrottleClock("g")
    delay = throttle_delay((), 429, "9" * 400, None)
    assert delay is not None
    clock.note(delay)
    with pytest.raises(Throttled) as refused:
        await clock.wait(Deadline.start(1.0))
    assert refused.value.advice() == str(int(MAX_DURATION))


async def test_waiters_on_one_clock_share_the_hold() -> None:
    clock = ThrottleClock("g")
    clock.note(0.2)
    started = time.monotonic()
    await asyncio.gather(*(clock.wait(Deadline.start(5.0)) for _ in range(5)))
    assert 0.18 <= time.monotonic() - started < 0.5  # together, not one after the other


def test_carry_keeps_the_previous_clock_and_its_hold_over_a_reload() -> None:
    upstream = POLICY.upstreams["whatsapp"]
    fresh = ThrottleClock.carry(None, upstream)
    assert fresh.upstream == "whatsapp" and fresh.remaining() == 0.0
    fresh.note(5.0)
    reloaded = parse_policy(
        "upstreams:\n  whatsapp:\n    url: http://127.0.0.1:3\n    throttle: [{status: 429, delay: 9s}]\n", "p.yaml", {}
    ).upstreams["whatsapp"]
    carried = ThrottleClock.carry(fresh, reloaded)
    assert carried is fresh  # a provider's "slow down" does not end with a new policy, even a changed one
    assert carried.remaining() > 4.9


def test_a_rule_names_the_limits_its_answer_is_about():
    [rule] = parse_policy(textwrap.dedent("""\
        upstreams:
          whatsapp:
            url: http://127.0.0.1:1
            throttle: [{status: 400, field: error.code, codes: [131056], delay: 6s, limits: [pair]}]
            routes:
              - name: send
                match: POST /v19.0/{phone_id}/messages
                rate_limit: {backend: memory, limits: [{name: pair, key: "{phone_id}", rate: 1/6s}]}
        """), "p.yaml", {}).upstreams["whatsapp"].throttle
    assert throttling([rule], 400, None, whatsapp_error(131056)) == Throttling(6.0, frozenset({"pair"}))
    assert throttling([rule], 429, "2", None) == Throttling(2.0)  # any 429: the whole upstream
    assert throttling([rule], 400, None, whatsapp_error(100)) is None
