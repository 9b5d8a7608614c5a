"""The one object the app owns (under `APP`): settings, the shared session, metrics, background tasks.

Nothing else in the backend keeps state between requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from inbox_backend.database import Database
from inbox_backend.egress import Caller, Egress
from inbox_backend.gemini import Gemini
from inbox_backend.metrics import Metrics
from inbox_backend.settings import Settings
from inbox_backend.whatsapp import WhatsApp

log = logging.getLogger("inbox.app")


@dataclass(frozen=True)
class Clients:
    """The upstream clients for one request, all sending that request's id."""

    caller: Caller
    db: Database
    gemini: Gemini
    whatsapp: WhatsApp


class AppState:
    def __init__(self, settings: Settings, session: aiohttp.ClientSession, metrics: Metrics) -> None:
        self.settings = settings
        self.session = session
        self.metrics = metrics
        self.egress = Egress(settings, session)
        self._tasks: set[asyncio.Task[None]] = set()

    def clients(self, request_id: str) -> Clients:
        caller = Caller(self.egress, request_id)
        return Clients(caller, Database(caller), Gemini(caller), WhatsApp(caller, self.settings))

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` after the response is sent. Kept referenced (a bare task may be garbage-collected)."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace: float) -> None:
        """On shutdown: let bot replies in flight finish, within `grace` seconds, then cancel the rest."""
        if not self._tasks:
            return
        log.info("waiting up to %.0fs for %d background task(s)", grace, len(self._tasks))
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


APP = web.AppKey("inbox", AppState)
REQUEST_ID = web.RequestKey("request_id", str)


def app_state(request: web.Request) -> AppState:
    return request.app[APP]


def clients(request: web.Request) -> Clients:
    return app_state(request).clients(request[REQUEST_ID])
