"""Redaction plans and renders as durable jobs run by the workers.

A plan runs two detectors on every second frame of a video and a render decodes and encodes
every frame: minutes to hours of CPU for real footage. They run on the workers (gpu queue),
not in the server: the server holds the audit and export keys and decodes no uploaded
media, a request is never held for the length of a video, and a server restart loses no
work. State lives in Postgres (`redaction_jobs`, migration 020), as for work units: a
worker claims a job with a lease it renews while it makes progress, stores what it made in
the object store and ends the job `computed` with its result, only while its lease holds.
A job whose worker died goes back to the queue when its lease expires (the reaper), and
fails after `jobs.max_attempts`; a service's failure does not count as an attempt. The
server alone records a computed job (bodycam.actions.redaction.record_job): the plan, or the
derivative's custody row and its sealed audit row, under the account that asked for it as it
stands then.
"""

from __future__ import annotations

import json
import logging
import tempfile
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bodycam import audit, jobs
from bodycam.config import JobSettings
from bodycam.context import Context
from bodycam.db import Conn, uid
from bodycam.errors import LeaseLostError, TransientError
from bodycam.leases import REDACTION_JOBS
from bodycam.media.files import sha256_file
from bodycam.pipeline.centerface import plan_detector
from bodycam.queue import REDACTION_JOB
from bodycam.redaction import (
    Choices,
    Decision,
    Plan,
    box_from_json,
    build_report,
    compute_plan,
    contact_sheet,
    dense_pipeline,
    on_grid,
    pdf_report,
    plan_grid,
    render,
    report_lines,
)
from bodycam.storage import REDACTIONS, ObjectStore

log = logging.getLogger(__name__)
PLAN, RENDER = "plan", "render"
OPEN = ("queued", "running", "computed")


@dataclass(frozen=True)
class JobLease:
    """A claimed redaction job."""

    job_id: str
    token: uuid.UUID
    attempt: int
    kind: str
    video_id: str
    case_id: str
    requested_by: str
    request: dict[str, Any]


def create(conn: Conn, video_id: str, case_id: str, kind: str, requested_by: str,
           request: dict[str, Any] | None = None) -> str:
    """Queue a job; a plan job for a video that has one open already is that one (one plan
    is computed at a time per video). Returns the job's id; the caller sends it."""
    job_id = str(uuid.uuid4())
    row = conn.execute(
        "INSERT INTO redaction_jobs (id, video_id, case_id, kind, requested_by, request)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING id::text AS id",
        (job_id, video_id, case_id, kind, requested_by, json.dumps(request or {}))).fetchone()
    if row is not None:
        return str(row["id"])
    found = open_plan_job(conn, video_id)
    assert found is not None, "a plan job conflicted and none is open"
    return found


def send(ctx: Context, job_id: str) -> None:
    """Queue a job's message. One the broker could not take is marked, and the reaper's next
    run once the broker is back sends it (it waited for the stale re-send, four leases after
    it was asked, however soon the broker was back: bb45)."""
    try:
        ctx.send(REDACTION_JOB, job_id)
    except TransientError:
        log.warning("redaction job %s: broker unreachable; the reaper will send it", job_id)
        ctx.mark_unsent(f"redaction job {job_id}", lambda conn: conn.execute(
            "UPDATE redaction_jobs SET unsent = true WHERE id = %s AND state = 'queued'",
            (job_id,)))


def open_renders(conn: Conn, requested_by: str) -> int:
    """How many renders an account asked for that are not recorded or ended yet."""
    row = conn.execute("SELECT count(*) AS n FROM redaction_jobs WHERE requested_by = %s AND"
                       " kind = 'render' AND state = ANY(%s)",
                       (requested_by, list(OPEN))).fetchone()
    return int(row["n"]) if row else 0


def open_plan_job(conn: Conn, video_id: str) -> str | None:
    """The id of the video's plan job still queued, running or not yet recorded."""
    row = conn.execute("SELECT id::text AS id FROM redaction_jobs WHERE video_id = %s AND"
                       " kind = 'plan' AND state = ANY(%s)", (video_id, list(OPEN))).fetchone()
    return str(row["id"]) if row else None


def load(conn: Conn, job_id: str, lock: bool = False) -> dict[str, Any] | None:
    """A job's row (locked for the caller's transaction with `lock`), or None."""
    if uid(job_id) is None:
        return None
    row = conn.execute("SELECT * FROM redaction_jobs WHERE id = %s"
                       + (" FOR UPDATE" if lock else ""), (job_id,)).fetchone()
    return dict(row) if row else None


