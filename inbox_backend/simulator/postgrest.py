"""A small in-memory PostgREST: table schemas, query-string parsing, filtering and writes.

Pure logic (no HTTP): ``supabase.py`` maps requests onto ``Database`` calls and turns
``PostgrestError`` into the JSON error body PostgREST sends.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Row = dict[str, Any]
ColumnType = Literal["int", "text", "bool", "timestamptz", "uuid"]

_PG_TYPE_NAMES: dict[str, str] = {
    "int": "bigint",
    "text": "text",
    "bool": "boolean",
    "timestamptz": "timestamp with time zone",
    "uuid": "uuid",
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


class PostgrestError(Exception):
    """An error as PostgREST reports it: HTTP status plus ``{code, details, hint, message}``."""

    def __init__(
        self, status: int, code: str, message: str, details: str | None = None, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.hint = hint

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "details": self.details, "hint": self.hint, "message": self.message}


# -- schema ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = True
    default: Callable[[], Any] | None = None
    #: Allowed values (a ``CHECK (col IN (...))`` constraint).
    choices: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ForeignKey:
    """``column`` references ``table.ref_column``; deleting the referenced row cascades."""

    column: str
    table: str
    ref_column: str = "id"


@dataclass(frozen=True)
class TableSchema:
    name: str
    columns: tuple[Column, ...]
    #: Unique constraints; the first one is the primary key.
    unique: tuple[tuple[str, ...], ...] = (("id",),)
    foreign_keys: tuple[ForeignKey, ...] = ()

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def constraint_name(self, cols: tuple[str, ...]) -> str:
        if cols == self.unique[0]:
            return f"{self.name}_pkey"
        return f"{self.name}_{'_'.join(cols)}_key"


class Table:
    def __init__(self, schema: TableSchema, rows: Iterable[Row] = ()) -> None:
        self.schema = schema
        self.rows: list[Row] = []
        self.next_id = 1
        for row in rows:
            full = {c.name: row.get(c.name) for c in schema.columns}
            self.rows.append(full)
            self._bump(full)

    def _bump(self, row: Row) -> None:
        rid = row.get("id")
        if isinstance(rid, int) and rid >= self.next_id:
            self.next_id = rid + 1

    def new_id(self) -> int:
        rid = self.next_id
        self.next_id += 1
        return rid


# -- query parsing -----------------------------------------------------------------------------
_OPERATORS = frozenset({"eq", "neq", "gt", "gte", "lt", "lte", "like", "ilike", "in", "is"})
_RESERVED = frozenset({"select", "order", "limit", "offset", "on_conflict", "columns", "apikey"})


@dataclass
class Filter:
    column: str
    op: str
    value: str
    negate: bool = False


@dataclass
class Logic:
    op: Literal["and", "or"]
    items: list[Condition]
    negate: bool = False


Condition = Filter | Logic


@dataclass
class SelectItem:
    name: str
    alias: str | None = None
    #: Sub-selection when this item embeds a related table.
    children: list[SelectItem] | None = None

    @property
    def key(self) -> str:
        return self.alias or self.name


@dataclass
class OrderItem:
    column: str
    desc: bool = False
    nulls_first: bool | None = None


@dataclass
class Query:
    conditions: list[Condition] = field(default_factory=list)
    select: list[SelectItem] | None = None
    order: list[OrderItem] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0
    on_conflict: tuple[str, ...] | None = None


def _parse_error(message: str, details: str | None = None) -> PostgrestError:
    return PostgrestError(400, "PGRST100", message, details)


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses and double quotes."""
    parts: list[str] = []
    depth = 0
    quoted = False
    current: list[str] = []
    for ch in text:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def _parse_op(column: str, raw: str) -> Filter:
    negate = False
    rest = raw
    if rest.startswith("not."):
        negate = True
        rest = rest[4:]
    op, dot, value = rest.partition(".")
    if op not in _OPERATORS or not dot:
        raise _parse_error(
            f'"failed to parse filter ({raw})" (line 1, column {len(op) + 1})',
            f'unexpected "{value[:1] or op[:1]}" expecting operator (eq, gt, ...)',
        )
    return Filter(column, op, value, negate)


