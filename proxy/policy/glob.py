"""Route globs: `*` matches within one path segment, `**` across segments, `{name}` captures one segment's text
(one or more characters, no `/`), everything else is literal.

Matched on every request, so the matcher must be linear in the path's length whatever the glob: a backtracking
regex (`**` as `.*`) let `GET /**/a/**/b/**/c` and one crafted 7.8 KB path block the event loop for seconds.
`Glob` simulates the glob's NFA instead, all its states at once as the bits of one integer (shift-and): one pass
over the path, a few integer operations per character, O(len(path) * len(glob) / word size), no backtracking.
The shapes nearly every route has (a literal path, a literal prefix then `**` or `*`) skip the simulation.

A capture is read back by position, not by a second match: it sits in a segment of its own (with literal text
around it if need be, `/models/{model}:generateContent`), and no `**` comes both before and after it, so the
segment it fills is known by its index from the start (no `**` before it) or from the end (none after it).
`Glob` refuses a capture it could not read that way (`ValueError`, reported by the loader with its line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_STARS = re.compile(r"\*+")
_CAPTURE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
CAPTURE_SYNTAX = "{name} (lowercase letters, digits and '_')"
# Unit kinds besides a literal character: one segment's text, anything, and one character of a segment (a
# capture is that, then `*`: at least one character, never an empty segment).
_SEGMENT, _ANYTHING, _ONE = "*", "**", "?"


@dataclass(frozen=True, slots=True)
class Capture:
    """Where one capture sits: the path segment at `index` (negative: counted from the end), between the literal
    `prefix` and `suffix` of its glob segment."""

    name: str
    index: int
    prefix: str
    suffix: str

    def read(self, segments: list[str]) -> str:
        segment = segments[self.index]
        return unquote(segment[len(self.prefix):len(segment) - len(self.suffix)])


def _captures(glob: str) -> tuple[Capture, ...]:
    """The glob's captures, each placed (see the module's docstring); ValueError for one that cannot be."""
    segments = glob.split("/")
    anything = [i for i, segment in enumerate(segments) if "**" in segment]
    found: list[Capture] = []
    for i, segment in enumerate(segments):
        names = _CAPTURE.findall(segment)
        if not names:
            continue
        if len(names) > 1 or "*" in segment:
            raise ValueError(f"a capture must be alone in its segment with literal text only, got {segment!r}")
        name = names[0]
        if any(c.name == name for c in found):
            raise ValueError(f"the capture {{{name}}} appears twice")
        prefix, _, suffix = segment.partition("{" + name + "}")
        if not any(j < i for j in anything):
            index = i
        elif not any(j > i for j in anything):
            index = i - len(segments)
        else:
            raise ValueError(f"the capture {{{name}}} has '**' both before and after it: which segment it is "
                             "would be ambiguous")
        found.append(Capture(name, index, prefix, suffix))
    return tuple(found)


def _units(glob: str) -> list[str]:
    """One unit per literal character, `*` or `**` per run of stars (a run of two or more is `**`: `***` is `**`
    then `*`, which together match exactly what `**` alone does), and `?` `*` per capture."""
    units: list[str] = []
    last = 0
    for token in re.finditer(r"\*+|\{[^{}]*\}", glob):
        units.extend(glob[last:token.start()])
        text = token.group()
        if text.startswith("{"):
            units += [_ONE, _SEGMENT]
        else:
            units.append(_SEGMENT if len(text) == 1 else _ANYTHING)
        last = token.end()
    units.extend(glob[last:])
    return units


class Glob:
    """A compiled route glob; `fullmatch(path)` says whether the whole path matches it, `captures(path)` what its
    `{name}` parts matched in a path it matches."""

    __slots__ = ("_accept", "_captures", "_literal", "_masks", "_one", "_segment", "_shape", "_skip", "_start",
                 "glob", "names")

    def __init__(self, glob: str) -> None:
        self.glob = glob
        stray = _CAPTURE.sub("", glob)
        if "{" in stray or "}" in stray:
            raise ValueError(f"a brace in a glob starts a capture: {CAPTURE_SYNTAX}")
        self._captures = _captures(glob)
        self.names = frozenset(c.name for c in self._captures)
        units = _units(glob)
        wildcards = [i for i, u in enumerate(units) if u in (_SEGMENT, _ANYTHING, _ONE)]
        # The shapes nearly every route has: no wildcard (equality), or one wildcard at the very end (a prefix).
        if not wildcards:
            self._shape, self._literal = "exact", glob
        elif wildcards == [len(units) - 1]:
            self._shape, self._literal = ("prefix" if units[-1] == _ANYTHING else "segment"), "".join(units[:-1])
        else:
            self._shape, self._literal = "nfa", ""
        # Bit i set: the simulation is at unit i (has matched units[:i]); bit len(units) set: it matched them all.
        self._masks: dict[str, int] = {}  # character -> the units that are that literal character
        self._segment = 0  # units that are `*`: stay on any character but '/'
        self._skip = 0  # units that are `**`: stay on any character
        self._one = 0  # units that take exactly one character but '/' (a capture's first)
        for i, unit in enumerate(units):
            if unit == _SEGMENT:
                self._segment |= 1 << i
            elif unit == _ANYTHING:
                self._skip |= 1 << i
            elif unit == _ONE:
                self._one |= 1 << i
            else:
                self._masks[unit] = self._masks.get(unit, 0) | (1 << i)
        self._accept = 1 << len(units)
        self._start = self._close(1)

    def _close(self, states: int) -> int:
        """Add the moves that consume nothing: a star may match the empty string. Runs of stars are one unit, and
        a capture's star follows its one-character unit, so no star follows another and one step reaches the
        closure."""
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
        masks, segment, skip, one, close = self._masks, self._segment, self._skip, self._one, self._close
        for char in path:
            if char == "/":
                states = close(((states & masks.get(char, 0)) << 1) | (states & skip))
            else:
                states = close((((states & masks.get(char, 0)) | (states & one)) << 1) | (states & (segment | skip)))
            if not states:
                return False
        return bool(states & self._accept)

    def captures(self, path: str) -> tuple[tuple[str, str], ...]:
        """(name, value) of each capture, percent-decoded, for a `path` this glob matches."""
        if not self._captures:
            return ()
        segments = path.split("/")
        return tuple((c.name, c.read(segments)) for c in self._captures)

    def __repr__(self) -> str:
        return f"Glob({self.glob!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.glob == self.glob

    def __hash__(self) -> int:
        return hash(self.glob)
