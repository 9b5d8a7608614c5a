"""Per-request counts are applied in batches: never more than BATCH wait, and a scrape sees every one."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import BATCH, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def test_notes_wait_at_most_a_batch_and_a_scrape_sees_all_of_them():
    metrics = Metrics()
    route = metrics.route("gemini", "generate")
    for _ in range(BATCH + 10):
        route.answered("POST", "200", 0.003)
    metrics.refused("gemini", "circuit_open")
    metrics.refused("gemini", "circuit_open")
    metrics.refused("gemini", "overloaded")
    assert len(metrics._answers) == 10  # the first BATCH were applied when the batch filled
    found = samples(metrics)
    labels = (("code", "200"), ("method", "POST"), ("route", "generate"), ("upstream", "gemini"))
    assert found["egress_requests_total", labels] == BATCH + 10
    bucket = (("le", "0.005"), ("route", "generate"), ("upstream", "gemini"))
    assert found["egress_request_duration_seconds_bucket", bucket] == BATCH + 10
    assert found["egress_rejected_total", (("reason", "circuit_open"), ("upstream", "gemini"))] == 2
    assert found["egress_rejected_total", (("reason", "overloaded"), ("upstream", "gemini"))] == 1
    assert samples(metrics)["egress_requests_total", labels] == BATCH + 10  # applied once, not again


def test_any_reader_of_the_registry_sees_the_waiting_notes():
    metrics = Metrics()
    metrics.route("supabase", "default").answered("GET", "200", 0.01)
    labels = {"upstream": "supabase", "route": "default", "method": "GET", "code": "200"}
    assert metrics.registry.get_sample_value("egress_requests_total", labels) == 1.0
