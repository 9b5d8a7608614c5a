"""YAML text -> a validated `Policy`. Inheritance (defaults -> upstream -> route) is resolved here, once.

Each section is an *overlay*: a table of key -> reader applied on top of the inherited value with
`dataclasses.replace`, so a route that says `timeouts: {read: 30s}` keeps every other inherited timeout.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml
from yarl import URL

from proxy.policy.glob import Glob
from proxy.policy.model import (
    CACHE_KEY_SECRET_ENV,
    CREDENTIAL_HEADERS,
    OUTCOME_CONDITIONS,
    SECRET_QUERY_NAMES,
    Address,
    AdminSettings,
    BreakerPolicy,
    CacheSettings,
    Conditions,
    Limits,
    ListenerLimits,
    Policy,
    Redaction,
    RetryPolicy,
    Route,
    RouteCache,
    ThrottleRule,
    Timeouts,
    Upstream,
)
from proxy.policy.source import (
    MAX_POLICY_BYTES,
    Context,
    Invalid,
    Located,
    PolicyError,
    Problem,
    compose,
    default_environ,
    shown,
    too_large,
)

D = TypeVar("D")
T = TypeVar("T")
Reader = Callable[[Located, Any], Any]  # (node, inherited value) -> new value

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

DEFAULT_LISTEN = Address("127.0.0.1", 8081)
DEFAULT_ADMIN = Address("127.0.0.1", 9901)


# -- readers: one small function per kind of value -----------------------------------------------------


def _duration(node: Located, _: Any) -> float:
    return node.duration()


def _positive_duration(node: Located, _: Any) -> float:
    value = node.duration()
    if value <= 0:
        raise Invalid("expected a duration greater than 0")
    return value


def _size(node: Located, _: Any) -> int:
    return node.size()


def _count(minimum: int) -> Reader:
    return lambda node, _: node.integer(minimum)


def _ratio(node: Located, _: Any) -> float:
    return node.number(0.0, 1.0)


def _non_negative(node: Located, _: Any) -> float:
    return node.number(0.0)


def _optional_size(node: Located, _: Any) -> int | None:
    return None if node.is_null() else node.size()


def _conditions(node: Located, _: Any) -> Conditions:
    """`[connect_error, timeout, 5xx, 401]` -> named outcomes, exact statuses and status classes."""
    names: set[str] = set()
    statuses: set[int] = set()
    classes: set[int] = set()
    for item in node.sequence():
        raw = item.text().strip()
        if raw in OUTCOME_CONDITIONS:
            names.add(raw)
        elif re.fullmatch(r"[1-5]xx", raw):
            classes.add(int(raw[0]))
        elif re.fullmatch(r"[1-5][0-9][0-9]", raw):  # ASCII: '²'.isdigit() is true and int('²') fails
            statuses.add(int(raw))
        else:
            expected = ", ".join(sorted(OUTCOME_CONDITIONS))
            item.report(f"expected {expected}, a status like 503 or a class like 5xx, got {shown(raw)}")
    return Conditions(frozenset(names), frozenset(statuses), frozenset(classes))


def _overlay(spec: Mapping[str, Reader]) -> Reader:
    """A reader for a nested section: apply its keys on top of the inherited dataclass."""

    def read(node: Located, inherited: Any) -> Any:
        return overlay(inherited, node, spec)

    return read


TIMEOUTS: Mapping[str, Reader] = {
    "connect": _positive_duration,
    "read": _positive_duration,
    "write": _positive_duration,
    "pool": _duration,
    "total": _positive_duration,
}
RETRY: Mapping[str, Reader] = {
    "attempts": _count(1),
    "backoff": _overlay({"base": _duration, "max": _duration}),
    "on": _conditions,
    "budget": _overlay({"ratio": _ratio, "min_per_second": _non_negative}),
    "max_body": _size,
}
BREAKER: Mapping[str, Reader] = {
    "failures": _count(1),
    "reset_after": _positive_duration,
    "count": _conditions,
}
LIMITS: Mapping[str, Reader] = {
    "max_concurrent": _count(1),
    "max_queue": _count(0),
    "max_request_body": _optional_size,
    "keepalive": _duration,
    "keepalive_non_idempotent": _duration,
}
LISTENER_LIMITS: Mapping[str, Reader] = {
    "max_header_bytes": lambda node, _: _bounded_size(node, 1024),
    "max_headers": _count(1),
    "header_timeout": _positive_duration,
    "idle_timeout": _positive_duration,
    "max_connections": _count(1),
}


def _bounded_size(node: Located, minimum: int) -> int:
    value = node.size()
    if value < minimum:
        raise Invalid(f"expected a size of at least {minimum} bytes, got {value}")
    return value


def overlay(inherited: D, node: Located, spec: Mapping[str, Reader]) -> D:
    """`inherited` with the keys `node` sets; a bad key is reported and keeps the inherited value."""
    entries = node.read(lambda n: n.mapping(spec))
    if not entries:
        return inherited
    changes: dict[str, Any] = {}
    for key, child in entries.items():
        current = getattr(inherited, key)
        value = child.read(lambda n, k=key, c=current: spec[k](n, c))  # type: ignore[misc]
        if value is not None or spec[key] is _optional_size:
            changes[key] = value
    return dataclasses.replace(inherited, **changes)  # type: ignore[type-var]


# -- the inheritable sections --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Inherited:
    """What a level passes down to the next: defaults -> upstream -> route."""

    timeouts: Timeouts = Timeouts()
    retry: RetryPolicy = RetryPolicy()
    breaker: BreakerPolicy = BreakerPolicy()
    limits: Limits = Limits()
    throttle: tuple[ThrottleRule, ...] = ()

    def apply(self, entries: Mapping[str, Located]) -> Inherited:
        return Inherited(
            timeouts=overlay(self.timeouts, entries["timeouts"], TIMEOUTS) if "timeouts" in entries
            else self.timeouts,
            retry=_check_backoff(overlay(self.retry, entries["retry"], RETRY), self.retry, entries["retry"])
            if "retry" in entries else self.retry,
            breaker=overlay(self.breaker, entries["breaker"], BREAKER) if "breaker" in entries
            else self.breaker,
            limits=overlay(self.limits, entries["limits"], LIMITS) if "limits" in entries else self.limits,
            throttle=_throttle_rules(entries["throttle"]) if "throttle" in entries else self.throttle,
        )


def _check_backoff(retry: RetryPolicy, inherited: RetryPolicy, node: Located) -> RetryPolicy:
    """Reported where the backoff is set, not again at every level that merely inherits it."""
    if retry.backoff != inherited.backoff and retry.backoff.max < retry.backoff.base:
        node.report(f"backoff.max ({retry.backoff.max}s) must not be less than backoff.base")
    return retry


# -- top level -----------------------------------------------------------------------------------------

TOP_KEYS = ("listen", "admin", "limits", "defaults", "upstreams", "cache", "shutdown_grace", "redact")
DEFAULTS_KEYS = ("timeouts", "retry", "breaker", "limits", "throttle")
UPSTREAM_KEYS = ("url", "headers", "timeouts", "retry", "breaker", "limits", "throttle", "routes")
ROUTE_KEYS = ("name", "match", "timeouts", "retry", "breaker", "idempotent", "cache")


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
    top = root.read(lambda n: n.mapping(TOP_KEYS))
    if top is None:
        return None
    listen = _address(top.get("listen"), DEFAULT_LISTEN)
    admin = _admin(top.get("admin"))
    defaults = Inherited()
    if "defaults" in top:
        entries = top["defaults"].read(lambda n: n.mapping(DEFAULTS_KEYS)) or {}
        defaults = defaults.apply(entries)
    upstreams = _upstreams(top.get("upstreams"), defaults)
    cache = _cache_settings(top.get("cache"))
    upstreams = _vary_credentials(upstreams, cache.credential_headers)
    redact = top["redact"].read(_redaction) if "redact" in top else None
    grace = top["shutdown_grace"].read(lambda n: n.duration()) if "shutdown_grace" in top else None
    limits = overlay(ListenerLimits(), top["limits"], LISTENER_LIMITS) if "limits" in top else ListenerLimits()
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
        shutdown_grace=grace if grace is not None else 10.0,
        limits=limits,
        redact=redact or Redaction(),
    )


def _redaction(node: Located) -> Redaction:
    """`redact: {query: [name, ...]}`: names added to the default list (which cannot be shortened)."""
    entries = node.mapping(("query",))
    names = set(SECRET_QUERY_NAMES)
    items = entries["query"].read(Located.sequence) if "query" in entries else None
    for item in items or []:
        name = item.read(Located.text)
        if name is not None and not name.strip():
            item.report("expected a query parameter name, got an empty one")
        elif name is not None:
            names.add(name.strip().lower())  # compared lowercased and decoded (see render.redact_query)
    return Redaction(frozenset(names))


def _credential_headers(node: Located, _: Any) -> tuple[str, ...]:
    """Header names added to the default credential headers (which cannot be shortened)."""
    names = list(CREDENTIAL_HEADERS)
    for item in node.sequence():
        name = item.read(Located.text)
        if name is not None and not _HEADER_NAME.match(name):
            item.report(f"not a valid header name: {name!r}")
        elif name is not None and name.lower() not in names:
            names.append(name.lower())
    return tuple(names)


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


def _address(node: Located | None, default: Address) -> Address | None:
    if node is None:
        return default

    def read(n: Located) -> Address:
        raw = n.text().strip()
        match = re.fullmatch(r"\[?([^\[\]]*?)\]?:([0-9]+)", raw)
        if not match or not match.group(1):
            raise Invalid(f"expected host:port like '127.0.0.1:8081', got {shown(raw)}")
        if len(match.group(2)) > 5 or int(match.group(2)) > 65535:  # int() of 5,000 digits raises
            raise Invalid(f"expected a port from 0 to 65535, got {shown(match.group(2))[1:-1]}")
        port = int(match.group(2))
        return Address(match.group(1), port, n.line)

    return node.read(read)


def _admin(node: Located | None) -> AdminSettings | None:
    if node is None:
        return AdminSettings(DEFAULT_ADMIN)
    if not node.node.tag.endswith(":map"):
        address = _address(node, DEFAULT_ADMIN)
        return AdminSettings(address) if address else None
    entries = node.read(lambda n: n.mapping(("listen", "token"))) or {}
    address = _address(entries.get("listen"), DEFAULT_ADMIN)
    token = entries["token"].read(lambda n: n.text()) if "token" in entries else None
    return AdminSettings(address or DEFAULT_ADMIN, token or None)


def _upstreams(node: Located | None, defaults: Inherited) -> dict[str, Upstream]:
    if node is None:
        return {}
    entries = node.read(lambda n: n.mapping()) or {}
    upstreams: dict[str, Upstream] = {}
    for name, child in entries.items():
        if not _NAME.match(name):
            child.report_at_key("an upstream name is the first path segment: use lowercase letters, digits, _ and -")
            continue
        upstream = _upstream(name, child, defaults)
        if upstream is not None:
            upstreams[name] = upstream
    return upstreams


def _upstream(name: str, node: Located, defaults: Inherited) -> Upstream | None:
    entries = node.read(lambda n: n.mapping(UPSTREAM_KEYS))
    if entries is None:
        return None
    if "url" not in entries:
        node.report_at_key("missing key 'url' (the upstream's base URL, e.g. https://graph.facebook.com)")
        return None
    url = entries["url"].read(_url)
    headers = entries["headers"].read(_headers) if "headers" in entries else ()
    inherited = defaults.apply(entries)
    default_route = _make_route(name, "default", None, "**", inherited, own_breaker=False)
    routes = _routes(name, entries.get("routes"), inherited)
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


def _url(node: Located) -> URL:
    """Every message quotes the URL through `shown`: a password in it never reaches `check` or `/reload`'s body."""
    raw = node.text().strip()
    try:
        url = URL(raw)
        url.port  # noqa: B018  (yarl checks the port lazily: 'h:99999' would fail on the first request)
    except (ValueError, TypeError):
        raise Invalid(f"expected an http(s) URL, got {shown(raw)}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise Invalid(f"expected an http(s) URL like 'https://api.example.com', got {shown(raw)}")
    if url.raw_user is not None or url.raw_password is not None:
        # aiohttp turns URL userinfo into an Authorization header and refuses a request that also carries the
        # caller's own (a 500 for every such call); a header from the policy is explicit and never logged.
        raise Invalid(
            f"the URL must not carry credentials (user:password@), got {shown(raw)}: inject them with the "
            "upstream's headers instead, e.g. headers: {Authorization: \"Basic ${UPSTREAM_BASIC_AUTH}\"}"
        )
    if url.query_string or url.fragment:
        raise Invalid(f"the base URL must not carry a query or fragment, got {shown(raw)}")
    return url


def _headers(node: Located) -> tuple[tuple[str, str], ...]:
    pairs = []
    for key, child in node.mapping().items():
        if not _HEADER_NAME.match(key):
            child.report(f"not a valid header name: {shown(key)}")
            continue
        value = child.read(lambda n: n.text())
        if value is not None and ("\r" in value or "\n" in value):
            child.report("a header value must not contain line breaks")
            continue
        if value:  # an empty injected credential means "let the caller's own header through"
            pairs.append((key, value))
    return tuple(pairs)


def _field(entries: Mapping[str, Located], key: str, reader: Callable[[Located], T], default: T) -> T:
    """`entries[key]` read by `reader`, a bad value reported at its own key; `default` when absent or bad."""
    value = entries[key].read(reader) if key in entries else None
    return default if value is None else value


def _throttle_rules(node: Located) -> tuple[ThrottleRule, ...]:
    rules = []
    for item in node.read(lambda n: n.sequence()) or []:
        rule = item.read(_throttle_rule)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _throttle_rule(node: Located) -> ThrottleRule | None:
    entries = node.mapping(("status", "field", "codes", "delay_field", "delay"))
    if "status" not in entries:
        raise Invalid("a throttle rule needs a 'status' (e.g. 429, or 400 for WhatsApp's 130429)")
    status = entries["status"].read(Located.status)
    codes = _field(entries, "codes", lambda n: frozenset(n.texts()), frozenset[str]())
    field = _field(entries, "field", Located.text, None)
    delay_field = _field(entries, "delay_field", Located.text, None)
    delay = _field(entries, "delay", Located.duration, 1.0)
    if codes and not field:
        raise Invalid("'codes' needs a 'field' naming where the code is in the JSON body, e.g. error.code")
    if status is None:
        return None
    return ThrottleRule(status=status, field=field, codes=codes, delay_field=delay_field, delay=delay)


# -- routes --------------------------------------------------------------------------------------------


def _routes(upstream: str, node: Located | None, inherited: Inherited) -> tuple[Route, ...]:
    if node is None:
        return ()
    routes: list[Route] = []
    seen: set[str] = set()
    for item in node.read(lambda n: n.sequence()) or []:
        route = _route(upstream, item, inherited)
        if route is None:
            continue
        if route.name in seen:
            item.report(f"duplicate route name {route.name!r} in upstream {upstream!r}")
            continue
        seen.add(route.name)
        routes.append(route)
    return tuple(routes)


def _route(upstream: str, node: Located, inherited: Inherited) -> Route | None:
    entries = node.read(lambda n: n.mapping(ROUTE_KEYS))
    if entries is None:
        return None
    missing = [k for k in ("name", "match") if k not in entries]
    if missing:
        node.report(f"a route needs {' and '.join(repr(k) for k in missing)}")
        return None
    name = entries["name"].read(_route_name)
    matched = entries["match"].read(_match)
    _refuse_key(entries.get("retry"), "budget", "the retry budget is per upstream: set it on the upstream or in "
                "defaults (a route's would be ignored)")
    own = inherited.apply(entries)
    idempotent = entries["idempotent"].read(lambda n: n.boolean()) if "idempotent" in entries else False
    cache = entries["cache"].read(_route_cache) if "cache" in entries else None
    if name is None or matched is None:
        return None
    method, glob = matched
    return _make_route(
        upstream, name, method, glob, own, own_breaker="breaker" in entries,
        idempotent=bool(idempotent), cache=cache,
    )


def _refuse_key(node: Located | None, key: str, why: str) -> None:
    """Report `key` where it is allowed elsewhere (so the shared reader takes it) but means nothing here."""
    if node is not None and isinstance(node.node, yaml.MappingNode):
        for key_node, _ in node.node.value:
            if key_node.value == key:
                Located(key_node, node.child_path(key), node.ctx).report(why)


def _route_name(node: Located) -> str:
    name = node.text()
    if not _ROUTE_NAME.match(name) or name == "default":
        raise Invalid(f"expected a route name of letters, digits, '_', '-', '.' (not 'default'), got {shown(name)}")
    return name


def _match(node: Located) -> tuple[str | None, str]:
    raw = node.text().strip()
    parts = raw.split()
    if len(parts) == 1:
        parts = ["ANY", parts[0]]
    if len(parts) != 2:
        raise Invalid(f"expected 'METHOD /path/glob' like 'POST /v19.0/*/messages', got {shown(raw)}")
    method, glob = parts[0].upper(), parts[1]
    if method != "ANY" and method not in HTTP_METHODS:
        raise Invalid(f"expected an HTTP method or ANY, got {shown(parts[0])}")
    if not glob.startswith("/"):
        raise Invalid(f"the path glob must start with '/', got {shown(glob)}")
    return (None if method == "ANY" else method), glob


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
    )


