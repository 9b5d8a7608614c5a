"""What a policy change does, in operator terms: `python -m proxy check --diff OLD NEW`.

Both sides are compared as effective policies (`proxy.policy.render`, the schema walked over the typed policy): the
very view `GET /policy` serves, so OLD may be a file or a running sidecar's `/policy` and the two compare alike. The
walk below is generic: a key the schema gains shows up in the diff with no code here. Upstreams are matched by name,
routes by name within their upstream (and their order, since the first match wins, is compared too). Secrets are
redacted on both sides, so a changed credential is not seen.

What a reload would carry over or start anew comes from `proxy.runtime.LIFETIMES`, the runtime's own table.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.runtime import LIFETIMES, Lifetime

View = Mapping[str, Any]  # an effective policy, as `effective_policy` renders it
NOT_SET = "(none)"
# Not a setting: where the policy was read from (and `/policy`'s reload status, which the caller leaves out).
IGNORED = frozenset({"source"})


def _text(value: Any) -> str:
    if value is None or value == NOT_SET:
        return NOT_SET
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(", ", ": "))


def _changes(old: Any, new: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(dotted key, old, new) for every leaf that differs; a section present on one side only is one change."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in (*old, *(k for k in new if k not in old)):
            if key in IGNORED:
                continue
            yield from _changes(old.get(key, NOT_SET), new.get(key, NOT_SET), f"{path}.{key}" if path else key)
    elif old != new:
        yield path, old, new


def _by_name(routes: list[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {route["name"]: route for route in routes}


@dataclass(frozen=True, slots=True)
class PolicyDiff:
    lines: list[str]  # what changes, one line each
    carry: list[str]  # what a reload would carry over and start anew

    @property
    def changed(self) -> bool:
        return bool(self.lines)


def _changed_under(changes: list[tuple[str, Any, Any]], settings: tuple[str, ...]) -> list[str]:
    return [key for key, _, _ in changes if any(key == s or key.startswith(f"{s}.") for s in settings)]


def _upstream_changes(name: str, old: View, new: View) -> tuple[list[str], list[tuple[str, Any, Any]]]:
    """Its lines, and its own (not its routes') changes for the reload table."""
    own = [c for c in _changes({k: v for k, v in old.items() if k != "routes"},
                               {k: v for k, v in new.items() if k != "routes"})]
    lines = [f"  {name}: {key} {_text(a)} -> {_text(b)}" for key, a, b in own]
    before, after = _by_name(old["routes"]), _by_name(new["routes"])
    for route in [r for r in after if r not in before]:
        lines.append(f"  {name}: route added: {route} ({after[route]['match']})")
    for route in [r for r in before if r not in after]:
        lines.append(f"  {name}: route removed: {route} ({before[route]['match']})")
    kept_old = [r for r in before if r in after]
    kept_new = [r for r in after if r in before]
    if kept_old != kept_new:
        lines.append(f"  {name}: route order {', '.join(kept_old)} -> {', '.join(kept_new)} (the first match wins)")
    for route in kept_new:
        for key, a, b in _changes(before[route], after[route]):
            lines.append(f"  {name}.{route}: {key} {_text(a)} -> {_text(b)}")
    return lines, own


def _breakers(view: View) -> dict[str, Mapping[str, Any]]:
    return {r["breaker"]["name"]: r["breaker"] for u in view["upstreams"].values() for r in u["routes"]}


def _carry_line(lifetime: Lifetime, old: View, new: View, own: Mapping[str, list[tuple[str, Any, Any]]]) -> str:
    """One row of the reload table, for this change."""
    head = f"  {lifetime.piece}: "
    if lifetime.scope == "process":
        return head + f"carried (lifetime: {lifetime.rule})"
    if lifetime.scope == "version":
        return head + f"built anew (lifetime: {lifetime.rule})"
    if lifetime.scope == "top":
        why = _changed_under(list(_changes(old, new)), lifetime.settings)
        return head + (f"started anew ({', '.join(why)} changed)" if why else "carried")
    if lifetime.scope == "breaker":
        before, after = _breakers(old), _breakers(new)
        parts = []
        kept = [b for b in after if b in before]
        if kept:
            retuned = [b for b in kept if {k: v for k, v in before[b].items() if k != "name"}
                       != {k: v for k, v in after[b].items() if k != "name"}]
            parts.append(f"carried {', '.join(kept)}"
                         + (f" (new thresholds apply to {', '.join(retuned)})" if retuned else ""))
        if added := [b for b in after if b not in before]:
            parts.append(f"new (closed) {', '.join(added)}")
        if dropped := [b for b in before if b not in after]:
            parts.append(f"dropped {', '.join(dropped)}")
        return head + "; ".join(parts or ["none"])
    carried: list[str] = []
    reset: list[str] = []
    for name in new["upstreams"]:
        if name not in old["upstreams"]:
            continue
        why = _changed_under(own[name], lifetime.settings)
        (reset if why else carried).append(f"{name} ({', '.join(why)} changed)" if why else name)
    parts = [f"carried {', '.join(carried)}"] if carried else []
    parts += [f"started anew {', '.join(reset)}"] if reset else []
    if added := [u for u in new["upstreams"] if u not in old["upstreams"]]:
        parts.append(f"new {', '.join(added)}")
    if dropped := [u for u in old["upstreams"] if u not in new["upstreams"]]:
        parts.append(f"closed {', '.join(dropped)}")
    return head + "; ".join(parts or ["none"])


def diff(old: View, new: View) -> PolicyDiff:
    lines: list[str] = []
    top_old = {k: v for k, v in old.items() if k != "upstreams"}
    top_new = {k: v for k, v in new.items() if k != "upstreams"}
    lines += [f"  {key} {_text(a)} -> {_text(b)}" for key, a, b in _changes(top_old, top_new)]
    before, after = old["upstreams"], new["upstreams"]
    for name in [u for u in after if u not in before]:
        lines.append(f"  upstream added: {name} ({after[name]['url']}, routes "
                     f"{', '.join(r['name'] for r in after[name]['routes'])})")
    for name in [u for u in before if u not in after]:
        lines.append(f"  upstream removed: {name} ({before[name]['url']})")
    own: dict[str, list[tuple[str, Any, Any]]] = {}
    for name in after:
        if name in before:
            upstream_lines, own[name] = _upstream_changes(name, before[name], after[name])
            lines += upstream_lines
    carry = [_carry_line(lifetime, old, new, own) for lifetime in LIFETIMES]
    return PolicyDiff(lines, carry)


def report(old_name: str, new_name: str, result: PolicyDiff) -> list[str]:
    if not result.changed:
        return [f"{old_name} -> {new_name}: no change"]
    return [f"{old_name} -> {new_name}: {len(result.lines)} change(s)", *result.lines,
            "a reload would (listen and admin addresses change only on restart):", *result.carry]
