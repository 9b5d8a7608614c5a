"""The parsed policy: small, frozen, typed objects. Inheritance is already resolved here.

Nothing downstream reads raw YAML: a stage asks `route.timeouts.read`, never a dict with a fallback.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from yarl import URL

from proxy.policy.glob import Glob
from proxy.policy.units import format_duration

# Retry / breaker conditions an attempt can end with (besides HTTP statuses and `5xx`/`4xx` classes).
OUTCOME_CONDITIONS = frozenset({"connect_error", "reset", "timeout"})
# Always part of a cache key: whoever the caller is, another caller never gets its cached answer. The common
# ways an API client names itself (RFC 9110 auth, cookies, API-key headers of Google, AWS, Supabase and the like);
# `cache.credential_headers` adds more.
CREDENTIAL_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "apikey",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "x-auth-token",
    "x-access-token",
    "x-amz-security-token",
    "x-session-token",
    "x-client-secret",
    "x-functions-key",
    "ocp-apim-subscription-key",
    "private-token",
)
# Query parameters whose values are credentials: never written to a log line or the admin port. Compared
# decoded and lowercased; `redact.query` adds more. OAuth 2 / OIDC, presigned URLs (AWS SigV4, GCS, Azure
# SAS `sig`), and the usual API-key and password spellings.
SECRET_QUERY_NAMES = frozenset({
    "access_token", "refresh_token", "id_token", "token", "client_secret", "client_assertion", "code",
    "code_verifier", "assertion", "jwt", "sig", "signature", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "x-goog-signature", "x-goog-credential", "password", "passwd",
    "pwd", "pass", "secret", "api_key", "apikey", "api-key", "key", "auth", "authorization", "session",
    "session_id", "sessionid", "sid", "otp", "private_token", "hub.verify_token", "verify_token",
})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    line: int = field(default=0, compare=False, repr=False)  # where the policy said it, for bind errors

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """By address, not by spelling: `127.1.2.3`, `::1` written out, `::ffff:127.0.0.1` are loopback too."""
        return is_loopback_host(self.host)


def is_loopback_host(host: str) -> bool:
    host = host.strip().strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):  # RFC 6761 §6.3: always resolves to loopback
        return True
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # a scope (`::1%lo`) names the interface
    except ValueError:
        return False  # another name: it may resolve anywhere
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. `read` is the longest gap between bytes, `total` the whole request's deadline."""

    connect: float = 3.0
    read: float = 10.0
    write: float = 5.0
    pool: float = 5.0
    total: float = 30.0


@dataclass(frozen=True, slots=True)
class Backoff:
    base: float = 0.1
    max: float = 2.0


@dataclass(frozen=True, slots=True)
class RetryBudget:
    ratio: float = 0.2
    min_per_second: float = 5.0


@dataclass(frozen=True, slots=True)
class Conditions:
    """A set of outcomes: named conditions, exact statuses and status classes (`5xx`)."""

    names: frozenset[str] = frozenset()
    statuses: frozenset[int] = frozenset()
    classes: frozenset[int] = frozenset()  # 5 for `5xx`

    def matches_status(self, status: int) -> bool:
        return status in self.statuses or status // 100 in self.classes

    def matches(self, outcome: str) -> bool:
        return outcome in self.names

    def describe(self) -> list[str | int]:
        return [*sorted(self.names), *sorted(self.statuses), *(f"{c}xx" for c in sorted(self.classes))]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    backoff: Backoff = Backoff()
    on: Conditions = Conditions(
        names=frozenset({"connect_error", "reset", "timeout"}), statuses=frozenset({502, 503, 504})
    )
    budget: RetryBudget = RetryBudget()
    max_body: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    reset_after: float = 30.0
    # A reset counts: after the body left it is still the upstream's failure, and a WhatsApp that reset every send
    # must open its breaker (it did not while `reset` was left out).
    count: Conditions = Conditions(names=frozenset({"connect_error", "reset", "timeout"}), classes=frozenset({5}))
    # `observe`: the breaker counts, opens and trials as usual, but a refusal is only counted and logged
    # (egress_observed_total), never enforced: a new threshold rehearsed on live traffic.
    mode: str = "enforce"

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"


@dataclass(frozen=True, slots=True)
class Limits:
    max_concurrent: int = 100
    max_queue: int = 50
    max_request_body: int | None = None  # None: unlimited (bodies stream)
    # How long an idle pooled connection may be reused. Servers close idle connections on their own timer (Node 5 s,
    # Apache 5 s, nginx 75 s), and one closed just as a request goes out fails that request: kept below them.
    keepalive: float = 4.0
    # A request that may not be replayed (a WhatsApp send) only goes out on a connection used this recently (or a
    # new one): lost on a stale connection, it could not be told apart from one the upstream processed.
    keepalive_non_idempotent: float = 1.0
    # `observe`: a request over `max_concurrent` + `max_queue` is counted and logged (egress_observed_total), and sent.
    mode: str = "enforce"

    @property
    def enforcing(self) -> bool:
        return self.mode == "enforce"


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """What one caller connection may hold on the data port, decided before any route is known (nginx's
    client_header_timeout and large_client_header_buffers, Envoy's max_request_headers_kb and
    request_headers_timeout)."""

    max_header_bytes: int = 64 * 1024  # the request line and every header, as sent
    max_headers: int = 100
    header_timeout: float = 10.0  # from the connection's (or the next request's) first byte to the end of its head
    idle_timeout: float = 60.0  # a kept-alive connection with no request in progress is closed after this
    max_connections: int = 1024  # open caller connections; one more is answered 503 and closed


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    """A provider's way of saying "slow down", often hidden in a body (WhatsApp: 400 with code 130429)."""

    status: int
    field: str | None = None  # JSON path of the code, e.g. `error.code`
    codes: frozenset[str] = frozenset()  # compared as text so 130429 and "130429" both match
    delay_field: str | None = None  # JSON path of the delay, e.g. `error.details[].retryDelay`
    delay: float = 1.0  # used when neither Retry-After nor delay_field says
    # The route's rate limits this answer is about (WhatsApp's #131056 is the pair limit's): it holds those keys
    # only, not the whole upstream. Empty: the whole upstream (the throttle clock) and all of the request's limits.
    limits: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RouteCache:
    ttl: float
    stale_if_error: float = 0.0
    invalidate_on_write: bool = True  # RFC 9111 §4.4; false opts out, for POST-as-query APIs
    statuses: frozenset[int] = frozenset({200})
    vary: tuple[str, ...] = CREDENTIAL_HEADERS
    override: bool = False


