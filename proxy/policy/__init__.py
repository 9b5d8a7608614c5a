"""Policy layer: YAML text -> validated, immutable, typed objects."""

from proxy.policy.loader import load_policy, parse_policy
from proxy.policy.model import (
    CACHE_KEY_SECRET_ENV,
    IDEMPOTENT_METHODS,
    Address,
    AdminSettings,
    BreakerPolicy,
    CacheSettings,
    Conditions,
    Hedge,
    Limits,
    ListenerLimits,
    Policy,
    RetryPolicy,
    Route,
    RouteCache,
    ThrottleRule,
    Timeouts,
    Upstream,
)
from proxy.policy.source import PolicyError, Problem

__all__ = [
    "CACHE_KEY_SECRET_ENV",
    "IDEMPOTENT_METHODS",
    "Address",
    "AdminSettings",
    "BreakerPolicy",
    "CacheSettings",
    "Conditions",
    "Hedge",
    "Limits",
    "ListenerLimits",
    "Policy",
    "PolicyError",
    "Problem",
    "RetryPolicy",
    "Route",
    "RouteCache",
    "ThrottleRule",
    "Timeouts",
    "Upstream",
    "load_policy",
    "parse_policy",
]
