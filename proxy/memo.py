"""The sidecar's one memo: a bounded map from a key to a value made once, evicting the least recently used.

Every remembered computation on the request path goes through `Memo` (route matches, metric children, cache key
strings, rendered error answers, decoded cache entries, ...), so there is one bound and one eviction rule to
reason about: at most `maxsize` values; a new one past the bound pushes out the one unused the longest. A value
must be a pure function of its key (an evicted one is simply made again), so a memo is never a source of truth.

    routes = Memo[tuple[str, str], Target](1024)
    target = routes.get((method, raw_target), match)  # match(key) runs only when the key is not remembered

`make` raising remembers nothing (a refused request target is matched again the next time, as with
`functools.lru_cache`). Not thread-safe: the sidecar reads and fills its memos from the event loop only.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Absent(enum.Enum):
    ABSENT = enum.auto()


_ABSENT: Final = _Absent.ABSENT  # a sentinel whose `is` test narrows the type, with no cast to call


class Memo(Generic[K, V]):
    __slots__ = ("_values", "maxsize")

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"a memo holds at least one value, not {maxsize}")
        self.maxsize = maxsize
        self._values: collections.OrderedDict[K, V] = collections.OrderedDict()

    def get(self, key: K, make: Callable[[K], V]) -> V:
        """The value remembered for `key`, or `make(key)`, remembered."""
        values = self._values
        # A sentinel rather than `try: values[key]`: a miss then costs no exception (first sight of every key).
        value = values.get(key, _ABSENT)
        if value is _ABSENT:
            value = values[key] = make(key)
            if len(values) > self.maxsize:
                values.popitem(last=False)
        else:
            values.move_to_end(key)
        return value

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def clear(self) -> None:
        self._values.clear()
