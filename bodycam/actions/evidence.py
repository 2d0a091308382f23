"""Evidence actions: ingest an upload, jobs, retry, tracks, originals and thumbnails."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from bodycam import accounts, audit, jobs
from bodycam.accounts import (
    User,
    case_of,
    require,
    require_now,
    require_role,
    require_visible,
)
from bodycam.context import Context
from bodycam.db import Conn, uid
from bodycam.errors import (
    BodycamError,
    ConflictError,
    NotFoundError,
    TransientError,
)
from bodycam.evidence import TrackRow, list_tracks
from bodycam.ingest import Custody, IngestResult, ingest_private
from bodycam.ingest import begin_upload as begin_upload  # the upload route's, re-exported
from bodycam.media.files import printable, safe_name
from bodycam.storage import OriginalUpload
from bodycam.timeparse import parse_recorded_at

TERMINAL = ("done", "failed", "quarantined")
_JOB_SQL = (
    "SELECT v.id::text AS video_id, v.case_id, v.original_filename, v.status, v.stage,"
    " v.progress, GREATEST(v.attempts, COALESCE(max(u.attempts), 0)) AS attempts,"
    " COALESCE(v.error, max(u.last_error)) AS error, v.updated_at, v.notice"
    " FROM videos v LEFT JOIN work_units u ON u.video_id = v.id"
    " WHERE v.id = %s GROUP BY v.id")


def custody_for(user: User, case: str | None, officer: str | None, device: str | None,
                recorded_at: str | None, source: str = "api") -> Custody:
    """The chain-of-custody record of an upload by this user; raises InvalidInputError."""
    return Custody(case_id=case or "", officer=officer or "", device=device or "",
                   uploader=user.name, recorded_at=parse_recorded_at(recorded_at),
                   source=source)


def authorize_ingest(ctx: Context, user: User) -> None:
    """Refuse (audited) unless the user may ingest; checked before any byte is read."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "ingest")


def ingest_upload(ctx: Context, user: User, path: Path, filename: str, custody: Custody,
                  sha256: str | None = None, sent: OriginalUpload | None = None
                  ) -> IngestResult:
    """Ingest a spooled private file (role checked); a rejected file is audited
    (`ingest.rejected`, file, case and reason) and leaves nothing stored. `sent`: the
    upload that sent its bytes to the store while they arrived (completed or aborted here)."""
    try:
        authorize_ingest(ctx, user)
    except BaseException:
        if sent is not None:
            sent.abort()
        raise
    try:
        result = ingest_private(ctx, path, filename, custody, sha256, sent)
    except BodycamError as exc:
        if not isinstance(exc, TransientError):  # an outage rejects no evidence
            reject(ctx, user, filename, custody.case_id, str(exc))
        raise
    if result.duplicate:
        _may_follow_duplicate(ctx, user, result.video_id, custody.case_id)
    return result


def _may_follow_duplicate(ctx: Context, user: User, video_id: str, case: str) -> None:
    """A duplicate's answer names the video its case already holds, and that video's state:
    only for an account that may follow that video (the case is visible to it, or the video
    is its own upload). An intake clerk may upload into any case, but of a case they cannot
    see they learn only that it holds these bytes (409; the attempt is audited as
    `ingest.duplicate`)."""
    with ctx.db() as conn:
        visible = accounts.visible_cases(conn, user)
        if visible is None or case in visible:
            return
        row = conn.execute("SELECT uploader FROM videos WHERE id = %s",
                           (uid(video_id),)).fetchone()
    if row is None or row["uploader"] != user.name:
        raise ConflictError(f"case {printable(case)} already holds these bytes, uploaded by "
                            f"another account: nothing was stored")


def reject(ctx: Context, user: User, filename: str, case: str | None, reason: str) -> None:
    """Audit a refused upload (`ingest.rejected`): the file name, case and reason, escaped."""
    ctx.audit(user.name, "ingest.rejected", {"file": safe_name(filename), "case": case,
                                             "reason": printable(reason)})


def _video_case(conn: Conn, key: str, user: User, action: str, video_id: str,
                uploader_may: bool) -> str:
    """The case of a video the user may act on: role first, then the case (or, where
    `uploader_may`, their own upload); refusals audited, unknown ids NotFoundError."""
    row = conn.execute("SELECT case_id, uploader FROM videos WHERE id = %s",
                       (uid(video_id),)).fetchone()
    if uploader_may and row is not None and row["uploader"] == user.name:
        require_role(conn, key, user, action, str(row["case_id"]), f"video {video_id}")
        return str(row["case_id"])
    return require_visible(conn, key, user, action, "video", video_id,
                           str(row["case_id"]) if row else None)