def claim(conn: Conn, job_id: str, owner: str, lease_s: float) -> JobLease | None:
    """Take a queued job; None when it is taken, ended or unknown."""
    row = REDACTION_JOBS.claim(conn, (job_id,), owner, lease_s, also=", progress = 0")
    if row is None:
        return None
    return JobLease(str(row["id"]), row["lease_token"], int(row["attempts"]), str(row["kind"]),
                    str(row["video_id"]), str(row["case_id"]), str(row["requested_by"]),
                    dict(row["request"]))


def heartbeat(conn: Conn, lease: JobLease, lease_s: float, progress: float) -> None:
    """Renew the lease and record progress; raises LeaseLostError once it is another's."""
    if not REDACTION_JOBS.renew(conn, (lease.job_id,), lease.token, lease_s, progress):
        raise LeaseLostError(f"redaction job {lease.job_id}: lease lost")


def complete(conn: Conn, lease: JobLease, result: dict[str, Any]) -> None:
    """End the job `computed` with its result; raises LeaseLostError once it is another's."""
    if REDACTION_JOBS.end(conn, (lease.job_id,), lease.token,
                          "state = 'computed', result = %s, progress = 1, error = NULL",
                          (json.dumps(result),)) is None:
        raise LeaseLostError(f"redaction job {lease.job_id}: lease lost before its result")


def fail(conn: Conn, key: str, lease: JobLease, error: str, kind: jobs.Failure,
         cfg: JobSettings) -> str:
    """Record a failed attempt; returns the job's state: `queued` again (a service failed,
    which spends no attempt; or attempts are left) or `failed` (bad input, or the last
    attempt; audited). `lost` when the lease was another's already."""
    ended = kind is jobs.Failure.PERMANENT or (
        kind is jobs.Failure.ERROR and lease.attempt >= cfg.max_attempts)
    row = REDACTION_JOBS.end(
        conn, (lease.job_id,), lease.token,
        "state = %s, error = %s, lease_token = NULL, attempts = attempts - %s",
        ("failed" if ended else "queued", error[:2000], 1 if kind is jobs.Failure.SERVICE else 0))
    if row is not None and row["state"] == "failed":
        _audit_failed(conn, key, row, error)
    return str(row["state"]) if row else "lost"


def _audit_failed(conn: Conn, key: str, job: dict[str, Any], error: str) -> None:
    """A job that ended failed is on record, as a video's failed processing is (a render
    whose workers died ended failed with only its request in the log: bb22)."""
    audit.append(conn, key, "system:worker", "redaction.failed", {
        "job_id": str(job["id"]), "kind": job["kind"], "video_id": str(job["video_id"]),
        "case": job["case_id"], "requested_by": job["requested_by"], "reason": error[:500]})


def reap(conn: Conn, store: ObjectStore, key: str, cfg: JobSettings, stale_queued_s: float
         ) -> list[str]:
    """Jobs to send again: those whose worker stopped renewing its lease (failed after
    max_attempts; audited), queued ones whose message could not be sent (`send`), and
    queued ones whose message was lost (none sent for stale_queued_s). What the lost claim of
    a render stored is deleted: no one else deletes it (a worker killed after storing the MP4
    left it in the store, unrecorded, for good: bb22)."""
    again: list[str] = []
    for r in REDACTION_JOBS.expired(conn):
        attempts = int(r["attempts"])
        if r["in_restart"]:  # a service failure, which spends no attempt (as in fail())
            reason = (f"the database restarted while worker {r['lease_owner']} held the job"
                      f" (attempt {attempts}): a service failure")
            attempts, state = max(0, attempts - 1), "queued"
        else:
            reason = f"worker {r['lease_owner']} stopped renewing its lease (attempt {attempts})"
            state = "failed" if attempts >= cfg.max_attempts else "queued"
        conn.execute("UPDATE redaction_jobs SET state = %s, error = %s, attempts = %s,"
                     " lease_until = NULL, lease_token = NULL, updated_at = now() WHERE id = %s",
                     (state, reason, attempts, r["id"]))
        log.warning("redaction job %s: %s: %s", r["id"], reason, state)
        if r["kind"] == RENDER and r["lease_token"] is not None:
            _discard(store, str(r["id"]), str(r["video_id"]), dict(r["request"]),
                     r["lease_token"])
        if state == "failed":
            _audit_failed(conn, key, r, reason)
        else:
            again.append(str(r["id"]))
    stale = conn.execute(
        "UPDATE redaction_jobs SET unsent = false, updated_at = now() WHERE id IN (SELECT id"
        " FROM redaction_jobs WHERE state = 'queued' AND (unsent OR updated_at < now()"
        " - make_interval(secs => %s)) FOR UPDATE SKIP LOCKED) RETURNING id::text AS id",
        (stale_queued_s,)
    ).fetchall()
    return again + [str(r["id"]) for r in stale]


