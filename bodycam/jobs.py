"""Durable job state in Postgres: work units with leases, attempts, errors and quarantine.

The broker only carries (video_id, unit index). A unit is claimed with a lease token; a live
worker renews the lease; results are committed together with `complete`, which succeeds only
while the token still holds, so a duplicate delivery or a worker that lost its lease never
writes results twice. Expired leases are reaped and the unit is re-queued, up to max_attempts.

A unit that failed waits before it runs again (`not_before`, exponential backoff with jitter),
and only the reaper queues it again once the wait is over, so a duplicate message cannot skip
the wait. Failures of a service (S3, Redis, Postgres, a model's process) have a budget of their
own: an outage of seconds or minutes never spends the attempts that quarantine a video.
"""

from __future__ import annotations

import enum
import math
import random
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from bodycam import audit
from bodycam.config import JobSettings
from bodycam.db import Conn
from bodycam.errors import ConflictError, InvalidInputError, LeaseLostError, NotFoundError
from bodycam.leases import WORK_UNITS


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
    notice: str | None = None  # what a done video's reader should know (orientation.notice)

    def as_json(self) -> dict[str, object]:
        """The `jobs --json` contract plus a few helpful fields."""
        return {
            "video_id": self.video_id, "status": self.status, "stage": self.stage,
            "attempts": self.attempts, "error": self.error, "progress": round(self.progress, 3),
            "case": self.case_id, "filename": self.filename,
            "updated_at": self.updated_at.isoformat(), "notice": self.notice,
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
    """Take a pending unit; None when it is done, quarantined, leased, or waiting to retry."""
    row = WORK_UNITS.claim(conn, (video_id, idx), owner, lease_s,
                           ready="not_before IS NULL OR not_before <= now()")
    if row is None:
        return None
    conn.execute(
        "UPDATE videos SET status = 'processing', attempts = GREATEST(attempts, %s),"
        " stage = CASE WHEN stage = 'queued' THEN 'decoding' ELSE stage END,"
        " stage_times = stage_times || jsonb_build_object('processing',"
        " COALESCE(stage_times->'processing', to_jsonb(now()))),"  # its first claim
        " updated_at = now() WHERE id = %s AND status IN ('queued', 'processing')",
        (row["attempts"], video_id),
    )
    return Lease(video_id, idx, row["lease_token"], int(row["attempts"]),
                 float(row["start_s"]), float(row["end_s"]))


def heartbeat(conn: Conn, lease: Lease, lease_s: float, progress: float, stage: str) -> None:
    """Renew the lease and record progress; raises LeaseLostError if another worker took over."""
    if not WORK_UNITS.renew(conn, (lease.video_id, lease.idx), lease.token, lease_s, progress):
        raise LeaseLostError(f"video {lease.video_id} unit {lease.idx}: lease lost")
    # The video's progress is shown, not relied on: a beat skips it while another session
    # holds the row (a unit finishing, or a lost host's backend not yet dropped), so the
    # lease is renewed without waiting behind that lock.
    conn.execute(
        "UPDATE videos SET stage = %s, progress = (SELECT avg(CASE WHEN state = 'done' THEN 1"
        " ELSE progress END) FROM work_units WHERE video_id = %s), updated_at = now()"
        " WHERE id = (SELECT id FROM videos WHERE id = %s AND status = 'processing'"
        " FOR UPDATE SKIP LOCKED)",
        (stage, lease.video_id, lease.video_id),
    )


def complete(conn: Conn, lease: Lease, computed_on: str,
             turned: dict[str, int] | None = None,
             damaged: dict[str, float] | None = None) -> bool:
    """Mark the unit done inside the caller's results transaction, with what computed its
    results (`computed_on`, e.g. 'decode cpu; detect mtcnn on cuda float32; ...') and, where
    it found no face, what its picture turned showed (`turned`, orientation.Turned's JSON),
    and the frames the decoder marked corrupt (`damaged`, ChunkDecoder.damaged).

    Returns True when this was the video's last unit. Raises LeaseLostError (the caller's
    transaction then rolls back, so nothing is written twice) if the lease no longer holds.
    """
    if WORK_UNITS.end(conn, (lease.video_id, lease.idx), lease.token,
                      "state = 'done', progress = 1, last_error = NULL, computed_on = %s,"
                      " turned = %s, damaged = %s",
                      (computed_on, Jsonb(turned) if turned else None,
                       Jsonb(damaged) if damaged else None)) is None:
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


class Failure(enum.Enum):
    """How a unit's attempt failed, which decides what happens next."""

    PERMANENT = "permanent"  # the input is bad: the video fails at once
    SERVICE = "service"  # a service or a model's process failed: back off, own budget
    ERROR = "error"  # anything else: back off, counts toward max_attempts


def backoff_s(n: int, cfg: JobSettings) -> float:
    """The wait before retry number n (1, 2, ...): base doubled each time, capped, jittered.

    "Equal jitter": half the capped exponential is kept and the other half drawn at random,
    so workers that failed together (an outage) do not all come back at the same instant.
    """
    full = min(cfg.retry_max_s, cfg.retry_base_s * 2.0 ** max(0, n - 1))
    return full / 2 + random.uniform(0, full / 2)


def fail(conn: Conn, key: str, lease: Lease, error: str, kind: Failure,
         cfg: JobSettings) -> str:
    """Record a failed attempt and release the unit; returns its new state.

    PERMANENT fails the video at once. SERVICE gives the attempt back and counts a service
    failure instead; ERROR counts the attempt. Either waits (backoff_s) before the reaper
    queues the unit again, and quarantines the video when its budget is spent. Returns
    'lost' when another worker owns the unit now (nothing is changed).
    """
    row = WORK_UNITS.held(conn, (lease.video_id, lease.idx), lease.token)
    if row is None:
        return "lost"
    if kind is Failure.PERMANENT:
        _release(conn, lease.video_id, lease.idx, "failed", int(row["attempts"]),
                 int(row["service_failures"]), error, 0.0)
        _end_video(conn, key, lease.video_id, "failed", f"unit {lease.idx}: {error}")
        return "failed"
    state = _released(conn, key, row, error, kind, cfg)
    if state == "pending":
        conn.execute("UPDATE videos SET error = %s, updated_at = now() WHERE id = %s",
                     (error[:2000], lease.video_id))
    return state


def _released(conn: Conn, key: str, row: dict[str, Any], error: str, kind: Failure,
              cfg: JobSettings) -> str:
    """Count a unit's failed attempt against its budget (SERVICE: a service failure, the
    attempt given back; ERROR: the attempt) and release it to wait (backoff_s), or quarantine
    it and its video once that budget is spent; returns 'pending' or 'quarantined'. The one
    accounting of a failure its worker recorded (fail) and of a lease that ran out (reap)."""
    attempts, service = int(row["attempts"]), int(row["service_failures"])
    if kind is Failure.SERVICE:
        attempts, service = max(0, attempts - 1), service + 1
        spent, wait = service >= cfg.max_service_failures, backoff_s(service, cfg)
        why = f"{service} service failures"
    else:
        spent, wait = attempts >= cfg.max_attempts, backoff_s(attempts, cfg)
        why = f"{attempts} attempts failed"
    vid, idx = str(row["video_id"]), int(row["idx"])
    state = "quarantined" if spent else "pending"
    _release(conn, vid, idx, state, attempts, service, error, wait)
    if spent:
        _end_video(conn, key, vid, state, f"unit {idx}: {why}; last: {error}")
    return state


def _release(conn: Conn, video_id: str, idx: int, state: str, attempts: int, service: int,
             error: str, wait: float) -> None:
    """Clear a unit's lease and record its state, budget and last error; a pending unit
    waits `wait` seconds before the reaper queues it."""
    conn.execute(
        "UPDATE work_units SET state = %s, attempts = %s, service_failures = %s,"
        " last_error = %s, lease_until = NULL, lease_token = NULL,"
        " not_before = CASE WHEN %s = 'pending' THEN now() + make_interval(secs => %s) END,"
        " updated_at = now() WHERE video_id = %s AND idx = %s",
        (state, attempts, service, error[:2000], state, wait, video_id, idx),
    )


def _end_video(conn: Conn, key: str, video_id: str, status: str, error: str) -> None:
    row = conn.execute("SELECT case_id FROM videos WHERE id = %s", (video_id,)).fetchone()
    audit.append(conn, key, "system:worker", f"processing.{status}",
                 {"video_id": video_id, "case": row["case_id"] if row else None,
                  "error": error[:500]})
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


def mark_unsent(conn: Conn, video_id: str, idxs: list[int]) -> None:
    """Pending units whose message could not be sent (the broker was down): the reaper's
    next run sends them, as units whose wait is over, not its stale re-send minutes on."""
    conn.execute("UPDATE work_units SET not_before = now() WHERE video_id = %s AND"
                 " idx = ANY(%s) AND state = 'pending' AND not_before IS NULL",
                 (video_id, idxs))


def reap(conn: Conn, key: str, cfg: JobSettings, stale_pending_s: float
         ) -> list[tuple[str, int]]:
    """Recover units whose worker died (lease expired), whose wait is over, or whose message
    was lost.

    Returns (video_id, idx) pairs to queue again. A unit whose lease expired max_attempts
    times is quarantined, and its video with it; otherwise it waits (backoff_s) like any
    failed attempt and is queued by a later call. A lease that lapsed across a restart of the
    database counts as a service failure, as its worker would have recorded it: a Postgres
    restart healed by `bodycam up` cost the unit in flight one of its attempts (bb41).
    """
    for r in WORK_UNITS.expired(conn):
        # A lease that lapsed in a database restart is the failure its worker would have
        # recorded, of a service; any other, the worker's own.
        if r["in_restart"]:
            _released(conn, key, r, f"the database restarted while worker {r['lease_owner']}"
                      f" held the unit (attempt {r['attempts']}): a service failure",
                      Failure.SERVICE, cfg)
        else:
            _released(conn, key, r, f"worker {r['lease_owner']} stopped renewing its lease"
                      f" (attempt {r['attempts']})", Failure.ERROR, cfg)
    # Rows another session locks are skipped, not waited for (as `expired` does).
    due = conn.execute(
        "UPDATE work_units SET not_before = NULL, updated_at = now()"
        " WHERE (video_id, idx) IN (SELECT video_id, idx FROM work_units"
        " WHERE state = 'pending' AND not_before <= now() FOR UPDATE SKIP LOCKED)"
        " RETURNING video_id::text AS video_id, idx",
    ).fetchall()
    stale = conn.execute(
        "UPDATE work_units SET updated_at = now()"
        " WHERE (video_id, idx) IN (SELECT video_id, idx FROM work_units WHERE state = 'pending'"
        " AND not_before IS NULL AND updated_at < now() - make_interval(secs => %s)"
        " FOR UPDATE SKIP LOCKED) RETURNING video_id::text AS video_id, idx",
        (stale_pending_s,),
    ).fetchall()
    return [(str(r["video_id"]), int(r["idx"])) for r in (*due, *stale)]


def finish_video(conn: Conn, key: str, video_id: str, details: dict[str, object],
                 notice: str | None = None) -> None:
    """Mark a video done once every unit is done and finalization has run, with what its
    reader should know (`notice`, or none)."""
    row = conn.execute("SELECT status, case_id FROM videos WHERE id = %s",
                       (video_id,)).fetchone()
    if row is None or row["status"] != "processing":
        return
    audit.append(conn, key, "system:worker", "processing.done",
                 {"video_id": video_id, "case": row["case_id"], **details})
    conn.execute(
        "UPDATE videos SET status = 'done', stage = 'done', progress = 1, error = NULL,"
        " notice = %s, stage_times = stage_times || jsonb_build_object('done', now()),"
        " updated_at = now() WHERE id = %s AND status = 'processing'",
        (notice, video_id),
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


# A video's states (the videos table's CHECK).
VIDEO_STATUSES = ("queued", "processing", "done", "failed", "quarantined")


def list_jobs(conn: Conn, status: str | None = None, limit: int = 500) -> list[JobRow]:
    """Videos with their processing state, newest first; a status that is none of
    VIDEO_STATUSES is refused (it listed nothing, as if no video were in it: bb33)."""
    if status is not None and status not in VIDEO_STATUSES:
        raise InvalidInputError(f"status {status[:40]!r}: choose from "
                                f"{', '.join(VIDEO_STATUSES)}")
    rows = conn.execute(
        "SELECT v.id::text AS video_id, v.case_id, v.original_filename, v.status, v.stage,"
        " v.progress, GREATEST(v.attempts, COALESCE(max(u.attempts), 0)) AS attempts,"
        " COALESCE(v.error, max(u.last_error)) AS error, v.updated_at, v.notice"
        " FROM videos v LEFT JOIN work_units u ON u.video_id = v.id"
        " WHERE (%s::text IS NULL OR v.status = %s) GROUP BY v.id"
        " ORDER BY v.ingested_at DESC, v.id LIMIT %s",
        (status, status, limit),
    ).fetchall()
    return [JobRow(str(r["video_id"]), str(r["case_id"]), str(r["original_filename"]),
                   str(r["status"]), str(r["stage"]), float(r["progress"]),
                   int(r["attempts"]), r["error"], r["updated_at"], r["notice"])
            for r in rows]


NO_EMBEDDING = "no embedding"  # how `computed_on` ends for a unit analysed under redact-only


Units = dict[tuple[str, str], list[int]]  # unit indexes by (video, case)


def requeue_unembedded(conn: Conn) -> tuple[Units, Units]:
    """Queue again the units of done videos whose faces have no embeddings because of the
    redact-only profile (analysed under it, or stored before it and emptied by the switch),
    so that they can be searched; returns them, and the units of that kind left as they are,
    by (video, case).

    Left alone: a unit whose tracks carry a match (re-analysis replaces a unit's tracks, and
    a decided match is a record; its other faces stay unsearchable, so the caller names it),
    and a unit with a track retention purged (its bystanders' data expired; nothing brings
    it back). Videos still in work finish as they are."""
    rows = conn.execute(
        "SELECT u.video_id::text AS video_id, v.case_id, u.idx, EXISTS (SELECT 1 FROM tracks t"
        " WHERE t.video_id = u.video_id AND t.chunk_idx = u.idx AND t.purged_at IS NULL"
        " AND EXISTS (SELECT 1 FROM matches m WHERE m.track_id = t.id)) AS matched"
        " FROM work_units u JOIN videos v ON v.id = u.video_id"
        " WHERE v.status = 'done' AND u.state = 'done'"
        " AND (u.computed_on LIKE %s OR EXISTS (SELECT 1 FROM detections d"  # emptied:
        " WHERE d.video_id = u.video_id AND d.chunk_idx = u.idx AND d.track_id IS NOT NULL"
        " AND d.model IS NOT NULL AND d.embedding IS NULL))"  # a model named, no vector
        " AND NOT EXISTS (SELECT 1 FROM tracks t WHERE t.video_id = u.video_id"
        " AND t.chunk_idx = u.idx AND t.purged_at IS NOT NULL)"
        " ORDER BY v.ingested_at, v.id, u.idx FOR UPDATE OF v, u",
        (f"%; {NO_EMBEDDING}",)).fetchall()
    units: Units = {}
    left: Units = {}
    for r in rows:
        (left if r["matched"] else units).setdefault(
            (str(r["video_id"]), str(r["case_id"])), []).append(int(r["idx"]))
    for (video_id, _), idxs in units.items():
        _queue_again(conn, video_id, idxs)
    return units, left


def _queue_again(conn: Conn, video_id: str, idxs: list[int]) -> None:
    """Set these units of a video pending with their attempts spent on nothing, and the
    video queued: the one reset behind a retry and a re-analysis."""
    conn.execute(
        "UPDATE work_units SET state = 'pending', attempts = 0, service_failures = 0,"
        " progress = 0, last_error = NULL, lease_token = NULL, lease_until = NULL,"
        " not_before = NULL, updated_at = now() WHERE video_id = %s AND idx = ANY(%s)",
        (video_id, idxs))
    conn.execute(
        "UPDATE videos SET status = 'queued', stage = 'queued', error = NULL, attempts = 0,"
        " progress = (SELECT avg(CASE WHEN state = 'done' THEN 1 ELSE 0 END) FROM work_units"
        " WHERE video_id = %s), updated_at = now() WHERE id = %s", (video_id, video_id))


def retry_video(conn: Conn, video_id: str) -> list[int]:
    """Queue a failed or quarantined video again from its unfinished units; returns them.
    Any other video is refused: a queued or processing one is already on its way, and
    re-queueing a done one (every unit done) would leave it queued with nothing to run."""
    row = conn.execute("SELECT status FROM videos WHERE id = %s FOR UPDATE",
                       (video_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no video {video_id}")
    if row["status"] not in ("failed", "quarantined"):
        raise ConflictError(f"video {video_id} is {row['status']}: only a failed or "
                            "quarantined video can be retried")
    idxs = [int(r["idx"]) for r in conn.execute(
        "SELECT idx FROM work_units WHERE video_id = %s AND state <> 'done' ORDER BY idx",
        (video_id,)).fetchall()]
    _queue_again(conn, video_id, idxs)
    return idxs