def list_jobs(ctx: Context, user: User, status: str | None = None,
              video_id: str | None = None) -> list[jobs.JobRow]:
    """Jobs of the cases the user sees (and of the videos they uploaded), newest first."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "jobs")
        rows = jobs.list_jobs(conn, status, limit=100_000)
        visible = accounts.visible_cases(conn, user)
        if visible is not None:
            own = {str(r["id"]) for r in conn.execute(
                "SELECT id::text AS id FROM videos WHERE uploader = %s", (user.name,))}
            rows = [r for r in rows if r.case_id in visible or r.video_id in own]
    if video_id is not None:
        rows = [r for r in rows if r.video_id == video_id]
    return rows


def job_row(conn: Conn, video_id: str) -> jobs.JobRow:
    """One video's job row (the `jobs --json` item)."""
    r = conn.execute(_JOB_SQL, (uid(video_id),)).fetchone()
    if r is None:
        raise NotFoundError(f"no video {video_id}")
    return jobs.JobRow(str(r["video_id"]), str(r["case_id"]), str(r["original_filename"]),
                       str(r["status"]), str(r["stage"]), float(r["progress"]),
                       int(r["attempts"]), r["error"], r["updated_at"], r["notice"])


def get_video(ctx: Context, user: User, video_id: str) -> jobs.JobRow:
    """A video's job row, for a user with a jobs role who may see its case (or uploaded it)."""
    with ctx.db() as conn:
        _video_case(conn, ctx.audit_key, user, "jobs", video_id, uploader_may=True)
        return job_row(conn, video_id)


def retry(ctx: Context, user: User, video_id: str) -> dict[str, object]:
    """Queue a failed or quarantined video again (the role, and the case or one's own
    upload); audited (`retry`)."""
    with ctx.db() as conn:
        # The uploader may retry their own upload, as they may follow its job.
        case = _video_case(conn, ctx.audit_key, user, "retry", video_id, uploader_may=True)
        units = jobs.retry_video(conn, video_id)
        audit.append(conn, ctx.audit_key, user.name, "retry", {"video_id": video_id,
                                                                "case": case})
    ctx.queue_units(video_id, units)
    return {"video_id": video_id, "units_queued": len(units)}


def tracks(ctx: Context, user: User, video_id: str, offset: int = 0, limit: int | None = None
           ) -> tuple[list[TrackRow], int]:
    """A page of a video's face tracks (investigator of the video's case) and how many it
    has: where faces appear in evidence, so each page is audited (`tracks`, with the ids
    shown), as a search is."""
    with ctx.db() as conn:
        case = _video_case(conn, ctx.audit_key, user, "tracks", video_id, uploader_may=False)
        rows = list_tracks(conn, video_id)
        shown = rows[offset:None if limit is None else offset + limit]
        audit.append(conn, ctx.audit_key, user.name, "tracks", {
            "video_id": video_id, "case": case, "count": len(rows), "offset": offset,
            "track_ids": [r.track_id for r in shown]})
        return shown, len(rows)


@dataclass(frozen=True)
class Original:
    """A video's original being served, and what the client should call it."""

    video_id: str
    size_bytes: int
    filename: str
    sha256: str
    span: tuple[int, int] | None  # (first, last) byte asked for; None: the whole file
    body: IO[bytes]  # the stream of those bytes


def original(ctx: Context, user: User, video_id: str, byte_range: str | None = None,
             span_of: Callable[[int], tuple[int, int] | None] = lambda _size: None
             ) -> Original:
    """The stored original of a video (investigator of its case); each access is audited
    (`video.original`, with the range asked for) once its stream is open. `span_of(size)`
    reads the range, and refuses one the file cannot satisfy before anything is recorded (an
    unsatisfiable range was audited as a read of the file: bb23; a store that could not be
    reached, as a read: bb22). The account is read again where the read is recorded
    (`require_now`): taken off the case meanwhile, it is refused (bb27's question)."""
    with ctx.db() as conn:
        case = _video_case(conn, ctx.audit_key, user, "video.original", video_id,
                           uploader_may=False)
        row = conn.execute("SELECT object_key, size_bytes, original_filename, sha256"
                           " FROM videos WHERE id = %s", (uid(video_id),)).fetchone()
        assert row is not None
        span = span_of(int(row["size_bytes"]))
        body = ctx.store.open_stream(str(row["object_key"]), *(span or (None, None)))
        try:
            require_now(conn, ctx.audit_key, user, "video.original", case)
            audit.append(conn, ctx.audit_key, user.name, "video.original",  # the range served
                         {"video_id": video_id, "case": case,
                          "range": byte_range if span is not None else None})
        except BaseException:
            body.close()
            raise
    return Original(video_id, int(row["size_bytes"]),
                    str(row["original_filename"]), str(row["sha256"]), span, body)


def thumbnail(ctx: Context, user: User, track_id: str) -> bytes:
    """A track's thumbnail JPEG (investigator of the track's case): a picture of someone's
    face, so each one served is audited (`track.thumbnail`), as each read of an original is."""
    with ctx.db() as conn:
        case = require_visible(conn, ctx.audit_key, user, "track.thumbnail", "track",
                               track_id, case_of(conn, "track", track_id))
        row = conn.execute("SELECT thumbnail_key FROM tracks WHERE id = %s",
                           (uid(track_id),)).fetchone()
        if row is None or not row["thumbnail_key"]:
            raise NotFoundError(f"track {track_id} has no thumbnail (purged or not made)")
        data = ctx.store.get_bytes(str(row["thumbnail_key"]))  # recorded once it is read
        require_now(conn, ctx.audit_key, user, "track.thumbnail", case)
        audit.append(conn, ctx.audit_key, user.name, "track.thumbnail",
                     {"track_id": track_id, "case": case})
    return data
