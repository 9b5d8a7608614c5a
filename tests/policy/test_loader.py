"""Validation: every problem is reported, each as `file:line: key.path: message`, all of them in one run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from proxy.policy import Address, PolicyError, load_policy, parse_policy
from proxy.policy.model import CREDENTIAL_HEADERS
from tests.policy._helpers import FILE, load, problem, problems

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"

UPSTREAM = """\
upstreams:
  g:
    url: https://g.example
"""


# -- environment substitution ---------------------------------------------------------------------------


def test_a_set_variable_is_substituted():
    policy = load(
        """\
        upstreams:
          g:
            url: ${G_URL}
            headers: {x-goog-api-key: "${G_KEY}"}
        """,
        {"G_URL": "https://g.example:8443/base", "G_KEY": "k-123"},
    )
    g = policy.upstreams["g"]
    assert str(g.url) == "https://g.example:8443/base"
    assert g.headers == (("x-goog-api-key", "k-123"),)


def test_an_unset_variable_takes_its_default():
    policy = load("listen: ${EGRESS_LISTEN:-127.0.0.1:7001}\nadmin: ${EGRESS_ADMIN:-127.0.0.1:7002}\n")
    assert policy.listen == Address("127.0.0.1", 7001)
    assert policy.admin.listen == Address("127.0.0.1", 7002)


def test_a_set_but_empty_variable_takes_its_default():
    policy = load("listen: ${EGRESS_LISTEN:-127.0.0.1:7001}\n", {"EGRESS_LISTEN": ""})
    assert policy.listen == Address("127.0.0.1", 7001)


def test_a_set_but_empty_variable_without_default_is_empty():
    text = UPSTREAM + '    headers: {x-goog-api-key: "${G_KEY}", x-other: "v${G_KEY}"}\n'
    policy = load(text, {"G_KEY": ""})
    # an empty injected credential is not injected: the caller's own header goes through
    assert policy.upstreams["g"].headers == (("x-other", "v"),)


def test_an_empty_default_is_allowed():
    policy = load("admin: {listen: 127.0.0.1:7002, token: '${EGRESS_ADMIN_TOKEN:-}'}\n")
    assert policy.admin.token is None


def test_several_variables_in_one_value_and_text_around_them():
    text = UPSTREAM.replace("https://g.example", "${SCHEME:-http}://${HOST}:${PORT:-8080}/v1")
    policy = load(text, {"HOST": "h.local"})
    assert str(policy.upstreams["g"].url) == "http://h.local:8080/v1"


def test_a_substituted_value_is_text_never_yaml():
    text = UPSTREAM + '    headers: {x-note: "${NOTE}"}\n'
    policy = load(text, {"NOTE": "{a: 1} # not a comment, [x]: y"})
    assert policy.upstreams["g"].headers == (("x-note", "{a: 1} # not a comment, [x]: y"),)


def test_an_unset_variable_without_default_is_an_error_naming_it_at_its_line():
    text = """\
    listen: 127.0.0.1:7001
    upstreams:
      g:
        url: ${GEMINI_URL}
    """
    assert problem(text, {"OTHER": "x"}) == (
        "policy.yaml:4: upstreams.g.url: environment variable GEMINI_URL is not set "
        "(write ${GEMINI_URL:-default} to allow that)"
    )


def test_the_process_environment_is_used_by_default(monkeypatch):
    monkeypatch.setenv("EGRESS_TEST_LISTEN", "127.0.0.1:7005")
    policy = parse_policy("listen: ${EGRESS_TEST_LISTEN}\n", FILE)
    assert policy.listen.port == 7005


# -- one test per kind of error, each with its exact file:line: key.path -----------------------------------


def test_unknown_key_with_did_you_mean():
    text = UPSTREAM + "    timeout: {read: 1s}\n"
    assert problem(text) == (
        "policy.yaml:4: upstreams.g.timeout: unknown key (did you mean 'timeouts'?); expected one of: "
        "breaker, headers, limits, rate_limit, retry, routes, throttle, timeouts, url"
    )


def test_unknown_key_without_a_close_match():
    found = problem("listen: 127.0.0.1:7001\nzzz: 1\n")
    assert found.startswith("policy.yaml:2: zzz: unknown key; expected one of: admin, cache, defaults, limits, listen")
    assert "did you mean" not in found


def test_unknown_key_deep_inside_a_section():
    text = """\
    defaults:
      retry:
        backoff: {base: 100ms, maximum: 2s}
    """
    assert problem(text).startswith(
        "policy.yaml:3: defaults.retry.backoff.maximum: unknown key (did you mean 'max'?)"
    )


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("timeouts: 5s", "timeouts: expected a mapping, got '5s'"),
        ("routes: {a: 1}", "routes: expected a list, got a mapping"),
        ("retry: {attempts: many}", "retry.attempts: expected a whole number, got 'many'"),
        ("retry: {attempts: 2.5}", "retry.attempts: expected a whole number, got '2.5'"),
        ("retry: {on: 502}", "retry.on: expected a list, got '502'"),
        ("headers: [a, b]", "headers: expected a mapping, got a list"),
        ("retry: {budget: {ratio: lots}}", "retry.budget.ratio: expected a number, got 'lots'"),
    ],
)
def test_wrong_type(line, expected):
    assert problem(UPSTREAM + f"    {line}\n") == f"policy.yaml:4: upstreams.g.{expected}"


def test_wrong_type_for_a_boolean():
    text = UPSTREAM + "    routes:\n      - name: r\n        match: GET /r\n        idempotent: maybe\n"
    assert problem(text) == "policy.yaml:7: upstreams.g.routes[0].idempotent: expected true or false, got 'maybe'"


def test_wrong_type_at_the_top():
    assert problem("just text\n") == "policy.yaml:1: expected a mapping, got 'just text'"
    assert problem("- a\n- b\n") == "policy.yaml:1: expected a mapping, got a list"
    assert problem("upstreams: [g]\n") == "policy.yaml:1: upstreams: expected a mapping, got a list"


def test_bad_duration_in_the_shipped_file_points_at_its_line():
    text = SHIPPED.read_text()
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "read: 15s" in t)
    broken = text.replace("read: 15s", "read: fast")
    with pytest.raises(PolicyError) as info:
        parse_policy(broken, "config/policy.yaml", {})
    assert [str(p) for p in info.value.problems] == [
        f"config/policy.yaml:{line}: upstreams.gemini.timeouts.read: "
        "expected a duration like '15s' or '150ms', got 'fast'"
    ]


def test_bad_size():
    text = UPSTREAM + "    retry:\n      max_body: 1 megabyte\n"
    assert problem(text) == (
        "policy.yaml:5: upstreams.g.retry.max_body: expected a size like '1MiB' or '512KiB', got '1 megabyte'"
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://g.example", "expected an http(s) URL like 'https://api.example.com', got 'ftp://g.example'"),
        ("g.example", "expected an http(s) URL like 'https://api.example.com', got 'g.example'"),
        ("https://", "expected an http(s) URL like 'https://api.example.com', got 'https://'"),
        ("https:///v1", "expected an http(s) URL like 'https://api.example.com', got 'https:///v1'"),
        ("https://g.example/v1?key=abc", "the base URL must not carry a query or fragment, got 'https://g.example/v1?key=<redacted>'"),
        ("https://g.example/#top", "the base URL must not carry a query or fragment, got 'https://g.example/#top'"),
    ],
)
def test_bad_url(url, message):
    assert problem(UPSTREAM.replace("https://g.example", url)) == f"policy.yaml:3: upstreams.g.url: {message}"


def test_missing_url_points_at_the_upstream():
    text = """\
    upstreams:
      g:
        timeouts: {read: 1s}
    """
    assert problem(text) == (
        "policy.yaml:2: upstreams.g: missing key 'url' (the upstream's base URL, e.g. https://graph.facebook.com)"
    )


def test_bad_upstream_name_points_at_the_name():
    text = """\
    upstreams:
      ok_name-1: {url: "https://a.example"}
      Gemini:
        url: https://g.example
      "two words": {url: "https://b.example"}
    """
    assert problems(text) == [
        "policy.yaml:3: upstreams.Gemini: an upstream name is the first path segment: "
        "use lowercase letters, digits, _ and -",
        "policy.yaml:5: upstreams.two words: an upstream name is the first path segment: "
        "use lowercase letters, digits, _ and -",
    ]


def test_an_upstream_without_settings():
    assert problem("upstreams:\n  g:\n") == "policy.yaml:2: upstreams.g: expected a mapping, got ''"


def test_duplicate_route_names():
    text = """\
    upstreams:
      g:
        url: https://g.example
        routes:
          - {name: generate, match: POST /a}
          - {name: other, match: POST /b}
          - name: generate
            match: POST /c
    """
    assert problem(text) == "policy.yaml:7: upstreams.g.routes[2]: duplicate route name 'generate' in upstream 'g'"


def test_the_same_route_name_in_two_upstreams_is_fine():
    text = """\
    upstreams:
      a: {url: "https://a.example", routes: [{name: r, match: GET /}]}
      b: {url: "https://b.example", routes: [{name: r, match: GET /}]}
    """
    policy = load(text)
    assert [u.routes[0].name for u in policy.upstreams.values()] == ["r", "r"]


def test_duplicate_yaml_keys():
    text = """\
    upstreams:
      g:
        url: https://g.example
        timeouts: {read: 1s}
        url: https://h.example
      g:
        url: https://other.example
    """
    assert sorted(problems(text)) == [
        "policy.yaml:5: upstreams.g.url: duplicate key",
        "policy.yaml:6: upstreams.g: duplicate key",
    ]


def test_duplicate_keys_in_a_flow_mapping():
    assert problem("defaults:\n  timeouts: {read: 1s, read: 2s}\n") == (
        "policy.yaml:2: defaults.timeouts.read: duplicate key"
    )


@pytest.mark.parametrize(
    ("match", "message"),
    [
        ("FETCH /a", "expected an HTTP method or ANY, got 'FETCH'"),
        ("CONNECT /a", "expected an HTTP method or ANY, got 'CONNECT'"),
        ("GET a/b", "the path glob must start with '/', got 'a/b'"),
        ("v1/*", "the path glob must start with '/', got 'v1/*'"),
        ("GET /a /b", "expected 'METHOD /path/glob' like 'POST /v19.0/*/messages', got 'GET /a /b'"),
        ("''", "expected 'METHOD /path/glob' like 'POST /v19.0/*/messages', got ''"),
    ],
)
def test_bad_match(match, message):
    text = UPSTREAM + f"    routes:\n      - name: r\n        match: {match}\n"
    assert problem(text) == f"policy.yaml:6: upstreams.g.routes[0].match: {message}"


def test_match_method_is_case_insensitive_and_defaults_to_any():
    text = UPSTREAM + "    routes:\n      - {name: a, match: post /a}\n      - {name: b, match: /b}\n"
    a, b = load(text).upstreams["g"].routes
    assert (a.method, a.glob) == ("POST", "/a")
    assert (b.method, b.glob) == (None, "/b")


def test_route_needs_name_and_match():
    text = UPSTREAM + "    routes:\n      - {idempotent: true}\n      - {name: r}\n"
    assert problems(text) == [
        "policy.yaml:5: upstreams.g.routes[0]: a route needs 'name' and 'match'",
        "policy.yaml:6: upstreams.g.routes[1]: a route needs 'match'",
    ]


@pytest.mark.parametrize("name", ["default", "has space", "-dash", "x/y"])
def test_bad_route_name(name):
    text = UPSTREAM + f"    routes:\n      - {{name: '{name}', match: GET /}}\n"
    assert problem(text) == (
        "policy.yaml:5: upstreams.g.routes[0].name: expected a route name of letters, digits, '_', '-', '.' "
        f"(not 'default'), got '{name}'"
    )


def test_bad_conditions_in_retry_on_and_breaker_count():
    text = """\
    defaults:
      retry:
        on: [connect_error, boom, 503, 600, 5xx, 6xx]
      breaker:
        count:
          - timeout
          - nope
    """
    expected = "expected connect_error, reset, timeout, a status like 503 or a class like 5xx, got"
    assert problems(text) == [
        f"policy.yaml:3: defaults.retry.on[1]: {expected} 'boom'",
        f"policy.yaml:3: defaults.retry.on[3]: {expected} '600'",
        f"policy.yaml:3: defaults.retry.on[5]: {expected} '6xx'",
        f"policy.yaml:7: defaults.breaker.count[1]: {expected} 'nope'",
    ]


def test_conditions_are_parsed_into_names_statuses_and_classes():
    policy = load(UPSTREAM + "    breaker: {count: [reset, 429, 4xx, 5xx]}\n")
    count = policy.upstreams["g"].default_route.breaker.count
    assert count.names == {"reset"}
    assert count.statuses == {429}
    assert count.classes == {4, 5}
    assert count.matches_status(404) and count.matches_status(429) and not count.matches_status(302)
    assert count.describe() == ["reset", 429, "4xx", "5xx"]


def test_invalid_yaml_syntax_with_its_line():
    text = """\
    listen: 127.0.0.1:7001
    upstreams:
      g:
        url: https://g.example
        timeouts: {read: 1s
        retry: {attempts: 2}
    """
    [found] = problems(text)
    assert found.startswith("policy.yaml:6: invalid YAML: ")


def test_invalid_yaml_indentation_with_its_line():
    [found] = problems("upstreams:\n  g:\n    url: https://g.example\n   bad: 1\n")
    assert found.startswith("policy.yaml:4: invalid YAML: ")


def test_tabs_are_invalid_yaml():
    [found] = problems("upstreams:\n\tg: 1\n")
    assert found.startswith("policy.yaml:2: invalid YAML: ")


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n"])
def test_empty_file(text):
    assert problem(text) == "policy.yaml:1: the policy file is empty"


def test_an_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    [found] = info.value.problems
    assert str(found) == f"{missing}: cannot read the policy file: No such file or directory"


def test_admin_must_differ_from_listen():
    assert problem("listen: 127.0.0.1:7001\nadmin: 127.0.0.1:7001\n") == (
        "policy.yaml:2: admin: the admin port must differ from listen (127.0.0.1:7001)"
    )


def test_listen_on_the_admin_default_is_an_error_not_a_crash():
    assert problem("listen: 127.0.0.1:9901\n") == (
        "policy.yaml:1: listen: 127.0.0.1:9901 is the admin port's default: set 'admin' to another address"
    )
    assert problem("admin: 127.0.0.1:8081\n") == (  # the listen default
        "policy.yaml:1: admin: the admin port must differ from listen (127.0.0.1:8081)"
    )


def test_admin_equal_to_listen_in_a_mapping():
    text = "listen: 127.0.0.1:7001\nadmin:\n  token: t\n  listen: 127.0.0.1:7001\n"
    assert problem(text) == "policy.yaml:2: admin: the admin port must differ from listen (127.0.0.1:7001)"


def test_both_on_port_zero_is_fine():
    policy = load("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\n")
    assert policy.listen.port == policy.admin.listen.port == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("listen: 8081\n", "policy.yaml:1: listen: expected host:port like '127.0.0.1:8081', got '8081'"),
        ("listen: localhost\n", "policy.yaml:1: listen: expected host:port like '127.0.0.1:8081', got 'localhost'"),
        ("listen: ':8081'\n", "policy.yaml:1: listen: expected host:port like '127.0.0.1:8081', got ':8081'"),
        ("listen: 127.0.0.1:70000\n", "policy.yaml:1: listen: expected a port from 0 to 65535, got 70000"),
        ("admin: {listen: x}\n", "policy.yaml:1: admin.listen: expected host:port like '127.0.0.1:8081', got 'x'"),
    ],
)
def test_bad_addresses(text, expected):
    assert problem(text) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("retry: {attempts: 0}", "retry.attempts: expected a whole number >= 1, got 0"),
        ("retry: {attempts: -2}", "retry.attempts: expected a whole number >= 1, got -2"),
        ("breaker: {failures: 0}", "breaker.failures: expected a whole number >= 1, got 0"),
        ("breaker: {reset_after: 0s}", "breaker.reset_after: expected a duration greater than 0"),
        ("timeouts: {read: 0s}", "timeouts.read: expected a duration greater than 0"),
        ("timeouts: {connect: 0ms}", "timeouts.connect: expected a duration greater than 0"),
        ("timeouts: {total: 0s}", "timeouts.total: expected a duration greater than 0"),
        ("timeouts: {read: -1s}", "timeouts.read: expected a duration like '15s' or '150ms', got '-1s'"),
        ("limits: {max_concurrent: 0}", "limits.max_concurrent: expected a whole number >= 1, got 0"),
        ("limits: {max_queue: -1}", "limits.max_queue: expected a whole number >= 0, got -1"),
        ("retry: {budget: {ratio: 1.5}}", "retry.budget.ratio: expected a number between 0.0 and 1.0, got 1.5"),
        ("retry: {budget: {min_per_second: -1}}", "retry.budget.min_per_second: expected a number >= 0.0, got -1"),
        ("retry: {max_body: -1}", "retry.max_body: expected a size like '1MiB' or '512KiB', got '-1'"),
    ],
)
def test_negative_and_zero_values_where_refused(line, expected):
    assert problem(UPSTREAM + f"    {line}\n") == f"policy.yaml:4: upstreams.g.{expected}"


def test_zero_is_accepted_where_it_means_something():
    policy = load(UPSTREAM + "    timeouts: {pool: 0s}\n    limits: {max_queue: 0}\n    retry: {max_body: 0}\n")
    g = policy.upstreams["g"]
    assert g.default_route.timeouts.pool == 0.0
    assert g.limits.max_queue == 0
    assert g.default_route.retry.max_body == 0


def test_backoff_max_below_base():
    text = UPSTREAM + "    retry: {attempts: 2, backoff: {base: 1s, max: 500ms}}\n"
    [found] = problems(text)
    assert found.startswith("policy.yaml:4: upstreams.g.retry: backoff.max (0.5s) must not be less than backoff.base")


def test_backoff_max_below_an_inherited_base():
    text = "defaults:\n  retry: {backoff: {max: 50ms}}\n"  # the default base is 100ms
    [found] = problems(text)
    assert found.startswith("policy.yaml:2: defaults.retry: backoff.max (0.05s) must not be less than backoff.base")


def test_a_bad_backoff_is_reported_once_not_again_for_every_route_inheriting_it():
    text = UPSTREAM + """\
    retry: {backoff: {base: 1s, max: 500ms}}
    routes:
      - {name: a, match: GET /a, retry: {attempts: 2}}
      - {name: b, match: GET /b, retry: {attempts: 5}}
      - {name: c, match: GET /c, retry: {backoff: {max: 10ms}}}
"""
    found = problems(text)
    assert len(found) == 2, found
    assert found[0].startswith("policy.yaml:4: upstreams.g.retry: backoff.max (0.5s)")
    assert found[1].startswith("policy.yaml:8: upstreams.g.routes[2].retry: backoff.max (0.01s)")


def test_throttle_rule_without_status():
    text = UPSTREAM + "    throttle:\n      - {status: 429}\n      - {delay: 1s}\n"
    assert problem(text) == (
        "policy.yaml:6: upstreams.g.throttle[1]: "
        "a throttle rule needs a 'status' (e.g. 429, or 400 for WhatsApp's 130429)"
    )


def test_throttle_codes_without_field():
    text = UPSTREAM + "    throttle:\n      - {status: 400, codes: [130429]}\n"
    assert problem(text) == (
        "policy.yaml:5: upstreams.g.throttle[0]: 'codes' needs a 'field' naming where the code is in the JSON body, "
        "e.g. error.code"
    )


def test_throttle_rule_errors_point_at_their_keys_and_are_all_reported():
    text = UPSTREAM + """\
    throttle:
      - status: many
        delay: slow
      - {status: 429, colour: red}
"""
    assert problems(text) == [
        "policy.yaml:5: upstreams.g.throttle[0].status: expected a whole number, got 'many'",
        "policy.yaml:6: upstreams.g.throttle[0].delay: expected a duration like '15s' or '150ms', got 'slow'",
        "policy.yaml:7: upstreams.g.throttle[1].colour: unknown key; expected one of: codes, delay, delay_field, "
        "field, limits, status",
    ]


def test_throttle_rules_are_read():
    text = UPSTREAM + """\
    throttle:
      - {status: 429, delay_field: "error.details[].retryDelay"}
      - {status: 400, field: error.code, codes: [130429, "131056"], delay: 5s}
"""
    first, second = load(text).upstreams["g"].throttle
    assert (first.status, first.field, first.codes, first.delay_field, first.delay) == (
        429, None, frozenset(), "error.details[].retryDelay", 1.0
    )
    assert (second.status, second.field, second.codes, second.delay) == (
        400, "error.code", frozenset({"130429", "131056"}), 5.0
    )


def test_route_cache_errors_point_at_their_keys_and_are_all_reported():
    text = UPSTREAM + """\
    routes:
      - name: r
        match: GET /r
        cache:
          ttl: fast
          stale_if_error: 1x
      - {name: s, match: GET /s, cache: {stale_if_error: 1h}}
"""
    assert problems(text) == [
        "policy.yaml:8: upstreams.g.routes[0].cache.ttl: expected a duration like '15s' or '150ms', got 'fast'",
        "policy.yaml:9: upstreams.g.routes[0].cache.stale_if_error: expected a duration like '15s' or '150ms', "
        "got '1x'",
        "policy.yaml:10: upstreams.g.routes[1].cache: a route cache needs a 'ttl', e.g. cache: {ttl: 5m}",
    ]


def test_route_cache_is_read():
    text = UPSTREAM + """\
    routes:
      - name: r
        match: GET /r
        cache: {ttl: 60s, stale_if_error: 1h, invalidate_on_write: yes, statuses: [200, 404], vary: [X-Tenant, apikey]}
"""
    cache = load(text).upstreams["g"].routes[0].cache
    assert cache is not None
    assert (cache.ttl, cache.stale_if_error, cache.invalidate_on_write) == (60.0, 3600.0, True)
    assert cache.statuses == {200, 404}
    assert cache.vary == (*CREDENTIAL_HEADERS, "x-tenant")


def test_bad_header_name_and_value():
    text = UPSTREAM + '    headers:\n      "bad header": v\n      x-ok: "${MULTI}"\n'
    assert problems(text, {"MULTI": "a\r\nInjected: yes"}) == [
        "policy.yaml:5: upstreams.g.headers.bad header: not a valid header name: 'bad header'",
        "policy.yaml:6: upstreams.g.headers.x-ok: a header value must not contain line breaks",
    ]


def test_bad_cache_settings():
    text = "cache:\n  backend: disk\n  max_entries: 0\n  op_timeout: 0s\n"
    assert problems(text) == [
        "policy.yaml:2: cache.backend: expected one of memory, redis, got 'disk'",
        "policy.yaml:3: cache.max_entries: expected a whole number >= 1, got 0",
        "policy.yaml:4: cache.op_timeout: expected a duration greater than 0",
    ]


def test_bad_shutdown_grace():
    assert problem("shutdown_grace: soon\n") == (
        "policy.yaml:1: shutdown_grace: expected a duration like '15s' or '150ms', got 'soon'"
    )


# -- all problems, one run -------------------------------------------------------------------------------


def test_every_problem_is_reported_in_one_run():
    text = """\
    listen: 127.0.0.1:7001
    upstreams:
      gemini:
        url: https://g.example
        timeouts: {read: fast}
        retry: {attempts: 0}
      whatsapp:
        url: ftp://w.example
    """
    assert problems(text) == [
        "policy.yaml:5: upstreams.gemini.timeouts.read: expected a duration like '15s' or '150ms', got 'fast'",
        "policy.yaml:6: upstreams.gemini.retry.attempts: expected a whole number >= 1, got 0",
        "policy.yaml:8: upstreams.whatsapp.url: expected an http(s) URL like 'https://api.example.com', "
        "got 'ftp://w.example'",
    ]


def test_many_kinds_of_problem_in_one_file_are_all_reported():
    text = """\
    listen: nowhere
    admni: 127.0.0.1:7002
    defaults:
      retry: {on: [sometimes]}
    upstreams:
      g:
        url: ${MISSING}
        routes:
          - {name: a, match: FETCH /a}
          - {name: a, match: GET b}
      h:
        headers: {x: y}
    cache: {max_bytes: lots}
    """
    found = problems(text)
    assert len(found) == 8, found
    lines = [int(p.split(":")[1]) for p in found]
    assert sorted(lines) == [1, 2, 4, 7, 9, 10, 11, 13]
    assert all(p.startswith("policy.yaml:") for p in found)


# -- admin -----------------------------------------------------------------------------------------------


def test_admin_as_a_string():
    policy = load("admin: 127.0.0.2:9000\n")
    assert policy.admin.listen == Address("127.0.0.2", 9000)
    assert policy.admin.token is None
    assert policy.admin.listen.is_loopback  # beyond loopback it needs a token: see test_admin_address.py


def test_admin_as_a_mapping_with_a_token():
    policy = load("admin:\n  listen: 127.0.0.1:9000\n  token: ${ADMIN_TOKEN}\n", {"ADMIN_TOKEN": "s3cret"})
    assert policy.admin.listen == Address("127.0.0.1", 9000)
    assert policy.admin.listen.line == 2
    assert policy.admin.token == "s3cret"


def test_admin_mapping_without_listen_keeps_the_default_address():
    policy = load("admin: {token: t}\n")
    assert str(policy.admin.listen) == "127.0.0.1:9901"
    assert policy.admin.token == "t"


def test_admin_mapping_with_an_unknown_key():
    assert problem("admin: {listen: 127.0.0.1:9000, tokn: t}\n") == (
        "policy.yaml:1: admin.tokn: unknown key (did you mean 'token'?); expected one of: listen, token"
    )


def test_defaults_when_the_file_says_little():
    policy = load("upstreams:\n  g: {url: 'https://g.example'}\n")
    assert str(policy.listen) == "127.0.0.1:8081"
    assert str(policy.admin.listen) == "127.0.0.1:9901"
    assert policy.shutdown_grace == 10.0
    assert policy.cache.backend == "memory"
    assert policy.source == FILE


def test_ipv6_addresses():
    policy = load("listen: '[::1]:7001'\nadmin: '[::1]:7002'\n")
    assert policy.listen == Address("::1", 7001)
    assert policy.listen.is_loopback


# -- immutability ----------------------------------------------------------------------------------------


def test_the_policy_is_immutable():
    policy = load(SHIPPED.read_text())
    gemini = policy.upstreams["gemini"]
    route = gemini.routes[0]
    for obj, name, value in [
        (policy, "listen", Address("0.0.0.0", 1)),
        (policy.admin, "token", "x"),
        (gemini, "url", "https://evil.example"),
        (route, "name", "other"),
        (route.timeouts, "read", 99.0),
        (route.retry, "attempts", 99),
        (route.retry.backoff, "base", 9.0),
        (route.breaker, "failures", 1),
        (gemini.limits, "max_concurrent", 1),
        (gemini.throttle[0], "delay", 9.0),
    ]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, value)
    with pytest.raises(TypeError):
        policy.upstreams["evil"] = gemini  # type: ignore[index]
    assert isinstance(gemini.routes, tuple) and isinstance(gemini.headers, tuple)


def test_a_redis_url_that_is_not_one_is_an_error_at_its_line() -> None:
    import pytest

    from proxy.policy import PolicyError, parse_policy

    with pytest.raises(PolicyError) as caught:
        parse_policy("upstreams: {}\ncache:\n  backend: redis\n  redis_url: http://127.0.0.1:6379\n", "p.yaml", {})
    assert str(caught.value).startswith("p.yaml:4: cache.redis_url: expected a redis URL")


# -- values at the edges: an error at their line, never a traceback (found in review) ---------------------


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("retry: {max_body: 1" + "0" * 400 + "KiB}", "upstreams.g.retry.max_body: expected a size of at most 1024GiB"),
        ("timeouts: {read: 1" + "0" * 400 + "h}", "upstreams.g.timeouts.read: expected a duration of at most 8760h"),
        ("timeouts: {read: 9000h}", "upstreams.g.timeouts.read: expected a duration of at most 8760h"),
        ("retry: {budget: {ratio: nan}}", "upstreams.g.retry.budget.ratio: expected a finite number, got 'nan'"),
        ("retry: {budget: {min_per_second: inf}}", "upstreams.g.retry.budget.min_per_second: expected a finite"),
        ("throttle: [{status: 4290}]", "upstreams.g.throttle[0].status: expected a whole number from 100 to 599"),
    ],
)
def test_out_of_range_values_are_errors_at_their_line(setting: str, expected: str) -> None:
    found = problem(UPSTREAM + "    " + setting + "\n")
    assert found.startswith(f"{FILE}:4: {expected}"), found


@pytest.mark.parametrize("url", ["redis://[bad", "redis://h:99999/0"])
def test_a_malformed_redis_url_is_an_error_at_its_line(url: str) -> None:
    text = f"upstreams: {{}}\ncache:\n  backend: redis\n  redis_url: '{url}'\n"
    found = problem(text, {"EGRESS_CACHE_KEY_SECRET": "s"})
    assert found.startswith(f"{FILE}:4: cache.redis_url: expected a redis URL"), found


def test_a_redis_cache_needs_a_key_secret_unless_its_url_has_a_password() -> None:
    text = "upstreams: {}\ncache:\n  backend: redis\n  redis_url: '%s'\n"
    found = problem(text % "redis://127.0.0.1:6379/0")
    assert found.startswith(f"{FILE}:2: cache: a Redis cache needs EGRESS_CACHE_KEY_SECRET"), found
    assert load(text % "redis://127.0.0.1:6379/0", {"EGRESS_CACHE_KEY_SECRET": "s3"}).cache.key_secret == "s3"
    assert load(text % "redis://:pw@127.0.0.1:6379/0").cache.backend == "redis"


def test_deeply_nested_yaml_is_an_error_not_a_recursion_error() -> None:
    assert problem("upstreams: " + "[" * 3000 + "]" * 3000 + "\n") == (
        f"{FILE}:1: upstreams{'[0]' * 31}: nested more than 32 levels deep"
    )


def test_a_policy_file_that_is_not_utf8_is_an_error_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    data = b"upstreams:\n  a:\n    url: http://h\n    headers: {k: \"caf\xe9\"}\n"
    path.write_bytes(data)
    with pytest.raises(PolicyError) as caught:
        load_policy(path, {})
    at = data.index(b"\xe9")
    assert str(caught.value) == f"{path}:4: the policy file is not UTF-8 (byte {at})"


def test_a_routes_retry_budget_is_refused_it_is_per_upstream() -> None:
    route = "      - name: r\n        match: GET /x\n        retry: {attempts: 2, budget: {ratio: 0.5}}\n"
    text = UPSTREAM + "    routes:\n" + route
    found = problem(text)
    assert found.startswith(f"{FILE}:7: upstreams.g.routes[0].retry.budget: the retry budget is per upstream"), found
