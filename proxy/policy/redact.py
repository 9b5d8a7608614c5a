"""Hiding credentials in URLs and queries: for log lines, `check`, the admin port and policy error messages."""

from __future__ import annotations

from collections.abc import Collection
from urllib.parse import unquote_plus

from yarl import URL

from proxy.policy.model import SECRET_QUERY_NAMES

REDACTED = "<redacted>"
_DECODE_ROUNDS = 3  # `%2570assword` is `%70assword` after one decoding: a proxy in front may decode once more


def redact_url(url: URL | str, names: Collection[str] = SECRET_QUERY_NAMES) -> str:
    """Credentials in a URL (`user:pass@`, `?access_token=`) never reach a log or the admin port."""
    parsed = URL(str(url))
    text = str(parsed.with_user(None).with_query(None))
    if parsed.user or parsed.password:
        scheme, _, rest = text.partition("://")
        text = f"{scheme}://{REDACTED}@{rest}"
    if parsed.raw_query_string:
        text += "?" + redact_query(parsed.raw_query_string, names)
    return text


def redact_query(raw_query: str, names: Collection[str] = SECRET_QUERY_NAMES) -> str:
    """`a=1&access_token=xyz` -> `a=1&access_token=<redacted>`, leaving everything else byte for byte.

    `names` are lowercase. Keys are compared decoded and lowercased: a server reads `%6Bey=` or `KEY=` as `key=`,
    so its value is a credential too; `user[password]=` (PHP, Rails) names `password`. Some servers split on `;`
    as well as `&` (HTML 4's advice), others do not: a secret's value is hidden up to the next `&`, which covers
    what either kind reads as its value."""
    return "&".join(_redact_pair(pair, names) for pair in raw_query.split("&"))


def _redact_pair(pair: str, names: Collection[str]) -> str:
    if "=" not in pair:
        return pair  # a bare flag carries no value
    pieces = pair.split(";")
    for i, piece in enumerate(pieces):
        name, eq, _ = piece.partition("=")
        if eq and is_secret_name(name, names):
            return ";".join([*pieces[:i], f"{name}={REDACTED}"])
    return pair


def is_secret_name(raw_name: str, names: Collection[str]) -> bool:
    name = raw_name
    for _ in range(_DECODE_ROUNDS):
        if "%" not in name and "+" not in name:
            break
        name = unquote_plus(name)
    name = name.strip().lower()
    if name in names:
        return True
    # `user[password]`, `password[]`: any bracketed part names the value too.
    return "[" in name and any(part.strip() in names for part in name.replace("]", "[").split("["))
