"""Timestamps users type (light: the CLI parses them before it contacts the server)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

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


def parse_period(date_from: str | None, date_to: str | None
                 ) -> tuple[datetime | None, datetime | None]:
    """A period's start and inclusive end (`--from`, `--to`; either may be missing). The end
    takes in the whole of what it names: a date alone, in any ISO 8601 spelling (2026-12-05,
    20261205, 2026-W49-6, 2026-12-05Z), the whole of that day, so `--from 2026-12-05 --to
    2026-12-05` is that day; a time without a fraction of a second, the whole of that second
    (rows are stamped to the microsecond). A spelling other than 2026-12-05 ended at the
    day's first instant, and a signed export of a busy day held no rows (bb23). An end
    before the start is refused."""
    start, end = parse_when(date_from, "--from"), parse_when(date_to, "--to")
    if end is not None and date_to is not None:
        typed = date_to.strip().upper().removesuffix("Z")
        try:
            date.fromisoformat(typed)
            end += timedelta(days=1, microseconds=-1)
        except ValueError:  # a time
            if "." not in typed and "," not in typed:
                end += timedelta(seconds=1, microseconds=-1)
    if start is not None and end is not None and end < start:
        raise InvalidInputError(f"--to {date_to!r} is before --from {date_from!r}: the period"
                                " would be empty")
    return start, end


def parse_recorded_at(text: str | None) -> datetime | None:
    """When footage was recorded (ISO 8601), or None; InvalidInputError otherwise."""
    return parse_when(text, "--recorded-at", "2026-03-14T09:30:00Z")