def computed(conn: Conn, limit: int = 20) -> list[str]:
    """Jobs a worker finished that the server has not recorded yet, oldest first."""
    return [str(r["id"]) for r in conn.execute(
        "SELECT id::text AS id FROM redaction_jobs WHERE state = 'computed'"
        " ORDER BY updated_at LIMIT %s", (limit,)).fetchall()]


def as_json(job: dict[str, Any]) -> dict[str, Any]:
    """What a client sees of a job: its state, progress and error; once a render is done, the
    derivative's id and both SHA-256s. Not its report, which names who was kept and why: that
    is read where reading it is audited (`GET /redactions/ID/report`; bb19)."""
    result = job.get("result") or {}
    done_render = job["kind"] == RENDER and job["state"] == "done"
    return {"job_id": str(job["id"]), "video_id": str(job["video_id"]), "kind": job["kind"],
            "state": job["state"], "progress": round(float(job["progress"]), 3),
            "attempts": int(job["attempts"]), "error": job["error"],
            "requested_by": job["requested_by"], "created_at": job["created_at"].isoformat(),
            "updated_at": job["updated_at"].isoformat(),
            "derivative_id": str(job["derivative_id"]) if job["derivative_id"] else None,
            "sha256": result.get("sha256") if done_render else None,
            "original_sha256": result.get("original_sha256") if done_render else None}


# -- the worker's side ----------------------------------------------------------------------

def run(ctx: Context, job_id: str, owner: str | None = None) -> str:
    """Run a redaction job on this worker; returns what happened ('computed', 'skipped',
    'queued' or 'failed'). A service's failure is raised after it is recorded, for the task
    to send the job again after its backoff."""
    from bodycam.processing import Heartbeat, failure_kind, worker_name

    owner = owner or worker_name()
    lease_s = ctx.settings.jobs.lease_s
    with ctx.db() as conn:
        lease = claim(conn, job_id, owner, lease_s)
    if lease is None:
        log.info("redaction job %s: not claimable (taken or ended): skipped", job_id)
        return "skipped"
    beat = Heartbeat(ctx, f"redaction job {job_id}",
                     lambda conn, progress, _stage: heartbeat(conn, lease, lease_s, progress))
    beat.start()

    def progress(fraction: float) -> None:
        beat.progress = fraction
        if beat.lost:
            raise LeaseLostError(f"redaction job {job_id}: lease lost")

    try:
        result = (_plan if lease.kind == PLAN else _render)(ctx, lease, progress)
        with ctx.db() as conn:
            complete(conn, lease, result)
    except LeaseLostError:
        log.warning("redaction job %s: lease lost; result discarded", job_id)
        _discard_claim(ctx, lease)
        return "skipped"
    except Exception as exc:
        kind = failure_kind(exc)
        error = str(exc) if kind is jobs.Failure.PERMANENT else f"{type(exc).__name__}: {exc}"
        _discard_claim(ctx, lease)
        with ctx.db() as conn:
            state = fail(conn, ctx.audit_key, lease, error, kind, ctx.settings.jobs)
        log.warning("redaction job %s attempt %d failed (%s, %s): %s", job_id, lease.attempt,
                    kind.value, type(exc).__name__, state)
        if kind is jobs.Failure.SERVICE:
            raise
        return state
    finally:
        beat.stop()
    log.info("redaction job %s (%s of video %s): computed", job_id, lease.kind, lease.video_id)
    return "computed"


def _discard_claim(ctx: Context, lease: JobLease) -> None:
    """Delete what this claim of a render stored (nothing is recorded of it): a failed or
    lost attempt leaves no file behind."""
    if lease.kind == RENDER:
        _discard(ctx.store, lease.job_id, lease.video_id, lease.request, lease.token)


def _discard(store: ObjectStore, job_id: str, video_id: str, request: dict[str, Any],
             claim: uuid.UUID | str) -> None:
    """Delete the parts one claim of a render stored (by the claim's worker, or by the
    reaper once the claim's lease ran out). A store that cannot be reached keeps them."""
    for key in derivative_keys(video_id, str(request["derivative_id"]), claim).values():
        try:
            store.delete(key)
        except Exception:  # noqa: BLE001 - the attempt's failure is what is reported
            log.warning("redaction job %s: could not delete %s", job_id, key)


