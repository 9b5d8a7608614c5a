"""The README's policy reference table, made from the schema (`make policy-table` writes it into README.md).

    python -m proxy.policy.reference --markdown          # print the table
    python -m proxy.policy.reference --readme README.md  # rewrite it between the README's markers

`tests/policy/test_schema.py` fails when the README's table is not this one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from proxy.policy.model import Policy
from proxy.policy.schema import (
    FROM_MODEL,
    LEVEL_MODELS,
    LEVELS,
    ROUTE,
    SCHEMA,
    UPSTREAM,
    Field,
    Group,
    Level,
    Node,
    default_of,
    keys_at,
)

# -- the table --------------------------------------------------------------------------------

TABLE_START = "<!-- policy-table:start -->"  # the README region `make policy-table` rewrites
TABLE_END = "<!-- policy-table:end -->"


def _default_text(f: Field, model: type) -> str:
    if f.required:
        return "required"
    if f.default_text:
        return f"`{f.default_text}`"
    value = f.default if f.default is not FROM_MODEL else default_of(model, f.name)
    if value is FROM_MODEL or value is None:
        return "none"
    return f"`{f.kind.text(value)}`"


def _where(levels: frozenset[Level]) -> str:
    return ", ".join(level for level in LEVELS if level in levels)


def _prefix(levels: frozenset[Level]) -> str:
    """How the README names a key by where it sits: `upstreams.<name>.url`, `routes[].match`, `timeouts.read`."""
    if levels == UPSTREAM:
        return "upstreams.<name>."
    if levels == ROUTE:
        return "routes[]."
    return ""


def _rows(node: Node, path: str, levels: frozenset[Level], model: type) -> Iterator[tuple[str, str, str, str]]:
    if isinstance(node, Group):
        keys = ", ".join(f"`{k}`" for k in keys_at(node.holds))
        suffix = {"one": "", "named": ".<name>", "list": "[]"}[node.shape]
        yield f"{path}{node.key}{suffix}", _where(levels), "", node.doc.format(keys=keys)
    elif isinstance(node, Field):
        yield f"{path}{node.key}", _where(node.levels or levels), _default_text(node, model), node.doc
    else:
        here = node.levels or levels
        name = f"{path}{node.key}{'[]' if node.many else ''}"
        if node.doc:  # a section a route may leave out (`cache`, `hedge`) is none by default
            absent = "none" if default_of(model, node.key) is None else ""
            yield name, _where(here), absent, node.doc
        for child in node.fields:
            yield from _rows(child, f"{name}.", here, node.model)


def markdown_table() -> str:
    lines = ["| key | where | default | meaning |", "|---|---|---|---|"]
    for node in SCHEMA:
        (level, *more) = sorted(node.levels)
        model = LEVEL_MODELS[level] if not more else Policy  # a key of several levels is in a section
        for row in _rows(node, _prefix(node.levels), node.levels, model):
            lines.append("| " + " | ".join((f"`{row[0]}`", *row[1:])) + " |")
    return "\n".join(lines) + "\n"


def with_table(readme: str) -> str:
    """`readme` with the text between the table's markers replaced by the table the schema makes."""
    head, start, rest = readme.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"the README has no {TABLE_START!r} ... {TABLE_END!r} region")
    return f"{head}{TABLE_START}\n{markdown_table()}{TABLE_END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proxy.policy.schema", description="The policy reference table")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--markdown", action="store_true", help="print the policy reference table")
    group.add_argument("--readme", metavar="FILE", help="rewrite the table between the markers in FILE")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    path = Path(args.readme)
    path.write_text(with_table(path.read_text()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
