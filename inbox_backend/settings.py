"""Backend configuration: environment variables with local defaults, read once into a frozen object.

The defaults run the backend against `make run`'s local stack (sidecar on 8081 in front of the
simulator); production sets the URLs and secrets through the environment.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

EgressMode = Literal["sidecar", "direct"]


class Upstream(StrEnum):
    """The upstreams the backend calls; the values are the sidecar's upstream names (its first path segment)."""

    GEMINI = "gemini"
    WHATSAPP = "whatsapp"
    WHATSAPP_MEDIA = "whatsapp_media"
    SUPABASE = "supabase"


SIDECAR = "http://127.0.0.1:8081"
# Where each upstream really is: used by the backend only in direct mode, and by the sidecar's policy
# (same variable names) in sidecar mode.
REAL_URLS: Mapping[Upstream, tuple[str, str]] = {
    Upstream.GEMINI: ("GEMINI_URL", "https://generativelanguage.googleapis.com"),
    Upstream.WHATSAPP: ("WHATSAPP_URL", "https://graph.facebook.com"),
    Upstream.WHATSAPP_MEDIA: ("WHATSAPP_MEDIA_URL", "https://lookaside.fbsbx.com"),
    Upstream.SUPABASE: ("SUPABASE_URL", "https://example.supabase.co"),
}
SIDECAR_URL_VARS: Mapping[Upstream, str] = {
    Upstream.GEMINI: "GEMINI_BASE_URL",
    Upstream.WHATSAPP: "WHATSAPP_BASE_URL",
    Upstream.WHATSAPP_MEDIA: "WHATSAPP_MEDIA_BASE_URL",
    Upstream.SUPABASE: "SUPABASE_BASE_URL",
}

AUTH_TIMEOUT_KEY = "auth"
# What a direct-mode timeout can be set for: each upstream, and Supabase's token check on its own.
DIRECT_TIMEOUT_KEYS: tuple[str, ...] = (*(u.value for u in Upstream), AUTH_TIMEOUT_KEY)