CACHE_RULE_KEYS = ("ttl", "stale_if_error", "invalidate_on_write", "statuses", "vary", "override")


def _route_cache(node: Located) -> RouteCache:
    entries = node.mapping(CACHE_RULE_KEYS)
    if "ttl" not in entries:
        raise Invalid("a route cache needs a 'ttl', e.g. cache: {ttl: 5m}")
    vary = list(CREDENTIAL_HEADERS)
    for header in _field(entries, "vary", Located.texts, list[str]()):
        if header.lower() not in vary:
            vary.append(header.lower())
    return RouteCache(
        ttl=_field(entries, "ttl", Located.duration, 0.0),
        stale_if_error=_field(entries, "stale_if_error", Located.duration, 0.0),
        invalidate_on_write=_field(entries, "invalidate_on_write", Located.boolean, False),
        statuses=_field(entries, "statuses", lambda n: frozenset(s.status() for s in n.sequence()),
                        frozenset({200})),
        vary=tuple(vary),
        override=_field(entries, "override", Located.boolean, False),
    )




def _redis_url(node: Located) -> str:
    raw = node.text().strip()
    try:
        url = URL(raw)
        url.port  # noqa: B018  (yarl checks the port lazily)
    except (ValueError, TypeError) as exc:
        # yarl's reason may quote a piece of the URL: shown, like the URL, so no password reaches the message.
        raise Invalid(f"expected a redis URL like 'redis://127.0.0.1:6379/0', got {shown(raw)}: "
                      f"{_without(str(exc), raw)}") from None
    if url.scheme not in ("redis", "rediss") or not url.host:
        raise Invalid(f"expected a redis URL like 'redis://127.0.0.1:6379/0', got {shown(raw)}")
    return raw


