"""One request's time budget: the route's `total`, shortened (never lengthened) by `X-Egress-Timeout`."""

from __future__ import annotations

import time
from dataclasses import dataclass

from proxy.policy.units import parse_duration

CALLER_TIMEOUT_HEADER = "X-Egress-Timeout"


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float  # time.monotonic() value
    budget: float  # seconds granted at the start, for messages
    shortened: bool = False  # by the caller's X-Egress-Timeout: running out is then the caller's choice

    @classmethod
    def start(cls, total: float, caller_header: str | None = None) -> Deadline:
        hint = _caller_seconds(caller_header) if caller_header else None
        budget = total if hint is None else min(total, hint)
        return cls(time.monotonic() + max(budget, 0.0), budget, budget < total)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0


def _caller_seconds(header: str) -> float | None:
    """`5s`, `150ms` or plain seconds (`2.5`); a malformed hint is ignored, it never breaks the request."""
    try:
        return parse_duration(header)
    except ValueError:
        pass
    try:
        return float(header)
    except ValueError:
        return None
