"""`rate_limit`: read into typed, immutable limits, inherited upstream -> route, and refused with `file:line` where
a key names a capture its route's glob lacks, or a rate, key, name or definition is wrong."""

from __future__ import annotations

import pytest

from proxy.policy import Rate, RateLimitPolicy
from proxy.policy.model import KeyPart
from tests.policy._helpers import load, problem, problems

SENDS = """\
cache: {backend: redis, redis_url: "redis://:pw@127.0.0.1:6379/0"}
upstreams:
  whatsapp:
    url: https://graph.facebook.com
    routes:
      - name: send
        match: POST /v19.0/{phone_id}/messages
        rate_limit:
          wait: 5s
          limits:
            - {name: number, key: "{phone_id}", rate: 80/s, burst: 80}
            - {name: pair, key: "{phone_id}:{body.to}", rate: 1/6s, burst: 3}
"""


def test_a_route_rate_limit_is_read_into_typed_limits_on_the_caches_backend():
    route = load(SENDS).upstreams["whatsapp"].routes[0]
    pacing = route.rate_limit
    assert isinstance(pacing, RateLimitPolicy)
    assert (pacing.backend, pacing.wait, pacing.replicas) == ("redis", 5.0, None)
    number, pair = pacing.limits
    assert (number.name, number.rate, number.bucket_size) == ("number", Rate(80, 1.0), 80)
    assert pair.rate.interval == 6.0 and str(pair.rate) == "1/6s"
    assert pair.key.parts == (KeyPart("capture", "phone_id"), KeyPart("text", ":"), KeyPart("body", "to"))
    assert pacing.needs_body and not number.key.needs_body
    assert route.pattern.names == {"phone_id"}


@pytest.mark.parametrize(("text", "count", "per", "shown"), [
    ("80/s", 80, 1.0, "80/s"), ("1/6s", 1, 6.0, "1/6s"), ("1000/min", 1000, 60.0, "1000/min"),
    ("5/500ms", 5, 0.5, "5/500ms"), ("10 / h", 10, 3600.0, "10/h"), ("3/2m", 3, 120.0, "3/120s"),
])
def test_rates(text, count, per, shown):
    limit = load(SENDS.replace("rate: 80/s", f"rate: {text}")).upstreams["whatsapp"].routes[0].rate_limit
    assert limit is not None
    rate = limit.limits[0].rate
    assert (rate.count, rate.per, str(rate)) == (count, per, shown)


def test_an_upstreams_rate_limit_applies_to_every_route_unless_a_route_sets_its_own():
    policy = load("""\
    upstreams:
      g:
        url: https://g.example
        rate_limit:
          wait: 1s
          limits: [{name: all, rate: 100/min, key: "{header.x-tenant}"}]
        routes:
          - {name: inherits, match: GET /a}
          - {name: waits, match: GET /b, rate_limit: {wait: 3s}}
          - {name: own, match: GET /c, rate_limit: {limits: [{name: c, rate: 1/s}]}}
          - {name: opts_out, match: GET /d, rate_limit: {limits: []}}
    """)
    g = policy.upstreams["g"]
    inherits, waits, own, opts_out = g.routes
    assert inherits.rate_limit == g.default_route.rate_limit
    assert inherits.rate_limit is not None and inherits.rate_limit.limits[0].name == "all"
    assert inherits.rate_limit.backend == "memory"  # the cache's (its default)
    assert waits.rate_limit is not None and (waits.rate_limit.wait, waits.rate_limit.limits) == (
        3.0, inherits.rate_limit.limits)
    assert own.rate_limit is not None and [lim.name for lim in own.rate_limit.limits] == ["c"]
    assert own.rate_limit.wait == 1.0
    assert opts_out.rate_limit is None


def test_a_key_naming_a_capture_its_route_lacks_is_refused_at_the_keys_line():
    text = SENDS.replace('key: "{phone_id}:{body.to}"', 'key: "{phone}:{body.to}"')
    assert problem(text) == (
        "policy.yaml:12: upstreams.whatsapp.routes[0].rate_limit.limits[1].key: {phone} is not a capture of this "
        "route's match (/v19.0/{phone_id}/messages); its captures: {phone_id}"
    )


def test_an_inherited_limit_naming_a_capture_is_refused_for_each_route_without_it_the_default_one_too():
    found = problems("""\
    upstreams:
      whatsapp:
        url: https://graph.facebook.com
        rate_limit:
          limits:
            - name: number
              key: "{phone_id}"
              rate: 80/s
        routes:
          - name: send
            match: POST /v19.0/{phone_id}/messages
    """)
    assert found == [
        "policy.yaml:7: upstreams.whatsapp.rate_limit.limits[0].key: {phone_id} is not a capture of route 'default' "
        "(ANY **), which inherits this limit from its upstream: set the limit on the routes whose match captures it",
    ]


