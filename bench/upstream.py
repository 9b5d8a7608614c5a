"""The benchmark's aiohttp (uvloop) upstream: the files nginx serves, a 20 ms endpoint and a body sink.

Used for the 20 ms scenario and the upload sink always, and for everything when nginx is not installed.
`python -m bench.upstream --port P --root DIR`
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import uvloop
from aiohttp import web

PRELOADED = ("small.json", "1mb.bin")  # served from memory; anything else under --root from disk
SLOW_SECONDS = 0.02


async def pace(started: float, done: int, rate: float) -> None:
    """Sleep so that `done` bytes since `started` do not exceed `rate` bytes/s (0: no limit)."""
    if rate > 0:
        ahead = done / rate - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)


def _content_type(name: str) -> str:
    return "application/json" if name.endswith(".json") else "application/octet-stream"


def build_app(root: Path) -> web.Application:
    preloaded = {name: (root / name).read_bytes() for name in PRELOADED}

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return web.Response(body=preloaded["small.json"], content_type="application/json")

    async def sink(request: web.Request) -> web.Response:
        """Read the whole body (at `?rate=` bytes/s if given) and say how many bytes arrived."""
        rate, received, started = float(request.query.get("rate", "0")), 0, time.monotonic()
        async for chunk in request.content.iter_any():
            received += len(chunk)
            await pace(started, received, rate)
        return web.json_response({"bytes": received})

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name in preloaded:
            return web.Response(body=preloaded[name], content_type=_content_type(name))
        if not (root / name).is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(root / name, headers={"Content-Type": _content_type(name)})

    app = web.Application()
    app.router.add_get("/slow", slow)
    app.router.add_post("/sink", sink)
    app.router.add_get("/{name}", static)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    args = parser.parse_args()
    uvloop.install()
    web.run_app(build_app(args.root), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
