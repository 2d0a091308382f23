"""The `bodycam` command: thin modules over the server's API (and the local stack)."""

from __future__ import annotations

import logging
import sys

from bodycam.cli import (
    audit_log,
    evidence,
    governance,
    local,
    redaction,
    session,
    watchlist,
)
from bodycam.cli.base import app, error_line
from bodycam.errors import BodycamError

__all__ = ["app", "main"]
# registered on import
_COMMANDS = (local, session, evidence, watchlist, audit_log, governance, redaction)


def main() -> None:
    """Console-script entry point. A typed error a command did not turn into its own line
    (e.g. a server answer missing a field, read after the call) still ends in one line."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except BodycamError as exc:
        error_line(str(exc))
        sys.exit(1)
