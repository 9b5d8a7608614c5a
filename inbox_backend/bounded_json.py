"""JSON from a caller, parsed within bounds: UTF-8 only, nested at most `MAX_DEPTH` deep, finite numbers only.

`json.loads` alone answers a body nested 100,000 deep with RecursionError, turns `1e400` into `inf` and accepts
`NaN` and `Infinity` (not JSON, RFC 8259 section 6): each became a 500 further on. Here each is a `InvalidJson`,
which the routes answer 400. The depth is measured before parsing, in linear time (regular expressions and
`itertools.accumulate`, no Python loop per character), so a deep body costs no more than a flat one.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

# WhatsApp's deepest field (entry > changes > value > messages > message > text) is 6 deep; API bodies are flat.
MAX_DEPTH = 32
# A string literal with its escapes; an unterminated one runs to the end (so no match restarts inside it).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


class InvalidJson(ValueError):
    """The body is not JSON this backend accepts; the message says why (for logs, not for the caller)."""


def parse(raw: bytes, max_depth: int = MAX_DEPTH) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("the body is not UTF-8") from None
    if depth(text) > max_depth:
        raise InvalidJson(f"the body is nested deeper than {max_depth}")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except InvalidJson:
        raise
    except ValueError as exc:  # JSONDecodeError, and int() refusing more than 4,300 digits
        raise InvalidJson(f"the body is not JSON: {exc}") from None


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects outside string literals (of malformed text too)."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _refuse_constant(name: str) -> Any:
    raise InvalidJson(f"{name} is not a JSON number")


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise InvalidJson(f"the number {literal[:20]} is out of range")
    return value
