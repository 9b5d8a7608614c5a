"""The vocabulary every stage speaks: one request's `Exchange`, the `Reply` a stage gives back, and `Stage`.

A stage is `async def __call__(self, ex: Exchange, next: Next) -> Reply`: it may answer without calling `next`
(a cache HIT, an open breaker), wrap it (the cache fills after it returns), or call it more than once (retry,
hedge). A reply is data, not a response: an upstream `Answer` whose headers arrived (its body still to stream), a
`Stored` answer from the cache, or an `EgressError`. Only the pipeline turns a reply into bytes for the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import aiohttp
from aiohttp import web

from proxy.cache import CACHE_HEADER, CACHE_STATUS_HEADER
from proxy.cache.capture import read_capped
from proxy.cache.entry import Entry
from proxy.deadline import Deadline
from proxy.errors import EgressError
from proxy.forward import Outgoing, RequestBody, classify, timed_out
from proxy.headers import REQUEST_ID
from proxy.policy import Timeouts
from proxy.routing import Target

if TYPE_CHECKING:
    from proxy.runtime import Runtime, UpstreamState

ATTEMPTS_HEADER = "X-Egress-Attempts"
DISCARD_LIMIT = 64 * 1024  # bodies of responses we retry past are drained (keeping the connection) up to this
DISCARD_WAIT = 1.0  # ... if they arrive within this


class Answer:
    """An upstream response whose headers arrived. `body` is set once the sidecar has read it whole, `prefix` when
    it read only the start of it (it outgrew a limit; still owed to the caller). Whoever holds the answer closes it
    (`close`, `release` or `discard`): that also gives back what was lent with it (`hold`: a bulkhead slot)."""

    __slots__ = ("_holds", "body", "prefix", "response", "throttled")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.body: bytes | None = None
        self.prefix = b""
        self.throttled = False  # the upstream said "slow down" (a 429, or a throttle rule matched), judged once
        self._holds: list[Callable[[], None]] | None = None

    @property
    def status(self) -> int:
        return self.response.status

    def hold(self, give_back: Callable[[], None]) -> None:
        """Keep something (a bulkhead slot) until this answer is done with: its body is still upstream's work."""
        if self._holds is None:
            self._holds = [give_back]
        else:
            self._holds.append(give_back)

    def close(self) -> None:
        """Done, the connection not reusable (or already released: then a no-op for it)."""
        self.response.close()
        self._give_back()

    def release(self) -> None:
        """Done, the body read to its end: the connection goes back to the pool."""
        self.response.release()
        self._give_back()

    def _give_back(self) -> None:
        holds, self._holds = self._holds, None
        for give_back in holds or ():
            give_back()

    async def read_up_to(
        self, limit: int, within: float | None, upstream: str, timeouts: Timeouts, deadline: Deadline
    ) -> tuple[bytes, bool]:
        """The body if it fits in `limit` bytes, else what was read of it (`read_capped`), within `within`
        seconds. On failure the answer is closed and the failure raised as an EgressError."""
        try:
            async with asyncio.timeout(within):
                return await read_capped(self.response.content, limit)
        except TimeoutError as exc:  # first: the deadline's and aiohttp's read timeouts are OSErrors too
            self.close()
            raise timed_out(exc, upstream, timeouts, deadline) from exc
        except (aiohttp.ClientError, OSError) as exc:
            self.close()
            raise classify(exc, upstream, timeouts) from exc

    async def discard(self, deadline: Deadline) -> None:
        """Done with this answer without passing it on: keep the connection if that is cheap (a small body that
        arrives within a second and within the request's deadline), else close it."""
        try:
            length = self.response.content_length
            if self.body is None and length is not None and length <= DISCARD_LIMIT:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                    async with asyncio.timeout(min(DISCARD_WAIT, max(deadline.remaining(), 0.0))):
                        await self.response.read()
        finally:
            self.release() if self.body is not None or self.response.closed else self.close()


@dataclass(frozen=True, slots=True)
class Stored:
    """An answer from the cache: `result` is HIT or STALE."""

    entry: Entry
    result: str


Reply = Answer | Stored | EgressError
Next = Callable[["Exchange"], Awaitable[Reply]]


class Stage(Protocol):
    async def __call__(self, ex: Exchange, next: Next) -> Reply: ...


@dataclass(slots=True)
class Exchange:
    """One request's record, filled in as it crosses the stages (each field by the stage its comment names);
    logged and counted at the end."""

    request: web.BaseRequest
    runtime: Runtime  # the one the request arrived under: a reload mid-request does not change it
    request_id: str
    method: str
    started: float
    target: Target | None = None  # route
    upstream: UpstreamState | None = None  # route
    deadline: Deadline | None = None  # deadline
    body: RequestBody | None = None  # body
    out: Outgoing | None = None  # body: the request as it goes upstream
    idempotent: bool = False  # body
    hedge: bool = False  # hedge: set on the copy a hedged attempt runs with (it never takes a half-open trial)
    attempts: int = 0  # retry and hedge: every attempt sent or refused by the breaker
    hedges: int = 0  # hedge
    # pace: told a throttle answer's delay and the limits it is about (empty: all); whether it held any
    on_throttle: Callable[[float, frozenset[str]], bool] | None = None
    cache: str | None = None  # cache: HIT, MISS, STALE...
    cache_status: str | None = None  # cache: the RFC 9211 Cache-Status of the answer
    # cache: the validators of a stale entry, sent upstream in place of the caller's own conditionals (body)
    conditional: tuple[tuple[str, str], ...] = ()
    # After the answer went out (a cache write: a slow Redis delays nobody's response), before the connection's
    # next request is read.
    after: list[Callable[[], Awaitable[None]]] | None = None  # see `defer`: most requests need none
    # respond, for the access log
    status: int = 0
    error: str | None = None
    detail: str | None = None  # the sidecar's own error answer's detail
    sent: int = 0  # body bytes written to the caller
    broken: str | None = None  # who cut the response short, if anyone (see respond.Delivery)

    def reply_headers(self) -> dict[str, str]:
        headers = {REQUEST_ID: self.request_id}
        if self.attempts:
            headers[ATTEMPTS_HEADER] = str(self.attempts)
        if self.cache:
            headers[CACHE_HEADER] = self.cache
        if self.cache_status:
            headers[CACHE_STATUS_HEADER] = self.cache_status
        return headers

    def defer(self, then: Callable[[], Awaitable[None]]) -> None:
        """Run `then` once the answer went out (or the request ended otherwise), in the order deferred."""
        if self.after is None:
            self.after = [then]
        else:
            self.after.append(then)

    def as_hedge(self) -> Exchange:
        """The exchange a hedged attempt runs with: the same request, marked (see `hedge`)."""
        twin = copy.copy(self)
        twin.hedge = True
        return twin
