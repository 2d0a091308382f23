"""Leases on the rows of a work table: the work units of processing, the redaction jobs.

A worker claims a waiting row: it becomes `running` with a fresh token, its attempts counted
and a deadline (`lease_until`). The worker renews the deadline while it makes progress
(`processing.Heartbeat`), and changes the row only while the token is still its own and the
row still `running`: a worker that lost its lease (paused, cut off, too slow) finds it so and
writes nothing. A reaper takes back rows whose deadline passed. What a table does around
that (backoffs, quarantine, its video's state) stays with the table's own module.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from bodycam.db import Conn


@dataclass(frozen=True)
class LeasedTable:
    """A table whose rows workers lease: its name, key columns and waiting state."""

    name: str
    key: tuple[str, ...]
    waiting: str

    def _sql(self, text: str) -> sql.Composed:
        """`text` with {table} and {key} (its key columns equal to parameters) filled in."""
        key = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(c))
                                   for c in self.key)
        return sql.SQL(text).format(table=sql.Identifier(self.name), key=key)

    def claim(self, conn: Conn, key: tuple[Any, ...], owner: str, lease_s: float,
              also: str = "", ready: str = "TRUE") -> dict[str, Any] | None:
        """Take the row if it waits (and `ready` holds); its row after, or None. `also`:
        more assignments (a leading comma each)."""
        row = conn.execute(self._sql(
            "UPDATE {table} SET state = 'running', attempts = attempts + 1, lease_owner = %s,"
            " lease_token = gen_random_uuid(), lease_until = now() + make_interval(secs => %s),"
            " updated_at = now()" + also + " WHERE {key} AND state = %s AND (" + ready + ")"
            " RETURNING *"), (owner, lease_s, *key, self.waiting)).fetchone()
        return dict(row) if row else None

    def renew(self, conn: Conn, key: tuple[Any, ...], token: uuid.UUID, lease_s: float,
              progress: float) -> bool:
        """Move the deadline on and record progress; False once the lease is another's."""
        row = conn.execute(self._sql(
            "UPDATE {table} SET lease_until = now() + make_interval(secs => %s),"
            " progress = %s, updated_at = now() WHERE {key} AND lease_token = %s"
            " AND state = 'running' RETURNING state"),
            (lease_s, progress, *key, token)).fetchone()
        return row is not None

    def end(self, conn: Conn, key: tuple[Any, ...], token: uuid.UUID, sets: str,
            params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        """Apply `sets` (assignments, with `params`) and clear the deadline, if the lease is
        still this token's; the row after, or None once it is another's."""
        row = conn.execute(self._sql(
            "UPDATE {table} SET " + sets + ", lease_until = NULL, updated_at = now()"
            " WHERE {key} AND lease_token = %s AND state = 'running' RETURNING *"),
            (*params, *key, token)).fetchone()
        return dict(row) if row else None

    def held(self, conn: Conn, key: tuple[Any, ...], token: uuid.UUID
             ) -> dict[str, Any] | None:
        """The row, locked, if the lease is still this token's; else None."""
        row = conn.execute(self._sql(
            "SELECT * FROM {table} WHERE {key} AND lease_token = %s AND state = 'running'"
            " FOR UPDATE"), (*key, token)).fetchone()
        return dict(row) if row else None

    def extend_running(self, conn: Conn, lease_s: float) -> None:
        """Give every running row renewed since the database server started at least
        `lease_s` more (after_outage); `updated_at` is left as it is (`expired`)."""
        conn.execute(self._sql(
            "UPDATE {table} SET lease_until = greatest(lease_until,"
            " now() + make_interval(secs => %s)) WHERE state = 'running'"
            " AND updated_at >= pg_postmaster_start_time()"), (lease_s,))

    def expired(self, conn: Conn) -> list[dict[str, Any]]:
        """Running rows whose deadline passed (their worker stopped renewing), locked; rows
        another session locks are skipped, not waited for: that session may be a lost host's,
        alive on the server until its connection is found dead (infra/DEPLOY.md).

        Each row says `in_restart` when its lease was last renewed before the database
        server started: its worker could not renew it, and whatever the worker recorded of
        its failure was lost with the server (a service's failure, not the work's; bb41)."""
        return [dict(r) for r in conn.execute(self._sql(
            "SELECT *, updated_at < pg_postmaster_start_time() AS in_restart FROM {table}"
            " WHERE state = 'running' AND lease_until < now() FOR UPDATE SKIP LOCKED")
            ).fetchall()]


WORK_UNITS = LeasedTable("work_units", ("video_id", "idx"), "pending")
REDACTION_JOBS = LeasedTable("redaction_jobs", ("id",), "queued")


def after_outage(conn: Conn, lease_s: float, reap_interval_s: float) -> float | None:
    """Seconds since the reaper's last run against the database, when that was longer ago
    than it runs (three intervals) and than half a lease: the database (or the scheduler)
    did not answer meanwhile. The leases in flight then get a lease's time to be renewed
    before any is taken back: a database paused past a lease let every lease lapse, and the
    reaper's first run on waking took each back as its worker's crash before the worker,
    waiting on the same database, could renew it (bb55: three pauses quarantined a video).
    A lease last renewed before the database server started gets none: its worker's
    connection went with the server (`expired`: in_restart). Call it first in each run, in
    the run's transaction; None when the last run was recent."""
    row = conn.execute(
        "WITH prev AS (SELECT seen_at FROM reaper_clock WHERE id = 1 FOR UPDATE)"
        " UPDATE reaper_clock r SET seen_at = greatest(prev.seen_at, now()) FROM prev"
        " WHERE r.id = 1 RETURNING extract(epoch FROM now() - prev.seen_at)::float8 AS gap"
        ).fetchone()
    gap = float(row["gap"]) if row is not None else 0.0
    if gap <= max(3 * reap_interval_s, lease_s / 2):
        return None
    for table in (WORK_UNITS, REDACTION_JOBS):
        table.extend_running(conn, lease_s)
    return gap
