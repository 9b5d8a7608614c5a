"""Reading an upstream body for the cache without ever holding more than `max_body + 1` bytes of it."""

from __future__ import annotations

import aiohttp


async def read_capped(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """(body, True) when the whole body fits in `limit` bytes; else (what was read, False): a prefix the
    caller still owes its client, followed by the rest of the stream."""
    parts: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            return b"".join(parts), True
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), False