@dataclass(frozen=True, slots=True)
class Hedge:
    """For idempotent requests: when the first attempt has not answered after `after` seconds, up to `max` more go
    out; the first answer wins."""

    after: float
    max: int = 1


@dataclass(frozen=True, slots=True)
class Rate:
    """`count` requests per `per` seconds (`80/s`, `1/6s`, `1000/min`)."""

    count: int
    per: float

    @property
    def interval(self) -> float:
        """Seconds between two requests at this rate (GCRA's emission interval)."""
        return self.per / self.count

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.per) or format_duration(self.per)
        return f"{self.count}/{unit}"


@dataclass(frozen=True, slots=True)
class KeyPart:
    """One piece of a rate limit's key: literal `text`, or the value of a path `capture`, a request `header`
    (lowercase name) or a `body` field (its dotted path, in `name`)."""

    kind: Literal["text", "capture", "header", "body"]
    name: str


@dataclass(frozen=True, slots=True)
class KeyTemplate:
    """`"{phone_id}:{body.to}"` as written (`text`) and in pieces."""

    text: str
    parts: tuple[KeyPart, ...] = ()

    @property
    def captures(self) -> frozenset[str]:
        return frozenset(p.name for p in self.parts if p.kind == "capture")

    @property
    def needs_body(self) -> bool:
        return any(p.kind == "body" for p in self.parts)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One budget: requests with the same rendered `key` share `rate`, `burst` of them at once. Within an upstream a
    limit's `name` is its budget: routes that name the same limit share it."""

    name: str
    rate: Rate
    key: KeyTemplate = KeyTemplate("")
    burst: int | None = None  # None: the rate's count (80/s: 80 at once)

    @property
    def bucket_size(self) -> int:
        return self.burst if self.burst is not None else self.rate.count


@dataclass(frozen=True, slots=True)
class RateLimitPolicy:
    """A route's (or its upstream's) `rate_limit`: the limits a request must fit, how long it may wait for its
    turn, and where the budgets are kept (`memory`: this process; `redis`: shared by every replica)."""

    backend: Literal["memory", "redis"] = "memory"  # the loader starts from the cache's backend
    wait: float = 5.0
    replicas: int | None = None  # None: learnt from Redis while it is up (1 until then)
    limits: tuple[RateLimit, ...] = ()
    # Derived, once (asked on every paced request): whether a key reads the body.
    needs_body: bool = field(init=False, default=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs_body", any(limit.key.needs_body for limit in self.limits))


@dataclass(frozen=True, slots=True)
class Route:
    upstream: str
    name: str
    method: str | None  # None: any method
    glob: str
    pattern: Glob = field(compare=False, repr=False)  # linear in the path, whatever the glob
    timeouts: Timeouts
    retry: RetryPolicy
    breaker: BreakerPolicy
    breaker_name: str  # the upstream's name, or `upstream.route` for a route with its own breaker
    idempotent: bool = False
    cache: RouteCache | None = None
    hedge: Hedge | None = None  # None: no hedging
    rate_limit: RateLimitPolicy | None = None  # None: not paced

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method == method) and self.pattern.fullmatch(path)


@dataclass(frozen=True, slots=True)
class Upstream:
    name: str
    url: URL
    headers: tuple[tuple[str, str], ...]
    limits: Limits
    throttle: tuple[ThrottleRule, ...]
    routes: tuple[Route, ...]
    default_route: Route

    def route_for(self, method: str, path: str) -> Route:
        """First match wins; no match means the upstream's own settings under the name `default`."""
        for route in self.routes:
            if route.matches(method, path):
                return route
        return self.default_route


@dataclass(frozen=True, slots=True)
class CacheSettings:
    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    max_entries: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    max_body: int = 1024 * 1024
    op_timeout: float = 0.05
    namespace: str = "egress"
    # Request headers that name the caller: part of every cached request's key (see RouteCache.vary).
    credential_headers: tuple[str, ...] = CREDENTIAL_HEADERS
    # From CACHE_KEY_SECRET_ENV when the policy is read (never rendered): keys the hash that hides credentials
    # in cache keys; replicas sharing a Redis must agree on it.
    key_secret: str = field(default="", repr=False)


CACHE_KEY_SECRET_ENV = "EGRESS_CACHE_KEY_SECRET"


@dataclass(frozen=True, slots=True)
class AdminSettings:
    listen: Address
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Redaction:
    """What log lines and the admin port hide: values of these query parameters (lowercase, decoded)."""

    query: frozenset[str] = SECRET_QUERY_NAMES


@dataclass(frozen=True, slots=True)
class Policy:
    source: str  # the file it came from, for messages
    listen: Address
    admin: AdminSettings
    upstreams: Mapping[str, Upstream]  # a read-only mapping
    cache: CacheSettings
    shutdown_grace: float = 10.0
    limits: ListenerLimits = ListenerLimits()
    redact: Redaction = Redaction()
