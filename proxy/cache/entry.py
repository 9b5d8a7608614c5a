"""One stored response and its wire format: a magic line, a small JSON header, then the raw body bytes.

No pickle: an entry read back from a shared Redis is data, never code, and a body is never re-encoded.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass

MAGIC = b"EGC1"
_HEAD_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Entry:
    status: int
    headers: tuple[tuple[str, str], ...]  # end-to-end headers, as the upstream sent them
    body: bytes
    stored_at: float  # wall clock: replicas sharing Redis compare it with their own clocks
    ttl: float
    stale_if_error: float = 0.0
    vary: tuple[str, ...] = ()  # headers the upstream's Vary added to the key, for single-flight followers

    @property
    def lifetime(self) -> float:
        """How long the store keeps it: fresh for `ttl`, then a fallback for `stale_if_error`."""
        return self.ttl + self.stale_if_error

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.stored_at)

    def is_fresh(self, now: float | None = None) -> bool:
        return self.age(now) < self.ttl

    def is_usable_stale(self, now: float | None = None) -> bool:
        return self.age(now) < self.lifetime

    def encode(self) -> bytes:
        head = json.dumps(
            {
                "s": self.status,
                "h": self.headers,
                "t": self.stored_at,
                "ttl": self.ttl,
                "sie": self.stale_if_error,
                "v": self.vary,
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
            )
        except (ValueError, KeyError, TypeError):
            return None
