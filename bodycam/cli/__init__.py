"""The `bodycam` command: thin modules over the server's API (and the local stack)."""

from __future__ import annotations

import logging

from bodycam.cli import (
    audit_log,
    evidence,
    governance,
    local,
    redaction,
    session,
    watchlist,
)
from bodycam.cli.base import app

__all__ = ["app", "main"]
# registered on import
_COMMANDS = (local, session, evidence, watchlist, audit_log, governance, redaction)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()
