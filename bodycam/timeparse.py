"""Timestamps users type (light: the CLI parses them before it contacts the server)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

from bodycam.errors import InvalidInputError

# The instants a typed time may name. Postgres stores far wider ones than Python reads back:
# an expiry of 9999-12-31T23:59:59-14:00 (year 10000 in UTC) was stored, and every later read
# of the subjects failed; a recording time in 1 BC broke its case's video list.
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


def parse_when(text: str | None, flag: str, example: str = "2026-03-14") -> datetime | None:
    """An ISO 8601 date or time from 1900 to 3000, or None; InvalidInputError naming the flag
    and the expected form otherwise. A time without a zone is UTC (it was left to the
    database's zone, which shifted a period on a database not in UTC); a date alone is its
    first instant, in its zone where it names one."""
    return _read(text, flag, example)[0] if text else None


def parse_period(date_from: str | None, date_to: str | None
                 ) -> tuple[datetime | None, datetime | None]:
    """A period's start and inclusive end (`--from`, `--to`; either may be missing). The end
    takes in the whole of what it names: a date alone, in any ISO 8601 spelling (2026-12-05,
    20261205, 2026-W49-6, 2026-12-05Z, 2026-12-05+02:00), the whole of that day, so `--from
    2026-12-05 --to 2026-12-05` is that day; a week (2026-W49) or a month (2026-12) the whole
    week or month (a week ended on its Monday: bb27); a time without a fraction of a second,
    the whole of its last unit (10 the hour, 10:30 the minute, 10:30:15 the second; rows are
    stamped to the microsecond). A spelling other than 2026-12-05 ended at the day's first
    instant, and a signed export of a busy day held no rows (bb23, bb24). An end before the
    start is refused."""
    start = parse_when(date_from, "from")
    end = None
    if date_to:
        end, named = _read(date_to, "to", "2026-03-14")
        if named:
            end += named - timedelta(microseconds=1)
    if start is not None and end is not None and end < start:
        raise InvalidInputError(f"to {date_to!r} is before its start, from {date_from!r}: the"
                                " period would be empty")
    return start, end


# A zone at the end of a typed date or time: Z, +05, -05:00, +0530.
_ZONE = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE)
# The ISO 8601 spellings of a date (2026-12-05, 20261205, 2026-W49-6, 2026W496, 2026-W49),
# as they begin a time (Python's own reader takes 20261206T0 for a date).
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{8}|\d{4}-?W\d{2}(-?\d)?")
_WEEK = re.compile(r"\d{4}-?W\d{2}")  # a week alone: seven days
_MONTH = re.compile(r"(\d{4})-(\d{2})")  # a month alone (ISO 8601's reduced precision)
_FULL_ZONE = re.compile(r"Z|[+-]\d{2}:?\d{2}", re.IGNORECASE)


def _read(text: str, flag: str, example: str) -> tuple[datetime, timedelta]:
    """The instant a typed date or time names first, and how much time it names (a day, an
    hour, a minute, a second; none for a time with a fraction of a second)."""
    typed = text.strip()
    day = _date_alone(typed)
    if day is not None:
        when, named = day
    else:
        try:
            when = datetime.fromisoformat(typed.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InvalidInputError(f"{flag} {text!r} is not an ISO 8601 date (e.g. {example})"
                                    ) from None
        when = when if when.tzinfo else when.replace(tzinfo=UTC)
        named = _time_named(typed)
    if not EARLIEST <= when < LATEST:
        raise InvalidInputError(f"{flag} {text!r} is not between the years 1900 and 3000")
    return when, named


def _date_alone(typed: str) -> tuple[datetime, timedelta] | None:
    """The first instant of a date, week or month typed without a time, in the zone it names
    (UTC if none), and how long it is; None for a time. Python reads any character between a
    date and a time, so 2026-12-05+05:00 was read as 05:00 that day (bb24)."""
    readings: list[tuple[str, str | None]] = [(typed, None)]
    zone = _ZONE.search(typed)
    if zone and zone.start():
        readings.append((typed[:zone.start()], zone.group()))
    for day_text, zone_text in readings:
        # A month takes a zone only in full (+05:00, -0500, Z): 2026-02-30 is no month of
        # February at -30 hours, and 2026-12-00 no December (bb28).
        month = _MONTH.fullmatch(day_text) if zone_text is None \
            or _FULL_ZONE.fullmatch(zone_text) else None
        if not (month or _DATE.fullmatch(day_text)):
            continue
        try:
            day = (date(int(month[1]), int(month[2]), 1) if month
                   else date.fromisoformat(day_text))
            tz = UTC if zone_text is None else datetime.fromisoformat(
                "2000-01-01T00:00" + ("+00:00" if zone_text.upper() == "Z" else zone_text)
            ).tzinfo
        except ValueError:
            continue
        named = (timedelta(days=7) if _WEEK.fullmatch(day_text)
                 else date(day.year + day.month // 12, day.month % 12 + 1, 1) - day if month
                 else timedelta(days=1))
        return datetime.combine(day, time(0), tz), named
    return None


def _time_named(typed: str) -> timedelta:
    """How much time a typed time names: its last unit (hour, minute or second), or none
    when it gives a fraction of a second."""
    day = _DATE.match(typed)
    clock = _ZONE.sub("", typed[day.end() + 1:] if day else "")
    if not clock or "." in clock or "," in clock:
        return timedelta(0)
    digits = sum(c.isdigit() for c in clock)
    return (timedelta(hours=1) if digits <= 2 else timedelta(minutes=1) if digits <= 4
            else timedelta(seconds=1))


def parse_recorded_at(text: str | None, flag: str = "recorded_at") -> datetime | None:
    """When footage was recorded (ISO 8601), or None; InvalidInputError otherwise, naming
    it as `flag`."""
    return parse_when(text, flag, "2026-03-14T09:30:00Z")
