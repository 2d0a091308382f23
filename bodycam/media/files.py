"""Local evidence files: refuse what is not a regular file, and take one private copy to work on.

The bytes Bodycam hashes, probes and stores must be the same bytes: a path that is probed and
then opened again can be swapped in between. So a file given to ingest is opened once (no
symlink followed, no FIFO or device opened for reading), copied into a private 0600 file in a
0700 folder while it is hashed, and everything after works on that copy.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bodycam.errors import InvalidMediaError

# Inputs that name a stream rather than a file: Bodycam is batch-only, there is no live mode.
STREAM_PREFIXES = ("rtsp://", "rtmp://", "rtp://", "udp://", "tcp://", "srt://", "http://",
                   "https://", "ftp://", "s3://", "pipe:")
COPY_BYTES = 1 << 20


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file, read in blocks (here, not in storage: the pipeline hashes its model
    files and must import without boto3, e.g. on a GPU machine that has only torch)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def printable(text: str, max_chars: int | None = None) -> str:
    """Text as one printable line: control characters, terminal escapes, newlines and bytes
    that are not UTF-8 are written as Python escapes (`\\x1b`, `\\n`, `\\udcff`); the rest
    is kept. Longer than max_chars, the middle is cut out."""
    out = []
    for ch in text:
        if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(ch)
        else:
            out.append(ascii(ch)[1:-1])
    line = "".join(out)
    if max_chars is not None and len(line) > max_chars:
        half = max_chars // 2 - 1
        line = f"{line[:half]}…{line[-half:]}"
    return line


def safe_name(name: str) -> str:
    """A file name fit for messages, logs and the database: printable and at most 300 chars."""
    return printable(name, 300)


def _why_os(exc: OSError) -> str:
    reasons = {
        errno.ENOENT: "no such file",
        errno.ENOTDIR: "no such file (a folder in the path is not a folder)",
        errno.ELOOP: "too many levels of symbolic links (a symlink loop)",
        errno.ENAMETOOLONG: "the path is too long",
        errno.EACCES: "permission denied: the file is not readable",
        errno.EPERM: "permission denied: the file is not readable",
        errno.EISDIR: "a folder, not a file",
    }
    return reasons.get(exc.errno or 0, f"cannot read the file ({os.strerror(exc.errno or 0)})")


def check_is_batch_file(name: str) -> Path:
    """Refuse URLs, pipes, devices, folders, symlinks and missing paths; return a regular file.

    Raises InvalidMediaError naming the input (escaped) and why it is refused.
    """
    label = safe_name(name)
    lowered = name.lower()
    if lowered == "-" or any(lowered.startswith(p) for p in STREAM_PREFIXES):
        raise InvalidMediaError(
            label, "streams and URLs are not accepted: Bodycam ingests recorded files only "
                   "(there is no live mode); download the recording and ingest the file")
    if not name or "\x00" in name:
        raise InvalidMediaError(label, "not a valid file name")
    path = Path(name)
    try:
        mode = path.lstat().st_mode
    except OSError as exc:
        raise InvalidMediaError(label, _why_os(exc)) from None
    _check_mode(mode, label)
    return path


def _check_mode(mode: int, label: str) -> None:
    if stat.S_ISLNK(mode):
        raise InvalidMediaError(label, "a symbolic link: ingest the file it points to")
    if stat.S_ISDIR(mode):
        raise InvalidMediaError(label, "a folder, not a file: name the video files to ingest")
    if not stat.S_ISREG(mode):
        raise InvalidMediaError(label, "not a regular file (device, pipe or socket): "
                                       "only recorded files are accepted")


@dataclass(frozen=True)
class PrivateCopy:
    """A private copy of an input file, with the SHA-256 and size of the bytes copied."""

    path: Path
    sha256: str
    size_bytes: int


@contextmanager
def private_copy(name: str, max_bytes: int) -> Iterator[PrivateCopy]:
    """Copy a local file once into a private temporary file while hashing it; remove it on exit.

    The source is opened without following a symlink and without blocking, and is checked to
    be the regular file that was looked at. Raises InvalidMediaError for anything else, an
    unreadable file or one over max_bytes.
    """
    label = safe_name(name)
    path = check_is_batch_file(name)
    before = path.lstat()
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise InvalidMediaError(label, _why_os(exc)) from None
    folder = tempfile.mkdtemp(prefix="bodycam-ingest-")  # 0700
    try:
        with os.fdopen(fd, "rb") as src:
            now = os.fstat(src.fileno())
            _check_mode(now.st_mode, label)
            if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
                raise InvalidMediaError(label, "the file was replaced while it was opened")
            target = Path(folder) / "original"
            digest = hashlib.sha256()
            size = 0
            out_fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                             0o600)
            with os.fdopen(out_fd, "wb") as dst:
                while True:
                    try:
                        chunk = src.read(COPY_BYTES)
                    except OSError as exc:
                        raise InvalidMediaError(label, _why_os(exc)) from None
                    if not chunk:
                        break
                    size += len(chunk)
                    if size > max_bytes:
                        raise InvalidMediaError(
                            label, f"larger than the limit of {max_bytes} bytes")
                    digest.update(chunk)
                    dst.write(chunk)
        yield PrivateCopy(target, digest.hexdigest(), size)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
