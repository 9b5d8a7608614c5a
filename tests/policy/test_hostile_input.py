"""Input a policy file should never have, each refused quickly as `file:line: key.path: message`, never a traceback:
odd digits, huge numbers, anchor bombs, non-scalar keys, cycles, deep nesting, huge files, credentials in URLs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from proxy.policy import PolicyError, load_policy
from proxy.policy.source import MAX_ALIAS_NODES, MAX_POLICY_BYTES
from tests.policy._helpers import FILE, load, problem, problems

UPSTREAM = "upstreams:\n  g:\n    url: https://g.example\n"
HUGE = "9" * 5000  # int() of it raises ValueError (Python's 4,300-digit limit)


def test_a_superscript_digit_in_retry_on_is_an_error_at_its_line() -> None:
    assert problem(UPSTREAM + "    retry: {on: ['²']}\n") == (
        f"{FILE}:4: upstreams.g.retry.on[0]: expected connect_error, reset, timeout, a status like 503 or a class "
        "like 5xx, got '²'"
    )


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("retry: {max_body: '²'}", "upstreams.g.retry.max_body: expected a size like '1MiB' or '512KiB', got '²'"),
        ("retry: {attempts: '٣'}", "upstreams.g.retry.attempts: expected a whole number, got '٣'"),
    ],
)
def test_non_ascii_digits_are_not_numbers(setting: str, expected: str) -> None:
    assert problem(UPSTREAM + "    " + setting + "\n") == f"{FILE}:4: {expected}"


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (f"retry: {{attempts: {HUGE}}}", "upstreams.g.retry.attempts: expected a whole number >= 1, got 9999"),
        (f"retry: {{attempts: -{HUGE}}}", "upstreams.g.retry.attempts: expected a whole number >= 1, got -999"),
        (f"retry: {{max_body: {HUGE}}}", "upstreams.g.retry.max_body: expected a size like '1MiB' (at most"),
        (f"retry: {{max_body: {HUGE}KiB}}", "upstreams.g.retry.max_body: expected a size of at most 1024GiB"),
        (f"retry: {{on: [{HUGE}]}}", "upstreams.g.retry.on[0]: expected connect_error"),
        (f"retry: {{budget: {{ratio: {HUGE}}}}}", "upstreams.g.retry.budget.ratio: expected a finite number"),
        (f"timeouts: {{read: {HUGE}s}}", "upstreams.g.timeouts.read: expected a duration of at most 8760h"),
        (f"throttle: [{{status: {HUGE}}}]", "upstreams.g.throttle[0].status: expected a whole number from 100 to"),
        (f"limits: {{max_queue: {HUGE}}}", "upstreams.g.limits.max_queue: expected a whole number >= 0"),
    ],
)
def test_a_5000_digit_number_is_an_error_with_a_short_message(setting: str, expected: str) -> None:
    found = problem(UPSTREAM + "    " + setting + "\n")
    assert found.startswith(f"{FILE}:4: {expected}"), found
    assert len(found) < 300, found  # the value is cut short, not echoed whole


@pytest.mark.parametrize(
    "text",
    [f"listen: 127.0.0.1:{HUGE}\n", f"admin: {{listen: '[::1]:{HUGE}'}}\n"],
)
def test_a_5000_digit_port_is_an_error(text: str) -> None:
    found = problem(text)
    assert found.startswith(f"{FILE}:1: ") and "expected a port from 0 to 65535, got 9999" in found, found
    assert len(found) < 300


def test_a_5000_digit_port_in_a_url_is_an_error() -> None:
    found = problem(UPSTREAM.replace("g.example", f"g.example:{HUGE}"))
    assert found.startswith(f"{FILE}:3: upstreams.g.url: expected an http(s) URL, got 'https://g.example:999"), found
    assert problem(UPSTREAM.replace("g.example", "g.example:99999")).startswith(
        f"{FILE}:3: upstreams.g.url: expected an http(s) URL"
    )


def laughs(levels: int = 9, width: int = 9) -> str:
    """The billion laughs: each level an anchored list of `width` aliases to the level below."""
    lines = ['l0: &l0 ["lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_an_anchor_bomb_used_as_a_mapping_key_fails_at_once() -> None:
    bomb = laughs().replace("l9: &l9", "bomb: &l9")
    started = time.perf_counter()
    found = problems(bomb + "upstreams:\n  ? *l9\n  : {url: 'http://h'}\n")
    assert time.perf_counter() - started < 0.5
    assert found == [f"{FILE}:5: l4[5]: the aliases expand to more than {MAX_ALIAS_NODES} nodes"]


def test_a_mapping_key_must_be_a_scalar() -> None:
    assert problem("x: &k [a]\nupstreams:\n  ? *k\n  : 1\n") == (
        f"{FILE}:1: upstreams: a mapping key must be a plain value, found a list"
    )
    assert problem("upstreams:\n  ? {a: 1}\n  : 1\n") == (
        f"{FILE}:2: upstreams: a mapping key must be a plain value, found a mapping"
    )


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    assert problem("upstreams: &u {g: *u}\n") == f"{FILE}:1: upstreams.g: the alias *u is inside its own anchor"


def test_a_modest_alias_still_works() -> None:
    policy = load(
        """\
        defaults:
          timeouts: &fast {read: 2s, connect: 1s}
        upstreams:
          g:
            url: https://g.example
            routes:
              - {name: a, match: GET /a, timeouts: *fast}
              - {name: b, match: GET /b, timeouts: *fast}
        """
    )
    assert [r.timeouts.read for r in policy.upstreams["g"].routes] == [2.0, 2.0]


def test_aliases_that_multiply_the_work_of_the_reader_are_refused() -> None:
    """Used as values, aliases make the reader walk a tree far larger than the file: bounded the same way."""
    routes = "r: &r [" + ", ".join(["{name: x, match: GET /x}"] * 200) + "]\n"
    ups = "upstreams:\n" + "".join(f"  u{i}: {{url: 'http://h', routes: *r}}\n" for i in range(200))
    started = time.perf_counter()
    found = problems(routes + ups)
    assert time.perf_counter() - started < 0.5
    assert found[0].endswith(f"the aliases expand to more than {MAX_ALIAS_NODES} nodes"), found


def test_deep_nesting_in_a_mapping_is_refused_at_its_line() -> None:
    text = "upstreams:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(40)) + "  " * 41 + "v\n"
    found = problem(text)
    assert found.startswith(f"{FILE}:32: upstreams.k0.k1."), found
    assert found.endswith("nested more than 32 levels deep")


def test_a_policy_file_over_the_bound_is_refused_without_being_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(UPSTREAM + "# " + "x" * MAX_POLICY_BYTES + "\n")
    started = time.perf_counter()
    with pytest.raises(PolicyError) as caught:
        load_policy(path, {})
    assert time.perf_counter() - started < 0.5
    size = path.stat().st_size
    assert str(caught.value) == (
        f"{path}: the policy file is larger than 1024 KiB ({size} bytes): a policy is a few KB; is this the right file?"
    )


def test_a_policy_text_over_the_bound_is_refused() -> None:
    found = problem(UPSTREAM + "#" * MAX_POLICY_BYTES)
    assert found.startswith(f"{FILE}: the policy file is larger than 1024 KiB")


def test_a_policy_just_under_the_bound_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    text = UPSTREAM + "# padding\n" * ((MAX_POLICY_BYTES - len(UPSTREAM) - 1) // 10)
    path.write_text(text)
    assert len(text) <= MAX_POLICY_BYTES
    assert str(load_policy(path, {}).upstreams["g"].url) == "https://g.example"


# -- credentials in URLs: refused in an upstream URL, never echoed in any message ------------------------------


def test_credentials_in_an_upstream_url_are_refused_without_echoing_them() -> None:
    for url in ("https://user:hunter2@g.example", "https://hunter2@g.example", "https://:hunter2@g.example/v1"):
        found = problem(UPSTREAM.replace("https://g.example", url))
        assert "hunter2" not in found
        assert found.startswith(
            f"{FILE}:3: upstreams.g.url: the URL must not carry credentials (user:password@), got 'https://<redacted>@"
        ), found
        assert "inject them with the upstream's headers" in found


def test_a_url_given_by_the_environment_is_redacted_in_its_message() -> None:
    found = problem(UPSTREAM.replace("https://g.example", "${G_URL}"), {"G_URL": "ftp://u:hunter2@g.example"})
    assert found == (
        f"{FILE}:3: upstreams.g.url: expected an http(s) URL like 'https://api.example.com', "
        "got 'ftp://<redacted>@g.example'"
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://u:hunter2@[bad",  # yarl cannot parse it
        "https://u:hunter2@g.example:99999",  # a bad port
        "https://u:hunter2@g.example/?q=1",  # a query as well
        "ftp://u:hunter2@g.example",  # not http(s)
        "https://u:hun/ter2@g.example",  # a '/' in the password: the host is not where yarl thinks
    ],
)
def test_no_upstream_url_message_echoes_a_password(url: str) -> None:
    found = problem(UPSTREAM.replace("https://g.example", url))
    assert found.startswith(f"{FILE}:3: upstreams.g.url: "), found
    assert "hunter2" not in found and "ter2" not in found, found


@pytest.mark.parametrize(
    "url",
    ["redis://u:hunter2@[bad", "redis://u:hunter2@h:99999/0", "http://u:hunter2@h:6379/0", "redis://:hunter2@/0"],
)
def test_no_redis_url_message_echoes_a_password(url: str) -> None:
    text = f"upstreams: {{}}\ncache:\n  backend: redis\n  redis_url: '{url}'\n"
    found = problem(text, {"EGRESS_CACHE_KEY_SECRET": "s"})
    assert found.startswith(f"{FILE}:4: cache.redis_url: expected a redis URL"), found
    assert "hunter2" not in found, found


SHIPPED = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"


def test_a_url_with_a_password_in_any_wrong_place_is_never_echoed() -> None:
    """Every scalar of the shipped policy, one at a time, replaced by a URL with a password (a value pasted into
    the wrong key): whichever message that gives, the password is not in it. Covers every reader's message."""
    lines = SHIPPED.read_text().splitlines()
    secret_url = "'https://user:hunter2@h.example/x?access_token=tok3n'"
    tried = 0
    for i, line in enumerate(lines):
        key, colon, value = line.partition(": ")
        if not colon or not value.strip() or value.strip().startswith(("#", "{", "[", "&", "*", "|", ">")):
            continue
        mutated = [*lines[:i], f"{key}: {secret_url}", *lines[i + 1:]]
        text = "\n".join(mutated) + "\n"
        try:
            load(text, {"EGRESS_CACHE_KEY_SECRET": "s"})
        except PolicyError as exc:
            assert "hunter2" not in str(exc) and "tok3n" not in str(exc), str(exc)
        tried += 1
    assert tried > 20
