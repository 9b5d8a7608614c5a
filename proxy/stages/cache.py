"""Stage `cache`: a HIT answers here, without an upstream slot; identical concurrent misses wait for one fetch
(single-flight, within their own deadline); MISS / REFRESH / BYPASS fetch through the rest of the chain, and the
answer is stored when the rules allow, or a STALE entry stands in for a failure (`stale_if_error`, an open
breaker's refusal included). A successful write invalidates its path's cached reads before the writer hears back.

The rules, keys, store and single-flight are `proxy.cache`'s; this module decides when to use them and owns the
response capture: reading an answer's body (at most `cache.max_body`, within the deadline) to store it.
"""

from __future__ import annotations

from proxy.cache import Lookup, ReadPlan, ResponseCache, WritePlan
from proxy.errors import EgressError
from proxy.exchange import Answer, Exchange, Next, Reply, Stored


class CacheStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None and ex.deadline is not None
        cache = ex.runtime.cache
        plan = cache.plan(ex.target, ex.method, ex.request.headers, ex.runtime.policy.redact.query)
        if plan is None:
            return await next(ex)
        if isinstance(plan, WritePlan):
            return await _invalidating(cache, plan, ex, next)
        return await _read(cache, plan, ex, next)


async def _invalidating(cache: ResponseCache, plan: WritePlan, ex: Exchange, next: Next) -> Reply:
    """A successful write makes the path's cached reads unreachable before the writer hears back."""
    reply = await next(ex)
    if isinstance(reply, Answer) and 200 <= reply.status < 300:
        await cache.invalidate(plan, f"{ex.method} {reply.status}")
    return reply


async def _read(cache: ResponseCache, plan: ReadPlan, ex: Exchange, next: Next) -> Reply:
    assert ex.deadline is not None
    scope = cache.lookup(plan, ex.deadline)
    lookup = await scope.__aenter__()
    streaming = False
    try:
        ex.cache = lookup.result
        if lookup.ready is not None:
            return Stored(lookup.ready, lookup.result)
        if lookup.failed is not None:
            return lookup.failed  # the identical request this one waited for failed, or outlasted our deadline
        reply = await _fill(cache, lookup, ex, await next(ex))
        # The flight stays joinable while the answer streams and until it is stored (`ex.after` runs in that
        # order): an identical request meanwhile gets the landed entry instead of fetching again.
        streaming = isinstance(reply, Answer)
        if streaming:
            cache.release(lookup)  # followers get the entry (or go on by themselves) now, not after the stream
            ex.defer(scope.close)
        return reply
    finally:
        if not streaming:
            await scope.close()


async def _fill(cache: ResponseCache, lookup: Lookup, ex: Exchange, reply: Reply) -> Reply:
    """The upstream's answer to a cacheable read: STALE instead of a failure, stored when the rules allow."""
    assert ex.deadline is not None
    if isinstance(reply, Stored):
        return reply
    # A throttled answer counts as the 429 it means (a WhatsApp 400 with code 130429 is not a bad request).
    failure = reply if isinstance(reply, EgressError) else 429 if reply.throttled else reply.status
    stale = cache.fallback(lookup, failure)
    if stale is None and isinstance(reply, Answer) and cache.storable(lookup, reply.status, reply.response.headers):
        try:
            body = await _capture(cache, ex, reply)
        except EgressError as error:  # the body broke off or outlasted the deadline: a failure like any other
            stale, reply = cache.fallback(lookup, error), error
        else:
            _keep(cache, lookup, ex, reply, body)
    if stale is not None:
        if isinstance(reply, Answer):
            await reply.discard(ex.deadline)
        ex.cache = lookup.result
        return Stored(stale, lookup.result)
    return reply


def _keep(cache: ResponseCache, lookup: Lookup, ex: Exchange, reply: Answer, body: bytes | None) -> None:
    if body is not None:
        storing = cache.keep(lookup, reply.status, reply.response.headers, body)
        if storing is not None:
            ex.defer(storing)


async def _capture(cache: ResponseCache, ex: Exchange, answer: Answer) -> bytes | None:
    """The body to store when it fits in `cache.max_body` (then also `answer.body`), else None: what was read of
    it is left in `answer.prefix`, to go first. What is captured must arrive within the deadline."""
    assert ex.target is not None and ex.deadline is not None
    if ex.method == "HEAD":
        return b""  # stored as headers alone; the answer itself streams through untouched
    if answer.body is not None:
        return answer.body  # already read whole (the retry loop looked for a throttle signal in it)
    if answer.prefix:
        return None  # ... or read in part: too large to have been one
    limit = cache.max_body
    length = answer.response.content_length
    if length is not None and length > limit:
        return None
    # Within the deadline, a chunked body too: aiohttp's own `read` timer is not always there to end it (see
    # respond._pipe_stream), and what is captured is small (cache.max_body).
    deadline = ex.deadline
    data, complete = await answer.read_up_to(
        limit, max(deadline.remaining(), 0.001), ex.target.upstream.name, ex.target.route.timeouts, deadline
    )
    if not complete:
        answer.prefix = data
        return None
    answer.body = data
    return data
