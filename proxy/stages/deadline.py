"""Stage `deadline`: the request's time budget, the route's `total` shortened (never lengthened) by
`X-Egress-Timeout`. It starts before the cache lookup: waiting for an identical request's fetch spends this
request's time too."""

from __future__ import annotations

from proxy.deadline import CALLER_TIMEOUT_HEADER, Deadline
from proxy.exchange import Exchange, Next, Reply


class DeadlineStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None
        ex.deadline = Deadline.start(ex.target.route.timeouts.total, ex.request.headers.get(CALLER_TIMEOUT_HEADER))
        return await next(ex)
