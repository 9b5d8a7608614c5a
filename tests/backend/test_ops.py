"""Operating the backend: /health from the sidecar's admin port, the breakers for admins, /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.backend.harness import ADMIN, USER, MakeStack, Stack


async def test_health_is_ok_with_every_breaker_closed(stack: Stack) -> None:
    status, body, _ = await stack.call("GET", "/health")
    assert (status, body["status"], body["sidecar"]["reachable"]) == (200, "ok", True)
    assert {u: info["breaker"] for u, info in body["upstreams"].items()} == {
        "gemini": "closed", "whatsapp": "closed", "whatsapp_media": "closed", "supabase": "closed",
    }


async def test_health_is_degraded_when_gemini_is_cut_off_and_down_without_the_database(stack: Stack) -> None:
    await stack.admin("POST", "/breakers/gemini/open")
    status, body, _ = await stack.call("GET", "/health")
    assert (status, body["status"], body["upstreams"]["gemini"]["breaker"]) == (200, "degraded", "open")
    await stack.admin("POST", "/breakers/supabase/open")
    status, body, _ = await stack.call("GET", "/health")
    assert (status, body["status"]) == (503, "down")


async def test_health_is_down_when_the_sidecar_is_unreachable(stack: Stack) -> None:
    assert stack.sidecar is not None
    await stack.sidecar.sidecar.stop()
    status, body, _ = await stack.call("GET", "/health")
    assert (status, body["status"], body["backend"], body["sidecar"]["reachable"]) == (503, "down", "ok", False)


async def test_health_in_direct_mode_does_not_ask_a_sidecar(make_stack: MakeStack) -> None:
    stack = await make_stack(mode="direct")
    status, body, _ = await stack.call("GET", "/health")
    assert (status, body["status"], body["egress_mode"]) == (200, "ok", "direct")


async def test_circuit_breakers_need_the_admin_permission(stack: Stack) -> None:
    status, body, _ = await stack.call("GET", "/admin/circuit-breakers")
    assert (status, body["error"]) == (401, "unauthorized")
    status, body, _ = await stack.call("GET", "/admin/circuit-breakers", headers=USER)
    assert (status, body["error"]) == (403, "forbidden")
    status, body, _ = await stack.call("GET", "/admin/circuit-breakers", headers=ADMIN)
    assert status == 200
    assert body["breakers"]["whatsapp"]["state"] == "closed"
    assert set(body["breakers"]) >= {"gemini", "whatsapp", "whatsapp_media", "supabase"}


async def test_metrics_label_routes_by_pattern_and_time_every_request(stack: Stack) -> None:
    for message_id in (1, 2, 999):
        await stack.call("GET", f"/messages/{message_id}", headers=USER)
    await stack.call("GET", "/no/such/path")
    async with stack.http.get(f"{stack.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        (s.labels["method"], s.labels["route"], s.labels["status"]): s.value
        for s in families["http_requests"].samples
        if s.name == "http_requests_total"
    }
    assert requests[("GET", "/messages/{id}", "200")] == 2
    assert requests[("GET", "/messages/{id}", "404")] == 1
    assert requests[("GET", "<unmatched>", "404")] == 1
    assert not any(route == "/messages/1" for _, route, _ in requests)
    buckets = [s for s in families["http_request_duration_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["route"] for s in buckets} >= {"/messages/{id}"}
    assert any(s.labels["le"] == "+Inf" and s.value == 3 for s in buckets if s.labels["route"] == "/messages/{id}")
    assert "inbox_bot_reply_failures" in families
    # the process's own figures and what build it is, for the dashboard's process panels and version labels
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    [build] = families["inbox_build_info"].samples
    assert build.labels["version"] and build.labels["python"]
