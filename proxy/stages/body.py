"""Stage `body`: the caller's body, buffered up to `retry.max_body` so it can be replayed, else streamed (413 over
`limits.max_request_body`, 408 when it does not arrive within the deadline); and the request as it goes upstream,
with whether it may be replayed (`Idempotency-Key`, the method, the route's `idempotent`).

It comes after the bulkhead on purpose: `100 Continue` is sent only once the request was routed, admitted and
given a slot, so a refusal goes out instead of an invitation to send the body. One exception: a route whose
`rate_limit` keys read the body (`{body.to}`) has it read by the pace stage, before the bulkhead (`read_body`):
a request waiting for its turn must not hold a slot, and its turn depends on the body.
"""

from __future__ import annotations

import asyncio

import aiohttp

from proxy.errors import BadRequest, EgressError, RequestTimeout
from proxy.exchange import Exchange, Next, Reply
from proxy.forward import Outgoing, RequestBody
from proxy.policy import IDEMPOTENT_METHODS, Route

IDEMPOTENCY_KEY = "Idempotency-Key"


def is_idempotent(method: str, route: Route, idempotency_key: str | None) -> bool:
    return method in IDEMPOTENT_METHODS or route.idempotent or bool(idempotency_key)


class BodyStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        assert ex.target is not None and ex.upstream is not None
        request = ex.request
        body = ex.body
        if body is None:  # else read already, for the pace stage's keys
            try:
                body = ex.body = await read_body(ex)
            except EgressError as error:
                return error
        forwarder = ex.upstream.forwarder
        ex.idempotent = is_idempotent(ex.method, ex.target.route, request.headers.get(IDEMPOTENCY_KEY))
        ex.out = Outgoing(
            ex.method,
            forwarder.url_for(ex.target.path, ex.target.query),
            forwarder.headers_for(request.headers, ex.request_id),
            body,
            ex.idempotent,
        )
        if ex.conditional:  # the cache revalidates a stale entry: its validators, not the caller's
            for name in ("If-None-Match", "If-Modified-Since"):
                ex.out.headers.popall(name, None)
            ex.out.headers.extend(ex.conditional)
        return await next(ex)


async def read_body(ex: Exchange) -> RequestBody:
    """Within the deadline: a caller that stalls its body must not hold its bulkhead slot (or its turn) any longer.
    Raises the refusal (413, 408, 417, 400) as an EgressError of the request's upstream."""
    assert ex.target is not None and ex.deadline is not None
    request, deadline = ex.request, ex.deadline
    upstream = ex.target.upstream
    read = RequestBody.read(request, ex.target.route.retry.max_body, upstream.limits.max_request_body)
    try:
        if not request.body_exists:
            return await read  # nothing to wait for: no timer
        async with asyncio.timeout(max(deadline.remaining(), 0.001)):
            return await read
    except TimeoutError as exc:
        raise RequestTimeout(f"the request body did not arrive within {deadline.budget:g}s",
                             upstream=upstream.name) from exc
    except (aiohttp.ClientPayloadError, ConnectionError, asyncio.IncompleteReadError) as exc:
        raise BadRequest(f"could not read the request body: {exc}", upstream=upstream.name) from exc
    except EgressError as error:
        error.upstream = error.upstream or upstream.name
        raise
