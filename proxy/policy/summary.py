"""A policy in a few lines, for `check`: what an operator looks for before a reload, not the whole effective policy
(that is `check --show`, hundreds of lines for the shipped one).

Per upstream: where it goes and its limits; then, over its routes (the `default` one included), which are retried,
behind which breaker, cached, hedged and paced. Secrets are shown as the effective policy shows them (redacted).
"""

from __future__ import annotations

from proxy.policy.model import Policy, RateLimitPolicy, Route, Upstream
from proxy.policy.redact import redact_url
from proxy.policy.units import format_duration, format_size


def _conditions(route: Route) -> str:
    return ", ".join(str(c) for c in route.retry.on.describe())


def _limits(upstream: Upstream) -> str:
    limits = upstream.limits
    body = f", bodies up to {format_size(limits.max_request_body)}" if limits.max_request_body is not None else ""
    return f"{limits.max_concurrent} in flight, {limits.max_queue} queued{body}"


def _paced(pacing: RateLimitPolicy) -> str:
    limits = ", ".join(f"{limit.name} {limit.rate} burst {limit.bucket_size}" for limit in pacing.limits)
    return f"{limits} ({pacing.backend}, wait {format_duration(pacing.wait)})"


def _grouped(described: list[tuple[str, str]]) -> str:
    """`(route, what)` pairs as `what: route, route; what: route`: most routes share their settings."""
    routes: dict[str, list[str]] = {}
    for route, what in described:
        routes.setdefault(what, []).append(route)
    return "; ".join(f"{what}: {', '.join(names)}" for what, names in routes.items())


def _upstream_lines(upstream: Upstream, names: frozenset[str]) -> list[str]:
    routes = (*upstream.routes, upstream.default_route)
    retried = _grouped([(r.name, f"{r.retry.attempts} attempts on [{_conditions(r)}]")
                        for r in routes if r.retry.attempts > 1])
    breakers: dict[str, Route] = {}
    for route in routes:
        breakers.setdefault(route.breaker_name, route)
    broken = [f"{name} opens after {r.breaker.failures} failures for {format_duration(r.breaker.reset_after)}"
              for name, r in breakers.items()]
    cached = [f"{r.name} for {format_duration(r.cache.ttl)}"
              + (f" (stale on error {format_duration(r.cache.stale_if_error)})" if r.cache.stale_if_error else "")
              for r in routes if r.cache is not None]
    hedged = [f"{r.name} after {format_duration(r.hedge.after)} (up to {r.hedge.max})"
              for r in routes if r.hedge is not None]
    paced = _grouped([(r.name, _paced(r.rate_limit)) for r in routes if r.rate_limit is not None])
    timeouts = _grouped([(r.name, f"read {format_duration(r.timeouts.read)} total {format_duration(r.timeouts.total)}")
                         for r in routes])
    return [
        f"  {upstream.name}: {redact_url(upstream.url, names)}",
        f"    routes    {', '.join(r.name for r in routes)}",
        f"    timeouts  {timeouts}",
        f"    retried   {retried or 'none'}",
        f"    breakers  {'; '.join(broken)}",
        f"    cached    {'; '.join(cached) or 'none'}",
        f"    hedged    {'; '.join(hedged) or 'none'}",
        f"    paced     {paced or 'none'}",
        f"    limits    {_limits(upstream)}",
    ]


def summary(policy: Policy) -> list[str]:
    """The lines `check` prints on success, before `ok`."""
    upstreams = policy.upstreams.values()
    routes = sum(len(u.routes) + 1 for u in upstreams)
    cache = policy.cache
    cached = any(r.cache is not None for u in upstreams for r in u.routes)
    lines = [
        f"{policy.source}: {len(policy.upstreams)} upstream(s), {routes} route(s) (each upstream's `default` included)",
        f"  listen {policy.listen}, admin {policy.admin.listen}"
        + (" (token set)" if policy.admin.token else ""),
    ]
    if cached:
        lines.append(f"  cache: {cache.backend}" + (f", {cache.max_entries} entries / {format_size(cache.max_bytes)}"
                                                    if cache.backend == "memory" else ""))
    for upstream in upstreams:
        lines += _upstream_lines(upstream, policy.redact.query)
    return lines
