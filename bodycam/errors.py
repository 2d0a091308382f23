"""Typed errors: PermanentError is bad input (never retried), TransientError is worth a retry."""

from __future__ import annotations

import errno

# A host out of disk, descriptors or memory (or a read-only or failing disk): the host's
# condition, not the input's. Work that meets one is retried, and a request answered 503.
HOST_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.ENOMEM,
                         errno.EROFS, errno.EIO, errno.EAGAIN})


def host_error(exc: BaseException) -> bool:
    """Whether an error is the host's condition (HOST_ERRNOS) rather than a fault."""
    return isinstance(exc, OSError) and exc.errno in HOST_ERRNOS


class BodycamError(Exception):
    """Base of every error Bodycam raises on purpose; the message is shown to the user."""


class PermanentError(BodycamError):
    """The input itself is wrong: retrying cannot help (corrupt file, no face, bad argument)."""


class TransientError(BodycamError):
    """A service or resource failed for now: the work is retried."""


class ConfigError(PermanentError):
    """Settings are missing or invalid."""


class InvalidMediaError(PermanentError):
    """A file is not a video Bodycam accepts; the message names the file and the reason."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class InvalidInputError(PermanentError):
    """A command's arguments are wrong or incomplete."""


class ConflictError(InvalidInputError):
    """The request clashes with the current state: the thing exists already, or is not in a
    state the action applies to (HTTP 409)."""


class NotFoundError(PermanentError):
    """An id names nothing that exists."""


class ModelUnavailableError(TransientError):
    """A configured model cannot be loaded or its process died; the message says what to do.

    Not a PermanentError: the evidence is not at fault. A worker retries with backoff and,
    if the model stays unavailable, quarantines the video with this reason for an operator.
    """


class LeaseLostError(TransientError):
    """Another worker took over this work unit; this worker's results must not be written."""


class StackError(BodycamError):
    """The embedded stack could not start or stop a service."""
