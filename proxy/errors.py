"""The sidecar's own answers, as data: every failure it generates is one `EgressError`.

The forwarder turns aiohttp exceptions into these in one place; the retry loop decides on
`outcome` (connect_error, reset, timeout); `respond.error_response` renders any of them as a small
JSON body plus `X-Egress-Error`, so callers can always tell the sidecar's failures from upstream answers.
"""

from __future__ import annotations

import time


class EgressError(Exception):
    status = 502
    reason = "egress_error"
    outcome: str | None = None  # the retry/breaker condition this failure counts as, if any
    callers_doing = False  # the caller's request itself is at fault: says nothing about the upstream
    counts_as: int | None = None  # a status the breaker's `count` reads this failure as, when it has no outcome
    reached_upstream = False  # the failure happened with the upstream: after the request was sent, if `sent`

    def __init__(self, detail: str = "", *, upstream: str = "", sent: bool = True) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail
        self.upstream = upstream
        # False only when the request provably never reached the upstream: the one case where a
        # non-idempotent request (a WhatsApp send) may be replayed without risking a duplicate.
        self.sent = sent

    def advice(self) -> str | None:
        """`Retry-After`, in whole seconds, when the sidecar has any to give."""
        return None

    def delivery(self) -> str:
        """`X-Egress-Delivery`: `unknown` when the request reached the upstream and no answer came back (a reset or
        timeout after it was sent: it may have been processed, a WhatsApp send delivered); else `none`, it was not
        processed. A caller must not report an `unknown` send as failed, nor send it again blindly."""
        return "unknown" if self.sent and self.reached_upstream else "none"


class UpstreamTimeout(EgressError):
    status = 504
    reason = "upstream_timeout"
    outcome = "timeout"
    reached_upstream = True

    def __init__(self, kind: str, seconds: float, *, upstream: str = "", sent: bool = True) -> None:
        super().__init__(f"{kind} timeout after {seconds:g}s", upstream=upstream, sent=sent)
        self.kind = kind


class UpstreamConnectError(EgressError):
    status = 502
    reason = "upstream_connect_error"
    outcome = "connect_error"

    def __init__(self, detail: str, *, upstream: str = "") -> None:
        super().__init__(detail, upstream=upstream, sent=False)


class UpstreamReset(EgressError):
    status = 502
    reason = "upstream_reset"
    outcome = "reset"
    reached_upstream = True


class UpstreamBadResponse(EgressError):
    """The upstream's answer is not HTTP the sidecar will pass on: a malformed status line or header, a head over
    the client's bounds, a protocol switch nobody asked for. Relaying it would hand the caller the same garbage."""

    status = 502
    reason = "upstream_bad_response"
    reached_upstream = True
    counts_as = 502  # for the breaker: a lying upstream is as unhealthy as one answering 502


class NoRoute(EgressError):
    status = 404
    reason = "no_route"


class BadRequest(EgressError):
    status = 400
    reason = "bad_request"
    callers_doing = True


class RequestTimeout(BadRequest):
    """The caller did not send its body within the request's deadline (nginx's client_body_timeout)."""

    status = 408


class MethodNotAllowed(BadRequest):
    status = 405


class HeadersTooLarge(BadRequest):
    """The request head is over `limits.max_header_bytes` or `limits.max_headers` (431, RFC 6585 §5)."""

    status = 431
    reason = "headers_too_large"


class ExpectationFailed(BadRequest):
    """An `Expect` other than `100-continue` (417, RFC 9110 §10.1.1)."""

    status = 417
    reason = "expectation_failed"


class NotCached(EgressError):
    """The caller said `Cache-Control: only-if-cached` and the cache holds nothing it may use (RFC 9111
    §5.2.1.7): 504, and the upstream never asked."""

    status = 504
    reason = "not_cached"
    callers_doing = True

    def __init__(self, detail: str = "only-if-cached, and nothing usable is stored", *, upstream: str = "") -> None:
        super().__init__(detail, upstream=upstream, sent=False)


class BodyTooLarge(EgressError):
    status = 413
    reason = "body_too_large"
    callers_doing = True


class Unavailable(EgressError):
    """A fast 503 the sidecar decided on without (or instead of) contacting the upstream."""

    status = 503

    def __init__(
        self, detail: str = "", *, upstream: str = "", retry_after: float | None = None, retry_at: float | None = None
    ) -> None:
        super().__init__(detail, upstream=upstream, sent=False)
        self.retry_after = retry_after  # the advice in seconds, or ...
        self.retry_at = retry_at  # ... a time.monotonic() instant: the advice is the time left until then

    def advice(self) -> str | None:
        wait = self.retry_after if self.retry_at is None else self.retry_at - time.monotonic()
        return None if wait is None else str(max(1, round(wait + 0.499)))


class CircuitOpen(Unavailable):
    reason = "circuit_open"


class Overloaded(Unavailable):
    reason = "overloaded"


class Throttled(Unavailable):
    reason = "throttled"


class RateLimited(Unavailable):
    """The request's turn under its route's `rate_limit` is further off than it may wait: never sent."""

    reason = "rate_limited"


class ShuttingDown(Unavailable):
    reason = "shutting_down"
