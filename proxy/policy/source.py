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
from typing import Any, TypeVar

import yaml

from proxy.policy.redact import REDACTED, redact_query
from proxy.policy.units import parse_duration, parse_size

T = TypeVar("T")

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# Bounds on what a policy file may ask of the parser, so a hostile or mistaken file fails in milliseconds with a
# clear line instead of freezing a reload or exhausting memory. A real policy is a few KB, 7 levels deep, and
# shares a block or two with an anchor.
MAX_POLICY_BYTES = 1024 * 1024
MAX_DEPTH = 32  # nesting levels (the schema's deepest key, upstreams.x.routes[0].cache.vary[0], is 6)
MAX_ALIAS_NODES = 10_000  # nodes the aliases add to the document, counted as if each were written out
MAX_DIGITS = 30  # a whole number longer than this is out of every range (and `int()` of 5,000 digits is refused)
MAX_SHOWN = 80  # characters of a value quoted in a message
BEYOND: int = 10**MAX_DIGITS  # what a longer number reads as: out of every range, and cheap to compare

_WHOLE = re.compile(r"\s*[+-]?([0-9](?:_?[0-9])*)\s*")  # ASCII digits only: '²'.isdigit() is true, int('²') fails


def shown(value: str) -> str:
    """A value quoted in a message: the userinfo of anything URL-like redacted (a password in an upstream or Redis URL
    must not reach `check`'s output or `/reload`'s body), a secret query value redacted, a long value cut short."""
    if "@" in value and ("://" in value or ":" in value.partition("@")[0]):
        # Up to the last '@': a malformed URL may hold '/', '#' or '@' in its password.
        scheme, sep, rest = value.partition("://") if "://" in value else ("", "", value)
        value = f"{scheme}{sep}{REDACTED}@{rest.rpartition('@')[2]}"
    if "?" in value:
        head, _, query = value.partition("?")
        value = f"{head}?{redact_query(query)}"
    if len(value) > MAX_SHOWN:
        value = f"{value[: MAX_SHOWN - 20]}... ({len(value)} characters)"
    return repr(value)


def whole_number(raw: str) -> int | None:
    """`raw` as a whole number (ASCII digits, an optional sign, `_` between digits as YAML allows), or None.
    A number of more than MAX_DIGITS digits is returned as a sign-preserving sentinel beyond any bound."""
    match = _WHOLE.fullmatch(raw)
    if not match:
        return None
    if len(match.group(1).replace("_", "")) > MAX_DIGITS:
        return -BEYOND if raw.strip().startswith("-") else BEYOND
    return int(raw)


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
        # A key is quoted in every message below it: redacted, cut short and on one line like any other value.
        odd = not key or key != key.strip() or not key.isprintable() or len(key) > MAX_SHOWN
        key = shown(key) if odd or "@" in key or "?" in key else key
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

    def find(self, *steps: str | int) -> Located | None:
        """The node under this one at `steps` (mapping keys, list indexes), or None; reports nothing (unlike
        `mapping`): for a rule across keys that reports at one of them after the reading is done."""
        node: Located | None = self
        for step in steps:
            if node is None:
                return None
            if isinstance(step, int) and isinstance(node.node, yaml.SequenceNode):
                items = node.node.value
                node = Located(items[step], f"{node.path}[{step}]", node.ctx) if step < len(items) else None
            elif isinstance(step, str) and isinstance(node.node, yaml.MappingNode):
                node = next((Located(value, node.child_path(step), node.ctx, key)
                             for key, value in node.node.value if str(key.value) == step), None)
            else:
                return None
        return node

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
        value = whole_number(raw)
        if value is None:
            raise Invalid(f"expected a whole number, got {shown(raw)}")
        if value < minimum or (maximum is not None and value > maximum) or abs(value) >= BEYOND:
            bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
            found = shown(raw.strip())[1:-1] if abs(value) >= BEYOND else str(value)
            raise Invalid(f"expected a whole number {bound}, got {found}")
        return value

    def status(self) -> int:
        return self.integer(100, 599)

    def number(self, minimum: float = 0.0, maximum: float | None = None) -> float:
        raw = self.text()
        try:
            value = float(raw)
        except ValueError:
            raise Invalid(f"expected a number, got {shown(raw)}") from None
        if not math.isfinite(value):  # nan compares false to every bound, inf passes a minimum
            raise Invalid(f"expected a finite number, got {shown(raw)}")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise Invalid(f"expected a number {bound}, got {shown(raw)[1:-1]}")
        return value

    def boolean(self) -> bool:
        raw = self.text().lower()
        if raw in ("true", "yes", "on"):
            return True
        if raw in ("false", "no", "off"):
            return False
        raise Invalid(f"expected true or false, got {shown(raw)}")

    def duration(self) -> float:
        raw = self.text()
        try:
            return parse_duration(raw)
        except ValueError as exc:
            raise Invalid(str(exc).replace(repr(raw), shown(raw))) from None

    def size(self) -> int:
        raw = self.text()
        number = whole_number(raw) if raw.strip().isascii() and raw.strip().isdigit() else None
        try:
            return parse_size(raw if number is None else number)
        except ValueError as exc:
            raise Invalid(str(exc).replace(repr(number if number is not None else raw), shown(raw.strip()))) from None

    def choice(self, options: Iterable[str]) -> str:
        raw = self.text()
        allowed = sorted(options)
        if raw not in allowed:
            raise Invalid(f"expected one of {', '.join(allowed)}, got {shown(raw)}")
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
        return shown(str(self.node.value))


