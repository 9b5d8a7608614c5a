"""Stage `route`: `/<upstream>/<path>` plus the route's METHOD glob -> the request's `Target` and its upstream's
live state (404 no_route, 400/405 bad_request). The matching itself is `proxy.routing`'s."""

from __future__ import annotations

from proxy.errors import EgressError
from proxy.exchange import Exchange, Next, Reply


class RouteStage:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        runtime = ex.runtime
        try:
            target = ex.target = runtime.router.resolve(ex.method, ex.request.raw_path)
        except EgressError as error:
            return error
        ex.upstream = runtime.upstreams[target.upstream.name]
        return await next(ex)