def _parse_logic(op: Literal["and", "or"], raw: str, negate: bool) -> Logic:
    if not (raw.startswith("(") and raw.endswith(")")):
        raise _parse_error(f'"failed to parse logic tree ({raw})" (line 1, column 1)', 'expecting "("')
    items: list[Condition] = []
    for part in _split_top(raw[1:-1]):
        inner_negate = part.startswith("not.")
        body = part[4:] if inner_negate else part
        if body.startswith(("and(", "or(")):
            name: Literal["and", "or"] = "and" if body.startswith("and(") else "or"
            items.append(_parse_logic(name, body[len(name) :], inner_negate))
            continue
        column, dot, rest = part.partition(".")
        if not dot:
            raise _parse_error(f'"failed to parse logic tree ({raw})" (line 1, column 1)')
        items.append(_parse_op(column, rest))
    return Logic(op, items, negate)


def _parse_select(text: str) -> list[SelectItem]:
    items: list[SelectItem] = []
    for part in _split_top(text):
        if not part:
            continue
        alias: str | None = None
        head = part
        paren = part.find("(")
        colon = part.find(":")
        if colon != -1 and (paren == -1 or colon < paren) and part[colon + 1 : colon + 2] != ":":
            alias, head = part[:colon].strip(), part[colon + 1 :].strip()
        if "(" in head:
            if not head.endswith(")"):
                raise _parse_error(f'"failed to parse select parameter ({text})" (line 1, column 1)')
            name, _, inner = head.partition("(")
            name = name.split("!", 1)[0].strip()
            items.append(SelectItem(name, alias, _parse_select(inner[:-1])))
        else:
            name = head.split("::", 1)[0].strip()
            items.append(SelectItem(name, alias))
    return items


def _parse_order(text: str) -> list[OrderItem]:
    items: list[OrderItem] = []
    for part in _split_top(text):
        column, *mods = part.split(".")
        item = OrderItem(column)
        for mod in mods:
            if mod in ("asc", "desc"):
                item.desc = mod == "desc"
            elif mod in ("nullsfirst", "nullslast"):
                item.nulls_first = mod == "nullsfirst"
            else:
                raise _parse_error(f'"failed to parse order ({text})" (line 1, column 1)')
        items.append(item)
    return items


def _parse_int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise _parse_error(f'"failed to parse {name} parameter ({value})" (line 1, column 1)')
    return number


def parse_query(params: Iterable[tuple[str, str]]) -> Query:
    """Parse PostgREST query-string parameters (``col=op.value``, ``select``, ``order`` ...)."""
    query = Query()
    for key, value in params:
        if key == "select":
            query.select = None if value.strip() in ("", "*") else _parse_select(value)
        elif key == "order":
            query.order = _parse_order(value)
        elif key == "limit":
            query.limit = _parse_int("limit", value)
        elif key == "offset":
            query.offset = _parse_int("offset", value)
        elif key == "on_conflict":
            query.on_conflict = tuple(c.strip() for c in value.split(",") if c.strip())
        elif key in _RESERVED:
            continue
        elif key in ("or", "and", "not.or", "not.and"):
            negate = key.startswith("not.")
            op: Literal["and", "or"] = "or" if key.endswith("or") else "and"
            query.conditions.append(_parse_logic(op, value, negate))
        else:
            query.conditions.append(_parse_op(key, value))
    return query


# -- values ------------------------------------------------------------------------------------
def _invalid(col: Column, value: Any) -> PostgrestError:
    return PostgrestError(
        400, "22P02", f'invalid input syntax for type {_PG_TYPE_NAMES[col.type]}: "{value}"'
    )


