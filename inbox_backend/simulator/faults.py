"""Fault definitions and the book that decides which fault (if any) hits a request."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Final, Literal, get_args

from .config import UPSTREAMS

FaultKind = Literal["status", "delay", "hang", "reset_before", "reset_after", "slow_stream", "throttle"]
FAULT_KINDS: Final[tuple[str, ...]] = get_args(FaultKind)

_SETTABLE: Final = (
    "upstream",
    "kind",
    "route",
    "count",
    "ratio",
    "status",
    "body",
    "headers",
    "retry_after",
    "delay",
    "chunk_size",
    "interval",
    "variant",
)


@dataclass
class Fault:
    """One injected misbehaviour.

    ``upstream`` is one of ``gemini``, ``whatsapp``, ``whatsapp_media``, ``supabase``, or a glob
    (``*`` = all, ``whatsapp*`` = Graph API and media host).
    ``route`` is a route name (``generate``, ``send_message``, ``rest:messages:POST`` ...) or a
    glob (``rest:*:GET``); ``None`` matches every route. Route matching is case-insensitive.

    Scope: ``count`` = apply to the next N matching requests; ``ratio`` = apply to that fraction
    of matching requests (deterministic: requests 1/ratio, 2/ratio, ...); both = the ratio until
    N applications; neither = every matching request until cleared.

    Kinds:

    * ``status``: answer ``status`` (default 503) with ``body`` (JSON value or text; default: the
      provider's error shape) and ``headers``; ``retry_after`` adds a ``Retry-After`` header.
    * ``delay``: wait ``delay`` seconds then process and answer normally (the request is
      processed even when the client gave up meanwhile, as a slow real upstream would).
    * ``hang``: never answer; the handler ends when the client goes away.
    * ``reset_before``: reset the TCP connection before reading the request body.
    * ``reset_after``: read and process the request (a WhatsApp message counts as delivered, a
      row is inserted) then reset the connection without answering.
    * ``slow_stream``: normal answer, body written ``chunk_size`` bytes at a time every ``interval`` s.
    * ``throttle``: the provider's rate-limit error (Gemini 429 RESOURCE_EXHAUSTED with RetryInfo
      ``retry_after``; WhatsApp 400 #130429, or #131056 with ``variant="pair"``; Supabase 429).

    ``delay`` also applies to ``status``, ``throttle`` and ``slow_stream``: seconds to wait first.
    """

    upstream: str
    kind: FaultKind
    route: str | None = None
    count: int | None = None
    ratio: float | None = None
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    retry_after: float | None = None
    delay: float = 0.0
    chunk_size: int = 64
    interval: float = 0.05
    variant: str | None = None
    id: int = 0
    matched: int = 0
    applied: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.upstream, str) or not any(fnmatchcase(u, self.upstream) for u in UPSTREAMS):
            raise ValueError(
                f"upstream must be one of {', '.join(UPSTREAMS)} or a glob such as '*', not {self.upstream!r}"
            )
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}, not {self.kind!r}")
        if self.route is not None and (not isinstance(self.route, str) or not self.route):
            raise ValueError("route must be a non-empty string or null")
        if self.count is not None and (_not_int(self.count) or self.count < 1):
            raise ValueError("count must be an integer >= 1")
        if self.ratio is not None and (_not_number(self.ratio) or not 0 < self.ratio <= 1):
            raise ValueError("ratio must be a number in (0, 1]")
        if self.status is not None and (_not_int(self.status) or not 100 <= self.status <= 599):
            raise ValueError("status must be an HTTP status code")
        if not isinstance(self.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.headers.items()
        ):
            raise ValueError("headers must map strings to strings")
        if self.retry_after is not None and (_not_number(self.retry_after) or self.retry_after < 0):
            raise ValueError("retry_after must be a number >= 0")
        if _not_number(self.delay) or self.delay < 0:
            raise ValueError("delay must be a number >= 0")
        if _not_int(self.chunk_size) or self.chunk_size < 1:
            raise ValueError("chunk_size must be an integer >= 1")
        if _not_number(self.interval) or self.interval < 0:
            raise ValueError("interval must be a number >= 0")
        if self.variant is not None and self.variant not in ("rate", "pair"):
            raise ValueError("variant must be 'rate' or 'pair'")
        if self.kind == "delay" and self.delay == 0:
            self.delay = 1.0

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """Build a fault from control-API JSON; raises ``ValueError`` with a readable message."""
        if not isinstance(data, dict):
            raise ValueError("a fault must be a JSON object")
        unknown = sorted(set(data) - set(_SETTABLE))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        for required in ("upstream", "kind"):
            if not isinstance(data.get(required), str):
                raise ValueError(f"fault field {required!r} is required (a string)")
        headers = data.get("headers") or {}
        if isinstance(headers, dict):
            headers = {str(k): str(v) for k, v in headers.items()}
        kwargs = {k: v for k, v in data.items() if k != "headers"}
        return cls(headers=headers, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "upstream": self.upstream,
            "route": self.route,
            "kind": self.kind,
            "count": self.count,
            "ratio": self.ratio,
            "status": self.status,
            "body": self.body,
            "headers": dict(self.headers),
            "retry_after": self.retry_after,
            "delay": self.delay,
            "chunk_size": self.chunk_size,
            "interval": self.interval,
            "variant": self.variant,
            "matched": self.matched,
            "applied": self.applied,
            "remaining": None if self.count is None else self.count - self.applied,
        }

    def matches(self, upstream: str, route: str) -> bool:
        if not fnmatchcase(upstream, self.upstream):
            return False
        return self.route is None or fnmatchcase(route.lower(), self.route.lower())

    @property
    def exhausted(self) -> bool:
        return self.count is not None and self.applied >= self.count

    def fires(self) -> bool:
        """Register one matching request; true if the fault applies to it."""
        self.matched += 1
        if self.ratio is None:
            return True
        return math.floor(self.matched * self.ratio + 1e-9) > math.floor(
            (self.matched - 1) * self.ratio + 1e-9
        )


def _not_int(value: object) -> bool:
    return not isinstance(value, int) or isinstance(value, bool)


def _not_number(value: object) -> bool:
    return not isinstance(value, int | float) or isinstance(value, bool)


class FaultBook:
    """Active faults in insertion order; the first one that fires for a request wins."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1

    def add(self, fault: Fault) -> Fault:
        fault.validate()
        fault.id = self._next_id
        fault.matched = 0
        fault.applied = 0
        self._next_id += 1
        self._faults.append(fault)
        return fault

    def remove(self, fault_id: int) -> bool:
        before = len(self._faults)
        self._faults = [f for f in self._faults if f.id != fault_id]
        return len(self._faults) != before

    def clear(self) -> None:
        self._faults.clear()

    def list(self) -> list[Fault]:
        return list(self._faults)

    def take(self, upstream: str, route: str) -> Fault | None:
        """Pick the fault for one request (consuming one unit of its count)."""
        for fault in self._faults:
            if fault.matches(upstream, route) and fault.fires():
                fault.applied += 1
                if fault.exhausted:
                    self._faults.remove(fault)
                return fault
        return None
