"""The bot: load a conversation, have Gemini write the reply, send it with WhatsApp.

Used by `POST /bot/reply` (a user asks) and after an inbound webhook message (in the background, so
WhatsApp gets its 200 as soon as the message is stored). Every failure is counted by stage in
`inbox_bot_reply_failures_total{stage}`; in the background it is logged, never raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Literal, TypeVar

from inbox_backend.conversations import send_text
from inbox_backend.database import Row
from inbox_backend.errors import DELIVERY_UNKNOWN, RETRY_AFTER, ApiError
from inbox_backend.gemini import conversation_contents
from inbox_backend.metrics import Metrics
from inbox_backend.settings import Settings
from inbox_backend.state import Clients

log = logging.getLogger("inbox.bot")

Stage = Literal["load", "generate", "send"]
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    conversation: Row
    account: Row
    contact: Row
    profile: Row | None
    history: list[Row]

    @property
    def auto_reply(self) -> bool:
        """The account's bot switch and the profile's must both be on for unprompted replies."""
        return bool(self.account.get("bot_enabled")) and self.profile is not None and bool(self.profile.get("enabled"))


class Bot:
    def __init__(self, clients: Clients, settings: Settings, metrics: Metrics) -> None:
        self.clients = clients
        self.settings = settings
        self.metrics = metrics

    async def load(self, conversation_id: int) -> Context:
        db = self.clients.db
        conversation = await self._stage("load", db.conversation(conversation_id))
        # Independent reads: one round trip's time, not four.
        account, contact, profile, history = await self._stage(
            "load",
            asyncio.gather(
                db.account(conversation["account_id"]),
                db.contact(conversation["contact_id"]),
                db.bot_profile(conversation["account_id"]),
                db.recent_messages(conversation_id, self.settings.history_limit),
            ),
        )
        return Context(conversation, account, contact, profile, history)

    async def generate(self, ctx: Context) -> str:
        if ctx.profile is None:
            raise ApiError(404, "bot_profile_not_found", detail=f"account {ctx.account['id']} has no bot profile")
        if not conversation_contents(ctx.history):
            raise ApiError(409, "nothing_to_reply_to", detail="the conversation has no text message yet")
        model = str(ctx.profile.get("model") or self.settings.gemini_model)
        prompt = str(ctx.profile.get("system_prompt") or "")
        return await self._stage("generate", self.clients.gemini.generate(model, prompt, ctx.history))

    async def send(self, ctx: Context, text: str, rate_limited_retry_within: float = 0.0) -> Row:
        """`rate_limited_retry_within`: how long a send refused `rate_limited` may wait to go once more."""
        c = self.clients
        return await self._stage(
            "send", send_text(c.db, c.whatsapp, ctx.account, ctx.contact, ctx.conversation["id"], text,
                              rate_limited_retry_within)
        )

    async def auto_reply(self, conversation_id: int) -> None:
        """Background reply to an inbound message: failures are counted and logged, never raised. An unavailable
        upstream before the send (a 503: Gemini down, its breaker open) is waited out, within
        `settings.reply_retry_for`; the send is tried once, or twice when the sidecar refused the first
        `rate_limited` (never sent) and its Retry-After fits in what is left of that budget."""
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.settings.reply_retry_for
        try:
            while True:
                try:
                    ctx = await self.load(conversation_id)
                    if not ctx.auto_reply:
                        return
                    text = await self.generate(ctx)
                except ApiError as exc:
                    wait = self._retry_wait(exc)
                    if wait is None or loop.time() + wait > give_up_at:
                        raise
                    log.info("bot reply to conversation %s: %s, trying again in %.1fs request_id=%s",
                             conversation_id, exc.code, wait, self.clients.caller.request_id)
                    await asyncio.sleep(wait)
                    continue
                await self.send(ctx, text, rate_limited_retry_within=give_up_at - loop.time())
                return
        except ApiError as exc:
            log.warning(
                "bot reply to conversation %s failed: %d %s (%s) request_id=%s",
                conversation_id, exc.status, exc.code, exc.detail, self.clients.caller.request_id,
            )
        except Exception:
            self.metrics.bot_reply_failures.labels("internal").inc()
            log.exception("bot reply to conversation %s crashed", conversation_id)

    def _retry_wait(self, error: ApiError) -> float | None:
        """How long to wait before trying a failed reply again, or None: only an unavailable upstream is waited out."""
        if error.status != 503:
            return None
        advised = error.headers.get(RETRY_AFTER)
        seconds = float(advised) if advised is not None and advised.isascii() and advised.isdigit() else 1.0
        return min(max(seconds, 0.1), self.settings.reply_retry_interval)

    async def _stage(self, stage: Stage, work: Awaitable[T]) -> T:
        try:
            return await work
        except ApiError as exc:
            if exc.code == DELIVERY_UNKNOWN:  # maybe delivered: not a failure, counted apart
                self.metrics.ambiguous_sends.inc()
            else:
                self.metrics.bot_reply_failures.labels(stage).inc()
            raise

