"""Stage `bulkhead`: at most `max_concurrent` requests in flight per upstream and `max_queue` waiting.

Beyond that the answer is an immediate 503 `overloaded`; a queued request waits at most the route's `pool`
timeout, and never past its deadline (504). A hung upstream can only ever occupy its own slots. The slot is held
until the answer's body has gone through (the answer holds it), not only until its headers arrive.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time

from proxy.deadline import Deadline
from proxy.errors import EgressError, Overloaded, UpstreamTimeout
from proxy.exchange import Answer, Exchange, Next, Reply
from proxy.policy import Limits, Upstream

log = logging.getLogger("egress.bulkhead")
OBSERVE_LOG_EVERY = 30.0  # seconds: an overload comes by the thousand, its warning once per this


class BulkheadStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.upstream is not None and ex.target is not None and ex.deadline is not None
        state = ex.upstream
        bulkhead = state.bulkhead
        gauge = state.inflight
        gauge.inc()
        try:
            observed = await bulkhead.acquire(ex.target.route.timeouts.pool, ex.deadline)
        except EgressError as refused:  # returned, not raised: the cache above may serve STALE instead
            gauge.dec()
            return refused
        except BaseException:
            gauge.dec()
            raise

        if observed is not None:
            metrics = ex.runtime.metrics
            metrics.observed.labels(state.upstream.name, observed).inc()

        def give_back() -> None:
            bulkhead.release()
            gauge.dec()

        try:
            reply = await next(ex)
        except BaseException:
            give_back()
            raise
        if isinstance(reply, Answer):
            reply.hold(give_back)
        else:
            give_back()
        return reply


class Bulkhead:
    """Lifetime: carried over a reload while the upstream's limits are unchanged (its slots are in use)."""

    def __init__(self, upstream: str, limits: Limits) -> None:
        self.upstream = upstream
        self.limits = limits
        self.inflight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._observed_logged = -OBSERVE_LOG_EVERY  # observe mode: when the last warning went out

    @classmethod
    def carry(cls, previous: Bulkhead | None, upstream: Upstream) -> Bulkhead:
        if previous is not None and previous.limits == upstream.limits:
            return previous
        return cls(upstream.name, upstream.limits)

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def slot(self, pool_timeout: float, deadline: Deadline | None = None) -> Slot:
        """`async with bulkhead.slot(pool, deadline):` waits at most `pool`, and never past `deadline`."""
        return Slot(self, pool_timeout, deadline)

    def try_acquire(self) -> bool:
        """A slot now if one is free, without queueing (a hedge: worth sending only if it costs nobody a wait)."""
        if self.inflight < self.limits.max_concurrent and not self._waiters:
            self.inflight += 1
            return True
        return False

    async def acquire(self, pool_timeout: float, deadline: Deadline | None = None) -> str | None:
        """A slot, waiting at most `pool_timeout` and never past `deadline`; give it back with `release`. In
        `limits.mode: observe` a request that finds no free slot takes one at once (beyond `max_concurrent`) and the
        decision it was spared is returned (`queued` or `overloaded`), for the caller to count; else None."""
        if self.inflight < self.limits.max_concurrent and not self._waiters:
            self.inflight += 1
            return None
        if not self.limits.enforcing:
            # Nothing queues in observe mode: the ones beyond max_concurrent are those that would be waiting.
            waiting = self.inflight - self.limits.max_concurrent
            decision = "overloaded" if waiting >= self.limits.max_queue else "queued"
            self.inflight += 1
            now = time.monotonic()
            if now - self._observed_logged >= OBSERVE_LOG_EVERY:
                self._observed_logged = now
                log.warning("upstream %s: %d in flight, over its limits (%s); observe mode: sending it",
                            self.upstream, self.inflight, decision)
            return decision
        if len(self._waiters) >= self.limits.max_queue:
            raise Overloaded(
                f"{self.inflight} requests in flight and {len(self._waiters)} queued (limits reached)",
                upstream=self.upstream,
            )
        wait = pool_timeout if deadline is None else max(0.0, min(pool_timeout, deadline.remaining()))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait):
                await waiter  # the releasing request hands its slot over: inflight is unchanged
        except (TimeoutError, asyncio.CancelledError) as exc:
            # The slot may have been handed to us in the very loop turn we gave up in (the pool timeout fired,
            # or the caller hung up): inflight already counts us, so pass the slot on or it is lost for good.
            if waiter.done() and not waiter.cancelled():
                self.release()
            if isinstance(exc, TimeoutError):
                if deadline is not None and wait < pool_timeout:  # the request's time ran out first
                    raise UpstreamTimeout("total", deadline.budget, upstream=self.upstream, sent=False) from None
                raise UpstreamTimeout("pool", pool_timeout, upstream=self.upstream, sent=False) from None
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
        return None

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inflight -= 1


class Slot:
    """`async with bulkhead.slot(pool):` a plain class rather than @asynccontextmanager: it is on every request."""

    __slots__ = ("_bulkhead", "_deadline", "_pool_timeout")

    def __init__(self, bulkhead: Bulkhead, pool_timeout: float, deadline: Deadline | None) -> None:
        self._bulkhead = bulkhead
        self._pool_timeout = pool_timeout
        self._deadline = deadline

    async def __aenter__(self) -> None:
        await self._bulkhead.acquire(self._pool_timeout, self._deadline)

    async def __aexit__(self, *exc_info: object) -> None:
        self._bulkhead.release()
