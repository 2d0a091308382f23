"""Durable job state in Postgres: work units with leases, attempts, errors and quarantine.

The broker only carries (video_id, unit index). A unit is claimed with a lease token; a live
worker renews the lease; results are committed together with `complete`, which succeeds only
while the token still holds, so a duplicate delivery or a worker that lost its lease never
writes results twice. Expired leases are reaped and the unit is re-queued, up to max_attempts.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from bodycam import audit
from bodycam.db import Conn
from bodycam.errors import LeaseLostError


@dataclass(frozen=True)
class Lease:
    """A claimed work unit."""

    video_id: str
    idx: int
    token: uuid.UUID
    attempt: int
    start_s: float
    end_s: float


@dataclass(frozen=True)
class JobRow:
    """One video's processing state, as `bodycam jobs` shows it."""

    video_id: str
    case_id: str
    filename: str
    status: str
    stage: str
    progress: float
    attempts: int
    error: str | None
    updated_at: datetime

    def as_json(self) -> dict[str, object]:
        """The `jobs --json` contract plus a few helpful fields."""
        return {
            "video_id": self.video_id, "status": self.status, "stage": self.stage,
            "attempts": self.attempts, "error": self.error, "progress": round(self.progress, 3),
            "case": self.case_id, "filename": self.filename,
            "updated_at": self.updated_at.isoformat(),
        }


def create_units(conn: Conn, video_id: str, duration_s: float, chunk_s: float) -> int:
    """Split a video into bounded chunks, one pending work unit each; returns the count."""
    n = max(1, math.ceil(duration_s / chunk_s - 1e-9))
    for i in range(n):
        end = duration_s if i == n - 1 else (i + 1) * chunk_s
        conn.execute(
            "INSERT INTO work_units (video_id, idx, start_s, end_s) VALUES (%s, %s, %s, %s)",
            (video_id, i, i * chunk_s, end),
        )
    return n


def pending_units(conn: Conn, video_id: str) -> list[int]:
    """Indices of a video's units that wait for a worker."""
    rows = conn.execute(
        "SELECT idx FROM work_units WHERE video_id = %s AND state = 'pending' ORDER BY idx",
        (video_id,),
    ).fetchall()
    return [int(r["idx"]) for r in rows]


def claim(conn: Conn, video_id: str, idx: int, owner: str, lease_s: float) -> Lease | None:
    """Take a pending unit; None when it is done, quarantined or leased by a live worker."""
    row = conn.execute(
        "UPDATE work_units SET state = 'running', attempts = attempts + 1, lease_owner = %s,"
        " lease_token = gen_random_uuid(), lease_until = now() + make_interval(secs => %s),"
        " updated_at = now()"
        " WHERE video_id = %s AND idx = %s AND state = 'pending'"
        " RETURNING lease_token, attempts, start_s, end_s",
        (owner, lease_s, video_id, idx),
    ).fetchone()
    if row is None:
        return None
    conn.execute(
        "UPDATE videos SET status = 'processing', attempts = GREATEST(attempts, %s),"
        " stage = CASE WHEN stage = 'queued' THEN 'decoding' ELSE stage END,"
        " stage_times = stage_times || jsonb_build_object('processing', now()),"
        " updated_at = now() WHERE id = %s AND status IN ('queued', 'processing')",
        (row["attempts"], video_id),
    )
    return Lease(video_id, idx, row["lease_token"], int(row["attempts"]),
                 float(row["start_s"]), float(row["end_s"]))


def heartbeat(conn: Conn, lease: Lease, lease_s: float, progress: float, stage: str) -> None:
    """Renew the lease and record progress; raises LeaseLostError if another worker took over."""
    row = conn.execute(
        "UPDATE work_units SET lease_until = now() + make_interval(secs => %s), progress = %s,"
        " updated_at = now() WHERE video_id = %s AND idx = %s AND lease_token = %s"
        " AND state = 'running' RETURNING idx",
        (lease_s, progress, lease.video_id, lease.idx, lease.token),
    ).fetchone()
    if row is None:
        raise LeaseLostError(f"video {lease.video_id} unit {lease.idx}: lease lost")
    conn.execute(
        "UPDATE videos SET stage = %s, progress = (SELECT avg(CASE WHEN state = 'done' THEN 1"
        " ELSE progress END) FROM work_units WHERE video_id = %s), updated_at = now()"
        " WHERE id = %s AND status = 'processing'",
        (stage, lease.video_id, lease.video_id),
    )


