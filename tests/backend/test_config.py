"""Configuration that ships: the local policy, the backend's settings, and the image (the compose and Kubernetes
files: test_deploy.py)."""

from __future__ import annotations

import difflib
from typing import Any

import pytest

from inbox_backend.settings import Settings, SettingsError, Upstream
from proxy.policy import load_policy
from proxy.policy.render import effective_policy
from tests.backend.harness import LOCAL_POLICY, PRODUCTION_POLICY, ROOT

DEPLOY = ROOT / "deploy"


def without_urls(policy: dict[str, Any]) -> dict[str, Any]:
    upstreams = {name: {k: v for k, v in u.items() if k != "url"} for name, u in policy["upstreams"].items()}
    return {**{k: v for k, v in policy.items() if k != "source"}, "upstreams": upstreams}


def test_the_local_policy_is_the_production_policy_with_other_upstream_urls() -> None:
    environ = {"GEMINI_API_KEY": "k", "EGRESS_ADMIN_TOKEN": "t"}
    production = effective_policy(load_policy(PRODUCTION_POLICY, environ))
    local = effective_policy(load_policy(LOCAL_POLICY, environ))
    assert without_urls(local) == without_urls(production)
    assert {n: u["url"] for n, u in local["upstreams"].items()} == {
        "gemini": "http://127.0.0.1:9101",
        "whatsapp": "http://127.0.0.1:9102",
        "whatsapp_media": "http://127.0.0.1:9103",
        "supabase": "http://127.0.0.1:9104",
    }
    # and textually: only `url:` lines (and comments) differ
    diff = difflib.ndiff(PRODUCTION_POLICY.read_text().splitlines(), LOCAL_POLICY.read_text().splitlines())
    changed = [line[2:].strip() for line in diff if line.startswith(("- ", "+ "))]
    assert changed and all(line.startswith(("url:", "#")) for line in changed), changed


OWN_WEBHOOK_SECRETS = {"WHATSAPP_APP_SECRET": "app-secret-1", "WHATSAPP_VERIFY_TOKEN": "verify-1"}


@pytest.mark.parametrize("listen", ["0.0.0.0:8000", "10.1.2.3:8000", "[::]:8000", "inbox.internal:8000"])
def test_beyond_loopback_the_webhook_secrets_must_be_the_operators_own(listen: str) -> None:
    with pytest.raises(SettingsError, match="WHATSAPP_APP_SECRET and WHATSAPP_VERIFY_TOKEN must be set"):
        Settings.from_env({"INBOX_LISTEN": listen})
    with pytest.raises(SettingsError, match=r"^WHATSAPP_VERIFY_TOKEN must be set"):
        Settings.from_env({"INBOX_LISTEN": listen, "WHATSAPP_APP_SECRET": "app-secret-1"})
    with pytest.raises(SettingsError, match="must be set"):  # --listen too
        Settings.from_env({}, listen=listen)
    settings = Settings.from_env({"INBOX_LISTEN": listen, **OWN_WEBHOOK_SECRETS})
    assert (settings.whatsapp_app_secret, settings.whatsapp_verify_token) == ("app-secret-1", "verify-1")
    for loopback in ("127.0.0.1:8000", "[::1]:8000", "localhost:8000"):  # the local stack keeps its defaults
        assert Settings.from_env({"INBOX_LISTEN": loopback}).whatsapp_app_secret == "sim-app-secret"


def test_settings_default_to_the_local_sidecar_and_read_the_environment() -> None:
    default = Settings.from_env({})
    assert (default.host, default.port, default.egress_mode) == ("127.0.0.1", 8000, "sidecar")
    assert default.base_url(Upstream.GEMINI) == "http://127.0.0.1:8081/gemini"
    assert default.base_url(Upstream.WHATSAPP_MEDIA) == "http://127.0.0.1:8081/whatsapp_media"
    direct = Settings.from_env({"EGRESS_MODE": "direct", "INBOX_LISTEN": "0.0.0.0:9000", **OWN_WEBHOOK_SECRETS,
                                "SUPABASE_URL": "https://abc.supabase.co/", "DIRECT_TIMEOUT": "2.5"})
    assert (direct.host, direct.port, direct.direct_timeout) == ("0.0.0.0", 9000, 2.5)
    assert direct.base_url(Upstream.SUPABASE) == "https://abc.supabase.co"
    assert direct.base_url(Upstream.GEMINI) == "https://generativelanguage.googleapis.com"
    assert direct.sidecar_url(Upstream.GEMINI) == "http://127.0.0.1:8081/gemini"


@pytest.mark.parametrize(
    ("name", "value"),
    [("EGRESS_MODE", "bypass"), ("INBOX_LISTEN", "8000"), ("GEMINI_BASE_URL", "127.0.0.1:8081"),
     ("DIRECT_TIMEOUT", "soon"), ("DIRECT_TIMEOUT", "0")],
)
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_the_image_is_python_3_11_slim_installed_with_pip_and_not_root() -> None:
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]
    assert any(line.startswith("FROM python:3.11-slim") for line in lines)
    assert any(line.startswith("RUN pip install .") for line in lines)
    assert any(line.startswith("USER ") and line != "USER root" for line in lines)


def test_direct_timeouts_can_be_set_per_upstream_and_for_the_token_check() -> None:
    from inbox_backend.egress import Egress

    env = {"EGRESS_MODE": "direct", "DIRECT_TIMEOUT": "7", "DIRECT_TIMEOUT_GEMINI": "45",
           "DIRECT_TIMEOUT_WHATSAPP": "20", "DIRECT_TIMEOUT_AUTH": "10"}
    settings = Settings.from_env(env)
    assert [settings.direct_timeout_for(k) for k in ("gemini", "whatsapp", "auth", "supabase")] == [45, 20, 10, 7]
    egress = Egress(settings, session=None)  # type: ignore[arg-type]  # only the timeouts are read here
    # Keyed by (upstream, is the token check).
    assert egress._timeouts[Upstream.GEMINI, False].total == 45
    assert egress._timeouts[Upstream.SUPABASE, True].total == 10
    assert egress._timeouts[Upstream.SUPABASE, False].total == 7
    assert egress._stream_timeouts[Upstream.WHATSAPP, False].sock_read == 20
    with pytest.raises(SettingsError, match="DIRECT_TIMEOUT_GEMINI"):
        Settings.from_env({"DIRECT_TIMEOUT_GEMINI": "-1"})
