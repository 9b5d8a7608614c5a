"""The data path, top to bottom: every proxied request crosses `CHAIN`, in this order.

    route         /<upstream>/<path> + METHOD glob -> Route              (404 no_route, 400/405 bad_request)
    breaker gate  an open breaker answers at once, unless the cache may   (503 circuit_open)
    deadline      the route's total, shortened by X-Egress-Timeout; it starts before the cache lookup
    cache         a HIT answers here; identical concurrent misses wait for one fetch (single-flight);
                  the rest fetch below, then store, or serve STALE for a failure; a 2xx write invalidates
    pace          rate_limit: one turn of each limit, keyed by captures, headers, body; waits for it (FIFO
                  per key, within `wait` and the deadline) or 503 rate_limited, never sent; shared in Redis
    bulkhead      a slot in the upstream's limits, held until the body went through (503 overloaded, 504)
    body          buffered up to retry.max_body so it can be replayed, else streamed  (413, 408, 417)
    retry         backoff, budget, Retry-After/throttle, idempotency rule; stops when the breaker opens
    hedge         an idempotent attempt unanswered after `hedge.after` gets a twin; the first answer wins
    attempt       the breaker admits it (the half-open trial), one request upstream, the outcome settled on
                  the breaker                                             (504 timeout, 502 connect_error/reset)

Why `pace` sits there: below the cache, since a HIT goes nowhere and must take no turn; above the bulkhead, since a
request waiting for its turn (seconds, for a recipient's pair limit) must not hold one of the upstream's slots: at
`max_concurrent` waiting sends for one busy recipient would starve every other recipient, whose turns are now.
Keys that read the body (`{body.to}`) need it before the bulkhead, so on those routes only the pace stage reads
it (`stages.body.read_body`) and `body` finds it read: every other route keeps its body unread until it has a slot
(`100 Continue` after the refusals). Above the retry loop, one turn per request: its retries of a throttled send
reuse it (the provider refused that send), while the throttle's delay holds the request's keys everywhere.

Around the chain, this file does two things only: `respond` (stream the upstream's answer through, write a
stored one, or render the EgressError) and `account` (one access-log line and the metrics, in batches:
`proxy.account`). Each stage is one module under `proxy/stages/` with one interface (`proxy.exchange.Stage`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

from aiohttp import web

from proxy.account import Ledger
from proxy.errors import EgressError, Unavailable
from proxy.exchange import Answer, Exchange, Next, Reply, Stage, Stored
from proxy.headers import REQUEST_ID, request_id
from proxy.logs import AccessEntry, redact_target
from proxy.respond import entry_response, error_response, send_answer
from proxy.runtime import LiveRuntime
from proxy.stages.attempt import AttemptStage
from proxy.stages.body import BodyStage
from proxy.stages.breaker import BreakerStage
from proxy.stages.bulkhead import BulkheadStage
from proxy.stages.cache import CacheStage
from proxy.stages.deadline import DeadlineStage
from proxy.stages.hedge import HedgeStage
from proxy.stages.pace import PaceStage
from proxy.stages.retry import RetryStage
from proxy.stages.route import RouteStage

CHAIN: tuple[Stage, ...] = (
    RouteStage(),
    BreakerStage(),
    DeadlineStage(),
    CacheStage(),
    PaceStage(),
    BulkheadStage(),
    BodyStage(),
    RetryStage(),
    HedgeStage(),
    AttemptStage(),
)


def chain(stages: Sequence[Stage]) -> Next:
    """`stages` as one `Next`: each stage is called with the rest of the chain as its `next`."""

    async def end(ex: Exchange) -> Reply:
        raise AssertionError("the last stage answers without calling next")

    link: Next = end
    for stage in reversed(stages):
        link = functools.partial(stage.__call__, next=link)  # a C-level partial: no extra Python frame per stage
    return link


class Pipeline:
    def __init__(self, live: LiveRuntime, stages: Sequence[Stage] = CHAIN) -> None:
        self.live = live
        # The metrics and the traffic summaries live as long as the process: reloads keep them.
        self.ledger = Ledger(live.runtime.metrics, live.runtime.traffic)
        self._first = chain(stages)
        self.active = 0  # requests in flight, for a graceful stop
        self._drained: asyncio.Event | None = None

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        ex = Exchange(request, self.live.runtime, request_id(request.headers.get(REQUEST_ID)), request.method,
                      time.monotonic())
        self.active += 1
        try:
            try:
                reply = await self._first(ex)
            except EgressError as error:  # a stage may raise its refusal rather than return it
                reply = error
            return await self._respond(ex, reply)
        except asyncio.CancelledError:
            ex.broken = "client_disconnected"  # the caller hung up; its upstream call was cancelled
            raise
        finally:
            if ex.after is not None:
                for then in ex.after:  # even for a caller that left: a single-flight always finishes
                    await then()
            self.active -= 1  # first: a failing access log must not keep a graceful stop waiting
            if self.active == 0 and self._drained is not None:
                self._drained.set()
            self._account(ex)

    async def drain(self, grace: float) -> bool:
        """Wait until no request is in flight, `grace` seconds at most; whether none is left."""
        if self.active == 0:
            return True
        self._drained = asyncio.Event()
        try:
            async with asyncio.timeout(grace):
                await self._drained.wait()
        except TimeoutError:
            return False
        return True

    # -- respond ------------------------------------------------------------------------------------------

    async def _respond(self, ex: Exchange, reply: Reply) -> web.StreamResponse:
        if isinstance(reply, Answer):
            return await self._stream(ex, reply)
        if isinstance(reply, Stored):
            ex.cache = reply.result
            ex.status = reply.entry.status
            stored = entry_response(reply.entry, ex.method, ex.reply_headers())
            ex.sent = len(stored.body) if isinstance(stored.body, bytes) else 0
            return stored
        return self._refuse(ex, reply)

    async def _stream(self, ex: Exchange, answer: Answer) -> web.StreamResponse:
        assert ex.target is not None and ex.deadline is not None
        ex.status = answer.status
        try:
            response, delivery = await send_answer(
                ex.request, answer, ex.reply_headers(), max(ex.deadline.remaining(), 0.001), answer.prefix,
                ex.target.route.timeouts.read,
            )
        finally:
            answer.close()  # a no-op for a connection released to the pool; gives back what the answer holds
        ex.sent, ex.broken = delivery.sent, delivery.broken
        if ex.broken and ex.broken != "client_disconnected":
            ex.error = ex.broken
            metrics = ex.runtime.metrics
            metrics.child(metrics.upstream_errors, ex.target.upstream.name, ex.broken).inc()
        return response

    @staticmethod
    def _refuse(ex: Exchange, error: EgressError) -> web.Response:
        ex.status = error.status
        ex.error = error.reason
        ex.detail = error.detail
        if isinstance(error, Unavailable) and ex.target is not None:
            ex.runtime.metrics.refused(ex.target.upstream.name, error.reason)
        response = error_response(error, ex.reply_headers())
        ex.sent = 0 if ex.method == "HEAD" else response.content_length or 0
        return response

    # -- account ------------------------------------------------------------------------------------------

    def _account(self, ex: Exchange) -> None:
        target = ex.target
        upstream, route = (target.upstream.name, target.route.name) if target is not None else ("", "")
        status = 499 if ex.broken == "client_disconnected" else ex.status
        path = ex.request.raw_path
        if "?" in path:
            bare, _, query = path.partition("?")
            path = redact_target(bare, query, ex.runtime.policy.redact.query)
        self.ledger.record(
            AccessEntry(
                ex.request_id, upstream, route, ex.method, path, status, (time.monotonic() - ex.started) * 1000,
                ex.sent, ex.attempts, ex.error, ex.cache, ex.hedges, ex.detail,
            )
        )
