"""Throttling: recognise "slow down" however a provider says it, and share what was learnt.

`Retry-After` (seconds or an HTTP date), Gemini's `google.rpc.RetryInfo.retryDelay` inside a 429 body and
WhatsApp's HTTP 400 with `error.code` 130429 all become one thing: a delay. The upstream's `ThrottleClock`
then holds every other request to it until the delay has passed, instead of each hitting the limit again.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Iterator, Sequence
from email.utils import parsedate_to_datetime
from typing import Any, NamedTuple

from proxy.deadline import Deadline
from proxy.errors import Throttled
from proxy.policy import ThrottleRule, Upstream
from proxy.policy.units import MAX_DURATION, parse_duration

THROTTLE_STATUS = 429
RETRY_AFTER_STATUSES = frozenset({429, 503})


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After: 7` or `Retry-After: Wed, 21 Oct 2026 07:28:00 GMT` -> seconds from now (at most a year);
    None for anything else. Never raises: the header is the upstream's text, whatever it is."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # DIGIT is ASCII (RFC 9110 §10.2.3): str.isdigit() alone takes "²"
        return _bounded(float(value))
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return _bounded(max(0.0, when - time.time()))


def _bounded(seconds: float) -> float | None:
    """A delay an upstream asked for, as the rest of the sidecar can use it: None when it is no delay (negative,
    NaN), at most a year (MAX_DURATION, like any duration in the policy). An unbounded one (`Retry-After: 999...9`
    is infinity as a float, so is `1e400` in a JSON body) held the upstream's ThrottleClock for ever and crashed
    the refusal's advice (`round(inf)`)."""
    if math.isnan(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_DURATION)


def _walk(data: Any, path: str) -> Iterator[Any]:
    """Values at a dotted JSON path; `name[]` walks every element of a list (`error.details[].retryDelay`)."""
    values = [data]
    for part in path.split("."):
        each = part.endswith("[]")
        key = part[:-2] if each else part
        step: list[Any] = []
        for value in values:
            if isinstance(value, dict) and key in value:
                found = value[key]
                if each and isinstance(found, list):
                    step.extend(found)
                elif not each:
                    step.append(found)
        values = step
    yield from values


def _delay_value(raw: Any) -> float | None:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        try:
            return _bounded(float(raw))
        except OverflowError:  # a JSON integer past a float's range
            return MAX_DURATION
    if isinstance(raw, str):
        text = raw.strip()
        try:
            return parse_duration(text)  # "7s", "1.5s", "500ms" (protobuf Duration JSON is "7s")
        except ValueError:
            return retry_after_seconds(text)
    return None


def needs_body(rules: Sequence[ThrottleRule], status: int) -> bool:
    return any(rule.status == status and (rule.field or rule.delay_field) for rule in rules)


class Throttling(NamedTuple):
    """What a throttle answer says: how long to leave the upstream alone, and which of the route's rate limits it
    is about (its rule's `limits`; empty: the whole upstream)."""

    delay: float
    limits: frozenset[str] = frozenset()


def throttling(
    rules: Sequence[ThrottleRule], status: int, retry_after: str | None, body: bytes | None
) -> Throttling | None:
    """What this response says if it says "throttled", else None: the first rule it meets (its status, and a code
    at its `field` if it names one), or any 429."""
    parsed: Any = None
    if body:
        try:
            parsed = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            parsed = None
    header_delay = retry_after_seconds(retry_after)
    for rule in rules:
        if rule.status != status:
            continue
        if rule.field and not any(str(v) in rule.codes for v in _walk(parsed, rule.field)):
            continue
        if header_delay is not None:
            return Throttling(header_delay, rule.limits)
        if rule.delay_field:
            for raw in _walk(parsed, rule.delay_field):
                delay = _delay_value(raw)
                if delay is not None:
                    return Throttling(delay, rule.limits)
        return Throttling(rule.delay, rule.limits)
    if status == THROTTLE_STATUS:
        return Throttling(header_delay if header_delay is not None else 0.0)
    return None


def throttle_delay(
    rules: Sequence[ThrottleRule], status: int, retry_after: str | None, body: bytes | None
) -> float | None:
    """The delay this response asks for if it says "throttled", else None."""
    said = throttling(rules, status, retry_after, body)
    return None if said is None else said.delay


class ThrottleClock:
    """Per upstream: until when the upstream asked to be left alone.

    Lifetime: carried over every reload of its upstream (a provider's "slow down" does not end with a new policy)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self._until = 0.0

    @classmethod
    def carry(cls, previous: ThrottleClock | None, upstream: Upstream) -> ThrottleClock:
        return previous if previous is not None else cls(upstream.name)

    def note(self, delay: float) -> None:
        self._until = max(self._until, time.monotonic() + delay)

    def remaining(self) -> float:
        return max(0.0, self._until - time.monotonic())

    async def wait(self, deadline: Deadline) -> None:
        """Wait out a known throttle, or fail fast with 503 `throttled` if it outlasts the deadline."""
        delay = self.remaining()
        if delay <= 0:
            return
        if delay >= deadline.remaining():
            raise Throttled(f"the upstream asked for {delay:.1f}s of quiet", upstream=self.upstream, retry_after=delay)
        await asyncio.sleep(delay)
