"""Stage `cache`: a HIT answers here, without an upstream slot; identical concurrent misses wait for one fetch
(single-flight, within their own deadline); MISS / REFRESH / BYPASS fetch through the rest of the chain, and the
answer is stored when the rules allow, or a STALE entry stands in for a failure (`stale_if_error`, an open
breaker's refusal included). A stale entry with validators goes upstream as a conditional request: a 304 serves
it REVALIDATED with refreshed headers. A caller's own conditional request matching what the cache serves gets a
304. Within an entry's `stale-while-revalidate` it is served at once (UPDATING) while one refresh per key runs
through the rest of the chain in the background, on its own deadline, and stores what comes back (RFC 5861 §3).
A successful (2xx/3xx) unsafe request invalidates its path's cached reads, and those its Location and
Content-Location name on the same upstream, before the caller hears back. Every answer says `Cache-Status`.

The rules, keys, store and single-flight are `proxy.cache`'s; this module decides when to use them and owns the
response capture: reading an answer's body (at most `cache.max_body`, within the deadline) to store it.
"""

from __future__ import annotations

import copy
import logging

from yarl import URL

from proxy.cache import UPDATING, Entry, Lookup, ReadPlan, ResponseCache, WritePlan, cache_status
from proxy.deadline import Deadline
from proxy.errors import EgressError, NotCached
from proxy.exchange import Answer, Exchange, Next, Reply, Stored
from proxy.routing import Target

log = logging.getLogger("egress.cache")


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
    if isinstance(reply, Answer) and 200 <= reply.status < 400:  # RFC 9111 §4.4: a non-error status
        headers = reply.response.headers
        named = (same_upstream_path(plan.target, value) for name in ("Location", "Content-Location")
                 for value in headers.getall(name, []))
        await cache.invalidate(plan, f"{ex.method} {reply.status}", [path for path in named if path is not None])
    return reply


def same_upstream_path(target: Target, reference: str) -> str | None:
    """The upstream path a Location / Content-Location names, resolved against the request's URL; None for
    another origin (RFC 9111 §4.4: only same-origin targets are invalidated) or outside the upstream's URL."""
    base = target.upstream.url
    prefix = base.raw_path.rstrip("/")
    try:
        named = base.with_path(prefix + target.path, encoded=True).join(URL(reference.strip()))
    except ValueError:
        return None
    if named.origin() != base.origin() or not named.raw_path.startswith(prefix + "/"):
        return None
    return named.raw_path[len(prefix):]


async def _read(cache: ResponseCache, plan: ReadPlan, ex: Exchange, next: Next) -> Reply:
    assert ex.deadline is not None
    scope = cache.lookup(plan, ex.deadline)
    lookup = await scope.__aenter__()
    streaming = False
    try:
        ex.cache = lookup.result
        if lookup.ready is not None:
            if lookup.result == UPDATING:  # the exchange is copied only for a refresh that starts, not per request
                cache.refresh_soon(lookup, lambda twin: _refresh(cache, _background(ex), next, twin))
            return _served(cache, lookup, ex, lookup.ready)
        if lookup.failed is not None:
            return lookup.failed  # the identical request this one waited for failed, or outlasted our deadline
        if plan.asks.only_if_cached:
            return NotCached(upstream=plan.key.upstream)
        if lookup.revalidating is not None:
            ex.conditional = lookup.revalidating.validators
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


def _background(ex: Exchange) -> Exchange:
    """The exchange a background refresh runs with: the same request, on a deadline of its own (the route's total:
    the caller, already answered, waits for nothing), nothing of the caller's answer in it."""
    assert ex.target is not None
    twin = copy.copy(ex)
    twin.deadline = Deadline.start(ex.target.route.timeouts.total)
    twin.after, twin.cache, twin.cache_status, twin.on_throttle = None, None, None, None
    return twin


async def _refresh(cache: ResponseCache, ex: Exchange, next: Next, lookup: Lookup) -> None:
    """The background half of stale-while-revalidate: the rest of the chain with the served entry's validators
    (a 304 refreshes it, a storable answer replaces it, a failure leaves it as it was)."""
    assert ex.deadline is not None
    if lookup.revalidating is not None:
        ex.conditional = lookup.revalidating.validators
    try:
        reply = await _fill(cache, lookup, ex, await next(ex))
        if isinstance(reply, Answer):
            await reply.discard(ex.deadline)
        for then in ex.after or ():
            await then()
    except Exception:  # nobody waits on it to hear: the entry stays as it was, served until its window ends
        log.exception("Cache refresh of %s failed", lookup.plan)
        return
    if isinstance(reply, EgressError):
        log.info("Cache refresh of %s failed: %s", lookup.plan, reply.reason)


async def _fill(cache: ResponseCache, lookup: Lookup, ex: Exchange, reply: Reply) -> Reply:
    """The upstream's answer to a cacheable read: STALE instead of a failure, stored when the rules allow."""
    assert ex.deadline is not None
    if isinstance(reply, Stored):
        return reply
    if isinstance(reply, Answer) and reply.status == 304 and lookup.revalidating is not None:
        entry, storing = cache.revalidated(lookup, reply.response.headers)
        await reply.discard(ex.deadline)
        if storing is not None:
            ex.defer(storing)
        ex.cache = lookup.result
        return _served(cache, lookup, ex, entry, 304, entry if storing is not None else None)
    # A throttled answer counts as the 429 it means (a WhatsApp 400 with code 130429 is not a bad request).
    failure = reply if isinstance(reply, EgressError) else 429 if reply.throttled else reply.status
    stale = cache.fallback(lookup, failure)
    stored = None
    status = reply.status if isinstance(reply, Answer) else None
    if stale is None and isinstance(reply, Answer) and cache.storable(lookup, reply.status, reply.response.headers):
        try:
            body = await _capture(cache, ex, reply)
        except EgressError as error:  # the body broke off or outlasted the deadline: a failure like any other
            stale, reply = cache.fallback(lookup, error), error
        else:
            stored = _keep(cache, lookup, ex, reply, body)
    if stale is not None:
        if isinstance(reply, Answer):
            await reply.discard(ex.deadline)
        ex.cache = lookup.result
        return _served(cache, lookup, ex, stale, status)
    ex.cache_status = cache_status(lookup, None, status, stored)
    return reply


def _served(
    cache: ResponseCache, lookup: Lookup, ex: Exchange, entry: Entry, status: int | None = None,
    stored: Entry | None = None,
) -> Stored:
    """An entry answers: as a 304 if the caller's own conditional request matches it."""
    ex.cache_status = cache_status(lookup, entry, status, stored)
    return Stored(cache.for_caller(entry, lookup.plan), lookup.result)


def _keep(cache: ResponseCache, lookup: Lookup, ex: Exchange, reply: Answer, body: bytes | None) -> Entry | None:
    """The entry stored (once the answer went out), if any."""
    if body is None:
        return None
    kept = cache.keep(lookup, reply.status, reply.response.headers, body)
    if kept is None:
        return None
    entry, storing = kept
    ex.defer(storing)
    return entry


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
