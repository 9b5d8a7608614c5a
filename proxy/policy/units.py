"""Human units in the policy file: durations (`150ms`, `3s`, `5m`) and sizes (`512KiB`, `1MiB`)."""

from __future__ import annotations

import re

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
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def parse_size(text: str | int) -> int:
    """Bytes from `512KiB`, `1MiB`, `10MB` or a plain integer."""
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"expected a size like '1MiB', got {text!r}")
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"expected a size like '1MiB' or '512KiB', got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def format_duration(seconds: float) -> str:
    if seconds < 1 and seconds != 0:
        return f"{round(seconds * 1000)}ms"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds}s"