def _plan(ctx: Context, lease: JobLease, progress: Any) -> dict[str, Any]:
    """Every face region in every frame (no embedding, in any policy profile), each plan
    track linked to the stored tracks it overlaps."""
    from bodycam.processing import load_video, local_copy

    with ctx.db() as conn:
        video = load_video(conn, lease.video_id)
        # `model` is kept when retention drops a vector: it says the face was compared
        stored = [(str(r["track_id"]), int(r["frame_index"]), box_from_json(r["box_px"]),
                   bool(r["checked"])) for r in conn.execute(
                      "SELECT track_id::text AS track_id, frame_index, box_px,"
                      " model IS NOT NULL AS checked FROM detections WHERE video_id = %s"
                      " AND track_id IS NOT NULL", (lease.video_id,)).fetchall()]
    path = local_copy(ctx, video)
    red = ctx.settings.redaction
    info = plan_grid(path, video.info, ctx.settings.limits)
    cfg = dense_pipeline(ctx.settings.pipeline, red, info)
    plan = compute_plan(path, info, lease.video_id, video.sha256, cfg, red,
                        plan_detector(cfg, red),
                        [(t, on_grid(f, video.info, info), b, c) for t, f, b, c in stored],
                        progress)
    return {"plan": plan.as_json()}


def _render(ctx: Context, lease: JobLease, progress: Any) -> dict[str, Any]:
    """The redacted MP4, its report (JSON, PDF) and contact sheet, stored under the
    derivative's keys; the result names them with the derivative's SHA-256."""
    from bodycam.processing import load_video, local_copy

    req = lease.request
    with ctx.db() as conn:
        video = load_video(conn, lease.video_id)
        row = conn.execute("SELECT plan FROM redaction_plans WHERE video_id = %s AND"
                           " version = %s", (lease.video_id, req["plan_version"])).fetchone()
    assert row is not None, "a render job names a recorded plan"
    plan = Plan.from_json(row["plan"], int(req["plan_version"]))
    choices = Choices.from_json(req["choices"])
    derivative_id = str(req["derivative_id"])
    keys = derivative_keys(lease.video_id, derivative_id, lease.token)
    red = ctx.settings.redaction
    src = local_copy(ctx, video)
    with tempfile.TemporaryDirectory(prefix="redact-") as tmp:
        out = Path(tmp) / "redacted.mp4"
        made = render(src, video.info, plan, choices, out, ctx.settings.limits, red, progress)
        sha256 = sha256_file(out)
        size = out.stat().st_size
        ctx.store.put_file(keys["video"], str(out), "video/mp4")
    head = {"derivative_id": derivative_id, "video_id": lease.video_id, "case": lease.case_id,
            "original_sha256": video.sha256, "sha256": sha256, "size_bytes": size,
            "reviewer": lease.requested_by, "created_at": datetime.now(UTC).isoformat(),
            "settings": req["settings"], "rendered_frames": made.n_frames,
            "masked_boxes": made.masked_boxes}
    auto = Decision(**req["auto"])
    report = build_report(plan, choices, auto, head, made.shown)
    sheet = contact_sheet(made.sheet)
    ctx.store.put_bytes(keys["report"], json.dumps(report, indent=2).encode(),
                        "application/json")
    ctx.store.put_bytes(keys["pdf"], pdf_report(report_lines(report), sheet), "application/pdf")
    ctx.store.put_bytes(keys["sheet"], sheet, "image/jpeg")
    return {"derivative_id": derivative_id, "claim": str(lease.token), "sha256": sha256,
            "size_bytes": size, "original_sha256": video.sha256, "report": report}


def derivative_keys(video_id: str, derivative_id: str, claim: uuid.UUID | str
                    ) -> dict[str, str]:
    """Where a claim of a render job stores the derivative's parts: keys of its own, so a
    worker that lost its lease and goes on cannot overwrite what another claim stored and
    the server recorded (one did: the recorded PDF no longer matched its hash, bb17)."""
    prefix = f"{REDACTIONS}{video_id}/{derivative_id}/{claim}"
    return {"video": f"{prefix}.mp4", "report": f"{prefix}/report.json",
            "pdf": f"{prefix}/report.pdf", "sheet": f"{prefix}/contact-sheet.jpg"}
