"""In-process single-flight: of N concurrent identical misses, one goes upstream and the others wait for it.

The first request for a key leads; later ones follow and receive what the leader landed with (or None when
it had nothing shareable, and they go on by themselves). A leader always lands and finishes, even when
cancelled; between the two (its answer being written, then stored) later requests get the landed value at once.
"""

from __future__ import annotations

import asyncio
from typing import Generic, TypeVar

T = TypeVar("T")


class Flight(Generic[T]):
    def __init__(self, flights: SingleFlight[T], key: str, future: asyncio.Future[T | None], leads: bool) -> None:
        self._flights = flights
        self.key = key
        self._future = future
        self.leads = leads

    async def outcome(self) -> T | None:
        """For a follower: wait for the leader. Shielded, so a follower that gives up does not ground it."""
        return await asyncio.shield(self._future)

    def land(self, value: T | None) -> None:
        """For the leader: hand `value` to the followers, and to any request that joins until `finish`."""
        if self.leads and not self._future.done():
            self._future.set_result(value)

    def finish(self) -> None:
        """For the leader, once its answer is out and stored: the next request for the key leads anew.
        Until then a late identical request gets the landed value at once instead of fetching again."""
        if self.leads:
            self.land(None)
            self._flights.finished(self.key, self._future)


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._flying: dict[str, asyncio.Future[T | None]] = {}

    def join(self, key: str) -> Flight[T]:
        """Lead the flight for `key`, or follow the one already in the air. No await: nothing can slip between."""
        future = self._flying.get(key)
        if future is not None:
            return Flight(self, key, future, leads=False)
        future = self._flying[key] = asyncio.get_running_loop().create_future()
        return Flight(self, key, future, leads=True)

    def forget(self) -> None:
        """Flights in the air keep their followers, but no later request joins them: it leads anew."""
        self._flying.clear()

    def finished(self, key: str, future: asyncio.Future[T | None]) -> None:
        if self._flying.get(key) is future:
            del self._flying[key]

    def __len__(self) -> int:
        return len(self._flying)
