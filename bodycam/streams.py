"""Small helpers for byte streams (kept free of heavy imports: child processes use them)."""

from __future__ import annotations

from typing import IO


def read_full(stream: IO[bytes], n: int) -> bytes:
    """Read n bytes, looping over short reads; fewer only at the end of the stream."""
    chunks: list[bytes] = []
    left = n
    while left > 0:
        chunk = stream.read(left)
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
