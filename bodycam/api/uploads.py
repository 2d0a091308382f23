"""Streaming uploads: the body goes to a private 0600 file while it is hashed, never to memory."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi.concurrency import run_in_threadpool

from bodycam.api.problems import ProblemError
from bodycam.config import Settings
from bodycam.storage import OriginalUpload

log = logging.getLogger(__name__)

FLUSH_BYTES = 1 << 20


@dataclass(frozen=True)
class Spooled:
    """A spooled upload: its private path, SHA-256 and size, and the descriptor whose lock
    says a live server holds it (`release` it once the file is removed)."""

    path: Path
    sha256: str
    size_bytes: int
    fd: int = -1

    def release(self) -> None:
        """Remove the spool file, then drop its lock."""
        self.path.unlink(missing_ok=True)
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)


# Every spool file is locked (flock) by the server process that writes it, until it is
# removed: a file no live process holds a lock on was left by a server killed mid-upload, and
# holds footage nobody recorded. The server's start and every upload sweep such files away
# (it was an hour, swept only by the next upload: bb36). One this young may not be locked yet.
ORPHAN_GRACE_S = 10.0


def upload_dir(settings: Settings) -> Path:
    """The private folder uploads are spooled into (0700, created on first use)."""
    folder = settings.server.upload_dir or settings.home_dir / "uploads"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def sweep_orphans(folder: Path, grace_s: float = ORPHAN_GRACE_S) -> int:
    """Remove the spool files no live process holds (their lock is free), those younger than
    `grace_s` aside; returns how many."""
    cutoff = time.time() - grace_s
    removed = 0
    for path in folder.glob("upload-*.part"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime >= cutoff:
                continue
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live upload's
            finally:
                os.close(fd)  # (a lock taken here goes with it)
            path.unlink()
            removed += 1
    if removed:
        log.warning("removed %d spooled upload file(s) left by a server that stopped", removed)
    return removed


def new_private_file(folder: Path) -> tuple[int, Path]:
    """A new empty file only this process's user can read (O_EXCL, 0600), locked by this
    process while its descriptor is open (sweep_orphans)."""
    for _ in range(10):
        path = folder / f"upload-{os.urandom(12).hex()}.part"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o600)
        except FileExistsError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd, path
    raise OSError("cannot create a private upload file")


class Tee:
    """Sends the body to the object store while it is spooled (an OriginalUpload begun for
    the SHA-256 the client declared), so that storing the original overlaps its arrival.

    Best effort: if the store fails meanwhile, the upload is dropped (`upload` becomes None)
    and the spooled file is stored afterwards as it would have been without it.
    """

    def __init__(self, upload: OriginalUpload) -> None:
        self.upload: OriginalUpload | None = upload

    def write(self, data: bytes) -> None:
        if self.upload is None:
            return
        try:
            self.upload.write(data)
        except Exception as exc:  # noqa: BLE001 - the spooled file is stored instead
            log.warning("streaming an upload to the store failed (%s); it is stored once "
                        "received", type(exc).__name__)
            self.upload.abort()
            self.upload = None


async def spool(chunks: AsyncIterator[bytes], settings: Settings, max_bytes: int,
                expected_sha256: str | None, tee: Tee | None = None) -> Spooled:
    """Write the body to a private file chunk by chunk while hashing it (and, with `tee`,
    while sending it to the object store).

    Over max_bytes: 413 while streaming. A digest that differs from `expected_sha256`: 422.
    The file is removed on every failure; on success the caller removes it (`release`).
    """
    folder = upload_dir(settings)
    await run_in_threadpool(sweep_orphans, folder)
    fd, path = await run_in_threadpool(new_private_file, folder)
    digest = hashlib.sha256()
    size = 0
    buf = bytearray()
    ok = False
    idle = settings.server.upload_idle_s
    it = aiter(chunks)
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(anext(it), timeout=idle)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise ProblemError(408, f"no byte of the upload arrived for {idle:g} s: it was"
                                        " dropped and nothing was stored") from None
            size += len(chunk)
            if size > max_bytes:
                raise ProblemError(413, f"upload is larger than limits.max_bytes ({max_bytes}"
                                        " bytes): nothing was stored")
            digest.update(chunk)
            buf += chunk
            if len(buf) >= FLUSH_BYTES:
                data = bytes(buf)
                buf.clear()
                await run_in_threadpool(_write_all, fd, data, tee)
        if buf:
            await run_in_threadpool(_write_all, fd, bytes(buf), tee)
        got = digest.hexdigest()
        if size == 0:
            raise ProblemError(422, "empty upload: send the video file as the request body")
        if expected_sha256 is not None and got != expected_sha256.strip().lower():
            raise ProblemError(422, f"upload SHA-256 {got} does not match X-Content-SHA256 "
                                    f"{expected_sha256.strip()[:64]}: nothing was stored")
        ok = True
        return Spooled(path, got, size, fd)
    finally:
        if not ok:
            path.unlink(missing_ok=True)
            os.close(fd)


def _write_all(fd: int, data: bytes, tee: Tee | None) -> None:
    view = memoryview(data)
    try:
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ProblemError(507, "the server has no space left to receive this upload:"
                                    " nothing was stored; an operator must free space in"
                                    " its upload folder") from None
        raise
    if tee is not None:
        tee.write(data)
