"""The ceiling of the stack: a bare aiohttp (uvloop) pass-through, `/<name>/<path>` -> that upstream.

One pooled ClientSession, bodies streamed both ways, hop-by-hop headers dropped; nothing else.
`python -m bench.passthrough --port P static=http://127.0.0.1:8080 ...`
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
import uvloop
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})


def _end_to_end(headers: CIMultiDictProxy[str], *drop: str) -> CIMultiDict[str]:
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP and k.lower() not in drop)


class Passthrough:
    def __init__(self, upstreams: dict[str, str], session: aiohttp.ClientSession) -> None:
        self.upstreams = upstreams
        self.session = session

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        name, _, rest = request.raw_path[1:].partition("/")
        if name not in self.upstreams:
            return web.Response(status=404)
        url = URL(f"{self.upstreams[name]}/{rest}", encoded=True)
        data = request.content if request.body_exists else None
        headers = _end_to_end(request.headers, "host")
        async with self.session.request(
            request.method, url, headers=headers, data=data, allow_redirects=False
        ) as upstream:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            out.headers.extend(_end_to_end(upstream.headers))
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out


async def serve(port: int, upstreams: dict[str, str]) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None),
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    ) as session:
        runner = web.ServerRunner(web.Server(Passthrough(upstreams, session)), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("upstreams", nargs="+", help="name=base_url")
    args = parser.parse_args()
    uvloop.run(serve(args.port, dict(pair.split("=", 1) for pair in args.upstreams)))


if __name__ == "__main__":
    main()
