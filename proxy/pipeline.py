"""The data path, top to bottom. Every proxied request crosses these stages in this order:

    route       /<upstream>/<path> + METHOD glob -> Route        (404 no_route, 400/405 bad_request)
    refuse      an open breaker answers at once, unless the cache may (503 circuit_open)
    cache       a HIT answers here, without an upstream slot; identical concurrent misses wait for one
                fetch (single-flight, within their own deadline); MISS / REFRESH / BYPASS go on
    deadline    the route's total, shortened by X-Egress-Timeout (a cacheable read's starts before its lookup)
    bulkhead    a slot in the upstream's limits                    (503 overloaded, 504 pool timeout)
    body        buffered up to retry.max_body so it can be replayed, else streamed  (413, 408 past the deadline)
    retry loop  backoff, budget, Retry-After/throttle, idempotency rule
      breaker     admit the attempt: the half-open trial, or stop when it opened (503 circuit_open)
      attempt     one request upstream, classified                 (504 timeout, 502 connect_error/reset)
    cache fill  store a cacheable answer; STALE instead of a failure; a 2xx write invalidates its path
    respond     stream the answer through, or render the EgressError
    account     one access-log line and the metrics, in batches (account.Ledger)

Each stage lives in its own module; this file only wires them.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from proxy.account import Ledger
from proxy.breaker import Trial
from proxy.cache import CACHE_HEADER, Entry, Lookup, ReadPlan, WritePlan
from proxy.deadline import CALLER_TIMEOUT_HEADER, Deadline
from proxy.errors import BadRequest, CircuitOpen, EgressError, RequestTimeout, Unavailable, UpstreamTimeout
from proxy.forward import Outgoing, RequestBody
from proxy.headers import REQUEST_ID, request_id
from proxy.logs import AccessEntry, redact_target
from proxy.policy import Route
from proxy.respond import entry_response, error_response, send_answer
from proxy.retry import IDEMPOTENCY_KEY, Answer, Outcome, RetryContext, RetryLoop, breaker_failure, is_idempotent
from proxy.routing import Target
from proxy.runtime import Runtime, UpstreamState

ATTEMPTS_HEADER = "X-Egress-Attempts"


@dataclass(slots=True)
class Exchange:
    """One request's record, filled in as it crosses the stages; logged and counted at the end."""

    request_id: str
    method: str
    started: float
    target: Target | None = None
    status: int = 0
    attempts: int = 0
    error: str | None = None
    cache: str | None = None
    sent: int = 0  # body bytes written to the caller
    broken: str | None = None  # who cut the response short, if anyone (see respond.Delivery)

    def reply_headers(self) -> dict[str, str]:
        headers = {REQUEST_ID: self.request_id}
        if self.attempts:
            headers[ATTEMPTS_HEADER] = str(self.attempts)
        if self.cache:
            headers[CACHE_HEADER] = self.cache
        return headers


# What becomes of the retry loop's final outcome: by default streamed through or raised; the cache stage
# passes its own (store, fall back to STALE, invalidate).
Finish = Callable[[web.BaseRequest, Exchange, Outcome, Deadline], Awaitable[web.StreamResponse]]


