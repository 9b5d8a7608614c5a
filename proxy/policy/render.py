"""The effective policy as plain JSON-able data, with secrets redacted (for `check` and `GET /policy`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any
from urllib.parse import unquote_plus

from yarl import URL

from proxy.policy.model import (
    SECRET_QUERY_NAMES,
    BreakerPolicy,
    Conditions,
    Limits,
    Policy,
    RetryPolicy,
    Route,
    Timeouts,
    Upstream,
)
from proxy.policy.units import format_duration

REDACTED = "<redacted>"
_DECODE_ROUNDS = 3  # `%2570assword` is `%70assword` after one decoding: a proxy in front may decode once more


def redact_url(url: URL | str, names: Collection[str] = SECRET_QUERY_NAMES) -> str:
    """Credentials in a URL (`user:pass@`, `?access_token=`) never reach a log or the admin port."""
    parsed = URL(str(url))
    text = str(parsed.with_user(None).with_query(None))
    if parsed.user or parsed.password:
        scheme, _, rest = text.partition("://")
        text = f"{scheme}://{REDACTED}@{rest}"
    if parsed.raw_query_string:
        text += "?" + redact_query(parsed.raw_query_string, names)
    return text


def redact_query(raw_query: str, names: Collection[str] = SECRET_QUERY_NAMES) -> str:
    """`a=1&access_token=xyz` -> `a=1&access_token=<redacted>`, leaving everything else byte for byte.

    `names` are lowercase. Keys are compared decoded and lowercased: a server reads `%6Bey=` or `KEY=` as `key=`,
    so its value is a credential too; `user[password]=` (PHP, Rails) names `password`. Some servers split on `;`
    as well as `&` (HTML 4's advice), others do not: a secret's value is hidden up to the next `&`, which covers
    what either kind reads as its value."""
    return "&".join(_redact_pair(pair, names) for pair in raw_query.split("&"))


def _redact_pair(pair: str, names: Collection[str]) -> str:
    if "=" not in pair:
        return pair  # a bare flag carries no value
    pieces = pair.split(";")
    for i, piece in enumerate(pieces):
        name, eq, _ = piece.partition("=")
        if eq and is_secret_name(name, names):
            return ";".join([*pieces[:i], f"{name}={REDACTED}"])
    return pair


def is_secret_name(raw_name: str, names: Collection[str]) -> bool:
    name = raw_name
    for _ in range(_DECODE_ROUNDS):
        if "%" not in name and "+" not in name:
            break
        name = unquote_plus(name)
    name = name.strip().lower()
    if name in names:
        return True
    # `user[password]`, `password[]`: any bracketed part names the value too.
    return "[" in name and any(part.strip() in names for part in name.replace("]", "[").split("["))


def _timeouts(t: Timeouts) -> dict[str, str]:
    return {k: format_duration(getattr(t, k)) for k in ("connect", "read", "write", "pool", "total")}


def _conditions(c: Conditions) -> list[str | int]:
    return c.describe()


def _retry(r: RetryPolicy) -> dict[str, Any]:
    return {
        "attempts": r.attempts,
        "backoff": {"base": format_duration(r.backoff.base), "max": format_duration(r.backoff.max)},
        "on": _conditions(r.on),
        "budget": {"ratio": r.budget.ratio, "min_per_second": r.budget.min_per_second},
        "max_body": r.max_body,
    }


def _breaker(b: BreakerPolicy) -> dict[str, Any]:
    return {"failures": b.failures, "reset_after": format_duration(b.reset_after), "count": _conditions(b.count)}


def _limits(limits: Limits) -> dict[str, Any]:
    return {
        "max_concurrent": limits.max_concurrent,
        "max_queue": limits.max_queue,
        "max_request_body": limits.max_request_body,
        "keepalive": format_duration(limits.keepalive),
        "keepalive_non_idempotent": format_duration(limits.keepalive_non_idempotent),
    }


def _route(route: Route) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": route.name,
        "match": f"{route.method or 'ANY'} {route.glob}",
        "timeouts": _timeouts(route.timeouts),
        "retry": _retry(route.retry),
        "breaker": {"name": route.breaker_name, **_breaker(route.breaker)},
        "idempotent": route.idempotent,
    }
    if route.cache is not None:
        c = route.cache
        out["cache"] = {
            "ttl": format_duration(c.ttl),
            "stale_if_error": format_duration(c.stale_if_error),
            "invalidate_on_write": c.invalidate_on_write,
            "statuses": sorted(c.statuses),
            "vary": list(c.vary),
            "override": c.override,
        }
    return out


def _upstream(u: Upstream, names: Collection[str]) -> dict[str, Any]:
    return {
        "url": redact_url(u.url, names),
        "headers": {name: REDACTED for name, _ in u.headers},
        "limits": _limits(u.limits),
        "throttle": [
            {
                "status": t.status,
                "field": t.field,
                "codes": sorted(t.codes),
                "delay_field": t.delay_field,
                "delay": format_duration(t.delay),
            }
            for t in u.throttle
        ],
        "routes": [_route(r) for r in (*u.routes, u.default_route)],
    }


def effective_policy(policy: Policy) -> dict[str, Any]:
    cache = policy.cache
    return {
        "source": policy.source,
        "listen": str(policy.listen),
        "admin": {"listen": str(policy.admin.listen), "token": REDACTED if policy.admin.token else None},
        "shutdown_grace": format_duration(policy.shutdown_grace),
        "limits": {
            "max_header_bytes": policy.limits.max_header_bytes,
            "max_headers": policy.limits.max_headers,
            "header_timeout": format_duration(policy.limits.header_timeout),
            "idle_timeout": format_duration(policy.limits.idle_timeout),
            "max_connections": policy.limits.max_connections,
        },
        "redact": {"query": sorted(policy.redact.query)},
        "cache": {
            "backend": cache.backend,
            "redis_url": redact_url(cache.redis_url, policy.redact.query),
            "max_entries": cache.max_entries,
            "max_bytes": cache.max_bytes,
            "max_body": cache.max_body,
            "op_timeout": format_duration(cache.op_timeout),
            "credential_headers": list(cache.credential_headers),
        },
        "upstreams": {name: _upstream(u, policy.redact.query) for name, u in policy.upstreams.items()},
    }