def coerce(col: Column, value: Any) -> Any:
    """Convert a JSON value or a query-string text to the column's type (as Postgres would)."""
    if value is None:
        return None
    if col.type == "int":
        if isinstance(value, bool):
            raise _invalid(col, value)
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _invalid(col, value) from None
        raise _invalid(col, value)
    if col.type == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "t", "false", "f", "yes", "no", "on", "off"):
            return value.lower() in ("true", "t", "yes", "on")
        raise _invalid(col, value)
    if col.type == "timestamptz":
        if not isinstance(value, str):
            raise _invalid(col, value)
        try:
            parsed = datetime.fromisoformat(value.strip().replace(" ", "T", 1))
        except ValueError:
            raise PostgrestError(
                400, "22007", f'invalid input syntax for type timestamp with time zone: "{value}"'
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC).isoformat()
    if col.type == "uuid":
        try:
            return str(uuid.UUID(str(value)))
        except ValueError:
            raise _invalid(col, value) from None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _parse_list(raw: str) -> list[str]:
    if not (raw.startswith("(") and raw.endswith(")")):
        raise _parse_error(f'"failed to parse filter (in.{raw})" (line 1, column 4)', 'expecting "("')
    inner = raw[1:-1]
    if not inner.strip():
        return []
    return [p[1:-1] if len(p) >= 2 and p[0] == p[-1] == '"' else p for p in _split_top(inner)]


def _like(pattern: str, text: str, insensitive: bool) -> bool:
    regex = "".join(".*" if ch in "%*" else "." if ch == "_" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, text, re.DOTALL | (re.IGNORECASE if insensitive else 0)) is not None


def _compare(op: str, left: Any, right: Any) -> bool:
    if op == "eq":
        return bool(left == right)
    if op == "neq":
        return bool(left != right)
    if op == "gt":
        return bool(left > right)
    if op == "gte":
        return bool(left >= right)
    if op == "lt":
        return bool(left < right)
    return bool(left <= right)


# -- database ----------------------------------------------------------------------------------
class _Journal:
    """Undo log, so a failing statement leaves no trace (PostgREST runs each in a transaction)."""

    def __init__(self) -> None:
        self.appended: list[tuple[Table, Row]] = []
        self.changed: list[tuple[Row, Row]] = []
        self.removed: list[tuple[Table, Row]] = []

    def rollback(self) -> None:
        for row, old in reversed(self.changed):
            row.clear()
            row.update(old)
        for table, row in self.appended:
            table.rows = [r for r in table.rows if r is not row]
        restored: dict[int, Table] = {}
        for table, row in self.removed:
            table.rows.append(row)
            restored[id(table)] = table
        for table in restored.values():
            table.rows.sort(key=lambda r: (r.get("id") is None, r.get("id") or 0))


def _singular(rows: list[Row], single: bool) -> None:
    if single and len(rows) != 1:
        raise PostgrestError(
            406,
            "PGRST116",
            "Cannot coerce the result to a single JSON object",
            f"The result contains {len(rows)} rows",
        )