class SettingsError(ValueError):
    """A bad environment value, named so the operator knows which variable to fix."""


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    egress_mode: EgressMode = "sidecar"
    # Base URL of each upstream through the sidecar, and the real one (direct mode), by upstream name.
    sidecar_urls: tuple[tuple[Upstream, str], ...] = tuple((u, f"{SIDECAR}/{u}") for u in Upstream)
    direct_urls: tuple[tuple[Upstream, str], ...] = tuple((u, url) for u, (_, url) in REAL_URLS.items())
    sidecar_admin_url: str = "http://127.0.0.1:9901"
    whatsapp_verify_token: str = "sim-verify-token"
    whatsapp_app_secret: str = "sim-app-secret"
    whatsapp_token: str = "sim-whatsapp-token"
    graph_version: str = "v19.0"
    supabase_key: str = "sim-service-key"
    # Sent by the backend only in direct mode: through the sidecar, the policy injects it.
    gemini_api_key: str = "sim-gemini-key"
    gemini_model: str = "gemini-2.0-flash"
    # Direct mode has no sidecar to enforce timeouts: plain ones, per call.
    direct_timeout: float = 30.0
    # Per-upstream overrides of `direct_timeout` (DIRECT_TIMEOUT_<NAME>), by `DirectTimeoutKey`: an upstream's
    # name, or "auth" for the caller's token check, which is a Supabase call but waited on by every request.
    direct_timeouts: tuple[tuple[str, float], ...] = ()
    direct_connect_timeout: float = 5.0
    # Through the sidecar, only a backstop for a sidecar that stops answering: longer than any policy
    # deadline, so the sidecar's own timeout (with its precise error) always fires first.
    sidecar_backstop_timeout: float = 150.0
    history_limit: int = 20
    # A background bot reply whose Gemini (or Supabase) is unavailable (503, an open breaker) tries again, each wait
    # its Retry-After but at most `reply_retry_interval`, for up to `reply_retry_for` seconds: an outage then delays
    # the customer's answer instead of dropping it. The send itself is never retried (it may have gone out).
    reply_retry_for: float = 120.0
    reply_retry_interval: float = 5.0
    # What an internet caller may hold (serving.py): the time to send a request head once its first byte
    # arrived, how long an idle keep-alive connection stays open, how many connections are open at once.
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0  # above common load balancers' idle timeouts (60 s), as nginx's default
    max_connections: int = 1000
    # The time to send a request body once its head was read: a body trickled slower is answered 408.
    body_timeout: float = 30.0
    # A request body's bound (413 beyond it): a webhook delivery or an API call is a few kilobytes.
    max_body: int = 1024 * 1024

    @property
    def direct(self) -> bool:
        return self.egress_mode == "direct"

    def base_url(self, upstream: Upstream) -> str:
        """Where calls to `upstream` go in the current mode."""
        return dict(self.direct_urls if self.direct else self.sidecar_urls)[upstream]

    def sidecar_url(self, upstream: Upstream) -> str:
        return dict(self.sidecar_urls)[upstream]

    def direct_timeout_for(self, key: str) -> float:
        """Direct mode's timeout for `key` (one of DIRECT_TIMEOUT_KEYS), `direct_timeout` unless overridden."""
        return dict(self.direct_timeouts).get(key, self.direct_timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, listen: str | None = None) -> Settings:
        """`listen` (HOST:PORT, from the command line) overrides INBOX_LISTEN."""
        env = os.environ if environ is None else environ
        defaults = cls()
        host, port = parse_listen(listen or env.get("INBOX_LISTEN", f"{defaults.host}:{defaults.port}"))
        _require_own_webhook_secrets(env, host)
        mode = env.get("EGRESS_MODE", defaults.egress_mode).strip().lower()
        if mode not in ("sidecar", "direct"):
            raise SettingsError(f"EGRESS_MODE must be 'sidecar' or 'direct', not {mode!r}")
        return cls(
            host=host,
            port=port,
            egress_mode="direct" if mode == "direct" else "sidecar",
            sidecar_urls=tuple(
                (u, _url(env, var, dict(defaults.sidecar_urls)[u])) for u, var in SIDECAR_URL_VARS.items()
            ),
            direct_urls=tuple((u, _url(env, var, default)) for u, (var, default) in REAL_URLS.items()),
            sidecar_admin_url=_url(env, "SIDECAR_ADMIN_URL", defaults.sidecar_admin_url),
            whatsapp_verify_token=env.get("WHATSAPP_VERIFY_TOKEN", defaults.whatsapp_verify_token),
            whatsapp_app_secret=env.get("WHATSAPP_APP_SECRET", defaults.whatsapp_app_secret),
            whatsapp_token=env.get("WHATSAPP_TOKEN", defaults.whatsapp_token),
            graph_version=env.get("WHATSAPP_GRAPH_VERSION", defaults.graph_version),
            supabase_key=env.get("SUPABASE_KEY", defaults.supabase_key),
            gemini_api_key=env.get("GEMINI_API_KEY", defaults.gemini_api_key),
            gemini_model=env.get("GEMINI_MODEL", defaults.gemini_model),
            direct_timeout=_seconds(env, "DIRECT_TIMEOUT", defaults.direct_timeout),
            direct_timeouts=tuple(
                (key, _seconds(env, f"DIRECT_TIMEOUT_{key.upper()}", 0.0))
                for key in DIRECT_TIMEOUT_KEYS
                if env.get(f"DIRECT_TIMEOUT_{key.upper()}", "").strip()
            ),
            direct_connect_timeout=_seconds(env, "DIRECT_CONNECT_TIMEOUT", defaults.direct_connect_timeout),
            sidecar_backstop_timeout=_seconds(env, "SIDECAR_BACKSTOP_TIMEOUT", defaults.sidecar_backstop_timeout),
            reply_retry_for=_seconds(env, "INBOX_REPLY_RETRY_FOR", defaults.reply_retry_for),
            reply_retry_interval=_seconds(env, "INBOX_REPLY_RETRY_INTERVAL", defaults.reply_retry_interval),
            header_timeout=_seconds(env, "INBOX_HEADER_TIMEOUT", defaults.header_timeout),
            keepalive_timeout=_seconds(env, "INBOX_KEEPALIVE_TIMEOUT", defaults.keepalive_timeout),
            max_connections=_count(env, "INBOX_MAX_CONNECTIONS", defaults.max_connections),
            body_timeout=_seconds(env, "INBOX_BODY_TIMEOUT", defaults.body_timeout),
            max_body=_count(env, "INBOX_MAX_BODY", defaults.max_body),
        )


# Webhook credentials whose defaults are the simulator's, public in this repository: with them, anyone could
# sign a forged webhook. They may default only while the backend is reachable from this host alone.
WEBHOOK_SECRETS = ("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN")


def _require_own_webhook_secrets(env: Mapping[str, str], host: str) -> None:
    if _loopback(host):
        return
    missing = [name for name in WEBHOOK_SECRETS if not env.get(name, "").strip()]
    if missing:
        raise SettingsError(
            f"{' and '.join(missing)} must be set when the backend listens beyond loopback ({host}): "
            "the defaults are the simulator's, and public"
        )


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"INBOX_LISTEN must be HOST:PORT, like 127.0.0.1:8000, not {value!r}")
    return host.strip("[]"), int(port)


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    if not value.startswith(("http://", "https://")):
        raise SettingsError(f"{name} must be an http(s) URL, not {value!r}")
    return value.rstrip("/")


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {raw!r}") from None
    if not math.isfinite(value) or value <= 0:  # inf and nan too: a timer cannot be set with either
        raise SettingsError(f"{name} must be a positive number of seconds, not {raw!r}")
    return value


def _count(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    # Digits only, and few of them: not "²", not "1_000", not a 5,000-digit number.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12) or int(raw) < 1:
        raise SettingsError(f"{name} must be a positive whole number, not {raw!r}")
    return int(raw)
