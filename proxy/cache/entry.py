"""One stored response and its wire format: a magic line, a small JSON header, then the raw body bytes.

No pickle: an entry read back from a shared Redis is data, never code, and a body is never re-encoded.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass

from proxy.cache.freshness import current_age

# EGC2: entries carry their initial age and the origin's revalidation rules; an EGC1 entry (freshness from the
# route's ttl alone) reads as absent, so a replica of the previous version sharing Redis is simply a miss.
MAGIC = b"EGC2"
_HEAD_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]  # end-to-end headers, as the upstream sent them
    body: bytes
    stored_at: float  # wall clock (the response_time of RFC 9111 §4.2.3): replicas sharing Redis compare it
    ttl: float  # the freshness lifetime: the origin's (§4.2.1), else the route's `ttl` (see rules.freshness)
    stale_if_error: float = 0.0  # how long past `ttl` it may stand in for a failure (0 when the origin forbids)
    vary: tuple[str, ...] = ()  # headers the upstream's Vary added to the key, for single-flight followers
    initial_age: float = 0.0  # §4.2.3 corrected_initial_age: how old it already was when it arrived
    revalidate: bool = False  # `no-cache`: never fresh, every use is validated upstream first (§5.2.2.4)
    stale_while_revalidate: float = 0.0  # RFC 5861 §3: served stale meanwhile, while a validation runs
    keep: float = 0.0  # kept this long past its stale windows, for a conditional request to revalidate it

    @property
    def lifetime(self) -> float:
        """How long the store keeps it, from now on: what is left of its freshness, then the longest of its
        stale windows and the time it is kept to be revalidated."""
        left = 0.0 if self.revalidate else max(0.0, self.ttl - self.initial_age)
        return left + max(self.stale_if_error, self.stale_while_revalidate, self.keep)

    def age(self, now: float | None = None) -> float:
        return current_age(self.initial_age, self.stored_at, time.time() if now is None else now)

    def is_fresh(self, now: float | None = None) -> bool:
        return not self.revalidate and self.age(now) < self.ttl

    def is_usable_stale(self, now: float | None = None) -> bool:
        """May stand in for a failing upstream (stale-if-error: the route's, or the origin's)."""
        return self.age(now) < self.ttl + self.stale_if_error

    def within_stale_while_revalidate(self, now: float | None = None) -> bool:
        return not self.revalidate and self.age(now) < self.ttl + self.stale_while_revalidate

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key.lower() == lowered), None)

    @property
    def validators(self) -> tuple[tuple[str, str], ...]:
        """The conditional headers that revalidate it (RFC 9111 §4.3.1): its ETag, else its Last-Modified."""
        etag, modified = self.header("ETag"), self.header("Last-Modified")
        found = (("If-None-Match", etag),) if etag else ()
        return found + ((("If-Modified-Since", modified),) if modified else ())

    def encode(self) -> bytes:
        head = json.dumps(
            {
                "s": self.status,
                "h": self.headers,
                "t": self.stored_at,
                "ttl": self.ttl,
                "sie": self.stale_if_error,
                "v": self.vary,
                "ia": self.initial_age,
                "rv": self.revalidate,
                "swr": self.stale_while_revalidate,
                "k": self.keep,
            },
            separators=(",", ":"),
        ).encode()
        return MAGIC + _HEAD_LENGTH.pack(len(head)) + head + self.body

    @classmethod
    def decode(cls, data: bytes) -> Entry | None:
        """None for anything that is not an entry this code wrote (another version, a foreign key)."""
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _HEAD_LENGTH.size:
            return None
        (length,) = _HEAD_LENGTH.unpack_from(data, len(MAGIC))
        start = len(MAGIC) + _HEAD_LENGTH.size
        try:
            head = json.loads(data[start : start + length])
            return cls(
                status=int(head["s"]),
                headers=tuple((str(k), str(v)) for k, v in head["h"]),
                body=data[start + length :],
                stored_at=float(head["t"]),
                ttl=float(head["ttl"]),
                stale_if_error=float(head["sie"]),
                vary=tuple(str(name) for name in head["v"]),
                initial_age=float(head["ia"]),
                revalidate=bool(head["rv"]),
                stale_while_revalidate=float(head["swr"]),
                keep=float(head["k"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