def test_the_same_limit_name_declared_otherwise_in_one_upstream_is_refused_at_the_second():
    text = SENDS + """\
      - name: template
        match: POST /v19.0/{phone_id}/message_templates
        rate_limit:
          limits: [{name: number, key: "{phone_id}", rate: 20/s}]
"""
    assert problem(text) == (
        "policy.yaml:16: upstreams.whatsapp.routes[1].rate_limit.limits[0].name: limit 'number' is declared "
        "otherwise for route 'send' (line 11): within an upstream a limit's name is one budget, declared alike "
        "(rate, burst, key, backend, replicas); give this one another name"
    )
    alike = SENDS + """\
      - name: template
        match: POST /v19.0/{phone_id}/message_templates
        rate_limit:
          limits: [{name: number, key: "{phone_id}", rate: 80/s, burst: 80}]
"""
    assert load(alike).upstreams["whatsapp"].routes[1].rate_limit is not None  # one budget, shared


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("rate: 80/s", "rate: 80", "policy.yaml:11: upstreams.whatsapp.routes[0].rate_limit.limits[0].rate: expected a "
     "rate like '80/s', '1/6s' or '1000/min', got '80'"),
    ("rate: 80/s", "rate: 0/s", "policy.yaml:11: upstreams.whatsapp.routes[0].rate_limit.limits[0].rate: expected "
     "from 1 to 1000000 requests over a duration greater than 0, got '0/s'"),
    ("rate: 80/s", "rate: 80/fortnight", "policy.yaml:11: upstreams.whatsapp.routes[0].rate_limit.limits[0].rate: "
     "expected a rate like '80/s', '1/6s' or '1000/min', got '80/fortnight'"),
    ('key: "{phone_id}",', 'key: "{query.x}",', "policy.yaml:11: upstreams.whatsapp.routes[0].rate_limit.limits[0]"
     ".key: expected {name} (a capture of the route's match), {header.<name>} or {body.<field>} in a key, got "
     "'{query.x}'"),
    ('key: "{phone_id}",', 'key: "{phone_id",', "policy.yaml:11: upstreams.whatsapp.routes[0].rate_limit.limits[0]"
     ".key: a brace in a key starts a reference like {phone_id}: unbalanced in '{phone_id'"),
    ("name: number", "name: Number", "policy.yaml:11: upstreams.whatsapp.routes[0].rate_limit.limits[0].name: "
     "expected a limit name of lowercase letters, digits, '_' and '-' (a metric label), got 'Number'"),
    ("name: pair", "name: number", "policy.yaml:12: upstreams.whatsapp.routes[0].rate_limit.limits[1].name: a second "
     "limit named 'number' in this rate_limit"),
    ("burst: 80}", "burst: 0}", "policy.yaml:11: upstreams.whatsapp.routes[0].rate_limit.limits[0].burst: expected a "
     "whole number >= 1, got 0"),
    ("wait: 5s", "wait: 5", "policy.yaml:9: upstreams.whatsapp.routes[0].rate_limit.wait: expected a duration like "
     "'15s' or '150ms', got '5'"),
    ("wait: 5s", "wait: 5s\n          replicas: none", "policy.yaml:10: upstreams.whatsapp.routes[0].rate_limit."
     "replicas: expected a whole number, got 'none'"),
    ("match: POST /v19.0/{phone_id}/messages", "match: POST /v19.0/{phone_id}{x}/messages", "policy.yaml:7: "
     "upstreams.whatsapp.routes[0].match: a capture must be alone in its segment with literal text only, got "
     "'{phone_id}{x}' (in '/v19.0/{phone_id}{x}/messages')"),
])
def test_bad_rate_limits_point_at_their_lines(old, new, expected):
    assert old in SENDS
    assert expected in problems(SENDS.replace(old, new, 1))


def test_a_body_key_on_a_route_that_buffers_no_body_is_refused():
    text = SENDS.replace("        rate_limit:\n", "        retry: {max_body: 0}\n        rate_limit:\n")
    assert problem(text) == (
        "policy.yaml:13: upstreams.whatsapp.routes[0].rate_limit.limits[1].key: a {body.*} key reads the body "
        "buffered for retries, and route 'send' buffers none (retry.max_body: 0)"
    )


def test_rate_limit_is_not_a_setting_of_defaults():
    found = problem("""\
    defaults:
      rate_limit: {limits: [{name: n, rate: 1/s}]}
    upstreams: {}
    """)
    assert found.startswith("policy.yaml:2: defaults.rate_limit: unknown key")


def test_replicas_and_an_explicit_backend():
    policy = load(SENDS.replace("wait: 5s", "wait: 5s\n          replicas: 3\n          backend: memory"))
    pacing = policy.upstreams["whatsapp"].routes[0].rate_limit
    assert pacing is not None and (pacing.replicas, pacing.backend) == (3, "memory")


def test_a_throttle_rule_names_the_limits_it_is_about():
    text = SENDS.replace("    routes:\n", "    throttle:\n      - {status: 400, field: error.code, codes: [131056], "
                         "limits: [pair]}\n    routes:\n", 1)
    [rule] = load(text).upstreams["whatsapp"].throttle
    assert rule.limits == frozenset({"pair"})
    assert all(not r.limits for r in load(SENDS).upstreams["whatsapp"].throttle)  # the default: all of them


def test_a_throttle_rule_naming_a_limit_the_upstream_does_not_pace_is_refused_at_its_line():
    text = SENDS.replace("    routes:\n", "    throttle:\n      - {status: 400, field: error.code, codes: [131056], "
                         "limits: [pair, pairs]}\n    routes:\n", 1)
    assert problem(text) == (
        "policy.yaml:6: upstreams.whatsapp.throttle[0].limits: 'pairs' is not a rate limit of this upstream's "
        "routes (its limits: number, pair)"
    )
