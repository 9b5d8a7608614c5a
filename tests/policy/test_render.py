"""The effective policy (for `check` and `GET /policy`): defaults merged, plain JSON, and no secret in it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.policy import load_policy
from proxy.policy.render import REDACTED, effective_policy, redact_query, redact_url
from tests.policy._helpers import load

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "policy.yaml"

SECRETS = {
    "G_KEY": "injected-S3CRET-1",
    "BEARER": "Bearer S3CRET-2",
    "URL_USER": "urluser-S3CRET-3",
    "URL_PASS": "urlpass-S3CRET-4",
    "ADMIN_TOKEN": "admintoken-S3CRET-5",
    "REDIS_PASS": "redispass-S3CRET-6",
    "Q_KEY": "querykey-S3CRET-7",
    "Q_TOKEN": "querytoken-S3CRET-8",
}

WITH_SECRETS = """\
admin: {listen: 127.0.0.1:9911, token: "${ADMIN_TOKEN}"}
cache:
  redis_url: "redis://default:${REDIS_PASS}@cache.local:6379/0?key=${Q_KEY}&access_token=${Q_TOKEN}&db=2"
upstreams:
  gemini:
    url: https://generativelanguage.googleapis.com
    headers: {x-goog-api-key: "${G_KEY}", authorization: "${BEARER}"}
  private:
    url: "https://private.example/base"
    headers: {authorization: "Basic ${URL_USER}:${URL_PASS}"}
"""


@pytest.fixture(scope="module")
def dumped() -> str:
    return json.dumps(effective_policy(load(WITH_SECRETS, SECRETS)))


def test_no_secret_appears_anywhere_in_the_effective_policy(dumped):
    for name, secret in SECRETS.items():
        assert secret not in dumped, name
        assert "S3CRET" not in dumped


def test_what_is_redacted_still_shows_where_it_is():
    rendered = effective_policy(load(WITH_SECRETS, SECRETS))
    gemini = rendered["upstreams"]["gemini"]
    assert gemini["headers"] == {"x-goog-api-key": REDACTED, "authorization": REDACTED}
    assert rendered["upstreams"]["private"]["headers"] == {"authorization": REDACTED}
    assert rendered["admin"] == {"listen": "127.0.0.1:9911", "token": REDACTED}
    assert rendered["cache"]["redis_url"] == (
        f"redis://{REDACTED}@cache.local:6379/0?key={REDACTED}&access_token={REDACTED}&db=2"
    )


def test_without_secrets_nothing_is_marked_redacted():
    rendered = effective_policy(load("upstreams:\n  g: {url: 'https://g.example'}\n"))
    assert rendered["admin"]["token"] is None
    assert rendered["upstreams"]["g"]["headers"] == {}
    assert REDACTED not in json.dumps(rendered)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:pass@host.example/x", f"https://{REDACTED}@host.example/x"),
        ("https://user@host.example/x", f"https://{REDACTED}@host.example/x"),
        ("redis://:pw@host:6379/0", f"redis://{REDACTED}@host:6379/0"),
        ("https://host.example/x?key=abc&alt=sse", f"https://host.example/x?key={REDACTED}&alt=sse"),
        ("https://host.example/x?access_token=abc", f"https://host.example/x?access_token={REDACTED}"),
        ("https://host.example/x?Access_Token=abc&API_KEY=d", f"https://host.example/x?Access_Token={REDACTED}&API_KEY={REDACTED}"),
        ("https://host.example/x?a=1&b", "https://host.example/x?a=1&b"),
        ("https://host.example:8443/", "https://host.example:8443/"),
    ],
)
def test_redact_url(url, expected):
    assert redact_url(url) == expected


def test_redact_query_leaves_the_rest_byte_for_byte():
    assert redact_query("a=1&token=t&token=u&x=%20y&flag&key=") == (
        f"a=1&token={REDACTED}&token={REDACTED}&x=%20y&flag&key={REDACTED}"
    )


def test_the_effective_policy_has_the_defaults_merged():
    rendered = effective_policy(load_policy(SHIPPED, environ={}))
    json.dumps(rendered)  # plain JSON-able data
    gemini = rendered["upstreams"]["gemini"]
    generate, stream, default = gemini["routes"]
    assert generate["name"] == "generate"
    assert generate["match"] == "POST /v1beta/models/*:generateContent"
    assert generate["timeouts"] == {"connect": "3s", "read": "15s", "write": "5s", "pool": "5s", "total": "30s"}
    assert generate["retry"] == {
        "attempts": 3,
        "backoff": {"base": "100ms", "max": "2s"},
        "on": ["connect_error", "reset", "timeout", 502, 503, 504],
        "max_body": 1024 * 1024,
    }
    assert gemini["retry"] == {"budget": {"ratio": 0.2, "min_per_second": 5.0}}  # per upstream, not per route
    assert generate["breaker"] == {
        "name": "gemini", "failures": 5, "reset_after": "10s",
        "count": ["connect_error", "reset", "timeout", 401, 403, "5xx"], "mode": "enforce",
    }
    assert stream["timeouts"]["read"] == "30s" and stream["timeouts"]["total"] == "120s"
    assert default["name"] == "default" and default["match"] == "ANY **"
    assert gemini["throttle"] == [
        {"status": 429, "field": None, "codes": [], "delay_field": "error.details[].retryDelay", "delay": "1s",
         "limits": []}
    ]
    assert gemini["limits"] == {
        "max_concurrent": 100, "max_queue": 50, "max_request_body": None, "keepalive": "4s",
        "keepalive_non_idempotent": "1s", "mode": "enforce",
    }
    supabase = rendered["upstreams"]["supabase"]
    auth = supabase["routes"][0]
    assert auth["cache"]["ttl"] == "60s" and auth["timeouts"]["read"] == "5s"
    assert rendered["upstreams"]["whatsapp_media"]["routes"][0]["timeouts"]["read"] == "60s"
    assert rendered["shutdown_grace"] == "10s"
    assert rendered["listen"] == "127.0.0.1:8081"


def test_the_shipped_policy_with_a_key_in_the_environment_does_not_show_it():
    env = {"GEMINI_API_KEY": "supersecret", "EGRESS_ADMIN_TOKEN": "admin-supersecret"}
    dumped = json.dumps(effective_policy(load_policy(SHIPPED, environ=env)))
    assert "supersecret" not in dumped
    assert f'"x-goog-api-key": "{REDACTED}"' in dumped


def test_redact_query_compares_keys_decoded():
    # a server reads `%6Bey` as `key`: the value is the same credential
    assert redact_query("%6Bey=s1&access%5Ftoken=s2&KEY=s3&monkey=ok") == (
        f"%6Bey={REDACTED}&access%5Ftoken={REDACTED}&KEY={REDACTED}&monkey=ok"
    )
