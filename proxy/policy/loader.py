"""YAML text -> a validated `Policy`. Inheritance (defaults -> upstream -> route) is resolved here, once.

What each key may hold, where, and how it is checked is `proxy.policy.schema`'s; this module assembles the levels
(the top, each upstream, each route) and the rules that span them. Each section is an *overlay* on the value it
inherited (`dataclasses.replace`), so a route that says `timeouts: {read: 30s}` keeps every other inherited timeout.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from yarl import URL

from proxy.policy import schema
from proxy.policy.glob import Glob
from proxy.policy.model import (
    CACHE_KEY_SECRET_ENV,
    CREDENTIAL_HEADERS,
    Address,
    AdminSettings,
    BreakerPolicy,
    CacheSettings,
    Hedge,
    Limits,
    ListenerLimits,
    Policy,
    RateLimitPolicy,
    Redaction,
    RetryPolicy,
    Route,
    RouteCache,
    ThrottleRule,
    Timeouts,
    Upstream,
)
from proxy.policy.schema import HTTP_METHODS, Level
from proxy.policy.source import (
    MAX_POLICY_BYTES,
    Context,
    Located,
    PolicyError,
    Problem,
    compose,
    default_environ,
    too_large,
)

__all__ = ["HTTP_METHODS", "compile_glob", "load_policy", "parse_policy"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
DEFAULT_LISTEN: Address = schema.LISTEN.default
DEFAULT_ADMIN: Address = schema.ADMIN_LISTEN.default


def _value(entries: Mapping[str, Located], level: Level, key: str, inherited: Any = None) -> Any:
    """`entries[key]` read as the schema says for `level`, a bad value reported at its key; None when absent or bad."""
    if key not in entries:
        return None
    node = schema.at(level, key)
    assert not isinstance(node, schema.Group)
    return entries[key].read(lambda n: schema.read(node, n, inherited, level))


def _mapping(node: Located, level: Level) -> dict[str, Located] | None:
    """The keys of one level's mapping, unknown ones reported (with a did-you-mean)."""
    return node.read(lambda n: n.mapping(schema.keys_at(level)))


# -- the inheritable sections --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Inherited:
    """What a level passes down to the next: defaults -> upstream -> route. One attribute per section of
    `schema.INHERITED` (a test holds them equal), typed for the route that reads them."""

    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    limits: Limits = Limits()
    throttle: tuple[ThrottleRule, ...] = ()

    def apply(self, entries: Mapping[str, Located], level: Level) -> Inherited:
        """Each section `entries` sets at `level`, key by key over what this level inherited."""
        changes: dict[str, Any] = {}
        for section in schema.INHERITED:
            if level in section.levels:
                value = _value(entries, level, section.key, getattr(self, section.key))
                if value is not None:
                    changes[section.key] = value
        return dataclasses.replace(self, **changes)


# -- top level -----------------------------------------------------------------------------------------


