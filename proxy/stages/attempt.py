"""Stage `attempt`, the last: one request upstream. The breaker admits it first (the half-open trial, or a
`CircuitOpen` when it opened meanwhile: returned, nothing sent); the answer's headers or the failure, classified
by `proxy.forward`, are settled on the breaker (`stages.breaker.settle`) and returned as data."""

from __future__ import annotations

from proxy.errors import CircuitOpen, EgressError
from proxy.exchange import Answer, Exchange, Next, Reply
from proxy.stages.breaker import settle

UPSTREAM_5XX = "upstream_5xx"  # egress_upstream_errors_total's reason for an attempt answered with a 5xx status


class AttemptStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None and ex.upstream is not None and ex.deadline is not None and ex.out is not None
        state, route, deadline = ex.upstream, ex.target.route, ex.deadline
        breaker = state.breakers.of(route)
        try:
            trial = breaker.admit(hedge=ex.hedge, request_id=ex.request_id)
        except CircuitOpen as refused:
            return refused
        ex.attempts += 1
        try:
            response = await state.forwarder.send(ex.out, route.timeouts, deadline)
        except EgressError as error:
            settle(trial, error, route, deadline)
            if not error.callers_doing:
                state.note_attempt(failed=True)
                metrics = ex.runtime.metrics
                metrics.child(metrics.upstream_errors, state.upstream.name, error.reason).inc()
            return error
        except BaseException:
            breaker.abandon(trial)  # cancelled (the caller left, a hedge lost): no verdict on the upstream
            raise
        answer = Answer(response)
        failure = settle(trial, answer, route, deadline)
        state.note_attempt(failed=failure is not None or response.status >= 500)
        if response.status >= 500:  # an answer, but a failed attempt: the error-rate alert must see 70 s of 500s
            metrics = ex.runtime.metrics
            metrics.child(metrics.upstream_errors, state.upstream.name, UPSTREAM_5XX).inc()
        return answer
