"""What one link of the chain costs: `python -m bench.chain_cost [--calls 200000]`.

Times a chain of stages that only call `next`, folded by `proxy.pipeline.chain` exactly as the data path is, for
0, 1 and 9 such stages, and prints the cost per stage. The data path's ten stages each do real work besides;
this is the price of the indirection alone.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from proxy.exchange import Exchange, Next, Reply, Stage
from proxy.pipeline import chain


class PassThrough:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        return await next(ex)


class Last:
    async def __call__(self, ex: Exchange, next: Next) -> Reply:
        return ex  # type: ignore[return-value]  # the bench's stand-in: no reply is made


async def per_call(stages: int, calls: int) -> float:
    links: list[Stage] = [PassThrough() for _ in range(stages)]
    first = chain([*links, Last()])
    ex = object()
    started = time.perf_counter()
    for _ in range(calls):
        await first(ex)  # type: ignore[arg-type]
    return (time.perf_counter() - started) / calls * 1e6


async def main(calls: int) -> None:
    base = await per_call(0, calls)
    for stages in (1, 9):
        took = await per_call(stages, calls)
        print(f"{stages} pass-through stage(s): {took:.2f} µs per call, {(took - base) / stages:.2f} µs per stage")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().calls))
