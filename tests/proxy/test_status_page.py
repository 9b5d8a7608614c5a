"""The status page (`GET /`) and its JSON twin (`GET /status`), against a running sidecar: each breaker state, the
last minute's traffic, the reload state, escaping, and override buttons only behind a token."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proxy import status as status_page
from tests.support.upstream import RawUpstream, delay, respond

TOKEN = "page-token"
ADMIN = f"listen: 127.0.0.1:0\n    admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}"


def policy(url: str, *, admin: str = "", breaker: str = "", limits: str = "", failures: int = 2) -> str:
    return f"""
    {admin}
    upstreams:
      api:
        url: {url}
        timeouts: {{read: 2s}}
        retry: {{attempts: 1}}
        breaker: {{failures: {failures}, reset_after: 300ms{breaker}}}
        limits: {{max_concurrent: 4, max_queue: 2{limits}}}
        routes:
          - name: cached
            match: GET /cached/*
            cache: {{ttl: 5m}}
    """


async def status(client, sc) -> dict[str, Any]:
    async with client.get(sc.admin + "/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def page(client, sc, part: str = "") -> str:
    async with client.get(sc.admin + "/" + part) as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        return await resp.text()


async def get(client, url: str, request_id: str | None = None) -> int:
    async with client.get(url, headers={"X-Request-ID": request_id} if request_id else {}) as resp:
        await resp.read()
        return resp.status


def phase_on_page(html: str, upstream: str = "api") -> str:
    found = re.search(rf'id="upstream-{upstream}" data-phase="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def test_status_reports_the_last_minute_by_reason_latency_and_cache_route(upstream, make_sidecar, client):
    upstream.script(respond(200, "fresh", {"Cache-Control": "max-age=60"}), respond(500), respond(500))
    upstream.default = respond(200)
    sc = await make_sidecar(policy(upstream.url, failures=9))
    assert await get(client, sc.url + "/api/cached/a") == 200  # MISS
    assert await get(client, sc.url + "/api/cached/a") == 200  # HIT
    assert await get(client, sc.url + "/api/boom", "boom-1") == 500
    assert await get(client, sc.url + "/api/boom", "boom-2") == 500
    assert await get(client, sc.url + "/api/ok") == 200
    api = (await status(client, sc))["upstreams"]["api"]
    minute = api["last_minute"]
    assert minute["requests"] == 5
    assert minute["errors"] == {"upstream_5xx": 2} and minute["error_rate"] == 0.4
    assert 0 < minute["p50_ms"] <= minute["p95_ms"]
    assert minute["cache"] == {"cached": {"served": 1, "lookups": 2, "hit_ratio": 0.5}}
    newest, older = minute["last_errors"]
    assert (newest["request_id"], newest["reason"], newest["status"], newest["route"]) == (
        "boom-2", "upstream_5xx", 500, "default")
    assert older["request_id"] == "boom-1"
    assert api["retry_budget"]["left"] > 0 and api["limits"] == {"max_concurrent": 4, "max_queue": 2}
    html = await page(client, sc)
    assert "boom-2" in html and "upstream_5xx 2" in html and "50%" in html


async def test_the_sidecars_own_error_detail_is_on_the_page(make_sidecar, client):
    sc = await make_sidecar(policy("http://127.0.0.1:9"))  # nothing listens on the discard port
    assert await get(client, sc.url + "/api/x", "refused-1") == 502
    [error] = (await status(client, sc))["upstreams"]["api"]["last_minute"]["last_errors"]
    assert error["reason"] == "upstream_connect_error" and "127.0.0.1:9" in error["detail"]
    assert "127.0.0.1:9" in await page(client, sc)


async def test_page_and_status_follow_the_breaker_through_each_state(upstream, make_sidecar, client):
    upstream.default = respond(500)
    sc = await make_sidecar(policy(upstream.url, admin=ADMIN))

    async def phases() -> tuple[str, str]:
        api = (await status(client, sc))["upstreams"]["api"]
        [breaker] = api["breaker_details"]
        assert api["breakers"] == {"api": breaker["state"]}  # the /upstreams shape, kept
        return breaker["phase"], phase_on_page(await page(client, sc))

    assert await phases() == ("closed", "closed")
    for _ in range(2):
        assert await get(client, sc.url + "/api/x") == 500
    assert await phases() == ("open", "open")
    await asyncio.sleep(0.4)  # past reset_after: the next request is the trial
    assert await phases() == ("due", "due")
    upstream.default = delay(1.0, respond(200))
    trial = asyncio.create_task(get(client, sc.url + "/api/x"))
    for _ in range(50):
        await asyncio.sleep(0.02)
        if (await phases())[0] == "half-open":
            break
    assert await phases() == ("half-open", "half-open")
    assert await trial == 200
    assert await phases() == ("closed", "closed")
    async with client.post(sc.admin + "/breakers/api/open", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
        assert r.status == 200
    assert await phases() == ("forced_open", "forced_open")
    assert "forced open by an operator" in await page(client, sc)


async def test_override_buttons_only_with_a_token(upstream, make_sidecar, client):
    without = await make_sidecar(policy(upstream.url))
    html = await page(client, without)
    assert "<button" not in html and 'id="token"' not in html
    assert (await status(client, without))["token_required"] is False
    with_token = await make_sidecar(policy(upstream.url, admin=ADMIN))
    html = await page(client, with_token)
    assert 'id="token"' in html and 'type="password"' in html
    assert {m for m in re.findall(r'data-breaker="api" data-action="(\w+)"', html)} == {"open", "close", "reset"}
    assert TOKEN not in html  # the page asks for it; it never carries it


async def test_observe_mode_is_marked(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream.url, breaker=", mode: observe", limits=", mode: observe"))
    api = (await status(client, sc))["upstreams"]["api"]
    assert api["observe"] == {"breakers": ["api"], "limits": True}
    html = await page(client, sc)
    assert "limits: observe only" in html and html.count("observe only") == 2
    plain = await make_sidecar(policy(upstream.url))
    assert "observe only" not in await page(client, plain)


async def test_the_reload_state_and_its_problems_are_shown(upstream, make_sidecar, client, tmp_path):
    sc = await make_sidecar(policy(upstream.url))
    from proxy.admin import ReloadResult  # the admin's record of an attempt, as SIGHUP and POST /reload make it

    assert sc.sidecar.admin_state is not None
    sc.sidecar.admin_state.note_reload(ReloadResult(False, ["p.yaml:3: timeouts.read: expected <a duration>"], []))
    report = await status(client, sc)
    assert report["policy"]["last_attempt"]["result"] == "refused"
    html = await page(client, sc)
    assert "refused" in html and "p.yaml:3: timeouts.read: expected &lt;a duration&gt;" in html


async def test_the_page_refreshes_its_main_part_and_allows_only_its_own_script(upstream, make_sidecar, client):
    sc = await make_sidecar(policy(upstream.url))
    async with client.get(sc.admin + "/") as resp:
        html = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
        assert resp.headers["Cache-Control"] == "no-store" and resp.headers["X-Content-Type-Options"] == "nosniff"
    [script] = re.findall(r"<script>(.*?)</script>", html, re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "frame-ancestors 'none'" in csp
    assert "src=" not in html and "href=\"http" not in html  # nothing loaded from elsewhere: works offline
    part = await page(client, sc, "?part=main")
    assert part.startswith("<p") and "<html" not in part and 'id="upstream-api"' in part


# -- escaping ----------------------------------------------------------------------------------------------------

HOSTILE = '<script>alert("x")</script>'


async def test_an_upstreams_lie_in_an_error_detail_is_escaped(make_sidecar, client):
    liar = await RawUpstream(f"HTTP/1.1 200 {HOSTILE}\r\nContent-Length: nope{HOSTILE}\r\n\r\n".encode()).start()
    try:
        sc = await make_sidecar(policy(liar.url))
        assert await get(client, sc.url + "/api/x", "lie-1") == 502
        [error] = (await status(client, sc))["upstreams"]["api"]["last_minute"]["last_errors"]
        assert "<script>" in error["detail"], error  # the upstream's bytes, as the JSON reports them
        html = await page(client, sc)
        assert "lie-1" in html and "<script>alert" not in html
    finally:
        await liar.stop()


def hostile_report(text: str) -> dict[str, Any]:
    """A /status report whose every caller- or upstream-supplied string is `text`."""
    error = {"at": text, "reason": text, "route": text, "status": 502, "request_id": text, "detail": text}
    breaker = {"name": text, "phase": "open", "consecutive_failures": 1, "threshold": 2, "retry_in_seconds": 1.0}
    minute = {"window_seconds": 60, "requests": 1, "rate_per_second": 0.02, "p50_ms": 1.0, "p95_ms": 1.0,
              "errors": {text: 1}, "error_rate": 1.0, "cache": {text: {"served": 1, "lookups": 1, "hit_ratio": 1.0}},
              "last_errors": [error]}
    upstream = {"inflight": 0, "queued": 0, "limits": {"max_concurrent": 1, "max_queue": 1},
                "breaker_details": [breaker],
                "observe": {"breakers": [text], "limits": True}, "retry_budget": {"left": 1, "allowance": 1,
                "window_seconds": 10}, "throttled_for_seconds": 0.0, "rate_limits": {
                    "limits": {text: {"rate": text, "burst": 1, "key": text, "backend": text, "routes": [text],
                                      "tokens": {text: 0.5}}},
                    "redis": {"state": text, "replicas": text}},
                "last_minute": minute}
    return {"version": text, "generated_at": text, "uptime_seconds": 1, "token_required": True,
            "policy": {"source": text, "policy_loaded_at": text,
                       "last_attempt": {"at": text, "result": "refused", "problems": [text], "notes": [text]}},
            "upstreams": {text: upstream}}


class Tags(HTMLParser):
    """The page's elements and which attributes each has: what a value breaking out of its place would change."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, tuple[str, ...]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, tuple(sorted(name for name, _ in attrs))))


def tags(html: str) -> list[tuple[str, tuple[str, ...]]]:
    parser = Tags()
    parser.feed(html)
    return parser.tags


def test_every_hostile_value_is_escaped():
    html = status_page.render_page(hostile_report(HOSTILE))
    assert HOSTILE not in html and html.count("&lt;script&gt;") >= 15
    assert [tag for tag, _ in tags(html)].count("script") == 1  # the page's own


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=40))
@example('" onmouseover="alert(1)')  # out of an attribute
@example("</td></tr></table><img src=x>")
def test_no_value_can_add_markup(text):
    # Whatever a value holds, the page has exactly the elements it has with a plain value in the same places.
    assert tags(status_page.render_page(hostile_report(text))) == tags(status_page.render_page(hostile_report("x")))


@pytest.mark.parametrize("phase", list(status_page.PHASE_TONE))
def test_each_phase_has_a_colour_and_a_text(phase):
    report = hostile_report("x")
    report["upstreams"]["x"]["breaker_details"][0]["phase"] = phase
    html = status_page.render_main(report)
    assert f'data-phase="{phase}"' in html and status_page.PHASE_TEXT[phase] in html


async def test_pacing_limits_and_their_tokens_are_on_the_page(upstream, make_sidecar, client):
    sc = await make_sidecar(f"""
    upstreams:
      whatsapp:
        url: {upstream.url}
        routes:
          - name: send
            match: POST /v19.0/{{phone_id}}/messages
            rate_limit:
              backend: memory
              wait: 1s
              limits: [{{name: number, key: "{{phone_id}}", rate: 5/s, burst: 5}}]
    """)
    for _ in range(3):
        async with client.post(sc.url + "/whatsapp/v19.0/1234/messages", json={"to": "1"}) as resp:
            assert resp.status == 200
    [limit] = (await status(client, sc))["upstreams"]["whatsapp"]["rate_limits"]["limits"].values()
    assert limit["rate"] == "5/s" and limit["routes"] == ["send"]
    [left] = limit["tokens"].values()
    assert 2 <= left < 3.5  # 3 of 5 taken, refilling at 5/s
    html = await page(client, sc)
    assert "<h3>Pacing</h3>" in html and "<td>number</td><td>5/s</td>" in html
