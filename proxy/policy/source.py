"""Reading YAML with its line numbers, so every policy error can say `file:line: key.path: problem`.

`Located` wraps one YAML node with its dotted key path. Its readers substitute `${VAR}` /
`${VAR:-default}` and raise `Invalid`; the loader catches that once per key and records a `Problem`,
so one run reports every error in the file rather than the first.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import yaml

from proxy.policy.units import parse_duration, parse_size

T = TypeVar("T")

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Invalid(ValueError):
    """A value is not what its key expects; the message says what was expected and what was found."""


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class PolicyError(Exception):
    """Every problem found in a policy file, one per line when printed."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(slots=True)
class Context:
    file: str
    environ: Mapping[str, str]
    problems: list[Problem] = field(default_factory=list)


class Located:
    """One YAML node and where it sits: `upstreams.gemini.timeouts.read` at line 14."""

    __slots__ = ("ctx", "key", "node", "path")

    def __init__(self, node: yaml.Node, path: str, ctx: Context, key: yaml.Node | None = None) -> None:
        self.node = node
        self.path = path
        self.ctx = ctx
        self.key = key  # the mapping key this value sits under, if any

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def report(self, message: str) -> None:
        self.ctx.problems.append(Problem(self.ctx.file, self.line, self.path, message))

    def report_at_key(self, message: str) -> None:
        """Report at the key's line (`gemini:`): a block mapping's value only starts on the next line."""
        line = int(self.key.start_mark.line) + 1 if self.key is not None else self.line
        self.ctx.problems.append(Problem(self.ctx.file, line, self.path, message))

    def child_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    # -- structure ----------------------------------------------------------------------------------

    def mapping(self, allowed: Iterable[str] | None = None) -> dict[str, Located]:
        """The keys of a mapping; unknown keys (when `allowed` is given) and duplicates are reported."""
        if not isinstance(self.node, yaml.MappingNode):
            raise Invalid(f"expected a mapping, got {self._kind()}")
        allowed_set = set(allowed) if allowed is not None else None
        entries: dict[str, Located] = {}
        for key_node, value_node in self.node.value:
            key = str(key_node.value)
            child = Located(value_node, self.child_path(key), self.ctx, key_node)
            if key in entries:
                Located(key_node, child.path, self.ctx).report("duplicate key")
                continue
            if allowed_set is not None and key not in allowed_set:
                hint = difflib.get_close_matches(key, sorted(allowed_set), n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                expected = ", ".join(sorted(allowed_set))
                Located(key_node, child.path, self.ctx).report(
                    f"unknown key{suggestion}; expected one of: {expected}"
                )
                continue
            entries[key] = child
        return entries

    def sequence(self) -> list[Located]:
        if not isinstance(self.node, yaml.SequenceNode):
            raise Invalid(f"expected a list, got {self._kind()}")
        return [Located(n, f"{self.path}[{i}]", self.ctx) for i, n in enumerate(self.node.value)]

    def is_null(self) -> bool:
        return isinstance(self.node, yaml.ScalarNode) and self.node.tag == "tag:yaml.org,2002:null"

    # -- scalars ------------------------------------------------------------------------------------

    def text(self) -> str:
        if not isinstance(self.node, yaml.ScalarNode):
            raise Invalid(f"expected a value, got {self._kind()}")
        if self.is_null():
            return ""
        return self._substitute(str(self.node.value))

    def integer(self, minimum: int = 0, maximum: int | None = None) -> int:
        raw = self.text()
        try:
            value = int(raw)
        except ValueError:
            raise Invalid(f"expected a whole number, got {raw!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            raise Invalid(f"expected a whole number {bound}, got {value}")
        return value

    def status(self) -> int:
        return self.integer(100, 599)

    def number(self, minimum: float = 0.0, maximum: float | None = None) -> float:
        raw = self.text()
        try:
            value = float(raw)
        except ValueError:
            raise Invalid(f"expected a number, got {raw!r}") from None
        if not math.isfinite(value):  # nan compares false to every bound, inf passes a minimum
            raise Invalid(f"expected a finite number, got {raw!r}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise Invalid(f"expected a number {bound}, got {raw}")
        return value

    def boolean(self) -> bool:
        raw = self.text().lower()
        if raw in ("true", "yes", "on"):
            return True
        if raw in ("false", "no", "off"):
            return False
        raise Invalid(f"expected true or false, got {raw!r}")

    def duration(self) -> float:
        raw = self.text()
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    def size(self) -> int:
        raw = self.text()
        try:
            return parse_size(int(raw) if raw.isdigit() else raw)
        except ValueError as exc:
            raise Invalid(str(exc)) from None

    def choice(self, options: Iterable[str]) -> str:
        raw = self.text()
        allowed = sorted(options)
        if raw not in allowed:
            raise Invalid(f"expected one of {', '.join(allowed)}, got {raw!r}")
        return raw

    def texts(self) -> list[str]:
        return [item.text() for item in self.sequence()]

    # -- helpers ------------------------------------------------------------------------------------

    def read(self, reader: Callable[[Located], T]) -> T | None:
        """Run one reader; an `Invalid` becomes a recorded problem at this node and `None`."""
        try:
            return reader(self)
        except Invalid as exc:
            self.report(str(exc))
            return None

    def _substitute(self, raw: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            value = self.ctx.environ.get(name)
            if value is not None and (value != "" or default is None):
                return value
            if default is not None:
                return default
            raise Invalid(f"environment variable {name} is not set (write ${{{name}:-default}} to allow that)")

        return _ENV.sub(replace, raw)

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        return repr(self.node.value)


def compose(text: str, ctx: Context) -> Located | None:
    """Parse YAML into a located root, or record the syntax error with its line."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = int(mark.line) + 1 if mark is not None else 0
        ctx.problems.append(Problem(ctx.file, line, "", f"invalid YAML: {exc.problem}"))
        return None
    except yaml.YAMLError as exc:
        ctx.problems.append(Problem(ctx.file, 0, "", f"invalid YAML: {exc}"))
        return None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        ctx.problems.append(Problem(ctx.file, 0, "", "invalid YAML: nested too deeply"))
        return None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        ctx.problems.append(Problem(ctx.file, 1, "", "the policy file is empty"))
        return None
    return Located(node, "", ctx)


def default_environ() -> Mapping[str, str]:
    return os.environ