def load_policy(path: str | Path, environ: Mapping[str, str] | None = None) -> Policy:
    """Read and validate a policy file; raise `PolicyError` listing every problem."""
    file = str(path)
    try:
        with Path(path).open("rb") as handle:  # at most one byte past the bound: a huge file is never read whole
            data = handle.read(MAX_POLICY_BYTES + 1)
        if len(data) > MAX_POLICY_BYTES:
            size = Path(path).stat().st_size
            raise PolicyError([Problem(file, 0, "", too_large(max(size, len(data)), "bytes"))])
        text = data.decode("utf-8")
    except OSError as exc:
        raise PolicyError([Problem(file, 0, "", f"cannot read the policy file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise PolicyError([Problem(file, line, "", f"the policy file is not UTF-8 (byte {exc.start})")]) from None
    return parse_policy(text, file, environ)


def parse_policy(text: str, file: str = "<policy>", environ: Mapping[str, str] | None = None) -> Policy:
    ctx = Context(file, environ if environ is not None else default_environ())
    root = compose(text, ctx)
    policy = _build(root) if root is not None else None
    if ctx.problems or policy is None:
        raise PolicyError(ctx.problems)
    return policy


def _build(root: Located) -> Policy | None:
    top = _mapping(root, "top")
    if top is None:
        return None
    listen = _value(top, "top", "listen") if "listen" in top else DEFAULT_LISTEN
    admin = _admin(top.get("admin"))
    defaults = Inherited()
    if "defaults" in top:
        defaults = defaults.apply(_mapping(top["defaults"], "defaults") or {}, "defaults")
    cache = _cache_settings(top.get("cache"))  # first: a rate limit's backend is the cache's unless it says
    upstreams = _upstreams(top.get("upstreams"), defaults, RateLimitPolicy(backend=cache.backend))
    upstreams = _vary_credentials(upstreams, cache.credential_headers)
    redact = _value(top, "top", "redact")
    grace = _value(top, "top", "shutdown_grace")
    limits = _value(top, "top", "limits") or ListenerLimits()
    if listen is not None and admin is not None and listen == admin.listen and listen.port != 0:
        if "admin" in top:
            top["admin"].report_at_key(f"the admin port must differ from listen ({listen})")
        else:
            top["listen"].report(f"{listen} is the admin port's default: set 'admin' to another address")
    if admin is not None and not admin.listen.is_loopback and not admin.token:
        # Refused, not warned: anyone who reaches the port could open breakers, purge the cache, reload.
        top["admin"].report_at_key(f"{admin.listen} is reachable beyond this host: set admin.token (mutating "
                                   "endpoints then need it) or listen on a loopback address")
    return Policy(
        source=root.ctx.file,
        listen=listen or DEFAULT_LISTEN,
        admin=admin or AdminSettings(DEFAULT_ADMIN),
        upstreams=MappingProxyType(upstreams),
        cache=cache,
        shutdown_grace=grace if grace is not None else schema.default_of(Policy, "shutdown_grace"),
        limits=limits,
        redact=redact or Redaction(),
    )


def _vary_credentials(upstreams: dict[str, Upstream], headers: tuple[str, ...]) -> dict[str, Upstream]:
    """Every cached route's key names the caller by all the policy's credential headers, so two callers that
    differ in any of them never share an entry (RouteCache.vary starts with the default ones)."""
    if headers == CREDENTIAL_HEADERS:
        return upstreams

    def with_headers(route: Route) -> Route:
        if route.cache is None:
            return route
        vary = (*headers, *(h for h in route.cache.vary if h not in headers))
        return dataclasses.replace(route, cache=dataclasses.replace(route.cache, vary=vary))

    return {
        name: dataclasses.replace(
            u, routes=tuple(with_headers(r) for r in u.routes), default_route=with_headers(u.default_route)
        )
        for name, u in upstreams.items()
    }


def _admin(node: Located | None) -> AdminSettings | None:
    """`admin: 127.0.0.1:9901` is short for `admin: {listen: 127.0.0.1:9901}`."""
    if node is None:
        return AdminSettings(DEFAULT_ADMIN)
    if not node.node.tag.endswith(":map"):
        address = node.read(schema.ADMIN_LISTEN.kind.read)
        return AdminSettings(address) if address else None
    return node.read(lambda n: schema.read(schema.ADMIN, n, None, "top"))


def _upstreams(node: Located | None, defaults: Inherited, pacing: RateLimitPolicy) -> dict[str, Upstream]:
    if node is None:
        return {}
    entries = node.read(lambda n: n.mapping()) or {}
    upstreams: dict[str, Upstream] = {}
    for name, child in entries.items():
        if not _NAME.match(name):
            child.report_at_key("an upstream name is the first path segment: use lowercase letters, digits, _ and -")
            continue
        upstream = _upstream(name, child, defaults, pacing)
        if upstream is not None:
            upstreams[name] = upstream
    return upstreams


def _upstream(name: str, node: Located, defaults: Inherited, pacing: RateLimitPolicy) -> Upstream | None:
    entries = _mapping(node, "upstream")
    if entries is None:
        return None
    if "url" not in entries:
        node.report_at_key(schema.URL_FIELD.required)
        return None
    url = _value(entries, "upstream", "url")
    headers = _value(entries, "upstream", "headers") if "headers" in entries else schema.HEADERS_FIELD.default
    inherited = defaults.apply(entries, "upstream")
    # The upstream's rate_limit, over the starting point (the cache's backend), is what its routes start from.
    own_pacing = _value(entries, "upstream", "rate_limit", pacing)
    pacing = own_pacing or pacing
    default_route = _make_route(name, "default", None, "**", inherited, own_breaker=False,
                                rate_limit=_paced(own_pacing))
    nodes: dict[str, Located] = {}
    routes = _routes(name, entries.get("routes"), inherited, pacing, own_pacing, nodes)
    _check_pacing((*routes, default_route), entries.get("rate_limit"), nodes)
    _check_throttle_scopes((*routes, default_route), entries.get("throttle"))
    if url is None or headers is None:
        return None
    return Upstream(
        name=name,
        url=url,
        headers=headers,
        limits=inherited.limits,
        throttle=inherited.throttle,
        routes=routes,
        default_route=default_route,
    )


# -- routes --------------------------------------------------------------------------------------------


def _routes(
    upstream: str, node: Located | None, inherited: Inherited, pacing: RateLimitPolicy,
    upstream_pacing: RateLimitPolicy | None, nodes: dict[str, Located],
) -> tuple[Route, ...]:
    """The upstream's routes; `nodes` gets each one's node, by name (for rules checked across routes)."""
    if node is None:
        return ()
    routes: list[Route] = []
    seen: set[str] = set()
    for item in node.read(lambda n: n.sequence()) or []:
        route = _route(upstream, item, inherited, pacing, upstream_pacing)
        if route is None:
            continue
        if route.name in seen:
            item.report(f"duplicate route name {route.name!r} in upstream {upstream!r}")
            continue
        seen.add(route.name)
        nodes[route.name] = item
        routes.append(route)
    return tuple(routes)


def _route(
    upstream: str, node: Located, inherited: Inherited, pacing: RateLimitPolicy, upstream_pacing: RateLimitPolicy | None
) -> Route | None:
    entries = _mapping(node, "route")
    if entries is None:
        return None
    missing = [k for k in ("name", "match") if k not in entries]
    if missing:
        node.report(f"a route needs {' and '.join(repr(k) for k in missing)}")
        return None
    name = _value(entries, "route", "name")
    matched = _value(entries, "route", "match")
    own = inherited.apply(entries, "route")
    idempotent = _value(entries, "route", "idempotent")
    cache = _value(entries, "route", "cache")
    hedge = _value(entries, "route", "hedge")
    # Over the upstream's (a route's `wait: 2s` keeps its limits); a bad block leaves the upstream's.
    rate_limit = _value(entries, "route", "rate_limit", pacing) or upstream_pacing
    if name is None or matched is None:
        return None
    method, glob = matched
    return _make_route(
        upstream, name, method, glob, own, own_breaker="breaker" in entries,
        idempotent=bool(idempotent), cache=cache, hedge=hedge, rate_limit=_paced(rate_limit),
    )


def compile_glob(glob: str) -> Glob:
    """`*` matches within one path segment, `**` across segments (see `Glob`: never a backtracking regex)."""
    return Glob(glob)


def _make_route(
    upstream: str,
    name: str,
    method: str | None,
    glob: str,
    inherited: Inherited,
    *,
    own_breaker: bool,
    idempotent: bool = False,
    cache: RouteCache | None = None,
    hedge: Hedge | None = None,
    rate_limit: RateLimitPolicy | None = None,
) -> Route:
    return Route(
        upstream=upstream,
        name=name,
        method=method,
        glob=glob,
        pattern=compile_glob(glob),
        timeouts=inherited.timeouts,
        retry=inherited.retry,
        breaker=inherited.breaker,
        breaker_name=f"{upstream}.{name}" if own_breaker else upstream,
        idempotent=idempotent,
        cache=cache,
        hedge=hedge,
        rate_limit=rate_limit,
    )


# -- rate limits ---------------------------------------------------------------------------------------


def _paced(pacing: RateLimitPolicy | None) -> RateLimitPolicy | None:
    """A block with no limits paces nothing (a route's `rate_limit: {limits: []}` opts out of its upstream's)."""
    return pacing if pacing is not None and pacing.limits else None


def _check_pacing(routes: tuple[Route, ...], own: Located | None, nodes: Mapping[str, Located]) -> None:
    """The rules across a route's match and its limits, reported where the limit is written (the route's own
    `rate_limit.limits`, else its upstream's, `own`): a key names captures the route's glob has, a `{body.*}` key
    has a buffered body to read, and one name is one budget, declared alike wherever it is used."""
    first: dict[str, tuple[Route, tuple[Any, ...], Located | None]] = {}
    for route in routes:
        pacing = route.rate_limit
        if pacing is None:
            continue
        node = nodes.get(route.name)
        block = node.find("rate_limit") if node is not None else None
        inherited = block is None or block.find("limits") is None
        block = own if inherited else block
        if block is None:
            continue
        for i, limit in enumerate(pacing.limits):
            at = block.find("limits", i, "key") or block.find("limits", i) or block
            for capture in sorted(limit.key.captures - route.pattern.names):
                if inherited:
                    at.report(f"{{{capture}}} is not a capture of route {route.name!r} ({route.method or 'ANY'} "
                              f"{route.glob}), which inherits this limit from its upstream: set the limit on the "
                              "routes whose match captures it")
                else:
                    names = ", ".join(f"{{{n}}}" for n in sorted(route.pattern.names)) or "none"
                    at.report(f"{{{capture}}} is not a capture of this route's match ({route.glob}); its captures: "
                              f"{names}")
            if limit.key.needs_body and route.retry.max_body == 0:
                at.report(f"a {{body.*}} key reads the body buffered for retries, and route {route.name!r} buffers "
                          "none (retry.max_body: 0)")
            definition = (limit, pacing.backend, pacing.replicas)
            seen = first.setdefault(limit.name, (route, definition, block.find("limits", i)))
            if seen[1] != definition:
                where = f" (line {seen[2].line})" if seen[2] is not None else ""
                (block.find("limits", i, "name") or at).report(
                    f"limit {limit.name!r} is declared otherwise for route {seen[0].name!r}{where}: within an "
                    "upstream a limit's name is one budget, declared alike (rate, burst, key, backend, replicas); "
                    "give this one another name")


def _check_throttle_scopes(routes: tuple[Route, ...], own: Located | None) -> None:
    """The `limits` of an upstream's own throttle rules name limits its routes pace: else the answer a rule is about
    would hold nothing (the rules of `defaults` reach every upstream and are not checked)."""
    if own is None or own.is_null():
        return
    paced = {limit.name for route in routes if route.rate_limit is not None for limit in route.rate_limit.limits}
    for rule in own.read(Located.sequence) or []:
        at = rule.find("limits")
        if at is None:
            continue
        for name in sorted(set(at.read(Located.texts) or []) - paced):
            known = ", ".join(sorted(paced)) or "none"
            at.report(f"{name!r} is not a rate limit of this upstream's routes (its limits: {known})")


def _cache_settings(node: Located | None) -> CacheSettings:
    if node is None:
        return CacheSettings()
    settings: CacheSettings = node.read(lambda n: schema.read(schema.CACHE, n, None, "top")) or CacheSettings()
    if settings.backend != "redis":
        return settings
    secret = node.ctx.environ.get(CACHE_KEY_SECRET_ENV, "")
    if not secret and not URL(settings.redis_url).password:
        # Else the key would be derived from the URL and namespace alone, which anyone who reads the policy
        # can recompute: credentials in cache keys would be hashed with a public key.
        node.report_at_key(f"a Redis cache needs {CACHE_KEY_SECRET_ENV} set (the same secret on every replica) "
                           "when redis_url carries no password")
    return dataclasses.replace(settings, key_secret=secret)