class Pipeline:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics
        self.ledger = Ledger(runtime.metrics)  # the metrics live as long as the process: reloads keep them
        self.active = 0  # requests in flight, for a graceful stop
        self._drained: asyncio.Event | None = None

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        ex = Exchange(request_id(request.headers.get(REQUEST_ID)), request.method, time.monotonic())
        try:
            target = ex.target = self.runtime.router.resolve(request.method, request.raw_path)
        except EgressError as error:
            return self._answer_now(request, ex, error)
        state = self.runtime.upstreams[target.upstream.name]
        refusal = self._refusal(request.method, target.route, state)
        if refusal is not None:
            return self._answer_now(request, ex, refusal)
        return await self._handle(request, ex, state)

    def _answer_now(self, request: web.BaseRequest, ex: Exchange, error: EgressError) -> web.Response:
        """A refusal decided before any work: it waits for nothing, so a graceful stop has nothing to drain."""
        response = self._refuse(error, ex)
        self._account(request, ex)
        return response

    async def _handle(self, request: web.BaseRequest, ex: Exchange, state: UpstreamState) -> web.StreamResponse:
        response: web.StreamResponse
        self.active += 1
        try:
            response = await self._cached(request, ex, state)
        except EgressError as error:
            response = self._refuse(error, ex)
        except asyncio.CancelledError:
            ex.broken = "client_disconnected"  # the caller hung up; its upstream call was cancelled
            raise
        finally:
            self.active -= 1  # first: a failing access log must not keep a graceful stop waiting
            if self.active == 0 and self._drained is not None:
                self._drained.set()
            self._account(request, ex)
        return response

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

    def _refusal(self, method: str, route: Route, state: UpstreamState) -> CircuitOpen | None:
        """While its breaker is open a request is refused before anything else (no cache plan, deadline or slot,
        and no exception: an outage is when refusals come by the thousand), unless the cache may answer it:
        a HIT, or STALE in place of this very refusal."""
        if self.runtime.cache.may_answer(route, method):
            return None
        return state.breaker_for(route).refusal()

    # -- cache: HIT, single-flight, STALE, store, invalidate --------------------------------------------

    async def _cached(self, request: web.BaseRequest, ex: Exchange, state: UpstreamState) -> web.StreamResponse:
        """A cacheable read is answered here, waits for an identical one, or goes upstream and fills the cache;
        a write that invalidates goes upstream and then invalidates; anything else goes straight on."""
        assert ex.target is not None
        cache = self.runtime.cache
        plan = cache.plan(ex.target, request.method, request.headers, self.runtime.policy.redact.query)
        if isinstance(plan, WritePlan):
            return await self._proxy(request, ex, state, functools.partial(self._invalidating, plan))
        if not isinstance(plan, ReadPlan):
            return await self._proxy(request, ex, state)
        # Started before the lookup: waiting for an identical request's fetch spends this request's time too.
        deadline = _deadline(request, ex.target.route)
        async with cache.lookup(plan, deadline) as lookup:
            ex.cache = lookup.result
            if lookup.ready is not None:
                return self._from_cache(request, ex, lookup, lookup.ready)
            if lookup.failed is not None:
                raise lookup.failed  # the identical request this one waited for failed, or outlasted our deadline
            try:
                # The refusal stage left an open breaker to the cache: it had no HIT, so the breaker refuses now,
                # before any deadline wait, slot or body read (and STALE may stand in for the refusal below).
                state.breaker_for(ex.target.route).check_open()
                return await self._proxy(request, ex, state, functools.partial(self._fill, lookup), deadline)
            except EgressError as error:
                stale = cache.fallback(lookup, error)
                if stale is None:
                    raise
                return self._from_cache(request, ex, lookup, stale)

    async def _fill(
        self, lookup: Lookup, request: web.BaseRequest, ex: Exchange, outcome: Outcome, deadline: Deadline
    ) -> web.StreamResponse:
        """The upstream's answer to a cacheable read: STALE instead of a 5xx, stored when the rules allow."""
        cache = self.runtime.cache
        if isinstance(outcome, EgressError):
            raise outcome
        # A throttled answer counts as the 429 it means (a WhatsApp 400 with code 130429 is not a bad request).
        if (stale := cache.fallback(lookup, 429 if outcome.throttled else outcome.status)) is not None:
            await outcome.discard(deadline)
            return self._from_cache(request, ex, lookup, stale)
        prefix, storing = b"", None
        if cache.storable(lookup, outcome.status, outcome.response.headers):
            body, prefix = await self._capture(request, ex, outcome, deadline)
            if body is not None:
                storing = cache.keep(lookup, outcome.status, outcome.response.headers, body)
        cache.release(lookup)
        try:
            return await self._respond(request, ex, outcome, deadline, prefix)
        finally:
            if storing is not None:
                # After the answer went out (a slow Redis delays nobody's response), but before this
                # connection's next request is read: the caller's next identical request finds it.
                await storing()

    async def _capture(
        self, request: web.BaseRequest, ex: Exchange, answer: Answer, deadline: Deadline
    ) -> tuple[bytes | None, bytes]:
        """(body to store, b"") when it fits in cache.max_body; else (None, what was read of it: to send first).

        What is captured (at most cache.max_body) must arrive within the deadline.
        """
        assert ex.target is not None
        if request.method == "HEAD":
            return b"", b""  # stored as headers alone; the answer itself streams through untouched
        if answer.body is not None:
            return answer.body, b""  # already read whole (the retry loop looked for a throttle signal in it)
        if answer.prefix:
            return None, answer.prefix  # ... or read in part: too large to have been one
        limit = self.runtime.cache.max_body
        length = answer.response.content_length
        if length is not None and length > limit:
            return None, b""
        # Within the deadline, a chunked body too: aiohttp's own `read` timer is not always there to end it (see
        # respond._pipe_stream), and what is captured is small (cache.max_body).
        within = max(deadline.remaining(), 0.001)
        data, complete = await answer.read_up_to(
            limit, within, ex.target.upstream.name, ex.target.route.timeouts, deadline
        )
        if not complete:
            return None, data
        answer.body = data
        return data, b""

    async def _invalidating(
        self, plan: WritePlan, request: web.BaseRequest, ex: Exchange, outcome: Outcome, deadline: Deadline
    ) -> web.StreamResponse:
        """A successful write makes the path's cached reads unreachable before the writer hears back."""
        if isinstance(outcome, Answer) and 200 <= outcome.status < 300:
            await self.runtime.cache.invalidate(plan, f"{request.method} {outcome.status}")
        return await self._deliver(request, ex, outcome, deadline)

    def _from_cache(self, request: web.BaseRequest, ex: Exchange, lookup: Lookup, entry: Entry) -> web.Response:
        ex.cache = lookup.result
        ex.status = entry.status
        response = entry_response(entry, request.method, ex.reply_headers())
        ex.sent = len(response.body) if isinstance(response.body, bytes) else 0
        return response

    # -- deadline, bulkhead, retry loop ----------------------------------------------------------------

    async def _proxy(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        state: UpstreamState,
        finish: Finish | None = None,
        deadline: Deadline | None = None,
    ) -> web.StreamResponse:
        assert ex.target is not None
        route = ex.target.route
        deadline = _deadline(request, route) if deadline is None else deadline
        gauge = state.inflight
        gauge.inc()
        try:
            async with state.bulkhead.slot(route.timeouts.pool, deadline):
                body = await self._read_body(request, state, route.retry.max_body, deadline)
                idempotent = is_idempotent(request.method, route, request.headers.get(IDEMPOTENCY_KEY))
                out = Outgoing(
                    request.method,
                    state.forwarder.url_for(ex.target.path, ex.target.query),
                    state.forwarder.headers_for(request.headers, ex.request_id),
                    body,
                    idempotent,
                )
                loop = RetryLoop(self._retry_context(request, ex, state, deadline, body, idempotent))
                try:
                    outcome = await loop.run(lambda trial: self._attempt(state, route, out, deadline, trial))
                finally:
                    ex.attempts = loop.ctx.attempts
                return await (finish or self._deliver)(request, ex, outcome, deadline)
        finally:
            gauge.dec()

    async def _deliver(
        self, request: web.BaseRequest, ex: Exchange, outcome: Outcome, deadline: Deadline
    ) -> web.StreamResponse:
        if isinstance(outcome, EgressError):
            raise outcome
        return await self._respond(request, ex, outcome, deadline)

    async def _read_body(
        self, request: web.BaseRequest, state: UpstreamState, replay_limit: int, deadline: Deadline
    ) -> RequestBody:
        """Within the deadline: a caller that stalls its body must not hold its bulkhead slot any longer."""
        name = state.upstream.name
        read = RequestBody.read(request, replay_limit, state.upstream.limits.max_request_body)
        try:
            if not request.body_exists:
                return await read  # nothing to wait for: no timer
            async with asyncio.timeout(max(deadline.remaining(), 0.001)):
                return await read
        except TimeoutError as exc:
            raise RequestTimeout(f"the request body did not arrive within {deadline.budget:g}s", upstream=name) from exc
        except (aiohttp.ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
            raise BadRequest(f"could not read the request body: {exc}", upstream=name) from exc
        except EgressError as error:
            error.upstream = error.upstream or name
            raise

    def _retry_context(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        state: UpstreamState,
        deadline: Deadline,
        body: RequestBody,
        idempotent: bool,
    ) -> RetryContext:
        assert ex.target is not None
        route = ex.target.route
        name = state.upstream.name
        return RetryContext(
            upstream=name,
            route=route,
            method=request.method,
            idempotent=idempotent,
            deadline=deadline,
            breaker=state.breaker_for(route),
            budget=state.budget,
            throttle=state.throttle,
            throttle_rules=state.upstream.throttle,
            body=body,
            metrics=self.metrics,
        )

    async def _attempt(
        self, state: UpstreamState, route: Route, out: Outgoing, deadline: Deadline, trial: Trial
    ) -> Outcome:
        breaker = trial.breaker
        try:
            response = await state.forwarder.send(out, route.timeouts, deadline)
        except EgressError as error:
            if error.callers_doing:  # its body (too large, cut short): no verdict on the upstream
                breaker.abandon(trial)
                return error
            if isinstance(error, UpstreamTimeout) and error.kind == "total" and (not error.sent or deadline.shortened):
                # The deadline was gone before anything was sent, or the caller chose to give up early:
                # neither is the upstream's doing, and one impatient caller must not open the breaker for all.
                breaker.abandon(trial)
            else:
                breaker.record(trial, breaker_failure(error, route))
            state.note_attempt(failed=True)
            self.metrics.child(self.metrics.upstream_errors, state.upstream.name, error.reason).inc()
            return error
        except BaseException:
            breaker.abandon(trial)
            raise
        answer = Answer(response)
        failure = breaker_failure(answer, route)
        breaker.record(trial, failure)
        state.note_attempt(failed=failure is not None or response.status >= 500)
        return answer

    async def _respond(
        self, request: web.BaseRequest, ex: Exchange, answer: Answer, deadline: Deadline, prefix: bytes = b""
    ) -> web.StreamResponse:
        assert ex.target is not None
        ex.status = answer.status
        try:
            response, delivery = await send_answer(
                request, answer, ex.reply_headers(), max(deadline.remaining(), 0.001), prefix or answer.prefix,
                ex.target.route.timeouts.read,
            )
        finally:
            answer.response.close()  # a no-op once released to the pool; frees it on any early exit
        ex.sent, ex.broken = delivery.sent, delivery.broken
        if ex.broken and ex.broken != "client_disconnected":
            ex.error = ex.broken
            self.metrics.child(self.metrics.upstream_errors, ex.target.upstream.name, ex.broken).inc()
        return response

    def _refuse(self, error: EgressError, ex: Exchange) -> web.Response:
        ex.status = error.status
        ex.error = error.reason
        if isinstance(error, Unavailable) and ex.target is not None:
            self.metrics.refused(ex.target.upstream.name, error.reason)
        response = error_response(error, ex.reply_headers())
        ex.sent = 0 if ex.method == "HEAD" else response.content_length or 0
        return response

    def _account(self, request: web.BaseRequest, ex: Exchange) -> None:
        target = ex.target
        upstream, route = (target.upstream.name, target.route.name) if target is not None else ("", "")
        status = 499 if ex.broken == "client_disconnected" else ex.status
        path = request.raw_path
        if "?" in path:
            bare, _, query = path.partition("?")
            path = redact_target(bare, query, self.runtime.policy.redact.query)
        self.ledger.record(
            AccessEntry(
                ex.request_id, upstream, route, ex.method, path, status, (time.monotonic() - ex.started) * 1000,
                ex.sent, ex.attempts, ex.error, ex.cache,
            )
        )


def _deadline(request: web.BaseRequest, route: Route) -> Deadline:
    return Deadline.start(route.timeouts.total, request.headers.get(CALLER_TIMEOUT_HEADER))
