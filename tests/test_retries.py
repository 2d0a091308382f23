"""Failed work units back off before they run again; outages do not spend the quarantine budget."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bodycam import jobs, leases, queue
from bodycam.config import JobSettings
from bodycam.errors import ModelUnavailableError, TransientError
from bodycam.processing import failure_kind
from bodycam.services import home_admin_url
from tests.conftest import HAMILTON, StackHandle


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    cfg = JobSettings(retry_base_s=2, retry_max_s=30)
    for n, full in ((1, 2), (2, 4), (3, 8), (4, 16), (5, 30), (9, 30)):
        waits = [jobs.backoff_s(n, cfg) for _ in range(200)]
        assert all(full / 2 <= w <= full for w in waits), (n, min(waits), max(waits))
        assert max(waits) - min(waits) > full / 10, "jittered, not fixed"


def test_failures_are_classified_by_who_is_at_fault() -> None:
    import psycopg

    assert failure_kind(ModelUnavailableError("dlib child died")) is jobs.Failure.SERVICE
    assert failure_kind(TransientError("S3 unreachable")) is jobs.Failure.SERVICE
    assert failure_kind(psycopg.OperationalError("terminating connection")) is jobs.Failure.SERVICE
    assert failure_kind(ValueError("bug")) is jobs.Failure.ERROR
    from bodycam.errors import InvalidMediaError
    assert failure_kind(InvalidMediaError("a.mp4", "corrupt")) is jobs.Failure.PERMANENT
    # the worker's host out of disk or descriptors is not the video's fault: a full scratch
    # disk on one host quarantined every video it took
    import errno

    import av

    for code in (errno.ENOSPC, errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EDQUOT):
        assert failure_kind(OSError(code, os.strerror(code))) is jobs.Failure.SERVICE, code
    assert failure_kind(OSError(errno.ENOENT, "gone")) is jobs.Failure.ERROR
    assert failure_kind(av.error.InvalidDataError(errno.EINVAL, "bad")) is jobs.Failure.ERROR


def test_a_store_that_fails_a_file_sent_in_parts_is_a_service_failure_named_in_one_line(
        tmp_path: Path) -> None:
    """A full store failed a render's upload of its MP4: boto3 wrapped the store's HTTP 500
    in S3UploadFailedError, naming a temporary file, which counted as the render's own error;
    three attempts were spent in two minutes (bb41). And a store that answers 500 was said
    to be down: "start it (`bodycam up`)"."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    from bodycam.storage import ObjectStore, S3Config

    store = ObjectStore(S3Config("http://127.0.0.1:9", "k", "s", "bucket"))

    def full(filename: str, *_: object, **__: object) -> None:
        try:
            raise ClientError({"Error": {"Code": "InternalError", "Message": "no space"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutObject")
        except ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload {filename} to bucket/k: {exc}") from None

    store._client.upload_file = full  # type: ignore[method-assign]
    path = tmp_path / "redacted.mp4"
    path.write_bytes(b"x")
    with pytest.raises(TransientError) as failed:
        store.put_file("redactions/v/d.mp4", str(path), "video/mp4")
    line = str(failed.value)
    assert "answered HTTP 500 (InternalError)" in line and "out of disk space" in line, line
    assert str(tmp_path) not in line and "start it" not in line and "\n" not in line
    assert failure_kind(failed.value) is jobs.Failure.SERVICE


def test_a_scheduled_task_runs_once_an_interval_whatever_the_clocks(
        stack: StackHandle) -> None:
    """Celery's expiry compared the scheduler's clock with the worker's: a worker ten minutes
    fast dropped every reap and reconcile. A run is gated by the broker's clock instead: once
    an interval across workers, so a backlog of messages runs once."""
    from workers.celery_app import app

    assert all("expires" not in entry.get("options", {})
               for entry in app.conf.beat_schedule.values())
    url, name = stack.ctx.services.redis_url, f"test-{uuid.uuid4().hex}"
    assert queue.due(url, name, 1.0, "w1")
    assert not any(queue.due(url, name, 1.0, f"w{i}") for i in range(2, 20))
    time.sleep(0.9)
    assert queue.due(url, name, 1.0, "w2"), "due again after 0.8 of the interval"
    assert queue.due("redis://127.0.0.1:9/0", name, 1.0, "w3"), "no broker: it runs"


@pytest.fixture
def parked_video(stack: StackHandle) -> Iterator[str]:
    """A video whose unit no real worker takes (GPU consumers parked) for ghost claims."""
    control = queue.client(stack.ctx.services.redis_url).control
    deadline = time.monotonic() + 60
    while len(control.cancel_consumer("gpu", reply=True, timeout=2) or []) < 2:
        assert time.monotonic() < deadline, "GPU workers did not answer"
    try:
        [res] = stack.cli.json("ingest", str(HAMILTON), "--case", f"T-RETRY-{time.time_ns()}",
                               "--officer", "O", "--device", "D")  # type: ignore[misc]
        yield str(res["video_id"])
    finally:
        control.add_consumer("gpu", reply=True, timeout=5)


def _unit(stack: StackHandle, vid: str) -> dict[str, object]:
    with stack.ctx.db() as conn:
        return dict(conn.execute(
            "SELECT state, attempts, service_failures, not_before > now() AS waiting"
            " FROM work_units WHERE video_id = %s AND idx = 0", (vid,)).fetchone())


def test_a_service_outage_backs_off_without_spending_attempts_and_then_quarantines(
        stack: StackHandle, parked_video: str) -> None:
    vid = parked_video
    cfg = JobSettings(retry_base_s=30, retry_max_s=60, max_attempts=3, max_service_failures=5)
    for n in range(1, 6):
        with stack.ctx.db() as conn:
            conn.execute("UPDATE work_units SET not_before = NULL WHERE video_id = %s", (vid,))
            lease = jobs.claim(conn, vid, 0, f"ghost:{n}", lease_s=60)
        assert lease is not None, f"claim {n}"
        with stack.ctx.db() as conn:
            state = jobs.fail(conn, stack.ctx.audit_key, lease, "TransientError: S3 down",
                              jobs.Failure.SERVICE, cfg)
        unit = _unit(stack, vid)
        if n < 5:
            assert state == "pending" and unit["waiting"] is True
            assert unit["attempts"] == 0 and unit["service_failures"] == n
            with stack.ctx.db() as conn:  # the wait holds even against a duplicate message
                assert jobs.claim(conn, vid, 0, "eager", lease_s=60) is None
    assert state == "quarantined"
    [job] = [j for j in stack.cli.json("jobs")  # type: ignore[union-attr]
             if j["video_id"] == vid]
    assert job["status"] == "quarantined" and "5 service failures" in job["error"]


def test_other_errors_count_attempts_and_quarantine_at_the_limit(
        stack: StackHandle, parked_video: str) -> None:
    vid = parked_video
    cfg = JobSettings(retry_base_s=30, retry_max_s=60, max_attempts=2)
    states = []
    for n in range(1, 3):
        with stack.ctx.db() as conn:
            conn.execute("UPDATE work_units SET not_before = NULL WHERE video_id = %s", (vid,))
            lease = jobs.claim(conn, vid, 0, f"ghost:{n}", lease_s=60)
        assert lease is not None and lease.attempt == n
        with stack.ctx.db() as conn:
            states.append(jobs.fail(conn, stack.ctx.audit_key, lease, "ValueError: bug",
                                    jobs.Failure.ERROR, cfg))
    assert states == ["pending", "quarantined"]
    # A stale lease cannot fail the unit again: the token is gone.
    with stack.ctx.db() as conn:
        assert jobs.fail(conn, stack.ctx.audit_key, lease, "late", jobs.Failure.ERROR,
                         cfg) == "lost"


def test_a_lease_that_lapsed_while_the_database_did_not_answer_gets_a_lease_to_be_renewed(
        stack: StackHandle, parked_video: str) -> None:
    """A database paused past a lease let the lease in flight lapse, and the reaper's first
    run on waking took it back as its worker's crash before the worker, waiting on the same
    database, could renew it: three such pauses quarantined a video (bb55). A run that finds
    the reaper's last run long ago gives the leases in flight a lease to be renewed; with its
    last run recent, a lapsed lease is taken back at once, as before."""
    vid = parked_video
    cfg = JobSettings(max_attempts=3, lease_s=30, reap_interval_s=5)

    def lapse(last_run_s_ago: float) -> tuple[float | None, dict[str, object]]:
        with stack.ctx.db() as conn, conn.transaction(force_rollback=True):
            # In the run's transaction: the stack's own reaper cannot see it first.
            conn.execute("UPDATE work_units SET not_before = NULL WHERE video_id = %s", (vid,))
            lease = jobs.claim(conn, vid, 0, "ghost:paused", lease_s=30)
            assert lease is not None
            # Last renewed since the database server started (not a restart: `in_restart`).
            conn.execute("UPDATE work_units SET lease_until = now() - interval '8 s',"
                         " updated_at = now() - interval '1 s' WHERE video_id = %s", (vid,))
            conn.execute("UPDATE reaper_clock SET seen_at = now() - make_interval(secs => %s)",
                         (last_run_s_ago,))
            gap = leases.after_outage(conn, cfg.lease_s, cfg.reap_interval_s)
            jobs.reap(conn, stack.ctx.audit_key, cfg, stale_pending_s=3600)
            row = conn.execute(
                "SELECT state, attempts, lease_owner, lease_until > now() + interval '25 s'"
                " AS extended FROM work_units WHERE video_id = %s AND idx = 0",
                (vid,)).fetchone()
            return gap, dict(row)

    gap, paused = lapse(40.0)
    assert gap is not None and 39 < gap < 60, gap
    assert paused == {"state": "running", "attempts": 1, "lease_owner": "ghost:paused",
                      "extended": True}, paused
    gap, crashed = lapse(5.0)
    assert gap is None and (crashed["state"], crashed["attempts"]) == ("pending", 1), crashed


def test_a_lease_that_lapsed_while_the_database_restarted_spends_no_attempt(
        stack: StackHandle, parked_video: str) -> None:
    """A worker whose database was restarted under it cannot renew its lease or record its
    failure; the reaper counted the lapse as the worker's crash, so a Postgres restart healed
    by `up` cost the unit in flight one of its 3 attempts (bb41). A lease last renewed before
    the server started is a service failure; one that lapsed after is still a crash."""
    vid = parked_video
    cfg = JobSettings(max_attempts=3, max_service_failures=2)

    def lapse(before_start: bool) -> dict[str, object]:
        with stack.ctx.db() as conn:  # reaped in the transaction that let it lapse, so the
            # stack's own reaper cannot see it first
            conn.execute("UPDATE work_units SET not_before = NULL WHERE video_id = %s", (vid,))
            lease = jobs.claim(conn, vid, 0, "ghost:lapsed", lease_s=60)
            assert lease is not None
            conn.execute(
                "UPDATE work_units SET lease_until = now() - interval '1 s', updated_at = "
                + ("pg_postmaster_start_time() - interval '1 s'" if before_start
                   else "now() - interval '2 s'")
                + " WHERE video_id = %s", (vid,))
            jobs.reap(conn, stack.ctx.audit_key, cfg, stale_pending_s=3600)
            return dict(conn.execute(
                "SELECT state, attempts, service_failures, last_error FROM work_units"
                " WHERE video_id = %s AND idx = 0", (vid,)).fetchone())

    crashed = lapse(before_start=False)
    assert (crashed["state"], crashed["attempts"], crashed["service_failures"]) == (
        "pending", 1, 0), crashed
    assert "stopped renewing its lease" in str(crashed["last_error"])
    restarted = lapse(before_start=True)
    assert (restarted["state"], restarted["attempts"], restarted["service_failures"]) == (
        "pending", 1, 1), restarted
    assert "the database restarted while worker ghost:lapsed held the unit" in str(
        restarted["last_error"])
    # The service budget still ends it: the second restart quarantines the video, saying why.
    assert lapse(before_start=True)["state"] == "quarantined"
    [job] = [j for j in stack.cli.json("jobs")  # type: ignore[union-attr]
             if j["video_id"] == vid]
    assert job["status"] == "quarantined" and "2 service failures" in job["error"], job


def test_the_reaper_queues_a_unit_once_its_wait_is_over(
        stack: StackHandle, parked_video: str) -> None:
    vid = parked_video
    with stack.ctx.db() as conn:
        lease = jobs.claim(conn, vid, 0, "ghost:due", lease_s=60)
    assert lease is not None
    cfg = JobSettings(retry_base_s=8, retry_max_s=8)
    with stack.ctx.db() as conn:
        assert jobs.fail(conn, stack.ctx.audit_key, lease, "TransientError: S3 down",
                         jobs.Failure.SERVICE, cfg) == "pending"
    t0 = time.monotonic()
    assert _unit(stack, vid)["waiting"] is True
    control = queue.client(stack.ctx.services.redis_url).control
    control.add_consumer("gpu", reply=True, timeout=5)
    assert stack.wait_status(vid)["status"] == "done"
    assert time.monotonic() - t0 >= 3.5, "not run again before its wait (4-8 s) was over"


def test_the_reaper_skips_a_unit_another_session_locks_instead_of_waiting(
        stack: StackHandle, parked_video: str) -> None:
    """A lost host's backend can hold a pending unit's row lock (it died mid-claim) until its
    connection is found dead; the reaper must not wait behind it, or no lease is reaped."""
    vid = parked_video
    cfg = JobSettings()
    with stack.ctx.db() as holder, stack.ctx.db() as conn:
        holder.execute("UPDATE work_units SET not_before = now() - interval '1 s'"
                       " WHERE video_id = %s", (vid,))
        holder.commit()
        holder.execute("SELECT 1 FROM work_units WHERE video_id = %s FOR UPDATE", (vid,))
        conn.execute("SET lock_timeout = '3s'")  # waiting would raise LockNotAvailable
        t0 = time.monotonic()
        again = jobs.reap(conn, stack.ctx.audit_key, cfg, stale_pending_s=0)
        conn.rollback()
        assert time.monotonic() - t0 < 2.5
        assert (vid, 0) not in again
        holder.rollback()
        for _ in range(3):  # the stack's own reaper may hold the row for a moment
            again = jobs.reap(conn, stack.ctx.audit_key, cfg, stale_pending_s=0)
            conn.rollback()
            if (vid, 0) in again:
                break
            time.sleep(0.5)
    assert (vid, 0) in again, "not reaped once free"


def test_processing_time_is_the_first_claim_not_the_last(
        stack: StackHandle, parked_video: str) -> None:
    """`stage_times.processing` says when processing began: a later attempt keeps it."""
    vid = parked_video
    cfg = JobSettings(retry_base_s=30, retry_max_s=60)
    stamps = []
    for n in (1, 2):
        with stack.ctx.db() as conn:
            conn.execute("UPDATE work_units SET not_before = NULL WHERE video_id = %s", (vid,))
            lease = jobs.claim(conn, vid, 0, f"ghost:{n}", lease_s=60)
            assert lease is not None
            stamps.append(conn.execute("SELECT stage_times->>'processing' AS t FROM videos"
                                       " WHERE id = %s", (vid,)).fetchone()["t"])
            assert jobs.fail(conn, stack.ctx.audit_key, lease, "TransientError: S3 down",
                             jobs.Failure.SERVICE, cfg) == "pending"
        time.sleep(0.05)
    assert stamps[0] is not None and stamps[1] == stamps[0]


def test_a_heartbeat_renews_its_lease_while_another_session_holds_the_video_row(
        stack: StackHandle, parked_video: str) -> None:
    """The video row is shared by its units (and may be held by a lost host's backend until
    Postgres drops it): the lease must not wait behind it, or a live unit is given away."""
    vid = parked_video
    with stack.ctx.db() as conn:
        conn.execute("UPDATE work_units SET not_before = NULL WHERE video_id = %s", (vid,))
        lease = jobs.claim(conn, vid, 0, "ghost:beat", lease_s=5)
    assert lease is not None
    with stack.ctx.db() as holder, stack.ctx.db() as conn:
        holder.execute("SELECT 1 FROM videos WHERE id = %s FOR UPDATE", (vid,))
        conn.execute("SET lock_timeout = '3s'")  # waiting would raise LockNotAvailable
        jobs.heartbeat(conn, lease, 600, 0.5, "faces")
        conn.commit()
        row = conn.execute("SELECT lease_until > now() + interval '500 s' AS renewed, progress"
                           " FROM work_units WHERE video_id = %s AND idx = 0", (vid,)).fetchone()
        holder.rollback()
    assert row["renewed"] and row["progress"] == pytest.approx(0.5)
    with stack.ctx.db() as conn:  # released: give the unit back for the fixture's teardown
        jobs.fail(conn, stack.ctx.audit_key, lease, "TransientError: test", jobs.Failure.SERVICE,
                  JobSettings(retry_base_s=1, retry_max_s=1))


def test_a_claim_cut_off_by_a_killed_backend_is_queued_again_without_the_reaper(
        stack: StackHandle, parked_video: str) -> None:
    """A unit's claim whose database backend dies fails before any row can record it: the
    task must be queued again after the units' backoff, not left to the reaper's stale
    re-send a minute on (the long fault run's slowest Postgres recovery, 69.7 s)."""
    vid = parked_video
    control = queue.client(stack.ctx.services.redis_url).control
    with stack.ctx.db() as holder:
        holder.execute("SELECT 1 FROM work_units WHERE video_id = %s FOR UPDATE", (vid,))
        control.add_consumer("gpu", reply=True, timeout=5)
        deadline, pid = time.monotonic() + 30, None
        while pid is None:  # a worker's claim, waiting behind the lock
            assert time.monotonic() < deadline, "no worker tried to claim the unit"
            time.sleep(0.1)
            # The workers' backends are another role's: the superuser sees and ends them. A
            # new connection each time: pg_stat_activity is a snapshot per transaction.
            with psycopg.connect(home_admin_url(stack.home), autocommit=True) as admin:
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE 'UPDATE %%work_units%% SET state = ''running''%%'"
                ).fetchone()
                pid = row[0] if row else None
        with psycopg.connect(home_admin_url(stack.home), autocommit=True) as admin:
            ended = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
            assert ended is not None and ended[0]
        holder.rollback()
    killed = time.monotonic()
    while _unit(stack, vid)["attempts"] == 0:
        assert time.monotonic() - killed < 30, "the unit was not claimed again within 30 s"
        time.sleep(0.2)
    assert stack.wait_status(vid)["status"] == "done"
    assert _unit(stack, vid)["attempts"] == 1, "the cut-off claim counted as an attempt"
