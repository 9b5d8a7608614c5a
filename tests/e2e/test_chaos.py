"""`python -m bench.chaos --quick` for the sidecar mode, shortened: correctness only, never timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.backend.harness import ROOT


@pytest.mark.timeout(150)
def test_quick_chaos_run_writes_its_report_and_the_sidecar_keeps_every_message_once(tmp_path: Path) -> None:
    out = tmp_path / "chaos"
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--quick", "--modes", "sidecar", "--rate", "5", "--seconds", "8",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=140, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert "| requests |" in (out / "report.md").read_text()
    sidecar = summary["modes"]["sidecar"]
    assert sidecar["requests"] > 0
    assert sidecar["inbound_stored"] > 0  # the webhooks did reach the database: the counts below mean something
    for key in ("duplicate_sends", "lost_inbound", "double_replies", "told_failed_but_delivered"):
        assert sidecar[key] == 0, (key, sidecar)
