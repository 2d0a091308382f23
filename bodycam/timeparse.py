"""Timestamps users type (light: the CLI parses them before it contacts the server)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bodycam.errors import InvalidInputError

# The instants a typed time may name. Postgres stores far wider ones than Python reads back:
# an expiry of 9999-12-31T23:59:59-14:00 (year 10000 in UTC) was stored, and every later read
# of the subjects failed; a recording time in 1 BC broke its case's video list.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def parse_when(text: str | None, flag: str, example: str = "2026-03-14") -> datetime | None:
    """An ISO 8601 date or time from 1900 to 3000, or None; InvalidInputError naming the flag
    and the expected form otherwise. A time without a zone is UTC (it was left to the
    database's zone, which shifted a period on a database not in UTC)."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"{flag} {text!r} is not an ISO 8601 date (e.g. {example})"
                                ) from None
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    if not EARLIEST <= when < LATEST:
        raise InvalidInputError(f"{flag} {text!r} is not between the years 1900 and 3000")
    return when


def parse_until(text: str | None, flag: str = "--to") -> datetime | None:
    """The inclusive end of a period: a date alone means the whole of that day (UTC), so
    `--from 2026-12-05 --to 2026-12-05` is that day (it was the day's first instant, and an
    export of that day had no rows)."""
    when = parse_when(text, flag)
    if when is not None and text is not None and len(text.strip()) == len("2026-12-05"):
        when += timedelta(days=1, microseconds=-1)
    return when


def parse_recorded_at(text: str | None) -> datetime | None:
    """When footage was recorded (ISO 8601), or None; InvalidInputError otherwise."""
    return parse_when(text, "--recorded-at", "2026-03-14T09:30:00Z")
