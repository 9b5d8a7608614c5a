"""Inheritance (defaults -> upstream -> route, key by key), route matching, and the shipped policy's figures."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.policy import (
    BreakerPolicy,
    Conditions,
    Limits,
    PolicyError,
    RetryPolicy,
    Timeouts,
    load_policy,
)
from tests.policy._helpers import load

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"

LAYERED = """\
defaults:
  timeouts: {connect: 1s, read: 2s}
  retry:
    attempts: 4
    backoff: {base: 50ms, max: 1s}
    on: [timeout, 503]
    budget: {ratio: 0.5}
  breaker: {failures: 3, count: [timeout]}
  limits: {max_concurrent: 7}
  throttle:
    - {status: 429}
upstreams:
  api:
    url: https://api.example
    timeouts: {read: 3s}
    retry:
      backoff: {max: 3s}
      budget: {min_per_second: 1}
    breaker: {reset_after: 10s}
    limits: {max_queue: 2}
    routes:
      - name: slow
        match: POST /slow/**
        timeouts: {write: 4s, total: 60s}
        retry: {backoff: {base: 200ms}, on: [connect_error]}
        breaker: {failures: 9}
      - name: plain
        match: GET /plain
  bare:
    url: https://bare.example
    throttle: []
"""


@pytest.fixture(scope="module")
def layered():
    return load(LAYERED)


def test_timeouts_are_inherited_key_by_key(layered):
    api = layered.upstreams["api"]
    slow = api.routes[0]
    assert slow.timeouts == Timeouts(connect=1.0, read=3.0, write=4.0, pool=5.0, total=60.0)
    assert api.route_for("GET", "/plain").timeouts == Timeouts(connect=1.0, read=3.0, write=5.0, pool=5.0, total=30.0)
    assert api.default_route.timeouts == api.routes[1].timeouts
    assert layered.upstreams["bare"].default_route.timeouts == Timeouts(connect=1.0, read=2.0)


def test_retry_is_inherited_with_its_nested_backoff_and_budget(layered):
    api = layered.upstreams["api"]
    slow, plain = api.routes
    assert slow.retry.attempts == 4
    assert (slow.retry.backoff.base, slow.retry.backoff.max) == (0.2, 3.0)
    assert (plain.retry.backoff.base, plain.retry.backoff.max) == (0.05, 3.0)
    assert (plain.retry.budget.ratio, plain.retry.budget.min_per_second) == (0.5, 1.0)
    assert slow.retry.budget == plain.retry.budget
    bare = layered.upstreams["bare"].default_route.retry
    assert (bare.backoff.base, bare.backoff.max) == (0.05, 1.0)
    assert (bare.budget.ratio, bare.budget.min_per_second) == (0.5, 5.0)
    assert bare.max_body == RetryPolicy().max_body


def test_a_condition_list_replaces_the_inherited_one(layered):
    slow, plain = layered.upstreams["api"].routes
    assert slow.retry.on == Conditions(names=frozenset({"connect_error"}))
    assert plain.retry.on == Conditions(names=frozenset({"timeout"}), statuses=frozenset({503}))


def test_breaker_is_inherited_and_a_route_with_its_own_gets_its_own_name(layered):
    api = layered.upstreams["api"]
    slow, plain = api.routes
    assert plain.breaker == BreakerPolicy(failures=3, reset_after=10.0, count=Conditions(names=frozenset({"timeout"})))
    assert slow.breaker == BreakerPolicy(failures=9, reset_after=10.0, count=plain.breaker.count)
    assert slow.breaker_name == "api.slow"
    assert plain.breaker_name == "api"
    assert api.default_route.breaker_name == "api"
    assert layered.upstreams["bare"].default_route.breaker_name == "bare"


def test_a_route_with_an_empty_breaker_section_still_gets_its_own_breaker():
    text = "upstreams:\n  u:\n    url: https://u.example\n    routes:\n      - {name: r, match: GET /, breaker: {}}\n"
    policy = load(text)
    route = policy.upstreams["u"].routes[0]
    assert route.breaker_name == "u.r"
    assert route.breaker == policy.upstreams["u"].default_route.breaker


def test_limits_and_throttle_come_from_defaults_then_upstream(layered):
    api, bare = layered.upstreams["api"], layered.upstreams["bare"]
    assert api.limits == Limits(max_concurrent=7, max_queue=2)
    assert bare.limits == Limits(max_concurrent=7)
    assert [t.status for t in api.throttle] == [429]
    assert bare.throttle == ()  # an upstream's own (empty) list replaces the inherited one


def test_without_a_defaults_section_the_built_in_defaults_apply():
    route = load("upstreams:\n  u: {url: 'https://u.example'}\n").upstreams["u"].default_route
    assert route.timeouts == Timeouts()
    assert route.retry == RetryPolicy()
    assert route.breaker == BreakerPolicy()
    assert (route.timeouts.connect, route.timeouts.read, route.timeouts.total) == (3.0, 10.0, 30.0)


def test_a_bad_value_is_reported_at_its_own_key():
    with pytest.raises(PolicyError) as info:
        load(LAYERED.replace("timeouts: {read: 3s}", "timeouts: {read: 3s, pool: soon}"))
    assert [p.path for p in info.value.problems] == ["upstreams.api.timeouts.pool"]


# -- routes ----------------------------------------------------------------------------------------------


def test_the_default_route_is_named_default_and_matches_everything(layered):
    default = layered.upstreams["api"].default_route
    assert (default.name, default.method, default.glob) == ("default", None, "**")
    assert default.idempotent is False and default.cache is None
    for method, path in [("GET", "/"), ("DELETE", "/a/b/c"), ("PATCH", "/x?y")]:
        assert default.matches(method, path)
    assert layered.upstreams["api"].route_for("GET", "/nothing/here") is default


ROUTES = """\
upstreams:
  u:
    url: https://u.example
    routes:
      - {name: generate, match: "POST /v1beta/models/*:generateContent"}
      - {name: messages, match: POST /v19.0/*/messages}
      - {name: graph, match: GET /v19.0/*}
      - {name: exact, match: GET /rest/v1/accounts}
      - {name: rest, match: ANY /rest/v1/**}
      - {name: deep, match: "GET /files/**/raw"}
      - {name: anything, match: "/rest/**"}
"""


@pytest.mark.parametrize(
    ("method", "path", "route"),
    [
        ("POST", "/v1beta/models/gemini-pro:generateContent", "generate"),
        ("POST", "/v1beta/models/:generateContent", "generate"),  # `*` may match nothing
        ("GET", "/v1beta/models/gemini-pro:generateContent", "default"),  # method must match
        ("POST", "/v1beta/models/a/b:generateContent", "default"),  # `*` stays within a segment
        ("POST", "/v1beta/models/gemini-pro:generateContentX", "default"),  # the whole path must match
        ("POST", "/v19.0/123/messages", "messages"),
        ("POST", "/v19x0/123/messages", "default"),  # glob text is literal: `.` is a dot
        ("GET", "/v19.0/123", "graph"),
        ("GET", "/v19.0/123/messages", "default"),
        ("GET", "/rest/v1/accounts", "exact"),  # first match wins over the later `**`
        ("POST", "/rest/v1/accounts", "rest"),
        ("DELETE", "/rest/v1/a/b/c", "rest"),  # `**` crosses segments, ANY takes every method
        ("GET", "/rest/v1/", "rest"),
        ("GET", "/rest/v1", "anything"),  # `/rest/v1/**` needs the slash; `/rest/**` is next
        ("GET", "/files/a/b/raw", "deep"),
        ("GET", "/files//raw", "deep"),
        ("GET", "/other", "default"),
    ],
)
def test_first_match_wins(method, path, route):
    assert load(ROUTES).upstreams["u"].route_for(method, path).name == route


def test_routes_keep_their_file_order_and_flags():
    text = ROUTES + "      - {name: cached, match: GET /c, idempotent: yes, cache: {ttl: 5m}}\n"
    routes = load(text).upstreams["u"].routes
    assert [r.name for r in routes] == ["generate", "messages", "graph", "exact", "rest", "deep", "anything", "cached"]
    assert routes[-1].idempotent is True
    assert routes[-1].cache is not None and routes[-1].cache.ttl == 300.0
    assert all(r.upstream == "u" for r in routes)


# -- the shipped policy ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return load_policy(SHIPPED, environ={})


def test_the_shipped_policy_loads(shipped):
    assert set(shipped.upstreams) == {"gemini", "whatsapp", "whatsapp_media", "supabase"}
    assert str(shipped.listen) == "127.0.0.1:8081"
    assert str(shipped.admin.listen) == "127.0.0.1:9901"
    assert shipped.admin.token is None
    assert shipped.cache.backend == "memory"
    assert shipped.source == str(SHIPPED)
    assert str(shipped.upstreams["gemini"].url) == "https://generativelanguage.googleapis.com"
    assert shipped.upstreams["gemini"].headers == ()  # GEMINI_API_KEY unset: nothing injected


def test_the_shipped_figures_operators_asked_for(shipped):
    gemini = shipped.upstreams["gemini"]
    for route in (*gemini.routes, gemini.default_route):
        t = route.timeouts
        assert (t.connect, t.write, t.pool) == (3.0, 5.0, 5.0)
    generate = gemini.route_for("POST", "/v1beta/models/gemini-2.0-flash:generateContent")
    assert generate.name == "generate"
    assert generate.timeouts.read == 15.0
    assert gemini.default_route.timeouts.read == 15.0
    stream = gemini.route_for("POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent")
    assert (stream.name, stream.timeouts.read, stream.timeouts.total) == ("stream", 30.0, 120.0)

    whatsapp = shipped.upstreams["whatsapp"]
    for route in (*whatsapp.routes, whatsapp.default_route):
        assert route.timeouts.read == 10.0

    supabase = shipped.upstreams["supabase"]
    auth = supabase.route_for("GET", "/auth/v1/user")
    assert (auth.name, auth.timeouts.read) == ("auth_user", 5.0)
    for method, path, name in [
        ("GET", "/rest/v1/bot_profiles", "bot_profile"),
        ("PATCH", "/rest/v1/accounts", "accounts"),
        ("GET", "/rest/v1/messages", "rest_read"),
        ("POST", "/rest/v1/rpc/thing", "rest"),
    ]:
        route = supabase.route_for(method, path)
        assert (route.name, route.timeouts.read) == (name, 10.0)
    assert supabase.default_route.timeouts.read == 10.0

    media = shipped.upstreams["whatsapp_media"].default_route
    assert (media.timeouts.read, media.timeouts.total) == (60.0, 120.0)


def test_the_shipped_retry_breaker_and_throttle(shipped):
    gemini = shipped.upstreams["gemini"]
    generate = gemini.routes[0]
    assert generate.idempotent is True
    assert generate.retry.attempts == 3
    assert (generate.retry.backoff.base, generate.retry.backoff.max) == (0.1, 2.0)
    assert generate.retry.on.describe() == ["connect_error", "reset", "timeout", 502, 503, 504]
    assert generate.breaker.count.describe() == ["connect_error", "reset", "timeout", 401, 403, "5xx"]
    assert generate.breaker_name == "gemini"
    [rule] = gemini.throttle
    assert (rule.status, rule.delay_field, rule.delay) == (429, "error.details[].retryDelay", 1.0)

    whatsapp = shipped.upstreams["whatsapp"]
    throughput, pair = whatsapp.throttle
    assert (throughput.status, throughput.field, throughput.codes, throughput.delay) == (
        400, "error.code", {"130429"}, 5.0)
    assert not throughput.limits  # the whole number
    assert (pair.codes, pair.delay, pair.limits) == ({"131056"}, 6.0, {"pair"})  # that recipient only
    send = whatsapp.route_for("POST", "/v19.0/12345/messages")
    assert (send.name, send.idempotent, send.retry.attempts) == ("send_message", False, 3)
    assert whatsapp.default_route.breaker.count.describe() == ["connect_error", "reset", "timeout", "5xx"]

    assert shipped.upstreams["whatsapp_media"].default_route.retry.max_body == 0
    assert shipped.upstreams["supabase"].default_route.retry.max_body == 1024 * 1024

    bot = shipped.upstreams["supabase"].route_for("GET", "/rest/v1/bot_profiles")
    assert bot.cache is not None
    assert (bot.cache.ttl, bot.cache.stale_if_error, bot.cache.invalidate_on_write) == (300.0, 3600.0, True)


def test_the_shipped_policy_takes_its_settings_from_the_environment():
    env = {
        "EGRESS_LISTEN": "0.0.0.0:18081",
        "EGRESS_ADMIN": "127.0.0.1:19901",
        "EGRESS_ADMIN_TOKEN": "admintok",
        "GEMINI_URL": "http://127.0.0.1:5001",
        "GEMINI_API_KEY": "supersecret",
        "EGRESS_CACHE_BACKEND": "redis",
        "EGRESS_CACHE_KEY_SECRET": "cachekeysecret",
    }
    policy = load_policy(SHIPPED, environ=env)
    assert str(policy.listen) == "0.0.0.0:18081"
    assert str(policy.admin.listen) == "127.0.0.1:19901"
    assert policy.admin.token == "admintok"
    assert str(policy.upstreams["gemini"].url) == "http://127.0.0.1:5001"
    assert policy.upstreams["gemini"].headers == (("x-goog-api-key", "supersecret"),)
    assert policy.cache.backend == "redis"