def complete(conn: Conn, lease: Lease) -> bool:
    """Mark the unit done inside the caller's results transaction.

    Returns True when this was the video's last unit. Raises LeaseLostError (the caller's
    transaction then rolls back, so nothing is written twice) if the lease no longer holds.
    """
    row = conn.execute(
        "UPDATE work_units SET state = 'done', progress = 1, lease_until = NULL,"
        " last_error = NULL, updated_at = now() WHERE video_id = %s AND idx = %s"
        " AND lease_token = %s AND state = 'running' RETURNING idx",
        (lease.video_id, lease.idx, lease.token),
    ).fetchone()
    if row is None:
        raise LeaseLostError(f"video {lease.video_id} unit {lease.idx}: lease lost before commit")
    # Lock the video row so two last units finishing at once agree on who finalizes.
    conn.execute("SELECT 1 FROM videos WHERE id = %s FOR UPDATE", (lease.video_id,))
    left = conn.execute(
        "SELECT count(*) AS n FROM work_units WHERE video_id = %s AND state <> 'done'",
        (lease.video_id,),
    ).fetchone()
    last = left is not None and int(left["n"]) == 0
    conn.execute(
        "UPDATE videos SET progress = (SELECT avg(CASE WHEN state = 'done' THEN 1 ELSE progress"
        " END) FROM work_units WHERE video_id = %s), stage = %s, updated_at = now()"
        " WHERE id = %s",
        (lease.video_id, "finalizing" if last else "faces", lease.video_id),
    )
    return last


def fail(conn: Conn, key: str, lease: Lease, error: str, permanent: bool,
         max_attempts: int) -> bool:
    """Record a failed attempt; returns True when the unit should be queued again.

    A permanent error fails the video at once; a transient one is retried until max_attempts,
    after which the video is quarantined with the reason.
    """
    if permanent:
        state = "failed"
    elif lease.attempt >= max_attempts:
        state = "quarantined"
    else:
        state = "pending"
    row = conn.execute(
        "UPDATE work_units SET state = %s, last_error = %s, lease_until = NULL, updated_at = now()"
        " WHERE video_id = %s AND idx = %s AND lease_token = %s AND state = 'running'"
        " RETURNING idx",
        (state, error[:2000], lease.video_id, lease.idx, lease.token),
    ).fetchone()
    if row is None:
        return False  # someone else owns the unit now
    if state == "pending":
        conn.execute("UPDATE videos SET error = %s, updated_at = now() WHERE id = %s",
                     (error[:2000], lease.video_id))
        return True
    _end_video(conn, key, lease.video_id, state, f"unit {lease.idx}: {error}")
    return False


def _end_video(conn: Conn, key: str, video_id: str, status: str, error: str) -> None:
    audit.append(conn, key, "system:worker", f"processing.{status}",
                 {"video_id": video_id, "error": error[:500]})
    conn.execute(
        "UPDATE videos SET status = %s, error = %s, stage = %s,"
        " stage_times = stage_times || jsonb_build_object(%s::text, now()), updated_at = now()"
        " WHERE id = %s AND status NOT IN ('done')",
        (status, error[:2000], status, status, video_id),
    )
    # The other units of a failed video stop too: nothing waits for them.
    conn.execute(
        "UPDATE work_units SET state = %s, updated_at = now()"
        " WHERE video_id = %s AND state = 'pending'",
        (status, video_id),
    )


