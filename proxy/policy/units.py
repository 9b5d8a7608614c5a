"""Human units in the policy file: durations (`150ms`, `3s`, `5m`) and sizes (`512KiB`, `1MiB`)."""

from __future__ import annotations

import re
from decimal import Decimal

MAX_DURATION = 8760 * 3600.0  # a year: past that it is a typo, and event-loop timers overflow
MAX_SIZE = 1024**4

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
}


def parse_duration(text: str) -> float:
    """Seconds from `150ms`, `3s`, `1.5m`, `1h`. A bare number is refused: the unit is the point."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"expected a duration like '15s' or '150ms', got {text!r}")
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not seconds <= MAX_DURATION:  # also catches inf: a timer that far off overflows the event loop's clock
        raise ValueError(f"expected a duration of at most 8760h (a year), got {text!r}")
    return seconds


def parse_size(text: str | int) -> int:
    """Bytes from `512KiB`, `1MiB`, `10MB` or a plain integer."""
    if isinstance(text, int):
        if text < 0 or text > MAX_SIZE:
            raise ValueError(f"expected a size like '1MiB' (at most 1024GiB), got {text!r}")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"expected a size like '1MiB' or '512KiB', got {text!r}")
    size = int(Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)])  # exact: a float turns 1e400 into inf
    if size > MAX_SIZE:
        raise ValueError(f"expected a size of at most 1024GiB, got {text!r}")
    return size


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"


def format_size(size: int) -> str:
    """`1MiB` for 1048576: the largest binary unit that divides the size, else bytes."""
    for unit in ("GiB", "MiB", "KiB"):
        if size and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{unit}"
    return str(size)
