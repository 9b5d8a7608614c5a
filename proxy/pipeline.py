"""The data path, top to bottom. Every proxied request crosses these stages in this order:

    route       /<upstream>/<path> + METHOD glob -> Route        (404 no_route, 400/405 bad_request)
    deadline    the route's total, shortened by X-Egress-Timeout
    bulkhead    a slot in the upstream's limits                    (503 overloaded, 504 pool timeout)
    body        buffered up to retry.max_body so it can be replayed, else streamed
    retry loop  backoff, budget, Retry-After/throttle, idempotency rule
      breaker     fail fast while open                            (503 circuit_open)
      attempt     one request upstream, classified                 (504 timeout, 502 connect_error/reset)
    respond     stream the answer through, or render the EgressError
    account     one access-log line and the metrics

Each stage lives in its own module; this file only wires them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from proxy.breaker import Trial
from proxy.deadline import CALLER_TIMEOUT_HEADER, Deadline
from proxy.errors import BadRequest, EgressError, Unavailable
from proxy.forward import Outgoing, RequestBody
from proxy.headers import REQUEST_ID, end_to_end, request_id
from proxy.logs import log_access, redact_target
from proxy.metrics import method_label
from proxy.policy import Route
from proxy.respond import Delivery, error_response, send_answer
from proxy.retry import IDEMPOTENCY_KEY, Answer, Outcome, RetryContext, RetryLoop, breaker_failure, is_idempotent
from proxy.routing import Target
from proxy.runtime import Runtime, UpstreamState

ATTEMPTS_HEADER = "X-Egress-Attempts"
# Sidecar controls are for the sidecar: they are not forwarded upstream.
SIDECAR_REQUEST_HEADERS = ("host", "x-egress-timeout")


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
    delivery: Delivery = field(default_factory=Delivery)

    def reply_headers(self) -> dict[str, str]:
        headers = {REQUEST_ID: self.request_id}
        if self.attempts:
            headers[ATTEMPTS_HEADER] = str(self.attempts)
        return headers


class Pipeline:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.metrics = runtime.metrics

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        ex = Exchange(request_id(request.headers.get(REQUEST_ID)), request.method, time.monotonic())
        response: web.StreamResponse
        try:
            ex.target = self.runtime.router.resolve(request.method, request.raw_path)
            response = await self._proxy(request, ex, self.runtime.upstreams[ex.target.upstream.name])
        except EgressError as error:
            response = self._refuse(error, ex)
        except asyncio.CancelledError:
            ex.delivery.broken = "client_disconnected"  # the caller hung up; its upstream call was cancelled
            raise
        finally:
            self._account(request, ex)
        return response

    async def _proxy(self, request: web.BaseRequest, ex: Exchange, state: UpstreamState) -> web.StreamResponse:
        assert ex.target is not None
        route = ex.target.route
        deadline = Deadline.start(route.timeouts.total, request.headers.get(CALLER_TIMEOUT_HEADER))
        gauge = self.metrics.inflight.labels(state.upstream.name)
        gauge.inc()
        try:
            pool_wait = max(0.0, min(route.timeouts.pool, deadline.remaining()))
            async with state.bulkhead.slot(pool_wait):
                body = await self._read_body(request, state, route.retry.max_body)
                out = Outgoing(
                    request.method,
                    state.forwarder.url_for(ex.target.path, ex.target.query),
                    self._upstream_headers(request, ex, state),
                    body,
                )
                loop = RetryLoop(self._retry_context(request, ex, state, deadline, body))
                try:
                    outcome = await loop.run(lambda trial: self._attempt(state, route, out, deadline, trial))
                finally:
                    ex.attempts = loop.ctx.attempts
                if isinstance(outcome, EgressError):
                    raise outcome
                return await self._respond(request, ex, outcome, deadline)
        finally:
            gauge.dec()

    async def _read_body(self, request: web.BaseRequest, state: UpstreamState, replay_limit: int) -> RequestBody:
        try:
            return await RequestBody.read(request, replay_limit, state.upstream.limits.max_request_body)
        except (aiohttp.ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
            raise BadRequest(f"could not read the request body: {exc}", upstream=state.upstream.name) from exc

    def _upstream_headers(self, request: web.BaseRequest, ex: Exchange, state: UpstreamState) -> CIMultiDict[str]:
        injected = state.upstream.headers
        headers = end_to_end(request.headers, also_drop=(*SIDECAR_REQUEST_HEADERS, *(k for k, _ in injected)))
        headers.extend(injected)  # the policy's headers win over the caller's
        headers[REQUEST_ID] = ex.request_id
        return headers

    def _retry_context(
        self, request: web.BaseRequest, ex: Exchange, state: UpstreamState, deadline: Deadline, body: RequestBody
    ) -> RetryContext:
        assert ex.target is not None
        route = ex.target.route
        name = state.upstream.name
        return RetryContext(
            upstream=name,
            route=route,
            method=request.method,
            idempotent=is_idempotent(request.method, route, request.headers.get(IDEMPOTENCY_KEY)),
            deadline=deadline,
            breaker=state.breaker_for(route),
            budget=state.budget,
            throttle=state.throttle,
            throttle_rules=state.upstream.throttle,
            replayable=lambda: body.replayable,
            on_retry=lambda reason: self.metrics.retries.labels(name, route.name, reason).inc(),
            on_budget_exhausted=lambda: self.metrics.budget_exhausted.labels(name).inc(),
        )

    async def _attempt(
        self, state: UpstreamState, route: Route, out: Outgoing, deadline: Deadline, trial: Trial
    ) -> Outcome:
        breaker = trial.breaker
        try:
            response = await state.forwarder.send(out, route.timeouts, deadline)
        except EgressError as error:
            breaker.record(trial, breaker_failure(error, route))
            state.note_attempt(failed=True)
            self.metrics.upstream_errors.labels(state.upstream.name, error.reason).inc()
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
        self, request: web.BaseRequest, ex: Exchange, answer: Answer, deadline: Deadline
    ) -> web.StreamResponse:
        ex.status = answer.status
        try:
            response, ex.delivery = await send_answer(
                request, answer, ex.reply_headers(), max(deadline.remaining(), 0.001)
            )
        finally:
            answer.response.close()  # a no-op once released to the pool; frees it on any early exit
        if ex.delivery.broken and ex.delivery.broken != "client_disconnected":
            ex.error = ex.delivery.broken
            assert ex.target is not None
            self.metrics.upstream_errors.labels(ex.target.upstream.name, ex.delivery.broken).inc()
        return response

    def _refuse(self, error: EgressError, ex: Exchange) -> web.Response:
        ex.status = error.status
        ex.error = error.reason
        if isinstance(error, Unavailable) and ex.target is not None:
            self.metrics.rejected.labels(ex.target.upstream.name, error.reason).inc()
        return error_response(error, ex.reply_headers())

    def _account(self, request: web.BaseRequest, ex: Exchange) -> None:
        elapsed = time.monotonic() - ex.started
        upstream = ex.target.upstream.name if ex.target else ""
        route = ex.target.route.name if ex.target else ""
        status = 499 if ex.delivery.broken == "client_disconnected" else ex.status
        self.metrics.requests.labels(upstream, route, method_label(ex.method), str(status)).inc()
        if ex.target is not None:
            self.metrics.duration.labels(upstream, route).observe(elapsed)
        path, _, query = request.raw_path.partition("?")
        log_access(
            {
                "request_id": ex.request_id,
                "upstream": upstream,
                "route": route,
                "method": ex.method,
                "path": redact_target(path, query),
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "bytes": ex.delivery.sent,
                "attempts": ex.attempts,
                "egress_error": ex.error,
                "cache": ex.cache,
            }
        )
