"""A worker's local cache of originals: content-addressed, bounded by size, LRU eviction."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
PART_PREFIX = ".part-"
# A file handed to a unit moments ago may not be open yet: never evict one touched this recently.
GRACE_S = 120.0


def cache_dir(home: Path) -> Path:
    """The cache of originals in a home (0700: evidence copies)."""
    path = home / "cache"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def adopt(cache: Path, path: Path, sha256: str) -> bool:
    """Make a private file that hashed to `sha256` the cached original of that SHA-256, by a
    hard link (no copy: False where the cache is on another file system, or it is cached
    already). Ingest does this for each upload it stored, so that a worker sharing this home
    finds the original without downloading it again."""
    target = cache / sha256
    if target.exists():
        return False
    try:
        os.link(path, target)
    except OSError:
        return False
    return True


def running_originals(conn: Any) -> set[str]:
    """SHA-256 of the originals that running units (of any worker) are processing."""
    return {str(r["sha256"]) for r in conn.execute(
        "SELECT DISTINCT v.sha256 FROM work_units u JOIN videos v ON v.id = u.video_id"
        " WHERE u.state = 'running' AND u.lease_until > now()").fetchall()}


def touch(path: Path) -> None:
    """Mark a cached file used now (mtime: atime is unreliable under relatime/noatime)."""
    os.utime(path)


def _last_used(st: os.stat_result) -> float:
    return max(st.st_atime, st.st_mtime)


def evict(cache: Path, max_bytes: int, in_use: set[str], grace_s: float = GRACE_S) -> list[str]:
    """Remove least recently used originals until the cache fits max_bytes.

    Files named in `in_use` (the SHA-256 of videos a running unit is processing) and files used
    within `grace_s` are never removed; the cache may then stay above its budget. Returns the
    names removed.
    """
    entries: list[tuple[float, int, Path]] = []
    total = 0
    for path in cache.iterdir():
        if path.name.startswith(PART_PREFIX):
            continue
        try:
            st = path.stat()
        except FileNotFoundError:  # another worker evicted it meanwhile
            continue
        entries.append((_last_used(st), st.st_size, path))
        total += st.st_size
    removed: list[str] = []
    now = time.time()
    for last, size, path in sorted(entries):
        if total <= max_bytes:
            break
        if path.name in in_use or now - last < grace_s:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        total -= size
        removed.append(path.name)
    if removed:
        log.info("cache: evicted %d originals, %d bytes remain", len(removed), total)
    if total > max_bytes:
        log.warning("cache: %d bytes in use exceed the %d-byte budget", total, max_bytes)
    return removed


def remove(cache: Path, sha256s: Iterable[str]) -> int:
    """Remove the cached originals of these videos (after retention purged them)."""
    n = 0
    for sha in sha256s:
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            continue
        try:
            (cache / sha).unlink()
            n += 1
        except FileNotFoundError:
            pass
    return n
