"""Circuit breakers: open after N counted failures, fail fast without touching the upstream, probe back with
exactly one trial, and let an operator see and override them."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import pytest

from proxy.errors import CircuitOpen
from tests.proxy.test_admin import sample
from tests.support.upstream import delay, reset_after_body, respond


def policy(url: str, breaker: str = "failures: 3, reset_after: 300ms", attempts: int = 1, admin: str = "") -> str:
    return f"""
    {admin}
    upstreams:
      gemini:
        url: {url}
        timeouts: {{read: 2s}}
        retry: {{attempts: {attempts}, backoff: {{base: 10ms, max: 50ms}}, budget: {{ratio: 1, min_per_second: 100}}}}
        breaker: {{{breaker}}}
        routes:
          - name: generate
            match: POST /v1beta/models/*:generateContent
            idempotent: true
          - name: models
            match: GET /v1beta/models
            breaker: {{failures: 1, reset_after: 30s}}
    """


async def call(client: aiohttp.ClientSession, url: str, method: str = "GET", **kw) -> tuple[int, dict[str, str]]:
    async with client.request(method, url, **kw) as resp:
        await resp.read()
        return resp.status, dict(resp.headers)


async def open_it(client, url: str, times: int = 3) -> None:
    for _ in range(times):
        status, _ = await call(client, url)
        assert status == 500


async def test_opens_after_consecutive_failures_and_fails_fast_without_the_upstream(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 30s"))
    await open_it(client, sc.url + "/gemini/x")
    reached = len(upstream.requests)
    started = time.monotonic()
    status, headers = await call(client, sc.url + "/gemini/x")
    took = time.monotonic() - started
    assert status == 503
    assert headers["X-Egress-Error"] == "circuit_open"
    assert 28 <= int(headers["Retry-After"]) <= 30
    assert took < 0.05  # generous bound for "under 10 ms" measured inside a test client
    assert len(upstream.requests) == reached


async def test_a_success_resets_the_consecutive_count(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream.url))
    upstream.script(respond(500), respond(500), respond(200), respond(500), respond(500))
    for _ in range(5):
        await call(client, sc.url + "/gemini/x")
    upstream.default = respond(200)
    status, _ = await call(client, sc.url + "/gemini/x")
    assert status == 200


async def test_4xx_never_counts_unless_listed(upstream, make_sidecar, client):
    upstream.default = respond(404)
    sc = await make_sidecar(policy(upstream.url, "failures: 2, reset_after: 30s"))
    for _ in range(5):
        assert (await call(client, sc.url + "/gemini/x"))[0] == 404
    upstream.default = respond(401)
    sc2 = await make_sidecar(policy(upstream.url, "failures: 2, reset_after: 30s, count: [401]"))
    for _ in range(2):
        assert (await call(client, sc2.url + "/gemini/x"))[0] == 401
    assert (await call(client, sc2.url + "/gemini/x"))[0] == 503


async def test_half_open_lets_exactly_one_trial_through_then_closes(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url))
    await open_it(client, sc.url + "/gemini/x")
    await asyncio.sleep(0.35)
    upstream.default = delay(0.3, respond(200, b"back"))
    before = len(upstream.requests)
    results = await asyncio.gather(*(call(client, sc.url + "/gemini/x") for _ in range(5)))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200, 503, 503, 503, 503]
    assert len(upstream.requests) == before + 1
    assert sc.runtime.breakers["gemini"].state == "closed"
    assert (await call(client, sc.url + "/gemini/x"))[0] == 200


async def test_a_failed_trial_reopens_for_another_reset_after(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url))
    await open_it(client, sc.url + "/gemini/x")
    await asyncio.sleep(0.35)
    assert (await call(client, sc.url + "/gemini/x"))[0] == 500  # the trial
    before = len(upstream.requests)
    status, headers = await call(client, sc.url + "/gemini/x")
    assert status == 503 and headers["X-Egress-Error"] == "circuit_open"
    assert len(upstream.requests) == before
    assert sc.runtime.breakers["gemini"].state == "open"


async def test_a_retry_loop_stops_at_once_when_its_breaker_opens(upstream, make_sidecar, client):
    upstream.default = respond(503, b"overloaded upstream")
    sc = await make_sidecar(policy(upstream.url, "failures: 2, reset_after: 30s", attempts=5))
    async with client.get(sc.url + "/gemini/x") as resp:
        assert resp.status == 503
        assert "X-Egress-Error" not in resp.headers  # the upstream's last answer, not a synthetic one
        assert resp.headers["X-Egress-Attempts"] == "2"
        assert await resp.read() == b"overloaded upstream"
    assert len(upstream.requests) == 2


async def test_a_route_with_its_own_breaker_is_isolated(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url))
    assert (await call(client, sc.url + "/gemini/v1beta/models"))[0] == 500
    assert (await call(client, sc.url + "/gemini/v1beta/models"))[0] == 503  # gemini.models opened after 1
    upstream.default = respond(200)
    assert (await call(client, sc.url + "/gemini/other"))[0] == 200  # the upstream's breaker is untouched
    assert sc.runtime.breakers["gemini.models"].state == "open"
    assert sc.runtime.breakers["gemini"].state == "closed"


async def test_breakers_endpoint_shows_state_and_counts(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 30s"))
    await open_it(client, sc.url + "/gemini/x")
    await call(client, sc.url + "/gemini/x")
    async with client.get(sc.admin + "/breakers") as resp:
        breakers = await resp.json()
    gemini = breakers["gemini"]
    assert gemini["state"] == "open"
    assert gemini["threshold"] == 3
    assert gemini["consecutive_failures"] == 3
    assert gemini["counts"]["500"] == 3
    assert gemini["opened_at"] <= time.time() and gemini["retry_at"] > time.time() + 25
    assert breakers["gemini.models"]["state"] == "closed"
    async with client.get(sc.admin + "/upstreams") as resp:
        upstreams = await resp.json()
    assert upstreams["gemini"]["breaker"] == "open"
    assert upstreams["gemini"]["error_rate_1m"] == 1.0


async def test_breaker_metrics_and_transition_log(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.WARNING, logger="egress.breaker")
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 30s"))
    await open_it(client, sc.url + "/gemini/x")
    await call(client, sc.url + "/gemini/x")
    async with client.get(sc.admin + "/metrics") as resp:
        text = await resp.text()
    assert sample(text, "egress_breaker_state", breaker="gemini") == 2
    assert sample(text, "egress_breaker_state", breaker="gemini.models") == 0
    assert sample(text, "egress_breaker_transitions_total", breaker="gemini", to="open") == 1
    assert sample(text, "egress_rejected_total", upstream="gemini", reason="circuit_open") == 1
    opened = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Circuit breaker OPEN for gemini")]
    assert opened[0].startswith("Circuit breaker OPEN for gemini after 3 failures")
    assert "request_id=" in opened[0]  # the request whose failure opened it


async def test_an_open_breaker_due_for_its_trial_reads_as_due_without_traffic(upstream, make_sidecar, client):
    # pybreaker only turns half-open when a request arrives: the gauge (and so EgressBreakerOpen) must not say
    # "open" for as long as no traffic comes after the retry time.
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 200ms"))
    await open_it(client, sc.url + "/gemini/x")
    async with client.get(sc.admin + "/metrics") as resp:
        assert sample(await resp.text(), "egress_breaker_state", breaker="gemini") == 2
    await asyncio.sleep(0.4)
    async with client.get(sc.admin + "/metrics") as resp:
        assert sample(await resp.text(), "egress_breaker_state", breaker="gemini") == 1
    async with client.get(sc.admin + "/breakers") as resp:
        gemini = (await resp.json())["gemini"]
    assert (gemini["state"], gemini["phase"], gemini["retry_in_seconds"]) == ("open", "due", 0)


async def test_an_operators_open_says_so_and_shows_no_retry_time(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.WARNING, logger="egress.breaker")
    upstream.default = respond(200)
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 200ms"))
    async with client.post(sc.admin + "/breakers/gemini/open") as resp:
        assert resp.status == 200
    await asyncio.sleep(0.4)  # past reset_after: an operator's open holds anyway
    async with client.get(sc.admin + "/breakers") as resp:
        gemini = (await resp.json())["gemini"]
    assert (gemini["phase"], gemini["retry_at"], gemini["retry_in_seconds"]) == ("forced_open", None, None)
    async with client.get(sc.admin + "/metrics") as resp:
        assert sample(await resp.text(), "egress_breaker_state", breaker="gemini") == 2
    messages = [r.getMessage() for r in caplog.records]
    assert "Circuit breaker OPEN for gemini by an operator (holds until closed)" in messages
    assert not any("after 0 failures" in m for m in messages)


async def test_operator_overrides_need_the_token_when_one_is_set(upstream, make_sidecar, client):
    upstream.default = respond(200)
    sc = await make_sidecar(policy(upstream.url, admin="admin: {listen: 127.0.0.1:0, token: op-token}"))
    async with client.post(sc.admin + "/breakers/gemini/open") as resp:
        assert resp.status == 401
    async with client.post(sc.admin + "/breakers/gemini/open", headers={"Authorization": "Bearer wrong"}) as resp:
        assert resp.status == 401
    assert (await call(client, sc.url + "/gemini/x"))[0] == 200
    auth = {"Authorization": "Bearer op-token"}
    async with client.post(sc.admin + "/breakers/gemini/open", headers=auth) as resp:
        assert resp.status == 200 and (await resp.json())["state"] == "open"
    status, headers = await call(client, sc.url + "/gemini/x")
    assert status == 503 and headers["X-Egress-Error"] == "circuit_open"
    await asyncio.sleep(0.35)  # past reset_after: an operator's open still holds
    assert (await call(client, sc.url + "/gemini/x"))[0] == 503
    async with client.post(sc.admin + "/breakers/gemini/close", headers=auth) as resp:
        assert (await resp.json())["state"] == "closed"
    assert (await call(client, sc.url + "/gemini/x"))[0] == 200
    async with client.post(sc.admin + "/breakers/nope/open", headers=auth) as resp:
        assert resp.status == 404
    async with client.get(sc.admin + "/breakers") as resp:  # read-only stays open
        assert resp.status == 200


async def test_overrides_work_without_a_token_when_none_is_set(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 30s"))
    await open_it(client, sc.url + "/gemini/x")
    async with client.post(sc.admin + "/breakers/gemini/reset") as resp:
        snapshot = await resp.json()
    assert snapshot["state"] == "closed" and snapshot["counts"] == {}
    upstream.default = respond(200)
    assert (await call(client, sc.url + "/gemini/x"))[0] == 200


async def test_connect_errors_and_timeouts_count(make_sidecar, client):
    from tests.support.upstream import free_port

    sc = await make_sidecar(policy(f"http://127.0.0.1:{free_port()}", "failures: 2, reset_after: 30s"))
    for _ in range(2):
        assert (await call(client, sc.url + "/gemini/x"))[0] == 502
    status, headers = await call(client, sc.url + "/gemini/x")
    assert status == 503 and headers["X-Egress-Error"] == "circuit_open"




async def test_a_probe_from_before_an_operator_close_does_not_settle_a_later_half_open(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream.url, "failures: 1, reset_after: 200ms"))
    url = sc.url + "/gemini/x"
    breaker = sc.runtime.breakers["gemini"]
    upstream.script(respond(500))
    assert (await call(client, url))[0] == 500  # open
    await asyncio.sleep(0.25)
    upstream.script(delay(1.0, respond(200)))
    first_probe = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.1)
    assert breaker.state == "half-open"
    async with client.post(sc.admin + "/breakers/gemini/close") as resp:
        assert resp.status == 200
    upstream.script(respond(500))
    assert (await call(client, url))[0] == 500  # open again
    await asyncio.sleep(0.25)
    upstream.script(delay(1.2, respond(200)))
    second_probe = asyncio.create_task(call(client, url))
    await asyncio.sleep(0.1)
    assert breaker.state == "half-open"
    assert (await first_probe)[0] == 200  # settles now: it says nothing about this half-open period
    upstream.default = respond(200)
    status, headers = await call(client, url)
    assert (status, headers.get("X-Egress-Error")) == (503, "circuit_open")  # the second probe is still out
    assert (await second_probe)[0] == 200
    assert breaker.state == "closed"


async def test_retry_after_counts_down_to_the_trial(upstream, make_sidecar, client):
    # The refusal is made once per open period; its Retry-After must still be the time left, not the time
    # left when it was made.
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, "failures: 1, reset_after: 3s"))
    assert (await call(client, sc.url + "/gemini/x"))[0] == 500
    status, headers = await call(client, sc.url + "/gemini/x")
    assert (status, headers["Retry-After"]) == (503, "3")
    await asyncio.sleep(1.1)
    status, headers = await call(client, sc.url + "/gemini/x")
    assert (status, headers["Retry-After"]) == (503, "2")


async def test_the_shared_refusal_is_only_ever_rendered_never_raised(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, "failures: 1, reset_after: 30s", attempts=3))
    breaker = sc.runtime.breakers["gemini"]
    assert (await call(client, sc.url + "/gemini/x"))[0] == 500  # opened by the first attempt; no retry
    shared = breaker.refusal()
    assert shared is not None and shared.detail == "breaker gemini is open"
    for _ in range(3):
        status, headers = await call(client, sc.url + "/gemini/x")
        assert (status, headers["X-Egress-Error"]) == (503, "circuit_open")
    assert breaker.refusal() is shared
    with pytest.raises(CircuitOpen) as raised:
        breaker.check_open()  # the retry loop's check raises one of its own
    assert raised.value is not shared
    assert shared.__traceback__ is None  # a raised, shared exception would collect tracebacks


async def test_an_operators_open_refuses_with_its_own_detail_and_the_policy_wait(upstream, make_sidecar, client):
    upstream.default = respond(200)
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 2s"))
    async with client.post(sc.admin + "/breakers/gemini/open") as resp:
        assert resp.status == 200
    for _ in range(2):
        async with client.get(sc.url + "/gemini/x") as resp:
            assert (resp.status, resp.headers["Retry-After"]) == (503, "2")
            assert (await resp.json())["detail"] == "breaker gemini was opened by an operator"
        await asyncio.sleep(1.1)  # no trial is due while an operator holds it: the advice stays the policy's wait
    assert len(upstream.requests) == 0


async def test_a_refusals_access_line_counts_the_body_it_sent_and_none_for_head(upstream, make_sidecar, client, caplog):
    caplog.set_level(logging.INFO, logger="egress.access")
    sc = await make_sidecar(policy(upstream.url, "failures: 3, reset_after: 30s"))
    async with client.post(sc.admin + "/breakers/gemini/open") as resp:
        assert resp.status == 200
    async with client.get(sc.url + "/gemini/x") as resp:
        sent = len(await resp.read())
    async with client.head(sc.url + "/gemini/x") as resp:
        assert resp.status == 503 and await resp.read() == b""
    sc.settle()
    lines = [r.getMessage() for r in caplog.records if r.name == "egress.access"]
    assert [line.split(" bytes=")[1].split()[0] for line in lines] == [str(sent), "0"]
    assert sent > 0 and all("egress_error=circuit_open" in line for line in lines)


async def test_resets_count_by_default_so_a_whatsapp_that_resets_every_send_opens_its_breaker(
    upstream, make_sidecar, client
):
    upstream.default = reset_after_body()  # the body arrived (maybe processed), then the connection dropped
    sc = await make_sidecar(f"""
    upstreams:
      whatsapp:
        url: {upstream.url}
        breaker: {{failures: 3, reset_after: 30s}}
        routes:
          - name: send_message
            match: POST /v19.0/*/messages
    """)
    url = sc.url + "/whatsapp/v19.0/123/messages"
    for _ in range(3):
        status, headers = await call(client, url, "POST", data=b'{"to": "1"}')
        assert (status, headers["X-Egress-Error"]) == (502, "upstream_reset")  # never retried: it may have been sent
    assert len(upstream.requests) == 3
    status, headers = await call(client, url, "POST", data=b'{"to": "1"}')
    assert (status, headers["X-Egress-Error"]) == (503, "circuit_open")
    assert len(upstream.requests) == 3  # refused without touching the upstream
    assert sc.runtime.breakers["whatsapp"].outcomes["reset"] == 3


async def test_every_admin_action_writes_one_audit_line_with_its_origin_and_result(upstream, make_sidecar, client,
                                                                                   caplog):
    caplog.set_level(logging.WARNING, logger="egress.audit")
    upstream.default = respond(200)
    sc = await make_sidecar(policy(upstream.url, admin="admin: {listen: 127.0.0.1:0, token: op-token}"))
    auth = {"Authorization": "Bearer op-token"}
    async with client.post(sc.admin + "/breakers/gemini/open") as resp:
        assert resp.status == 401
    async with client.post(sc.admin + "/breakers/gemini/open", headers=auth) as resp:
        assert resp.status == 200
    async with client.delete(sc.admin + "/cache?upstream=gemini", headers=auth) as resp:
        assert resp.status == 200
    async with client.get(sc.admin + "/breakers") as resp:  # a read is not an action
        assert resp.status == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "egress.audit"]
    assert lines == [
        "admin POST /breakers/gemini/open from 127.0.0.1: 401 (unauthorized)",
        "admin POST /breakers/gemini/open from 127.0.0.1: 200",
        "admin DELETE /cache?upstream=gemini from 127.0.0.1: 200",
    ]
    assert "op-token" not in "".join(lines)
