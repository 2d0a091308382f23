"""Thin Celery tasks: ids in, call bodycam, record state in Postgres, enqueue next."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from celery import Task

from bodycam import fixity, ingest, jobs, leases, processing, queue, redaction_jobs, retention
from bodycam.context import shared
from bodycam.errors import PermanentError
from bodycam.queue import (
    FINALIZE_VIDEO,
    INGEST_OBJECT,
    PROCESS_UNIT,
    REAP,
    RECONCILE_INCOMING,
    REDACTION_JOB,
)
from workers.celery_app import app

log = logging.getLogger(__name__)
STALE_UPLOAD_S = 86400.0  # an upload of an original takes minutes; a day is abandoned
ctx = shared
T = TypeVar("T")


def _retried(task: Task, what: str, work: Callable[[], T]) -> T:
    """Run work; a service's failure where nothing could record it (a unit's claim whose
    database backend was killed, a finalization cut off) queues the task again after the
    units' backoff, instead of leaving the work to the reaper's stale re-send a minute on.

    Both tasks are idempotent (a unit is claimed with a lease, a video finishes once), and
    the reaper stays the backstop: for a lost retry message, or past max_service_failures.
    """
    try:
        return work()
    except Exception as exc:
        if processing.failure_kind(exc) is not jobs.Failure.SERVICE:
            raise
        cfg = ctx().settings.jobs
        n = task.request.retries + 1
        wait = jobs.backoff_s(n, cfg)
        log.warning("%s: %s; queued again in %.1f s (retry %d)", what, type(exc).__name__,
                    wait, n)
        raise task.retry(exc=exc, countdown=wait, max_retries=cfg.max_service_failures
                         ) from None


@app.task(name=PROCESS_UNIT, bind=True)
def process_unit(self: Task, video_id: str, idx: int) -> str:
    """Process one chunk of a video (gpu queue)."""
    return _retried(self, f"video {video_id} unit {idx}",
                    lambda: processing.run_unit(ctx(), video_id, int(idx)))


@app.task(name=FINALIZE_VIDEO, bind=True)
def finalize_video(self: Task, video_id: str) -> None:
    """Video-level work after its last chunk (cpu queue)."""
    _retried(self, f"video {video_id} finalize",
             lambda: processing.finalize_video(ctx(), video_id))


@app.task(name=REDACTION_JOB, bind=True)
def redaction_job(self: Task, job_id: str) -> str:
    """Compute a redaction plan or render a derivative (gpu queue); the server records it.
    An attempt that failed with attempts left is sent again at once."""
    state = _retried(self, f"redaction job {job_id}",
                     lambda: redaction_jobs.run(ctx(), job_id))
    if state == "queued":
        ctx().send(REDACTION_JOB, job_id)
    return state


@app.task(name=INGEST_OBJECT)
def ingest_object(key: str, etag: str) -> str | None:
    """Ingest an object put into incoming/ (from an S3 event or the reconciler)."""
    try:
        result = ingest.ingest_incoming(ctx(), key, etag)
    except PermanentError:
        return "rejected"
    return result.video_id if result else None


@app.task(name=REAP)
def reap() -> int:
    """Re-queue units and redaction jobs whose worker died or whose message was lost;
    quarantine repeat crashes."""
    c = ctx()
    cfg = c.settings.jobs
    if not _due(REAP, cfg.reap_interval_s):
        return 0
    with c.db() as conn:
        if (gap := leases.after_outage(conn, cfg.lease_s, cfg.reap_interval_s)) is not None:
            log.warning("the reaper last ran %.0f s ago (the database or the scheduler did not"
                        " answer): leases in flight get %.0f s to be renewed", gap, cfg.lease_s)
        again = jobs.reap(conn, c.audit_key, cfg, stale_pending_s=max(60.0, 4 * cfg.lease_s))
        stuck = jobs.stale_finalizing(conn, stale_s=max(60.0, 4 * cfg.lease_s))
        redactions = redaction_jobs.reap(conn, c.store, c.audit_key, cfg,
                                         stale_queued_s=max(60.0, 4 * cfg.lease_s))
    for video_id, idx in again:
        log.info("re-queued video %s unit %d", video_id, idx)
        c.send(PROCESS_UNIT, video_id, idx)
    for video_id in stuck:
        c.send(FINALIZE_VIDEO, video_id)
    for job_id in redactions:
        c.send(REDACTION_JOB, job_id)
    return len(again)


@app.task(name=RECONCILE_INCOMING)
def reconcile_incoming() -> int:
    """List incoming/ so that an object whose S3 event was lost is still ingested. (The
    server anchors the audit log's head when its own anchor failed: bodycam.api.app.)"""
    c = ctx()
    if not _due(RECONCILE_INCOMING, c.settings.jobs.reconcile_interval_s):
        return 0
    found = ingest.unhandled_incoming(c)
    for key, etag in found:
        c.send(INGEST_OBJECT, key, etag)
    return len(found)


@app.task(name=retention.PURGE_TASK)
def scheduled_purge() -> int:
    """Expire bystanders' biometric data and lapsed watchlist entries on schedule (cpu queue):
    the policy's retention holds without an admin running `bodycam purge`."""
    c = ctx()
    if not _due(retention.PURGE_TASK, c.settings.jobs.purge_interval_s):
        return 0
    plan = retention.purge(c, retention.SCHEDULED_ACTOR, dry_run=False, audit_empty=False)
    # And multipart uploads of originals begun a day ago and never completed or aborted.
    if aborted := c.store.abort_stale_uploads(STALE_UPLOAD_S):
        log.warning("aborted %d multipart uploads left unfinished", aborted)
    return plan.tracks


@app.task(name=fixity.FIXITY_TASK)
def fixity_check() -> int:
    """Re-hash stored originals and derivatives; mismatches are audited (cpu queue)."""
    if not _due(fixity.FIXITY_TASK, ctx().settings.jobs.fixity_interval_s):
        return 0
    try:
        return len(fixity.run(ctx(), fixity.SCHEDULED_ACTOR, wait_s=0).mismatches)
    except fixity.FixityRunningError:
        log.info("fixity: one asked on demand is running: it is this interval's check")
        return 0


def _due(name: str, interval_s: float) -> bool:
    """Whether this scheduled run is the one due now (`queue.due`)."""
    due = queue.due(ctx().services.redis_url, name, interval_s, processing.worker_name())
    if not due:
        log.debug("%s: run already within its interval: skipped", name)
    return due