class Refused(yaml.MarkedYAMLError):
    """Valid YAML the policy reader will not take: too deep, aliases that expand too far, a non-scalar key."""

    def __init__(self, problem: str, mark: yaml.Mark | None, path: str) -> None:
        super().__init__(problem=problem, problem_mark=mark)
        self.path = path


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe composer with bounds (composing only: the loader reads nodes, it never constructs objects).

    The composer returns an alias as the very node its anchor names, so a "billion laughs" document is small as a
    graph, but anything that walks it as a tree (the policy reader, `str()` of a key) does the exponential work:
    an anchor bomb used as a mapping key took 39 s and then raised MemoryError. So: each alias is charged the size
    of what it stands for, written out, and the document may add at most MAX_ALIAS_NODES that way; an alias to an
    anchor still open (a cycle) is refused; a mapping key must be a scalar; nesting stops at MAX_DEPTH (the
    composer recurses once per level)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> its node count written out, once it is complete
        self._aliased = 0
        self._path: list[str] = []

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if isinstance(parent, yaml.MappingNode) and isinstance(index, yaml.ScalarNode):
            self._path.append(f".{index.value}" if self._path else str(index.value))
        elif isinstance(parent, yaml.SequenceNode):
            self._path.append(f"[{index}]")
        else:
            self._path.append("")
        try:
            node = self._compose_bounded(parent, index)
        finally:
            self._path.pop()
        if isinstance(parent, yaml.MappingNode) and index is None and not isinstance(node, yaml.ScalarNode):
            kind = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
            raise self._refuse(f"a mapping key must be a plain value, found {kind}", node.start_mark)
        return node

    def _compose_bounded(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            if target is not None:  # else PyYAML's own "found undefined alias"
                size = self._sizes.get(id(target))
                if size is None:
                    raise self._refuse(f"the alias *{event.anchor} is inside its own anchor", event.start_mark)
                self._aliased += size
                if self._aliased > MAX_ALIAS_NODES:
                    raise self._refuse(f"the aliases expand to more than {MAX_ALIAS_NODES} nodes", event.start_mark)
            return super().compose_node(parent, index)  # type: ignore[return-value]
        if len(self._path) > MAX_DEPTH:
            raise self._refuse(f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)  # type: ignore[no-untyped-call]
        node: yaml.Node = super().compose_node(parent, index)  # type: ignore[assignment]
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        else:
            children = []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in children)
        return node

    def _refuse(self, problem: str, mark: yaml.Mark | None) -> Refused:
        return Refused(problem, mark, "".join(self._path).lstrip("."))


def compose(text: str, ctx: Context) -> Located | None:
    """Parse YAML into a located root, or record the syntax error with its line."""
    if len(text) > MAX_POLICY_BYTES:
        ctx.problems.append(Problem(ctx.file, 0, "", too_large(len(text), "characters")))
        return None
    try:
        node = yaml.compose(text, Loader=BoundedLoader)
    except Refused as exc:
        mark = exc.problem_mark
        ctx.problems.append(Problem(ctx.file, int(mark.line) + 1 if mark else 0, exc.path, str(exc.problem)))
        return None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = int(mark.line) + 1 if mark is not None else 0
        ctx.problems.append(Problem(ctx.file, line, "", f"invalid YAML: {exc.problem}"))
        return None
    except yaml.reader.ReaderError as exc:  # a control character: its line, and one line of message
        line = text[: exc.position].count("\n") + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        ctx.problems.append(Problem(ctx.file, line, "", f"invalid YAML: character #x{code:04x} is not allowed"))
        return None
    except yaml.YAMLError as exc:
        ctx.problems.append(Problem(ctx.file, 0, "", f"invalid YAML: {str(exc).splitlines()[0]}"))
        return None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        ctx.problems.append(Problem(ctx.file, 0, "", "invalid YAML: nested too deeply"))
        return None
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"):
        ctx.problems.append(Problem(ctx.file, 1, "", "the policy file is empty"))
        return None
    return Located(node, "", ctx)


def too_large(size: int, unit: str) -> str:
    return (f"the policy file is larger than {MAX_POLICY_BYTES // 1024} KiB ({size} {unit}): a policy is a few KB; "
            "is this the right file?")


def default_environ() -> Mapping[str, str]:
    return os.environ
