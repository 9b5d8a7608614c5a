"""The status page in a real headless chromium (tests/support/browser.py): it renders the running sidecar, follows
a breaker opened through the admin API within one refresh, and its override buttons work with the token.

`STATUS_SCREENSHOT=docs/status-page.png pytest tests/e2e/test_status_browser.py` writes the README's picture from
this run."""

from __future__ import annotations

import os
from pathlib import Path

from proxy.status import REFRESH_SECONDS
from tests.support.browser import browser
from tests.support.upstream import respond

TOKEN = "browser-token"
PHASE = "document.querySelector('#upstream-{name}').dataset.phase"


def policy(gemini: str, whatsapp: str) -> str:
    return f"""
    listen: 127.0.0.1:0
    admin: {{listen: 127.0.0.1:0, token: {TOKEN}}}
    upstreams:
      gemini:
        url: {gemini}
        timeouts: {{read: 2s}}
        retry: {{attempts: 1}}
        breaker: {{failures: 3, reset_after: 30s}}
      whatsapp:
        url: {whatsapp}
        retry: {{attempts: 1}}
        routes:
          - name: media
            match: GET /v19.0/media/*
            cache: {{ttl: 5m}}
          - name: send
            match: POST /v19.0/{{phone_id}}/messages
            rate_limit:
              backend: memory
              wait: 1s
              limits:
                - {{name: number, key: "{{phone_id}}", rate: 80/s, burst: 80}}
                - {{name: pair, key: "{{phone_id}}:{{body.to}}", rate: 1/6s, burst: 3}}
    """


async def test_the_page_follows_a_breaker_opened_through_the_admin_api(make_upstream, make_sidecar, client):
    gemini, whatsapp = await make_upstream(), await make_upstream()
    gemini.default = respond(500, {"error": "model overloaded"})
    whatsapp.default = respond(200, "media bytes", {"Cache-Control": "max-age=60"})
    sc = await make_sidecar(policy(gemini.url, whatsapp.url))
    for i in range(2):  # some traffic, so the page has numbers and errors to show
        bot = sc.url + "/gemini/v1beta/models/m:generateContent"
        async with client.post(bot, headers={"X-Request-ID": f"bot-{i}"}):
            pass
    for _ in range(3):
        async with client.get(sc.url + "/whatsapp/v19.0/media/42"):
            pass
    for to in ("4915550001", "4915550001", "4915550002"):
        async with client.post(sc.url + "/whatsapp/v19.0/1234/messages", json={"to": to}):
            pass
    async with browser() as page:
        await page.goto(sc.admin + "/")
        await page.evaluate("window.__sameDocument = true")  # gone if anything reloads the page
        assert await page.evaluate(PHASE.format(name="gemini")) == "closed"
        assert "bot-1" in await page.evaluate("document.querySelector('#upstream-gemini').innerText")

        async with client.post(sc.admin + "/breakers/gemini/open", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        took = await page.wait_for(PHASE.format(name="gemini") + " === 'forced_open'", within=REFRESH_SECONDS * 3)
        assert took <= REFRESH_SECONDS + 1.0  # within one refresh (and the page was not reloaded to get there)
        assert await page.evaluate("window.__sameDocument === true")  # swapped in place, not reloaded
        text = await page.evaluate("document.body.innerText")
        assert "forced open by an operator" in text and "upstream_5xx" in text
        assert "Pacing" in await page.evaluate("document.querySelector('#upstream-whatsapp').innerText")

        if os.environ.get("STATUS_SCREENSHOT"):
            Path(os.environ["STATUS_SCREENSHOT"]).write_bytes(await page.screenshot())  # noqa: ASYNC240 (a test)

        # The page's own button closes it, with the token typed in.
        await page.evaluate(f"document.getElementById('token').value = {TOKEN!r}")
        await page.evaluate("document.querySelector('button[data-breaker=\"gemini\"][data-action=\"close\"]').click()")
        await page.wait_for(PHASE.format(name="gemini") + " === 'closed'", within=REFRESH_SECONDS * 3)
        assert sc.runtime.breakers["gemini"].state == "closed"
        assert "close gemini: 200" in await page.evaluate("document.getElementById('note').innerText")
        assert await page.violations() == []  # its own script and style ran under its CSP, nothing was refused


async def test_a_button_without_the_right_token_changes_nothing(make_upstream, make_sidecar):
    upstream = await make_upstream()
    sc = await make_sidecar(policy(upstream.url, upstream.url))
    async with browser() as page:
        await page.goto(sc.admin + "/")
        await page.evaluate("document.getElementById('token').value = 'wrong'")
        await page.evaluate("document.querySelector('button[data-breaker=\"gemini\"][data-action=\"open\"]').click()")
        await page.wait_for("document.getElementById('note').innerText.includes('401')")
        assert sc.runtime.breakers["gemini"].state == "closed"
