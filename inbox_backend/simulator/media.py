"""Deterministic, on-the-fly media bodies: any size without holding the body in memory.

The body of ``media_id`` is a JPEG start marker, then a 64 KiB pseudo-random block derived from
the id repeated, then a JPEG end marker. Same id and size -> same bytes, every time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

_BLOCK: Final = 64 * 1024
_SOI: Final = b"\xff\xd8\xff\xe0"
_EOI: Final = b"\xff\xd9"


def _block(media_id: str) -> bytes:
    return hashlib.shake_256(b"whatsapp-sim-media:" + media_id.encode()).digest(_BLOCK)


def _byte_range(block: bytes, start: int, end: int, size: int) -> bytes:
    """Bytes ``[start, end)`` of a body built from ``block`` (``end - start`` around a block or less)."""
    first, last = start // _BLOCK, (end - 1) // _BLOCK
    data = (block * (last - first + 1))[start - first * _BLOCK : end - first * _BLOCK]
    if size >= len(_SOI) + len(_EOI):
        if start < len(_SOI):
            head = _SOI[start : min(end, len(_SOI))]
            data = head + data[len(head) :]
        tail_start = size - len(_EOI)
        if end > tail_start:
            cut = max(start, tail_start)
            data = data[: cut - start] + _EOI[cut - tail_start : end - tail_start]
    return data


def media_chunks(media_id: str, size: int, chunk_size: int = _BLOCK) -> Iterator[bytes]:
    """The body of ``media_id`` (``size`` bytes) in pieces of at most ``chunk_size`` bytes."""
    chunk_size = max(1, chunk_size)
    block = _block(media_id)
    position = 0
    while position < size:
        end = min(size, position + chunk_size)
        yield _byte_range(block, position, end, size)
        position = end


def media_bytes(media_id: str, size: int) -> bytes:
    """The whole body at once (for tests and small sizes only)."""
    return b"".join(media_chunks(media_id, size))


def media_sha256(media_id: str, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in media_chunks(media_id, size, 1024 * 1024):
        digest.update(chunk)
    return digest.hexdigest()