def reap(conn: Conn, key: str, max_attempts: int, stale_pending_s: float
         ) -> list[tuple[str, int]]:
    """Recover units whose worker died (lease expired) or whose message was lost.

    Returns (video_id, idx) pairs to queue again. A unit whose lease expired max_attempts
    times is quarantined, and its video with it.
    """
    expired = conn.execute(
        "SELECT video_id::text AS video_id, idx, attempts, lease_owner FROM work_units"
        " WHERE state = 'running' AND lease_until < now() FOR UPDATE SKIP LOCKED"
    ).fetchall()
    again: list[tuple[str, int]] = []
    for r in expired:
        vid, idx = str(r["video_id"]), int(r["idx"])
        reason = f"worker {r['lease_owner']} stopped renewing its lease (attempt {r['attempts']})"
        if int(r["attempts"]) >= max_attempts:
            conn.execute(
                "UPDATE work_units SET state = 'quarantined', last_error = %s, lease_until = NULL,"
                " updated_at = now() WHERE video_id = %s AND idx = %s", (reason, vid, idx))
            _end_video(conn, key, vid, "quarantined",
                       f"unit {idx}: {max_attempts} attempts failed; last: {reason}")
        else:
            conn.execute(
                "UPDATE work_units SET state = 'pending', last_error = %s, lease_until = NULL,"
                " updated_at = now() WHERE video_id = %s AND idx = %s", (reason, vid, idx))
            again.append((vid, idx))
    stale = conn.execute(
        "UPDATE work_units SET updated_at = now() WHERE state = 'pending'"
        " AND updated_at < now() - make_interval(secs => %s)"
        " RETURNING video_id::text AS video_id, idx",
        (stale_pending_s,),
    ).fetchall()
    again += [(str(r["video_id"]), int(r["idx"])) for r in stale]
    return again


def finish_video(conn: Conn, key: str, video_id: str, details: dict[str, object]) -> None:
    """Mark a video done once every unit is done and finalization has run."""
    row = conn.execute("SELECT status FROM videos WHERE id = %s", (video_id,)).fetchone()
    if row is None or row["status"] != "processing":
        return
    audit.append(conn, key, "system:worker", "processing.done", {"video_id": video_id, **details})
    conn.execute(
        "UPDATE videos SET status = 'done', stage = 'done', progress = 1, error = NULL,"
        " stage_times = stage_times || jsonb_build_object('done', now()), updated_at = now()"
        " WHERE id = %s AND status = 'processing'",
        (video_id,),
    )


def stale_finalizing(conn: Conn, stale_s: float) -> list[str]:
    """Videos whose units are all done but whose finalization never completed."""
    rows = conn.execute(
        "SELECT id::text AS id FROM videos v WHERE status = 'processing'"
        " AND updated_at < now() - make_interval(secs => %s)"
        " AND NOT EXISTS (SELECT 1 FROM work_units u WHERE u.video_id = v.id"
        " AND u.state <> 'done')",
        (stale_s,),
    ).fetchall()
    return [str(r["id"]) for r in rows]


def list_jobs(conn: Conn, status: str | None = None, limit: int = 500) -> list[JobRow]:
    """Videos with their processing state, newest first."""
    rows = conn.execute(
        "SELECT v.id::text AS video_id, v.case_id, v.original_filename, v.status, v.stage,"
        " v.progress, GREATEST(v.attempts, COALESCE(max(u.attempts), 0)) AS attempts,"
        " COALESCE(v.error, max(u.last_error)) AS error, v.updated_at"
        " FROM videos v LEFT JOIN work_units u ON u.video_id = v.id"
        " WHERE (%s::text IS NULL OR v.status = %s) GROUP BY v.id"
        " ORDER BY v.ingested_at DESC LIMIT %s",
        (status, status, limit),
    ).fetchall()
    return [JobRow(str(r["video_id"]), str(r["case_id"]), str(r["original_filename"]),
                   str(r["status"]), str(r["stage"]), float(r["progress"]),
                   int(r["attempts"]), r["error"], r["updated_at"])
            for r in rows]


def retry_video(conn: Conn, video_id: str) -> list[int]:
    """Queue a failed or quarantined video again from its unfinished units; returns them."""
    conn.execute(
        "UPDATE work_units SET state = 'pending', attempts = 0, lease_token = NULL,"
        " lease_until = NULL, updated_at = now() WHERE video_id = %s AND state <> 'done'",
        (video_id,),
    )
    conn.execute(
        "UPDATE videos SET status = 'queued', stage = 'queued', error = NULL, attempts = 0,"
        " updated_at = now() WHERE id = %s",
        (video_id,),
    )
    return pending_units(conn, video_id)
