"""Route globs: `*` matches within one path segment, `**` across segments, everything else is literal.

Matched on every request, so the matcher must be linear in the path's length whatever the glob: a backtracking
regex (`**` as `.*`) let `GET /**/a/**/b/**/c` and one crafted 7.8 KB path block the event loop for seconds.
`Glob` simulates the glob's NFA instead, all its states at once as the bits of one integer (shift-and): one pass
over the path, a few integer operations per character, O(len(path) * len(glob) / word size), no backtracking.
The shapes nearly every route has (a literal path, a literal prefix then `**` or `*`) skip the simulation.
"""

from __future__ import annotations

import re

_STARS = re.compile(r"\*+")


class Glob:
    """A compiled route glob; `fullmatch(path)` says whether the whole path matches it."""

    __slots__ = ("_accept", "_literal", "_masks", "_segment", "_shape", "_skip", "_start", "glob")

    def __init__(self, glob: str) -> None:
        self.glob = glob
        # Units: one per literal character, or one wildcard per run of stars. A run of two or more is `**`:
        # `***` is `**` then `*`, which together match exactly what `**` alone does.
        units: list[str] = []  # a character, or "*" (one segment) or "**" (anything)
        last = 0
        for run in _STARS.finditer(glob):
            units.extend(glob[last:run.start()])
            units.append("*" if run.end() - run.start() == 1 else "**")
            last = run.end()
        units.extend(glob[last:])
        wildcards = [i for i, u in enumerate(units) if u in ("*", "**")]
        # The shapes nearly every route has: no wildcard (equality), or one wildcard at the very end (a prefix).
        if not wildcards:
            self._shape, self._literal = "exact", glob
        elif wildcards == [len(units) - 1]:
            self._shape, self._literal = ("prefix" if units[-1] == "**" else "segment"), "".join(units[:-1])
        else:
            self._shape, self._literal = "nfa", ""
        # Bit i set: the simulation is at unit i (has matched units[:i]); bit len(units) set: it matched them all.
        self._masks: dict[str, int] = {}  # character -> the units that are that literal character
        self._segment = 0  # units that are `*`: stay on any character but '/'
        self._skip = 0  # units that are `**`: stay on any character
        for i, unit in enumerate(units):
            if unit == "*":
                self._segment |= 1 << i
            elif unit == "**":
                self._skip |= 1 << i
            else:
                self._masks[unit] = self._masks.get(unit, 0) | (1 << i)
        self._accept = 1 << len(units)
        self._start = self._close(1)

    def _close(self, states: int) -> int:
        """Add the moves that consume nothing: a wildcard may match the empty string. Runs of stars are one unit,
        so no wildcard follows another and one step reaches the closure."""
        return states | ((states & (self._segment | self._skip)) << 1)

    def fullmatch(self, path: str) -> bool:
        shape = self._shape
        if shape == "exact":
            return path == self._literal
        if shape == "prefix":
            return path.startswith(self._literal)
        if shape == "segment":
            return path.startswith(self._literal) and "/" not in path[len(self._literal):]
        states = self._start
        masks, segment, skip, close = self._masks, self._segment, self._skip, self._close
        for char in path:
            stay = states & (skip if char == "/" else segment | skip)
            states = close(((states & masks.get(char, 0)) << 1) | stay)
            if not states:
                return False
        return bool(states & self._accept)

    def __repr__(self) -> str:
        return f"Glob({self.glob!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.glob == self.glob

    def __hash__(self) -> int:
        return hash(self.glob)
