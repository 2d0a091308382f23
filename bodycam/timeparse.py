"""Timestamps users type (light: the CLI parses them before it contacts the server)."""

from __future__ import annotations

from datetime import datetime

from bodycam.errors import InvalidInputError


def parse_recorded_at(text: str | None) -> datetime | None:
    """An ISO 8601 timestamp, or None; raises InvalidInputError with the expected form."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(
            f"--recorded-at {text!r} is not ISO 8601 (e.g. 2026-03-14T09:30:00Z)") from None
