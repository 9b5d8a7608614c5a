"""GCRA (the generic cell rate algorithm) in process: the same arithmetic the Redis script does (`proxy.pacing.shared`),
over `time.monotonic()` instead of Redis's clock.

A budget is one number, its TAT (theoretical arrival time): the instant by which every turn taken so far has been
paid for at the limit's rate. A request takes the next turn: TAT' = max(TAT, now) + interval, and may go once
TAT' - burst * interval is reached, i.e. after waiting max(0, TAT' - burst * interval - now). A bucket left alone
refills (TAT falls behind `now`); `burst` turns fit in it at once. Taking a turn that lies in the future is how a
request waits its turn: the next request on the same key is booked after it, so the wait is FIFO per key and no
queue is kept anywhere but in that number.

Each of a request's limits books its own next turn, and the request goes at the latest of them: a limit that is not
the one holding it back thus counts it a little early (at most `wait`). Booking every limit at the request's own
send time instead would let one recipient's pair limit hold the whole number's throughput back for seconds
(head-of-line), which is worse; docs/pacing.md has the numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

Bucket = tuple[str, str]  # (the limit's name, the rendered key)
MAX_BUCKETS = 100_000  # budgets kept in one process; a full bucket (TAT in the past) needs no memory at all


# Named tuples, not frozen dataclasses: a few are made per paced request, and a frozen dataclass's __init__ (one
# object.__setattr__ per field) costs several times a tuple's.
class Turn(NamedTuple):
    """What one limit asks of a request: one turn of `bucket`, which refills one turn per `interval` seconds and
    holds `burst` turns."""

    bucket: Bucket
    interval: float
    burst: int


class Decision(NamedTuple):
    """A request's turn: `admitted` to go after `delay` seconds, or refused (its turn was `delay` seconds away,
    further than it may wait; nothing was taken). `waits` are each limit's own; `tats` each bucket's TAT after the
    decision, in seconds from now (for `/upstreams`); `source` what decided: memory, redis or fallback."""

    admitted: bool
    delay: float
    waits: tuple[float, ...]
    tats: tuple[float, ...]
    source: str


EPSILON = 1e-9  # float noise: `(now + 1.0) - 1.0` need not be `now`, and a turn due now must not wait 1e-11 s


def next_turn(tat: float, now: float, interval: float, burst: int) -> tuple[float, float]:
    """(the bucket's TAT once one more turn is taken, how long until that turn)."""
    after = max(tat, now) + interval
    wait = after - burst * interval - now
    return after, wait if wait > EPSILON else 0.0


def held(tat: float, now: float, interval: float, burst: int, delay: float) -> float:
    """The bucket's TAT when no turn may come before `now + delay`, and turns then come one by one (a provider's
    "slow down": no burst right after it)."""
    return max(tat, now + delay + (burst - 1) * interval)


def tokens(tat: float, now: float, interval: float, burst: int) -> float:
    """Turns that could be taken at once at `now`."""
    return min(float(burst), max(0.0, burst - (tat - now) / interval))


class Buckets:
    """Budgets in this process, by bucket. Lifetime: the pacer's (carried over reloads: the turns taken are
    history the provider remembers too)."""

    def __init__(self, bound: int = MAX_BUCKETS) -> None:
        self._tats: dict[Bucket, float] = {}  # in the order last touched
        self._bound = bound

    def __len__(self) -> int:
        return len(self._tats)

    def take(self, turns: Sequence[Turn], allowance: float, source: str = "memory") -> Decision:
        """One turn of every bucket if the latest comes within `allowance` seconds; else none."""
        now = time.monotonic()
        tats = self._tats
        current, after, waits = [], [], []
        for bucket, interval, burst in turns:  # one plain loop: this runs on every paced request
            tat = tats.get(bucket, now)
            tat = tat if tat > now else now
            booked, wait = next_turn(tat, now, interval, burst)
            current.append(tat)
            after.append(booked)
            waits.append(wait)
        delay = max(waits, default=0.0)
        if delay > allowance:
            return Decision(False, delay, tuple(waits), tuple(tat - now for tat in current), source)
        for turn, booked in zip(turns, after, strict=True):
            self._store(turn.bucket, booked, now)
        return Decision(True, delay, tuple(waits), tuple(booked - now for booked in after), source)

    def hold(self, turns: Sequence[Turn], delay: float) -> None:
        now = time.monotonic()
        for t in turns:
            self._store(t.bucket, held(self._tats.get(t.bucket, now), now, t.interval, t.burst, delay), now)

    def seed(self, bucket: Bucket, tat: float) -> None:
        """Owe at least what `tat` says (the shared budget's last TAT, as the fallback takes over from Redis)."""
        if tat > self._tats.get(bucket, float("-inf")):
            self._tats[bucket] = tat

    def tat(self, bucket: Bucket) -> float | None:
        return self._tats.get(bucket)

    def _store(self, bucket: Bucket, tat: float, now: float) -> None:
        tats = self._tats
        tats.pop(bucket, None)
        tats[bucket] = tat
        if len(tats) > self._bound:
            # Full buckets first (they remember nothing), then the least recently touched.
            for stale in [b for b, t in tats.items() if t <= now] or list(tats)[: len(tats) // 10 or 1]:
                del tats[stale]
