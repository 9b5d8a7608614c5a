"""Stage `pace` (`rate_limit`): a request takes one turn of each of its route's limits, keyed by its captures,
headers or body (`proxy.pacing`). Its turn now: it goes on. Its turn within `wait` and its deadline: it waits for
it here, then goes on (FIFO per key: a turn booked is the next one, see `proxy.pacing.gcra`). Further off: 503
`rate_limited` with `Retry-After` at once, never sent, and no limit's turn taken.

Where it sits (see `proxy.pipeline`): below the cache (a HIT takes no turn), above the bulkhead (a request waiting
for its turn holds no slot: it would starve the recipients that may go now). A route whose keys read the body has
it read here (`stages.body.read_body`), before the bulkhead, not after as the others' is.

A throttle answer to the request (the retry stage tells `Exchange.on_throttle`) holds its keys for the delay the
provider asked, on every replica sharing the budget: pacing and reaction agree. Its own retry reuses its turn
(the provider refused that send; it did not count it).
"""

from __future__ import annotations

import asyncio

from proxy.errors import EgressError, RateLimited
from proxy.exchange import Exchange, Next, Reply
from proxy.pacing import Decision, render_keys
from proxy.policy import RateLimitPolicy
from proxy.stages.body import read_body

# A request waits for its turn only if, once it comes, a tenth of its deadline (at most a second) is left for the
# request itself: a send that goes with 5 ms to spare is a 504 already decided.
RESERVE_SHARE, RESERVE_MAX = 0.1, 1.0


class PaceStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None and ex.upstream is not None and ex.deadline is not None
        pacing = ex.target.route.rate_limit
        if pacing is None:
            return await next(ex)
        if pacing.needs_body and ex.body is None:
            try:
                ex.body = await read_body(ex)
            except EgressError as error:
                return error
        keys = render_keys(pacing, dict(ex.target.captures), ex.request.headers, ex.body)
        deadline = ex.deadline
        allowance = min(pacing.wait, deadline.remaining() - min(RESERVE_MAX, deadline.budget * RESERVE_SHARE))
        pacer = ex.upstream.pacer
        decision = await pacer.admit(pacing, keys, max(allowance, 0.0))
        _count(ex, pacing, decision, allowance)
        if not decision.admitted:
            return _refusal(ex, pacing, decision, allowance)
        if decision.delay > 0:
            await asyncio.sleep(decision.delay)
        ex.on_throttle = lambda delay, scope: pacer.hold_soon(pacing, keys, delay, scope)
        return await next(ex)


def _count(ex: Exchange, pacing: RateLimitPolicy, decision: Decision, allowance: float) -> None:
    """Per limit: `passed`, `waited` (it made the request wait), or `rejected` (it refused it; the limits that would
    have let it go are not counted for a refused request)."""
    assert ex.target is not None
    metrics = ex.runtime.metrics
    upstream, route = ex.target.upstream.name, ex.target.route.name
    for limit, wait in zip(pacing.limits, decision.waits, strict=True):
        if decision.admitted:
            result = "waited" if wait > 0 else "passed"
        elif wait > allowance:
            result = "rejected"
        else:
            continue
        metrics.child(metrics.rate_limited, upstream, route, limit.name, result).inc()
    if decision.admitted:
        metrics.child(metrics.rate_limit_wait, upstream, route).observe(decision.delay)


def _refusal(ex: Exchange, pacing: RateLimitPolicy, decision: Decision, allowance: float) -> RateLimited:
    assert ex.target is not None
    over = ", ".join(f"{limit.name} ({limit.rate})" for limit, wait in zip(pacing.limits, decision.waits, strict=True)
                     if wait > allowance)
    detail = (f"over the rate limit {over}: its turn is {decision.delay:.1f}s away, more than the "
              f"{max(allowance, 0.0):.1f}s it may wait")
    return RateLimited(detail, upstream=ex.target.upstream.name, retry_after=decision.delay)

