"""A real headless browser for page tests: Debian's `chromium`, driven over the Chrome DevTools Protocol with
aiohttp's WebSocket client (a dependency already), so no WebDriver layer or extra package is needed.

`make test` installs chromium where apt-get can (`make tools`). Where it is missing the browser tests skip, loudly;
with `REQUIRE_BROWSER=1` (as `.ci/run` sets) they fail instead.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest


def chromium_binary() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        reason = "chromium is not installed (make tools, or apt-get install chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(f"BROWSER TESTS SKIPPED: {reason} (set REQUIRE_BROWSER=1 to make this a failure)")
    return found


class Page:
    """One tab, spoken to over its DevTools WebSocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call, "method": method, "params": params}))
        async for message in self._ws:  # events arrive in between: skip them, answer the call
            data = json.loads(message.data)
            if data.get("id") == call:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                return dict(data.get("result", {}))
        raise RuntimeError("the browser closed its DevTools connection")

    async def goto(self, url: str) -> None:
        went = await self.send("Page.navigate", url=url)
        if went.get("errorText"):
            raise RuntimeError(f"could not load {url}: {went['errorText']}")
        await self.wait_for("document.readyState === 'complete'")

    async def violations(self) -> list[str]:
        """What the page's Content-Security-Policy refused so far (recorded from before the page's first script)."""
        return list(await self.evaluate("window.__cspViolations || []"))

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, within: float = 10.0) -> float:
        """Poll `expression` until it is truthy, `within` seconds at most; the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(within):
                while True:  # the page's state is in the browser: nothing here to wait on but a poll
                    if await self.evaluate(expression):
                        break
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise TimeoutError(f"still false after {within}s: {expression}") from None
        return loop.time() - started

    async def screenshot(self, width: int = 1400, height: int = 1000) -> bytes:
        """The page as a PNG."""
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                        mobile=False)
        shot = await self.send("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


# Runs in every document before its own scripts: a refused script or style would otherwise only look unstyled.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__cspViolations.push(e.violatedDirective + " " + (e.blockedURI || "inline")));
"""


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Page]:
    """A fresh headless chromium with one blank tab; stopped (and its profile removed) afterwards."""
    binary = chromium_binary()
    with tempfile.TemporaryDirectory(prefix="egress-chromium-") as profile:
        process = await asyncio.create_subprocess_exec(
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
            "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        drain: asyncio.Task[None] | None = None
        try:
            port = await _devtools_port(process)
            assert process.stderr is not None  # keep draining it, or a chatty browser blocks on a full pipe
            drain = asyncio.create_task(_drain(process.stderr))
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    tabs = await resp.json()
                target = next(t for t in tabs if t.get("type") == "page")
                async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 2**20) as ws:
                    page = Page(ws)
                    await page.send("Page.enable")
                    await page.send("Page.addScriptToEvaluateOnNewDocument", source=RECORD_CSP_VIOLATIONS)
                    yield page
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
            if drain is not None:
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain


async def _devtools_port(process: asyncio.subprocess.Process) -> int:
    """Chromium prints `DevTools listening on ws://127.0.0.1:<port>/...` once it listens."""
    assert process.stderr is not None
    async with asyncio.timeout(30):
        while line := await process.stderr.readline():
            found = re.search(rb"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                return int(found.group(1))
    raise RuntimeError(f"chromium exited ({process.returncode}) before listening for DevTools")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
