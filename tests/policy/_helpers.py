"""Helpers for the policy tests: parse YAML text (dedented) and read back the problems as printed."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import pytest

from proxy.policy import Policy, PolicyError, parse_policy

FILE = "policy.yaml"


def load(text: str, environ: Mapping[str, str] | None = None) -> Policy:
    return parse_policy(textwrap.dedent(text), FILE, environ or {})


def problems(text: str, environ: Mapping[str, str] | None = None) -> list[str]:
    """Every problem line, as `check` prints them."""
    with pytest.raises(PolicyError) as info:
        load(text, environ)
    lines = [str(p) for p in info.value.problems]
    assert str(info.value) == "\n".join(lines)
    return lines


def problem(text: str, environ: Mapping[str, str] | None = None) -> str:
    """The one problem a text has."""
    found = problems(text, environ)
    assert len(found) == 1, found
    return found[0]