class Database:
    """In-memory tables with PostgREST semantics for select, insert (upsert), update and delete."""

    def __init__(self, schemas: Iterable[TableSchema], data: dict[str, list[Row]] | None = None) -> None:
        data = data or {}
        self.tables: dict[str, Table] = {s.name: Table(s, data.get(s.name, ())) for s in schemas}

    # -- lookups
    def table(self, name: str) -> Table:
        table = self.tables.get(name)
        if table is None:
            hint = None
            close = [t for t in self.tables if t.startswith(name[:3])] if name else []
            if close:
                hint = f"Perhaps you meant the table 'public.{close[0]}'"
            raise PostgrestError(
                404, "PGRST205", f"Could not find the table 'public.{name}' in the schema cache", None, hint
            )
        return table

    def rows(self, name: str) -> list[Row]:
        """The rows of a table (live objects: do not mutate)."""
        return self.table(name).rows

    def _column(self, table: Table, name: str) -> Column:
        col = table.schema.column(name)
        if col is None:
            raise PostgrestError(400, "42703", f"column {table.schema.name}.{name} does not exist")
        return col

    # -- filtering
    def _check_conditions(self, table: Table, conditions: list[Condition]) -> None:
        for cond in conditions:
            if isinstance(cond, Logic):
                self._check_conditions(table, cond.items)
                continue
            col = self._column(table, cond.column)
            if cond.op == "is":
                if cond.value.lower() not in ("null", "true", "false", "unknown", "not_null"):
                    raise _parse_error(f'"failed to parse filter (is.{cond.value})" (line 1, column 4)')
            elif cond.op == "in":
                for item in _parse_list(cond.value):
                    coerce(col, item)
            elif cond.op not in ("like", "ilike"):
                coerce(col, cond.value)

    def _eval(self, table: Table, row: Row, cond: Condition) -> bool | None:
        result: bool | None
        if isinstance(cond, Logic):
            values = [self._eval(table, row, item) for item in cond.items]
            if cond.op == "and":
                result = False if False in values else None if None in values else True
            else:
                result = True if True in values else None if None in values else False
        else:
            result = self._eval_filter(table, row, cond)
        if result is None or not cond.negate:
            return result
        return not result

    def _eval_filter(self, table: Table, row: Row, cond: Filter) -> bool | None:
        col = self._column(table, cond.column)
        value = row.get(cond.column)
        if cond.op == "is":
            target = cond.value.lower()
            if target == "null":
                return value is None
            if target == "not_null":
                return value is not None
            if target == "unknown":
                return value is None
            return value is (target == "true")
        if value is None:
            return None
        if cond.op in ("like", "ilike"):
            text = value if isinstance(value, str) else json.dumps(value)
            return _like(cond.value, text, cond.op == "ilike")
        if cond.op == "in":
            return value in [coerce(col, item) for item in _parse_list(cond.value)]
        return _compare(cond.op, value, coerce(col, cond.value))

    def _match(self, table: Table, query: Query) -> list[Row]:
        self._check_conditions(table, query.conditions)
        return [r for r in table.rows if all(self._eval(table, r, c) is True for c in query.conditions)]

    # -- projection
    def _relation(self, table: Table, target: str) -> tuple[str, ForeignKey]:
        other = self.tables.get(target)
        if other is not None:
            for fk in table.schema.foreign_keys:
                if fk.table == target:
                    return "one", fk
            for fk in other.schema.foreign_keys:
                if fk.table == table.schema.name:
                    return "many", fk
        raise PostgrestError(
            400,
            "PGRST200",
            f"Could not find a relationship between '{table.schema.name}' and '{target}' in the schema cache",
            f"Searched for a foreign key relationship between '{table.schema.name}' and '{target}' "
            "in the schema 'public', but no matches were found.",
        )

    def _check_select(self, table: Table, items: list[SelectItem] | None) -> None:
        for item in items or []:
            if item.children is not None:
                self._relation(table, item.name)
                self._check_select(self.tables[item.name], item.children)
            elif item.name != "*":
                self._column(table, item.name)

    def _project(self, table: Table, row: Row, items: list[SelectItem] | None) -> Row:
        if items is None:
            return dict(row)
        out: Row = {}
        for item in items:
            if item.name == "*" and item.children is None:
                out.update(row)
            elif item.children is None:
                out[item.key] = row.get(item.name)
            else:
                other = self.tables[item.name]
                kind, fk = self._relation(table, item.name)
                if kind == "one":
                    ref = row.get(fk.column)
                    found = next((r for r in other.rows if r.get(fk.ref_column) == ref), None)
                    out[item.key] = None if found is None else self._project(other, found, item.children)
                else:
                    mine = row.get(fk.ref_column)
                    out[item.key] = [
                        self._project(other, r, item.children) for r in other.rows if r.get(fk.column) == mine
                    ]
        return out

    def project(self, name: str, rows: list[Row], items: list[SelectItem] | None) -> list[Row]:
        table = self.table(name)
        self._check_select(table, items)
        return [self._project(table, r, items) for r in rows]

    # -- statements
    def select(self, name: str, query: Query) -> tuple[list[Row], int]:
        """Matching rows (ordered, paginated, projected) and the total count before pagination."""
        table = self.table(name)
        self._check_select(table, query.select)
        rows = self._match(table, query)
        for item in reversed(query.order):
            self._column(table, item.column)
            nulls_first = item.desc if item.nulls_first is None else item.nulls_first
            present = [r for r in rows if r.get(item.column) is not None]
            absent = [r for r in rows if r.get(item.column) is None]
            present.sort(key=lambda r, c=item.column: r[c], reverse=item.desc)  # type: ignore[misc]
            rows = absent + present if nulls_first else present + absent
        total = len(rows)
        end = None if query.limit is None else query.offset + query.limit
        page = rows[query.offset : end]
        return [self._project(table, r, query.select) for r in page], total

    def insert(
        self,
        name: str,
        payload: Any,
        *,
        resolution: Literal["ignore", "merge"] | None = None,
        on_conflict: tuple[str, ...] | None = None,
        single: bool = False,
    ) -> list[Row]:
        """Insert one object or an array of objects; with ``resolution`` it is an upsert.

        ``single``: the caller wants exactly one row back (singular ``Accept``); otherwise the
        statement is rolled back with a 406, as PostgREST does.
        """
        table = self.table(name)
        items = [payload] if isinstance(payload, dict) else payload
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise PostgrestError(400, "PGRST102", "Empty or invalid json")
        target: tuple[str, ...] | None = None
        if resolution is not None or on_conflict:
            target = on_conflict or table.schema.unique[0]
            if not any(set(target) == set(u) for u in table.schema.unique):
                raise PostgrestError(
                    400,
                    "42P10",
                    "there is no unique or exclusion constraint matching the ON CONFLICT specification",
                )
        journal = _Journal()
        result: list[Row] = []
        merged: list[Row] = []
        try:
            for item in items:
                values = self._values(table, item)
                row = self._defaults(table, values)
                existing = None
                if target is not None and resolution is not None:
                    key = tuple(row.get(c) for c in target)
                    if None not in key:
                        existing = next(
                            (r for r in table.rows if tuple(r.get(c) for c in target) == key), None
                        )
                if existing is not None and resolution == "ignore":
                    continue
                if existing is not None:
                    if any(existing is m for m in merged):
                        raise PostgrestError(
                            400,
                            "21000",
                            "ON CONFLICT DO UPDATE command cannot affect row a second time",
                            None,
                            "Ensure that no rows proposed for insertion within the same command "
                            "have duplicate constrained values.",
                        )
                    journal.changed.append((existing, dict(existing)))
                    existing.update(values)
                    self._check_row(table, existing)
                    merged.append(existing)
                    result.append(existing)
                    continue
                table.rows.append(row)
                journal.appended.append((table, row))
                table._bump(row)
                self._check_row(table, row)
                result.append(row)
            _singular(result, single)
        except PostgrestError:
            journal.rollback()
            raise
        return [dict(r) for r in result]

    def update(self, name: str, payload: Any, query: Query, *, single: bool = False) -> list[Row]:
        table = self.table(name)
        if not isinstance(payload, dict):
            raise PostgrestError(400, "PGRST102", "Empty or invalid json")
        values = self._values(table, payload)
        if not query.conditions:
            raise PostgrestError(400, "21000", "UPDATE requires a WHERE clause")
        rows = self._match(table, query)
        journal = _Journal()
        try:
            for row in rows:
                journal.changed.append((row, dict(row)))
                row.update(values)
            for row in rows:
                self._check_row(table, row)
            _singular(rows, single)
        except PostgrestError:
            journal.rollback()
            raise
        return [dict(r) for r in rows]

    def delete(self, name: str, query: Query, *, single: bool = False) -> list[Row]:
        """Delete matching rows; rows referencing them through a foreign key go too (cascade)."""
        table = self.table(name)
        if not query.conditions:
            raise PostgrestError(400, "21000", "DELETE requires a WHERE clause")
        rows = self._match(table, query)
        journal = _Journal()
        try:
            self._remove(table, rows, journal)
            _singular(rows, single)
        except PostgrestError:
            journal.rollback()
            raise
        return [dict(r) for r in rows]

    # -- helpers
    def _remove(self, table: Table, rows: list[Row], journal: _Journal) -> None:
        if not rows:
            return
        doomed = {id(r) for r in rows}
        table.rows = [r for r in table.rows if id(r) not in doomed]
        journal.removed.extend((table, r) for r in rows)
        for other in self.tables.values():
            for fk in other.schema.foreign_keys:
                if fk.table != table.schema.name:
                    continue
                keys = {r.get(fk.ref_column) for r in rows}
                children = [
                    r for r in other.rows if r.get(fk.column) in keys and r.get(fk.column) is not None
                ]
                self._remove(other, children, journal)

    def _values(self, table: Table, item: Row) -> Row:
        values: Row = {}
        for key, value in item.items():
            col = table.schema.column(key)
            if col is None:
                raise PostgrestError(
                    400,
                    "PGRST204",
                    f"Could not find the '{key}' column of '{table.schema.name}' in the schema cache",
                )
            values[key] = coerce(col, value)
        return values

    def _defaults(self, table: Table, values: Row) -> Row:
        row: Row = {}
        for col in table.schema.columns:
            if col.name in values:
                row[col.name] = values[col.name]
            elif col.name == "id" and col.type == "int":
                row[col.name] = table.new_id()
            elif col.default is not None:
                row[col.name] = col.default()
            else:
                row[col.name] = None
        return row

    def _check_row(self, table: Table, row: Row) -> None:
        schema = table.schema
        failing = "Failing row contains (" + ", ".join(_sql(row.get(c)) for c in schema.column_names) + ")."
        for col in schema.columns:
            value = row.get(col.name)
            if value is None and not col.nullable:
                raise PostgrestError(
                    400,
                    "23502",
                    f'null value in column "{col.name}" of relation "{schema.name}" '
                    "violates not-null constraint",
                    failing,
                )
            if value is not None and col.choices is not None and value not in col.choices:
                raise PostgrestError(
                    400,
                    "23514",
                    f'new row for relation "{schema.name}" violates check constraint '
                    f'"{schema.name}_{col.name}_check"',
                    failing,
                )
        for cols in schema.unique:
            key = tuple(row.get(c) for c in cols)
            if None in key:
                continue
            for other in table.rows:
                if other is not row and tuple(other.get(c) for c in cols) == key:
                    raise PostgrestError(
                        409,
                        "23505",
                        f'duplicate key value violates unique constraint "{schema.constraint_name(cols)}"',
                        f"Key ({', '.join(cols)})=({', '.join(_sql(v) for v in key)}) already exists.",
                    )
        for fk in schema.foreign_keys:
            value = row.get(fk.column)
            if value is None:
                continue
            ref = self.tables[fk.table]
            if not any(r.get(fk.ref_column) == value for r in ref.rows):
                raise PostgrestError(
                    409,
                    "23503",
                    f'insert or update on table "{schema.name}" violates foreign key constraint '
                    f'"{schema.name}_{fk.column}_fkey"',
                    f'Key ({fk.column})=({_sql(value)}) is not present in table "{fk.table}".',
                )


def _sql(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)
