"""The parsed policy: small, frozen, typed objects. Inheritance is already resolved here.

Nothing downstream reads raw YAML: a stage asks `route.timeouts.read`, never a dict with a fallback.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from yarl import URL

from proxy.policy.glob import Glob

# Retry / breaker conditions an attempt can end with (besides HTTP statuses and `5xx`/`4xx` classes).
OUTCOME_CONDITIONS = frozenset({"connect_error", "reset", "timeout"})
# Always part of a cache key: whoever the caller is, another caller never gets its cached answer.
CREDENTIAL_HEADERS = ("authorization", "apikey", "cookie")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int
    line: int = field(default=0, compare=False, repr=False)  # where the policy said it, for bind errors

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith("127.")


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
    count: Conditions = Conditions(names=frozenset({"connect_error", "timeout"}), classes=frozenset({5}))


@dataclass(frozen=True, slots=True)
class Limits:
    max_concurrent: int = 100
    max_queue: int = 50
    max_request_body: int | None = None  # None: unlimited (bodies stream)


@dataclass(frozen=True, slots=True)
class ThrottleRule:
    """A provider's way of saying "slow down", often hidden in a body (WhatsApp: 400 with code 130429)."""

    status: int
    field: str | None = None  # JSON path of the code, e.g. `error.code`
    codes: frozenset[str] = frozenset()  # compared as text so 130429 and "130429" both match
    delay_field: str | None = None  # JSON path of the delay, e.g. `error.details[].retryDelay`
    delay: float = 1.0  # used when neither Retry-After nor delay_field says


@dataclass(frozen=True, slots=True)
class RouteCache:
    ttl: float
    stale_if_error: float = 0.0
    invalidate_on_write: bool = False
    statuses: frozenset[int] = frozenset({200})
    vary: tuple[str, ...] = CREDENTIAL_HEADERS
    override: bool = False


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
    # From CACHE_KEY_SECRET_ENV when the policy is read (never rendered): keys the hash that hides credentials
    # in cache keys; replicas sharing a Redis must agree on it.
    key_secret: str = field(default="", repr=False)


CACHE_KEY_SECRET_ENV = "EGRESS_CACHE_KEY_SECRET"


@dataclass(frozen=True, slots=True)
class AdminSettings:
    listen: Address
    token: str | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    source: str  # the file it came from, for messages
    listen: Address
    admin: AdminSettings
    upstreams: Mapping[str, Upstream]  # a read-only mapping
    cache: CacheSettings
    shutdown_grace: float = 10.0
