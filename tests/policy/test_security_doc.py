"""docs/security.md names, for each defence, the test that proves it: every name must be a test that exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_test_the_security_doc_names_exists() -> None:
    named = set(re.findall(r"`(?:[\w/]+\.py::)?(test_[a-z0-9_]+)`", (ROOT / "docs/security.md").read_text()))
    defined = {
        match
        for path in (ROOT / "tests").rglob("test_*.py")
        for match in re.findall(r"^(?:async )?def (test_[a-z0-9_]+)", path.read_text(), re.M)
    }
    assert len(named) > 40
    assert named <= defined, sorted(named - defined)


def test_every_test_file_the_security_doc_names_exists() -> None:
    files = set(re.findall(r"`(tests/[\w/]+\.py)", (ROOT / "docs/security.md").read_text()))
    assert files
    assert all((ROOT / f).is_file() for f in files), sorted(f for f in files if not (ROOT / f).is_file())
