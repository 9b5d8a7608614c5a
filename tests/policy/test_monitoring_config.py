"""The shipped Prometheus and Grafana configuration only names metrics that the sidecar or the backend export,
and parses (with promtool too, when it is installed); every alert links its section of docs/operations.md."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from inbox_backend.metrics import Metrics as BackendMetrics
from proxy.metrics import Metrics as SidecarMetrics

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config"
RUNBOOK = "docs/operations.md"


def exported_names() -> set[str]:
    names: set[str] = {"up"}
    registries: list[CollectorRegistry] = [SidecarMetrics().registry, BackendMetrics().registry]
    for registry in registries:
        for family in registry.collect():  # labelled families have no samples yet: derive the series names
            names.add(family.name)
            if family.type == "counter":
                names.add(family.name + "_total")
            elif family.type == "histogram":
                names.update(family.name + suffix for suffix in ("_bucket", "_count", "_sum"))
    return names


def referenced_names(expr: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    candidates = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b", without_labels))
    return {c for c in candidates if c.startswith(("egress_", "http_", "inbox_")) or c == "up"}


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load((CONFIG / "prometheus" / "alerts.yml").read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]


def alert_expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules()]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((CONFIG / "grafana" / "egress-sidecar.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_every_metric_named_is_exported(source: str) -> None:
    exprs = alert_expressions() if source == "alerts" else dashboard_expressions()
    assert exprs
    exported = exported_names()
    missing = {name for expr in exprs for name in referenced_names(expr)} - exported
    assert not missing, f"{source} name metrics nobody exports: {sorted(missing)}"


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    # promtool runs the cases (test_promtool_accepts_the_config_and_rules); this checks there is one of each.
    rules = yaml.safe_load((CONFIG / "prometheus" / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    cases = yaml.safe_load((CONFIG / "prometheus" / "alerts_test.yml").read_text())["tests"]
    checks = [check for case in cases for check in case["alert_rule_test"]]
    fires = {c["alertname"] for c in checks if c["exp_alerts"]}
    stays_quiet = {c["alertname"] for c in checks if not c["exp_alerts"]}
    assert alerts - fires == set(), "never shown firing"
    assert alerts - stays_quiet == set(), "never shown quiet"


def test_every_panel_names_its_series_by_the_labels_it_groups_by() -> None:
    # Without a legend format Grafana shows each series as its whole label set: unreadable on a small panel.
    dashboard = json.loads((CONFIG / "grafana" / "egress-sidecar.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            legend = target.get("legendFormat")
            assert legend, f"panel {panel['title']!r} has no legend format"
            grouped = re.search(r"by \(([^)]*)\)", target["expr"])
            labels = {label.strip() for label in grouped.group(1).split(",")} - {"le"} if grouped else set()
            assert set(re.findall(r"\{\{(\w+)\}\}", legend)) == labels, (panel["title"], legend)


def test_prometheus_config_points_at_the_admin_port_and_the_backend() -> None:
    config = yaml.safe_load((CONFIG / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert {"127.0.0.1:9901", "127.0.0.1:8000"} <= targets
    assert config["rule_files"] == ["alerts.yml"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed (apt-get install prometheus)")
def test_promtool_accepts_the_config_and_rules() -> None:
    for args in (["check", "config", str(CONFIG / "prometheus" / "prometheus.yml")],
                 ["check", "rules", str(CONFIG / "prometheus" / "alerts.yml")],
                 ["test", "rules", str(CONFIG / "prometheus" / "alerts_test.yml")]):  # alerts fire when they should
        done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lowercased, punctuation (backticks included) dropped, each space
    a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def heading_anchors(markdown: str) -> set[str]:
    """Every heading's anchor, outside fenced code (a `# comment` in a shell block is no heading); a repeated
    heading gets `-1`, `-2`, ... as on GitHub."""
    anchors: set[str] = set()
    seen: Counter[str] = Counter()
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        heading = re.match(r"#{1,6} +(.+?)(?: +#+)? *$", line)
        if heading and not fenced:
            anchor = github_anchor(heading.group(1))
            anchors.add(f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor)
            seen[anchor] += 1
    return anchors


@pytest.mark.parametrize(("heading", "anchor"), [
    ("EgressUpstreamErrorRate", "egressupstreamerrorrate"),
    ("Kubernetes: apply order", "kubernetes-apply-order"),
    ("Changing the policy under an alert", "changing-the-policy-under-an-alert"),
    ("`GET /status`, the JSON", "get-status-the-json"),
])
def test_anchors_are_githubs(heading: str, anchor: str) -> None:
    assert github_anchor(heading) == anchor


def test_every_alert_links_its_own_section_of_the_operations_doc() -> None:
    # The alert and what to do about it cannot drift apart: a renamed alert or heading fails here.
    anchors = heading_anchors((ROOT / RUNBOOK).read_text())
    for rule in alert_rules():
        url = rule["annotations"].get("runbook_url")
        assert url, f"{rule['alert']} has no runbook_url annotation"
        path, _, anchor = url.partition("#")
        assert path == RUNBOOK, (rule["alert"], url)
        assert anchor == rule["alert"].lower(), f"{rule['alert']} links another alert's section: {url}"
        assert anchor in anchors, f"{rule['alert']}: {RUNBOOK} has no heading with the anchor #{anchor}"


def test_links_into_the_operations_doc_find_their_headings() -> None:
    anchors = heading_anchors((ROOT / RUNBOOK).read_text())
    own = re.findall(r"\]\(#([^)]+)\)", (ROOT / RUNBOOK).read_text())
    from_readme = re.findall(r"\]\(docs/operations\.md#([^)]+)\)", (ROOT / "README.md").read_text())
    assert own
    missing = (set(own) | set(from_readme)) - anchors
    assert not missing, sorted(missing)
