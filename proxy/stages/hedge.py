"""Stage `hedge` (`routes[].hedge: {after, max}`): when an idempotent request's attempt has not answered after
`after`, send another (up to `max` more); the first answer wins, the others are cancelled and their connections
discarded.

A hedge is extra load on an upstream that is already slow, so it is bounded three ways: it spends the retry budget
(a slow upstream gets at most `budget.ratio` more requests, hedges and retries together), it needs a free bulkhead
slot (never queued: it would wait behind the requests it is meant to overtake), and only while the breaker is
closed (the single half-open trial is a real request's). What became of each is counted in
`egress_hedges_total{upstream,route,result}`: `won`, `lost`, or why none was sent (`budget`, `overloaded`,
`breaker`, `no_time`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import pybreaker

from proxy.errors import EgressError
from proxy.exchange import Answer, Exchange, Next, Reply

if TYPE_CHECKING:
    from proxy.runtime import UpstreamState

log = logging.getLogger("egress.hedge")


class HedgeStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None
        policy = ex.target.route.hedge
        if policy is None or not ex.idempotent or ex.body is None or ex.body.buffered is None:
            return await next(ex)  # a streamed body can be sent once only
        return await _Race(ex, next).run(policy.after, policy.max)


class _Race:
    """One request's attempt and its hedges, each a task; the first answer wins."""

    def __init__(self, ex: Exchange, next: Next) -> None:
        assert ex.upstream is not None and ex.target is not None
        self.ex = ex
        self.next = next
        self.state: UpstreamState = ex.upstream
        self.route = ex.target.route
        self.runners: dict[asyncio.Task[Reply], Exchange] = {}
        self.twins: list[tuple[Exchange, int]] = []  # the hedges sent, each with the attempts counted before it
        self.winner: Exchange | None = None

    async def run(self, after: float, most: int) -> Reply:
        ex = self.ex
        assert ex.deadline is not None
        self.runners[asyncio.ensure_future(self.next(ex))] = ex
        chances = most  # moments to hedge: one per `after`, sent or not (see `_hedge`)
        last_failure: EgressError | None = None
        try:
            while True:
                wait = min(after, max(ex.deadline.remaining(), 0.0)) if chances else None
                done, _ = await asyncio.wait(self.runners, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    runner = self.runners.pop(task)
                    reply = task.result()
                    if isinstance(reply, EgressError) and self.runners:
                        last_failure = reply  # another attempt in flight may yet answer
                        continue
                    self.winner = runner
                    return reply
                if not self.runners:
                    assert last_failure is not None
                    return last_failure
                if not done and chances:
                    chances -= 1
                    self._hedge()
        finally:
            self._finish()

    def _hedge(self) -> None:
        ex, state = self.ex, self.state
        assert ex.deadline is not None
        breaker = state.breakers.of(self.route)
        if ex.deadline.remaining() <= 0:
            self._count("no_time")
        elif breaker.state != pybreaker.STATE_CLOSED:
            self._count("breaker")
        elif not state.bulkhead.try_acquire():
            self._count("overloaded")
        elif not state.budget.try_spend():
            state.bulkhead.release()
            self._count("budget")
        else:
            twin = ex.as_hedge()
            self.twins.append((twin, twin.attempts))
            ex.hedges += 1
            task = asyncio.ensure_future(self.next(twin))
            task.add_done_callback(lambda done: _give_back(done, state))
            self.runners[task] = twin
            log.info("Hedging %s %s %s: no answer after %d attempt(s) (hedge %d) request_id=%s", state.upstream.name,
                     ex.method, self.route.name, ex.attempts, ex.hedges, ex.request_id)

    def _finish(self) -> None:
        """Cancel the losers still in flight; count each hedge, and its attempt on the request."""
        for task in self.runners:
            task.cancel()
            task.add_done_callback(_close_late_answer)
        self.runners.clear()
        for twin, before in self.twins:
            self.ex.attempts += twin.attempts - before  # its attempt, if the breaker admitted it
            self._count("won" if twin is self.winner else "lost")

    def _count(self, result: str) -> None:
        metrics = self.ex.runtime.metrics
        metrics.child(metrics.hedges, self.state.upstream.name, self.route.name, result).inc()


def _give_back(task: asyncio.Task[Reply], state: UpstreamState) -> None:
    """A hedge's bulkhead slot: held by its answer while it streams, else given back now."""
    reply = None if task.cancelled() or task.exception() is not None else task.result()
    if isinstance(reply, Answer):
        reply.hold(state.bulkhead.release)
    else:
        state.bulkhead.release()


def _close_late_answer(task: asyncio.Task[Reply]) -> None:
    """A loser that answered anyway, in the same turn as its cancellation: its connection is not reused."""
    if not task.cancelled() and task.exception() is None and isinstance(reply := task.result(), Answer):
        reply.close()
