"""A request's key for each of its limits, from the templates of `rate_limit.limits[].key`: literal text, the
route's captures, headers, and dotted fields of a small JSON body already buffered for retries.

A value that is not there (no such header, a body that is not JSON, streamed, or larger than `KEY_BODY_LIMIT`, no
such field) renders empty: such requests share one budget rather than escape every budget. Each key also comes as
shown on `/upstreams`, where values from headers and bodies (a recipient's phone number) keep only their last
`SHOWN_TAIL` characters. A value longer than `MAX_KEY` (a caller's 60 KiB "recipient") is replaced by its
SHA-256: still one budget per value, every replica agreeing, but every key a bounded size in this process's
buckets (at most `gcra.MAX_BUCKETS` of them) and in Redis.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from multidict import CIMultiDictProxy

from proxy.forward import RequestBody
from proxy.policy.model import KeyTemplate, RateLimitPolicy

KEY_BODY_LIMIT = 64 * 1024  # a WhatsApp send is a few hundred bytes; parsing a MiB of JSON per request is not free
SHOWN_TAIL = 4
MAX_KEY = 256  # characters: a phone number pair is under 40
_MISSING = object()


class Key(NamedTuple):
    value: str
    shown: str


def render_keys(
    pacing: RateLimitPolicy, captures: Mapping[str, str], headers: CIMultiDictProxy[str], body: RequestBody | None
) -> tuple[Key, ...]:
    document = _document(body) if pacing.needs_body else _MISSING
    return tuple(_render(limit.key, captures, headers, document) for limit in pacing.limits)


def _render(template: KeyTemplate, captures: Mapping[str, str], headers: CIMultiDictProxy[str], document: Any) -> Key:
    value: list[str] = []
    shown: list[str] = []
    for part in template.parts:
        if part.kind == "text":
            piece = part.name
        elif part.kind == "capture":
            piece = captures.get(part.name, "")
        else:
            piece = headers.get(part.name, "") if part.kind == "header" else _field(document, part.name)
            value.append(piece)
            shown.append("…" + piece[-SHOWN_TAIL:] if len(piece) > SHOWN_TAIL else "…" if piece else "")
            continue
        value.append(piece)
        shown.append(piece)
    rendered = "".join(value)
    if len(rendered) > MAX_KEY:
        rendered = "sha256:" + hashlib.sha256(rendered.encode("utf-8", "surrogateescape")).hexdigest()
    return Key(rendered, "".join(shown)[-MAX_KEY:])


def _document(body: RequestBody | None) -> Any:
    data = body.buffered if body is not None else None
    if not data or len(data) > KEY_BODY_LIMIT:
        return _MISSING
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _MISSING


def _field(document: Any, path: str) -> str:
    """`to`, `recipient.id`, `messages.0.to` (a digit indexes a list)."""
    value = document
    for step in path.split("."):
        if isinstance(value, dict):
            value = value.get(step, _MISSING)
        elif isinstance(value, list) and step.isascii() and step.isdigit() and int(step) < len(value):
            value = value[int(step)]
        else:
            return ""
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