def _without(reason: str, raw: str) -> str:
    """`reason` with any credential in `raw` (the userinfo, the query) taken out."""
    userinfo = raw.partition("://")[2].rpartition("@")[0]
    secrets = [userinfo, *userinfo.split(":"), raw.partition("?")[2]]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        reason = reason.replace(secret, "<redacted>")
    return shown(reason)[1:-1]


def _cache_settings(node: Located | None) -> CacheSettings:
    if node is None:
        return CacheSettings()
    settings = _cache_fields(node)
    if settings.backend != "redis":
        return settings
    secret = node.ctx.environ.get(CACHE_KEY_SECRET_ENV, "")
    if not secret and not URL(settings.redis_url).password:
        # Else the key would be derived from the URL and namespace alone, which anyone who reads the policy
        # can recompute: credentials in cache keys would be hashed with a public key.
        node.report_at_key(f"a Redis cache needs {CACHE_KEY_SECRET_ENV} set (the same secret on every replica) "
                           "when redis_url carries no password")
    return dataclasses.replace(settings, key_secret=secret)


def _cache_fields(node: Located) -> CacheSettings:
    spec: Mapping[str, Reader] = {
        "backend": lambda n, _: n.choice(("memory", "redis")),
        "redis_url": lambda n, _: _redis_url(n),
        "max_entries": _count(1),
        "max_bytes": _size,
        "max_body": _size,
        "op_timeout": _positive_duration,
        "namespace": lambda n, _: n.text(),
        "credential_headers": _credential_headers,
    }
    return overlay(CacheSettings(), node, spec)
