"""The effective policy as plain JSON-able data, with secrets redacted (for `check` and `GET /policy`).

Walked from the schema: each key is shown where it is decided, as its kind shows it, and a secret one as its kind
redacts it. A route shows what it may set itself (its timeouts, retry, breaker); its upstream shows what is
decided per upstream (limits, throttle rules, the retry budget), so no value appears where the policy could not
have set it.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from proxy.policy import schema
from proxy.policy.model import Policy, Route, Upstream
from proxy.policy.redact import REDACTED, is_secret_name, redact_query, redact_url
from proxy.policy.schema import Field, Group, Level, Section

__all__ = ["REDACTED", "effective_policy", "is_secret_name", "redact_query", "redact_url"]


def _show_field(f: Field, value: Any, names: Collection[str]) -> Any:
    if f.secret:
        return f.kind.redact(value, names)
    return None if value is None else f.kind.show(value)


def _show_section(section: Section, value: Any, names: Collection[str], level: Level, below: Level | None) -> Any:
    """The keys of `section` that `level` decides: allowed there and, when `below` is given, not there."""

    def one(item: Any) -> dict[str, Any]:
        shown: dict[str, Any] = {}
        for f in section.fields:
            if f.levels and level not in f.levels:
                continue
            # Set below too (where it is shown): only what the lower level cannot set is shown here.
            deeper = below if below is not None and (not f.levels or below in f.levels) else None
            child = getattr(item, f.name)
            if isinstance(f, Field):
                if deeper is None:
                    shown[f.key] = _show_field(f, child, names)
            else:
                nested = _show_section(f, child, names, level, deeper)
                if nested or deeper is None:
                    shown[f.key] = nested
        return shown

    if section.many:
        return [one(item) for item in value]
    return one(value)


def _show_level(level: Level, below: Level | None, get: Any, names: Collection[str]) -> dict[str, Any]:
    """Every key of `level`, its value from `get(node)`; a section that is None (a route without a cache) is left
    out, and with `below`, the sections `below` may set are shown only for their keys `below` may not."""
    out: dict[str, Any] = {}
    for node in schema.SCHEMA:
        if level not in node.levels or isinstance(node, Group):
            continue
        value = get(node)
        if isinstance(node, Field):
            out[node.key] = _show_field(node, value, names)
        elif value is not None:
            settable_below = below is not None and below in node.levels
            shown = _show_section(node, value, names, level, below if settable_below else None)
            if shown or not settable_below:
                out[node.key] = shown
    return out


def _route(route: Route, names: Collection[str]) -> dict[str, Any]:
    def get(node: schema.Node) -> Any:
        return node.get(route) if isinstance(node, Field) and node.get else getattr(route, node.name)

    out = _show_level("route", None, get, names)
    out["breaker"] = {"name": route.breaker_name, **out["breaker"]}  # which breaker it shares, if any
    return out


def _upstream(upstream: Upstream, names: Collection[str]) -> dict[str, Any]:
    def get(node: schema.Node) -> Any:
        # What a route may override, the upstream's own value is its default route's.
        owner = upstream.default_route if "route" in node.levels else upstream
        return getattr(owner, node.name)

    out = _show_level("upstream", "route", get, names)
    out["routes"] = [_route(r, names) for r in (*upstream.routes, upstream.default_route)]
    return out


def effective_policy(policy: Policy) -> dict[str, Any]:
    names = policy.redact.query
    out: dict[str, Any] = {"source": policy.source}
    out.update(_show_level("top", None, lambda node: getattr(policy, node.name), names))
    out["upstreams"] = {name: _upstream(u, names) for name, u in policy.upstreams.items()}
    return out
