"""The ceiling of the stack: a bare aiohttp (uvloop) pass-through, `/<name>/<path>` -> that upstream.

One pooled ClientSession, bodies streamed both ways, hop-by-hop headers dropped; nothing else.
`python -m bench.passthrough --port P static=http://127.0.0.1:8080 ...`

`--conforming` adds what the sidecar's issue requires of every request and nothing more: connect, read and total
timeouts, an `X-Request-ID` both ways, one access-log line (the sidecar's own `Ledger`, to a file) and the
request counter and duration histogram. No policy stage (routing globs, cache, breaker, bulkhead, retry budget)
is in it: on this stack, no implementation of the issue can be faster than this.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from proxy.account import Ledger
from proxy.headers import REQUEST_ID, request_id
from proxy.logs import AccessEntry, configure
from proxy.metrics import Metrics

HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})


def _end_to_end(headers: CIMultiDictProxy[str], *drop: str) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP and k.lower() not in drop)


class Passthrough:
    def __init__(self, upstreams: dict[str, str], session: aiohttp.ClientSession) -> None:
        self.upstreams = upstreams
        self.session = session

    async def __call__(self, request: web.BaseRequest, rid: str | None = None) -> web.StreamResponse:
        name, _, rest = request.raw_path[1:].partition("/")
        if name not in self.upstreams:
            return web.Response(status=404)
        url = URL(f"{self.upstreams[name]}/{rest}", encoded=True)
        data = request.content if request.body_exists else None
        headers = _end_to_end(request.headers, "host")
        if rid is not None:
            headers[REQUEST_ID] = rid
        async with self.session.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        ) as upstream:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            out.headers.extend(_end_to_end(upstream.headers))
            if rid is not None:
                out.headers[REQUEST_ID] = rid
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out


class Conforming:
    """The pass-through plus the per-request duties every sidecar request has (see the module's docstring)."""

    TOTAL = 30.0  # seconds: the policy's default `total`

    def __init__(self, inner: Passthrough) -> None:
        self.inner = inner
        self.ledger = Ledger(Metrics())  # the sidecar's own series and access log, accounted the sidecar's way

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        rid = request_id(request.headers.get(REQUEST_ID))
        async with asyncio.timeout(self.TOTAL):
            response = await self.inner(request, rid)
        elapsed_ms = (time.monotonic() - started) * 1000
        upstream = request.raw_path[1:].partition("/")[0]
        self.ledger.record(AccessEntry(rid, upstream, "default", request.method, request.raw_path, response.status,
                                       elapsed_ms, response.body_length))
        return response


async def serve(port: int, upstreams: dict[str, str], conforming: bool) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    # Conforming: the policy's default connect and read timeouts, as the sidecar sets them.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3.0 if conforming else None,
                                    sock_read=10.0 if conforming else None)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=timeout,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    ) as session:
        handler = Passthrough(upstreams, session)
        runner = web.ServerRunner(web.Server(Conforming(handler) if conforming else handler), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--conforming", action="store_true", help="add timeouts, request ids, access log, metrics")
    parser.add_argument("upstreams", nargs="+", help="name=base_url")
    args = parser.parse_args()
    if args.conforming:
        configure("info")  # the access log goes to stderr, which the benchmark sends to a file
    uvloop.run(serve(args.port, dict(pair.split("=", 1) for pair in args.upstreams), args.conforming))


if __name__ == "__main__":
    main()
