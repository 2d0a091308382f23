"""Redaction actions: the per-video plan and renders (computed by the workers as jobs,
recorded here), derivatives and downloads."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from bodycam import audit, fixity, redaction_jobs
from bodycam.accounts import AccessDeniedError, User, case_of, require_now, require_visible
from bodycam.auth import UnauthenticatedError
from bodycam.context import Context
from bodycam.db import Conn, uid
from bodycam.domain import FIRST_FRAME_COLUMNS, first_frame_s
from bodycam.errors import (
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermanentError,
)
from bodycam.limits import RateLimitedError
from bodycam.redaction import (
    ALGORITHM,
    AUDIO,
    STYLES,
    Choices,
    Decision,
    ManualRegion,
    Plan,
    check_basis,
)

log = logging.getLogger(__name__)
REMOVE_REASON = "not a face"
REMOVE_BASIS = "false positive: not a face"


@dataclass(frozen=True)
class Choice:
    """One kept or removed track (a plan track id `P3` or a `bodycam tracks` id), or a
    kept subject, with why."""

    target: str
    reason: str | None = None
    legal_basis: str | None = None


@dataclass(frozen=True)
class RegionIn:
    """A manual region as asked for."""

    box_px: tuple[float, float, float, float]
    start_s: float
    end_s: float
    reason: str
    legal_basis: str


@dataclass(frozen=True)
class RedactRequest:
    """What a reviewer asks for; every track not kept or removed is hidden."""

    keep_tracks: tuple[Choice, ...] = ()
    keep_subjects: tuple[Choice, ...] = ()
    remove_tracks: tuple[Choice, ...] = ()
    regions: tuple[RegionIn, ...] = ()
    style: str = "blur"
    audio: str = "keep"
    mute_ranges: tuple[tuple[float, float], ...] = ()


def _check_request(ctx: Context, req: RedactRequest) -> None:
    """Refuse a request whose choices lack a reason or cite an unlisted legal basis."""
    red = ctx.settings.redaction
    if req.style not in STYLES:
        raise InvalidInputError(f"style {req.style[:20]!r}: choose {', '.join(STYLES)}")
    if req.audio not in AUDIO:
        raise InvalidInputError(f"audio {req.audio[:20]!r}: choose {', '.join(AUDIO)}")
    if req.mute_ranges and req.audio != "mute-ranges":
        raise InvalidInputError("mute ranges need audio mode mute-ranges")
    if req.audio == "mute-ranges" and not req.mute_ranges:  # muted nothing, said done: bb33
        raise InvalidInputError("audio mode mute-ranges needs at least one mute range "
                                "(START-END seconds)")
    for a, b in req.mute_ranges:
        if not 0 <= a < b:
            raise InvalidInputError(f"mute range {a}-{b}: give START < END, seconds")
    for c in req.keep_tracks + req.keep_subjects:
        # A face shown in a release is shown for the reason and on the legal basis its
        # requester states: none is supplied for them (the report said "public interest",
        # decided by an account that had given neither: bb42).
        if not c.legal_basis:
            raise InvalidInputError(f"keep {c.target}: missing legal_basis: name the legal"
                                    " basis for showing this face, one of: "
                                    f"{'; '.join(red.legal_bases)}")
        check_basis(red, c.legal_basis, c.reason or "", f"keep {c.target}")
    for c in req.remove_tracks:
        check_basis(red, c.legal_basis or REMOVE_BASIS, c.reason or REMOVE_REASON,
                    f"remove {c.target}")
    for r in req.regions:
        x1, y1, x2, y2 = r.box_px
        if not (0 <= x1 < x2 and 0 <= y1 < y2) or not 0 <= r.start_s <= r.end_s:
            raise InvalidInputError("a manual region needs box x1<x2, y1<y2 (pixels, >= 0) and "
                                    "0 <= start_s <= end_s")
        check_basis(red, r.legal_basis, r.reason, "manual region")


def load_plan(conn: Conn, video_id: str, version: int | None = None) -> Plan | None:
    """The newest stored plan of a video made by the current algorithm (or that version of
    it), or None."""
    row = conn.execute("SELECT version, plan FROM redaction_plans WHERE video_id = %s AND"
                       " algorithm = %s AND (%s::int IS NULL OR version = %s::int)"
                       " ORDER BY version DESC LIMIT 1",
                       (video_id, ALGORITHM, version, version)).fetchone()
    return Plan.from_json(row["plan"], int(row["version"])) if row else None


def _plan_or_job(ctx: Context, user: User, video_id: str, case: str) -> Plan | str:
    """The video's recorded plan, or the id of the job computing it (queued now if none
    is open; one at a time per video). A job a worker finished is recorded first."""
    found, open_job = _plan_state(ctx, video_id)
    if found is None and open_job is not None:
        record_job(ctx, open_job)
        found, open_job = _plan_state(ctx, video_id)
    if found is not None:
        return found
    if open_job is not None:
        return open_job
    with ctx.db() as conn:
        job_id = redaction_jobs.create(conn, video_id, case, redaction_jobs.PLAN, user.name)
    redaction_jobs.send(ctx, job_id)
    return job_id


def _plan_state(ctx: Context, video_id: str) -> tuple[Plan | None, str | None]:
    """The video's recorded plan, or else its open plan job's id (or neither)."""
    with ctx.db() as conn:
        found = load_plan(conn, video_id)
        return found, None if found is not None else redaction_jobs.open_plan_job(conn, video_id)


def _resolve_tracks(conn: Conn, plan: Plan, video_id: str, target: str, what: str
                    ) -> list[str]:
    """Plan track ids for a plan id (`P3`) or a stored track id of this video."""
    if plan.track(target) is not None:
        return [target]
    found = [t.id for t in plan.tracks if target in t.db_track_ids]
    if found:
        return found
    row = conn.execute("SELECT video_id::text AS v FROM tracks WHERE id = %s",
                       (uid(target),)).fetchone()
    if row is None or row["v"] != video_id:
        raise InvalidInputError(f"{what} {target[:40]}: no such track in video {video_id}")
    raise InvalidInputError(f"{what} {target[:40]}: the track's face was not found by the "
                            "redaction plan; add a manual region instead")


def _subject_tracks(conn: Conn, key: str, user: User, plan: Plan, video_id: str,
                    subject_id: str) -> list[str]:
    """Plan tracks of a subject: its confirmed matches in this video (case checked)."""
    require_visible(conn, key, user, "redact", "subject", subject_id,
                    case_of(conn, "subject", subject_id))
    ids = _confirmed_tracks(conn, plan, video_id, subject_id)
    if not ids:
        raise InvalidInputError(f"subject {subject_id}: no confirmed match of theirs in video "
                                f"{video_id} is in the redaction plan; keep tracks by id")
    return sorted(ids)


def _confirmed_tracks(conn: Conn, plan: Plan, video_id: str, subject_id: str,
                      hold: bool = False) -> set[str]:
    """The plan tracks that hold a subject's confirmed matches in the video; with `hold`, the
    matches are held as they are until the transaction ends (a reopening waits for a render's
    record). Only under the audit log's lock, which a reopening takes before its update."""
    rows = conn.execute("SELECT track_id::text AS t FROM matches WHERE subject_id = %s"
                        " AND video_id = %s AND status = 'confirmed'"
                        + (" FOR SHARE" if hold else ""),
                        (uid(subject_id), uid(video_id))).fetchall()
    return {t.id for r in rows for t in plan.tracks if r["t"] in t.db_track_ids}


def _keeps_still_decided(conn: Conn, job_row: dict[str, Any]) -> None:
    """Raises ConflictError when a subject a render keeps visible has lost a confirmed match
    it was kept for (reopened since the request): the release, recorded after, showed a face
    the decisions then said to hide, and the same request made anew was refused (bb41). Run
    under the audit log's lock (`require_now`)."""
    req, video_id = job_row["request"], str(job_row["video_id"])
    kept: dict[str, list[str]] = req.get("subject_tracks") or {}
    plan = load_plan(conn, video_id, int(req["plan_version"])) if kept else None
    for subject_id, tracks in kept.items():
        if plan is None or not set(tracks) <= _confirmed_tracks(conn, plan, video_id,
                                                                 subject_id, hold=True):
            raise ConflictError(f"subject {subject_id}: a confirmed match it was kept visible"
                                f" for in video {video_id} is no longer confirmed (reopened"
                                " while the render ran): ask again")


def _refuse_removing_a_lead(conn: Conn, plan: Plan, video_id: str, track: str) -> None:
    """A track removed is shown as "not a face". One that holds a confirmed match was decided
    to be a person's face, and one with a pending lead is not reviewed yet: either was
    removed on request and released unhidden, recorded as a false positive (bb42)."""
    ids = [d for t in plan.tracks if t.id == track for d in t.db_track_ids]
    row = conn.execute("SELECT id::text AS id, status FROM matches WHERE video_id = %s"
                       " AND track_id = ANY(%s::uuid[]) AND status IN ('confirmed', 'pending')"
                       " ORDER BY status, id LIMIT 1", (uid(video_id), ids)).fetchone()
    if row is not None:
        raise ConflictError(
            f"remove track {track}: it holds a {row['status']} match ({row['id']}), "
            + ("which a reviewer decided is a person's face: it is no false positive; keep it"
               " with a reason and a legal basis, or leave it hidden"
               if row["status"] == "confirmed" else
               "a lead not reviewed yet: reject it in review before removing the track"))


def _choices(conn: Conn, key: str, user: User, plan: Plan, video_id: str,
             req: RedactRequest, subject_tracks: dict[str, list[str]]) -> Choices:
    def decision(c: Choice, reason: str = "", basis: str = "") -> Decision:
        return Decision(c.reason or reason, c.legal_basis or basis, user.name)

    keep: dict[str, Decision] = {}
    for c in req.keep_tracks:
        for tid in _resolve_tracks(conn, plan, video_id, c.target, "keep track"):
            keep[tid] = decision(c)
    for c in req.keep_subjects:
        for tid in subject_tracks[c.target]:
            keep[tid] = decision(c)
    remove: dict[str, Decision] = {}
    for c in req.remove_tracks:
        for tid in _resolve_tracks(conn, plan, video_id, c.target, "remove track"):
            _refuse_removing_a_lead(conn, plan, video_id, tid)
            remove[tid] = decision(c, REMOVE_REASON, REMOVE_BASIS)
    if both := sorted(set(keep) & set(remove)):
        raise InvalidInputError(f"track {', '.join(both)} is both kept and removed as a false"
                                " positive: choose one")
    # The request's own checks passed; now against this video. What reaches past the frame
    # or the end is cut there (a region dragged past the edge; "to the end"), so the record
    # and the report say what was done (a box to 1e308 failed every render: bb19).
    end = plan.duration_s
    regions = []
    for r in req.regions:
        x1, y1, x2, y2 = r.box_px
        if x1 >= plan.width_px or y1 >= plan.height_px:
            raise InvalidInputError(
                f"manual region {x1:g},{y1:g},{x2:g},{y2:g}: outside the video's"
                f" {plan.width_px}x{plan.height_px} frame")
        if r.start_s >= end:
            raise InvalidInputError(f"manual region from {r.start_s:g} s: the video ends at"
                                    f" {end:.2f} s")
        regions.append(ManualRegion(
            (x1, y1, min(x2, float(plan.width_px)), min(y2, float(plan.height_px))),
            r.start_s, min(r.end_s, end), Decision(r.reason, r.legal_basis, user.name)))
    for a, _b in req.mute_ranges:
        if a >= end:
            raise InvalidInputError(f"mute range from {a:g} s: the video ends at {end:.2f} s")
    return Choices(keep=keep, remove=remove, regions=tuple(regions),
                   style=req.style, audio=req.audio,  # type: ignore[arg-type]
                   mute_ranges=tuple((a, min(b, end)) for a, b in req.mute_ranges))


def _settings_json(req: RedactRequest, choices: Choices) -> dict[str, Any]:
    return {"style": req.style, "audio": req.audio,
            "mute_ranges": [list(r) for r in choices.mute_ranges],
            "keep_tracks": sorted(choices.keep), "remove_tracks": sorted(choices.remove),
            "keep_subjects": [c.target for c in req.keep_subjects],
            "manual_regions": len(choices.regions)}


def _processed_video(conn: Conn, key: str, user: User, video_id: str) -> str:
    """The case of a video the user may redact (redact role, its case; refusals audited),
    once it has been processed; raises ConflictError before that."""
    case = require_visible(conn, key, user, "redact", "video", video_id,
                           case_of(conn, "video", video_id))
    status = conn.execute("SELECT status FROM videos WHERE id = %s",
                          (uid(video_id),)).fetchone()
    if status is None or status["status"] != "done":
        raise ConflictError(f"video {video_id} is {status['status'] if status else '?'}: "
                            "it can be redacted once processed (status done)")
    return case


def _check_open_renders(ctx: Context, conn: Conn, user: User) -> None:
    """Raises RateLimitedError where the account has as many renders queued or running as
    one account may (`redaction.max_open_renders`)."""
    n = redaction_jobs.open_renders(conn, user.name)
    if n >= ctx.settings.redaction.max_open_renders:
        raise RateLimitedError(f"{user.name} has {n} renders queued or running, the most"
                               " one account may: ask again once one has ended", 10)


def redact(ctx: Context, user: User, video_id: str, req: RedactRequest) -> dict[str, Any]:
    """Ask for a redacted derivative of a processed video (redact role, the video's case):
    the request is checked against the video's plan now, and a worker renders it (a job:
    `job` follows it). Raises ConflictError while the plan is still being computed (its job
    is queued by the first ask).

    Once rendered, the derivative and its report (JSON, PDF, contact sheet) are recorded by
    the server with the derivative's and the original's SHA-256, the plan version, the
    settings and the reviewer, in a sealed audit row (`redaction.create`), if the account
    may still redact in the case then (`record_job`). The original is only read.
    """
    with ctx.db() as conn:
        case = _processed_video(conn, ctx.audit_key, user, video_id)
        _check_request(ctx, req)
        # Before the plan too: a request that will be refused does not wait for one (bb45).
        _check_open_renders(ctx, conn, user)
    plan = _plan_or_job(ctx, user, video_id, case)
    if isinstance(plan, str):
        raise ConflictError(f"video {video_id}: its redaction plan is being computed (job "
                            f"{plan}); ask again once it is done")
    derivative_id = str(uuid.uuid4())
    red = ctx.settings.redaction
    with ctx.db() as conn:
        # What each kept subject's confirmed matches hold: checked again at recording.
        subject_tracks = {c.target: _subject_tracks(conn, ctx.audit_key, user, plan, video_id,
                                                    c.target) for c in req.keep_subjects}
        choices = _choices(conn, ctx.audit_key, user, plan, video_id, req, subject_tracks)
        settings = _settings_json(req, choices)
        # The account, its case and its token as they stand now, under the log's lock.
        require_now(conn, ctx.audit_key, user, "redact", case)
        _check_open_renders(ctx, conn, user)
        job_id = redaction_jobs.create(
            conn, video_id, case, redaction_jobs.RENDER, user.name,
            {"plan_version": plan.version, "derivative_id": derivative_id,
             "choices": choices.as_json(), "settings": settings,
             "subject_tracks": subject_tracks,
             # why the faces no one chose are hidden: the server's configured texts
             "auto": Decision(red.default_reason, red.default_legal_basis,
                              f"automatic (hide everyone), accepted by {user.name}").as_json()})
        audit.append(conn, ctx.audit_key, user.name, "redaction.request", {
            "job_id": job_id, "derivative_id": derivative_id, "video_id": video_id,
            "case": case, "plan_version": plan.version, "settings": settings})
        job = redaction_jobs.load(conn, job_id)
    assert job is not None
    redaction_jobs.send(ctx, job_id)
    return redaction_jobs.as_json(job)


def job(ctx: Context, user: User, job_id: str) -> dict[str, Any]:
    """A redaction job's state (redact role, its video's case); a job a worker finished is
    recorded first, so a done render names its derivative."""
    with ctx.db() as conn:
        require_visible(conn, ctx.audit_key, user, "redact", "redaction job", job_id,
                        case_of(conn, "redaction job", job_id))
    record_job(ctx, job_id)
    with ctx.db() as conn:
        found = redaction_jobs.load(conn, job_id)
    assert found is not None
    return redaction_jobs.as_json(found)


def record_job(ctx: Context, job_id: str) -> str | None:
    """Record a job a worker computed (the server's alone: it holds the audit key): a plan as
    the video's next version (`redaction.plan`), a render as a derivative with its custody
    row (`redaction.create`), each under the account that asked, if it may still redact in
    the case (its account enabled, its role, its case assigned) and, for a render, each
    subject it keeps visible still has the confirmed matches it was kept for; otherwise the job is
    `refused` and what the worker stored is deleted. Returns the job's new state, or None
    when it was not waiting to be recorded. Run when a client asks after a job and by the
    server's backstop (`jobs.reconcile_interval_s`)."""
    files: list[str] = []
    with ctx.db() as conn:
        found = redaction_jobs.load(conn, job_id, lock=True)
        if found is None or found["state"] != "computed":
            return None
        video_id, case = str(found["video_id"]), str(found["case_id"])
        result = dict(found["result"] or {})
        if found["kind"] == redaction_jobs.RENDER:
            files = list(redaction_jobs.derivative_keys(
                video_id, str(found["request"]["derivative_id"]),
                str(found["lease_token"])).values())
        try:
            # The account as it stands now (the job took a while); its session may have
            # ended since it asked: a release asked for is not undone by a logout.
            require_now(conn, ctx.audit_key, User(str(found["requested_by"]), ()), "redact",
                        case)
            if found["kind"] == redaction_jobs.RENDER:
                _keeps_still_decided(conn, found)
        except (AccessDeniedError, UnauthenticatedError, ConflictError) as exc:
            state, why = "refused", str(exc)
        else:
            try:
                if found["kind"] == redaction_jobs.PLAN:
                    _record_plan(conn, ctx.audit_key, found, result)
                else:
                    _record_render(ctx, conn, found, result)
                return "done"
            except (PermanentError, NotFoundError) as exc:  # what it stored does not fit
                conn.rollback()
                state, why = "failed", str(exc)
    with ctx.db() as conn:
        ended = conn.execute("UPDATE redaction_jobs SET state = %s, error = %s,"
                             " updated_at = now() WHERE id = %s AND state = 'computed'"
                             " RETURNING id", (state, why[:2000], job_id)).fetchone()
        if ended is not None:
            # What was not recorded, and why, by job (a disabled account's refusal has no
            # other row; a role's or a case's names neither the job nor its files).
            audit.append(conn, ctx.audit_key, str(found["requested_by"]), f"redaction.{state}",
                         {"job_id": job_id, "kind": found["kind"], "video_id": video_id,
                          "case": case, "reason": why[:500],
                          "derivative_id": (str(found["request"].get("derivative_id"))
                                            if files else None),
                          "files_deleted": len(files)})
    for key in files:
        ctx.store.delete(key)
    log.warning("redaction job %s: not recorded (%s): %s; its files deleted", job_id, why,
                state)
    return state


def _record_plan(conn: Conn, key: str, job_row: dict[str, Any], result: dict[str, Any]
                 ) -> None:
    video_id = str(job_row["video_id"])
    plan = Plan.from_json(result["plan"], 0)
    original = conn.execute("SELECT sha256 FROM videos WHERE id = %s", (video_id,)).fetchone()
    if plan.video_id != video_id or original is None or plan.original_sha256 != original["sha256"]:
        raise PermanentError(f"redaction job {job_row['id']}: its plan is of another video")
    if result["plan"].get("algorithm") != ALGORITHM:
        raise PermanentError(f"redaction job {job_row['id']}: the worker planned with "
                             f"{str(result['plan'].get('algorithm'))[:60]}, the server uses "
                             f"{ALGORITHM}: run one version of Bodycam on every host")
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"plan:{video_id}",))
    row = conn.execute("SELECT COALESCE(max(version), 0) + 1 AS v FROM redaction_plans"
                       " WHERE video_id = %s", (video_id,)).fetchone()
    version = int(row["v"]) if row else 1
    conn.execute("INSERT INTO redaction_plans (video_id, version, algorithm,"
                 " original_sha256, plan, created_by) VALUES (%s, %s, %s, %s, %s, %s)",
                 (video_id, version, ALGORITHM, plan.original_sha256, json.dumps(result["plan"]),
                  job_row["requested_by"]))
    audit.append(conn, key, str(job_row["requested_by"]), "redaction.plan",
                 {"video_id": video_id, "case": job_row["case_id"], "version": version,
                  "algorithm": ALGORITHM, "tracks": len(plan.tracks), "job_id": str(job_row["id"]),
                  "frames_detected": plan.params["frames_detected"]})
    conn.execute("UPDATE redaction_jobs SET state = 'done', updated_at = now() WHERE id = %s",
                 (job_row["id"],))


def _record_render(ctx: Context, conn: Conn, job_row: dict[str, Any],
                   result: dict[str, Any]) -> None:
    req = dict(job_row["request"])
    video_id, derivative_id = str(job_row["video_id"]), str(req["derivative_id"])
    claim = str(job_row["lease_token"])
    keys = redaction_jobs.derivative_keys(video_id, derivative_id, claim)
    if result.get("derivative_id") != derivative_id or result.get("claim") != claim:
        raise PermanentError(f"redaction job {job_row['id']}: its result is of another render")
    # The report, PDF and sheet are hashed here as the server reads them; the video's
    # SHA-256 is the worker's, which `verify` and the fixity check re-hash.
    def missing(name: str) -> PermanentError:
        return PermanentError(f"redaction job {job_row['id']}: its {name} is not in the"
                              " object store")

    if not ctx.store.exists(keys["video"]):
        raise missing("video")
    parts: dict[str, bytes] = {}
    for name in ("report", "pdf", "sheet"):
        try:
            parts[name] = ctx.store.get_bytes(keys[name])
        except NotFoundError:
            raise missing(name) from None
    report = json.loads(parts["report"])
    row = audit.append(conn, ctx.audit_key, str(job_row["requested_by"]), "redaction.create", {
        "derivative_id": derivative_id, "video_id": video_id, "case": job_row["case_id"],
        "sha256": result["sha256"], "original_sha256": result["original_sha256"],
        "plan_version": req["plan_version"], "algorithm": ALGORITHM,
        "settings": req["settings"], "reviewer": job_row["requested_by"],
        "object_key": keys["video"], "job_id": str(job_row["id"]),
        "report_sha256": hashlib.sha256(parts["report"]).hexdigest(),
        "redacted_regions": len(report["redacted_regions"]),
        "kept_tracks": list(dict.fromkeys(k["track"] for k in report["kept_tracks"])),
        "taken_over": [r["track"] for r in report["redacted_regions"] if "taken_over" in r]})
    conn.execute(
        "INSERT INTO redactions (id, video_id, case_id, plan_version, object_key,"
        " sha256, size_bytes, original_sha256, settings, report_key, pdf_key, sheet_key,"
        " reviewer, audit_id)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (derivative_id, video_id, job_row["case_id"], req["plan_version"], keys["video"],
         result["sha256"], result["size_bytes"], result["original_sha256"],
         json.dumps(req["settings"]), keys["report"], keys["pdf"], keys["sheet"],
         job_row["requested_by"], row.id))
    for name, data in parts.items():
        fixity.record(conn, keys[name], data)
    conn.execute("INSERT INTO object_hashes (key, sha256, size_bytes)"
                 " VALUES (%s, %s, %s) ON CONFLICT (key) DO NOTHING",
                 (keys["video"], result["sha256"], result["size_bytes"]))
    conn.execute("UPDATE redaction_jobs SET state = 'done', derivative_id = %s,"
                 " updated_at = now() WHERE id = %s", (derivative_id, job_row["id"]))


@dataclass(frozen=True)
class Derivative:
    """A stored redacted derivative and its custody record."""

    derivative_id: str
    video_id: str
    case_id: str
    plan_version: int
    sha256: str
    size_bytes: int
    original_sha256: str
    settings: dict[str, Any]
    reviewer: str
    created_at: datetime
    keys: dict[str, str]
    audit_id: int
    hashes: dict[str, str | None]  # part -> the SHA-256 recorded when it was written

    def as_json(self) -> dict[str, Any]:
        """The record, without storage keys."""
        return {"derivative_id": self.derivative_id, "video_id": self.video_id,
                "case": self.case_id, "plan_version": self.plan_version, "sha256": self.sha256,
                "size_bytes": self.size_bytes, "original_sha256": self.original_sha256,
                "settings": self.settings, "reviewer": self.reviewer,
                "created_at": self.created_at.isoformat(), "audit_id": self.audit_id}


PARTS = {"video": "object_key", "report": "report_key", "pdf": "pdf_key", "sheet": "sheet_key"}


def derivative(ctx: Context, user: User, derivative_id: str, action: str = "redact"
               ) -> Derivative:
    """A derivative's record (redact role, its case; a refusal recorded as `action`)."""
    with ctx.db() as conn:
        require_visible(conn, ctx.audit_key, user, action, "redaction", derivative_id,
                        case_of(conn, "redaction", derivative_id))
        r = conn.execute("SELECT * FROM redactions WHERE id = %s", (derivative_id,)).fetchone()
        assert r is not None
        keys = {k: str(r[c]) for k, c in PARTS.items()}
        recorded = {str(h["key"]): str(h["sha256"]) for h in conn.execute(
            "SELECT key, sha256 FROM object_hashes WHERE key = ANY(%s)",
            (list(keys.values()),)).fetchall()}
    return Derivative(str(r["id"]), str(r["video_id"]), str(r["case_id"]),
                      int(r["plan_version"]), str(r["sha256"]), int(r["size_bytes"]),
                      str(r["original_sha256"]), dict(r["settings"]), str(r["reviewer"]),
                      r["created_at"], keys, int(r["audit_id"]),
                      {**{k: recorded.get(key) for k, key in keys.items()},
                       "video": str(r["sha256"])})


@dataclass(frozen=True)
class Download:
    """A part of a derivative being served."""

    derivative: Derivative
    body: IO[bytes]  # its bytes, or those of the range asked for
    span: tuple[int, int] | None  # (first, last) byte of a range of the video; None: whole


def download(ctx: Context, user: User, derivative_id: str, part: str,
             byte_range: str | None = None,
             span_of: Callable[[int], tuple[int, int] | None] = lambda _size: None
             ) -> Download:
    """A part of a derivative (`video`, `report`, `pdf`, `sheet`) to stream, its bytes
    checked against their recorded SHA-256 (`check_stored`); audited (`redaction.download`,
    with the range asked for) once it can be served, by an account that may still redact in
    the case (a store that could not be reached answered 503 after the download was
    recorded: bb22). `span_of(size)` reads a range of the video (a player seeks with them:
    the whole file was sent for each: bb23)."""
    d = derivative(ctx, user, derivative_id, "redaction.download")
    span = span_of(d.size_bytes) if part == "video" else None
    check_stored(ctx, user, d, part, ranged=span is not None)
    body = ctx.store.open_stream(d.keys[part], *(span or (None, None)))
    try:
        with ctx.db() as conn:
            require_now(conn, ctx.audit_key, user, "redact", d.case_id)
            audit.append(conn, ctx.audit_key, user.name, "redaction.download", {
                "derivative_id": derivative_id, "case": d.case_id, "part": part,
                **({"range": byte_range} if span is not None else {})})
    except BaseException:
        body.close()
        raise
    return Download(d, body, span)


# Parts re-hashed lately, by key: (the store's version of the bytes hashed, when). A player
# seeks in a release with range requests, and each re-read the whole part (bb23's review).
_CHECKED: dict[str, tuple[str, float]] = {}
_CHECKED_LOCK = threading.Lock()
CHECKED_FOR_S = 600.0  # how long a range may rely on the last full re-hash


def check_stored(ctx: Context, user: User, d: Derivative, part: str, ranged: bool = False
                 ) -> None:
    """Re-hash a part before it is served: bytes that no longer have the SHA-256 recorded when
    they were written are not released (ConflictError), and the mismatch is audited as the
    fixity check audits it. A part written before hashes were recorded is served as it is.

    A range (`ranged`) of a part re-hashed in the last CHECKED_FOR_S is served on the store's
    word that the bytes are the same ones (`Store.version_of`, given by the read that hashed
    them): any bytes written since under the key are re-hashed before a byte is served."""
    expected = d.hashes.get(part)
    if expected is None:
        return
    key = d.keys[part]
    if ranged:
        version = ctx.store.version_of(key)
        with _CHECKED_LOCK:
            seen = _CHECKED.get(key)
        if version is not None and seen is not None and seen[0] == version \
                and time.monotonic() - seen[1] < CHECKED_FOR_S:
            return
    found = ctx.store.hash_object(key)
    if found is not None and found[0] == expected:
        if found[2] is not None:
            with _CHECKED_LOCK:
                now = time.monotonic()
                for old in [k for k, (_v, at) in _CHECKED.items() if now - at >= CHECKED_FOR_S]:
                    del _CHECKED[old]
                _CHECKED[key] = (found[2], now)
        return
    with _CHECKED_LOCK:
        _CHECKED.pop(key, None)
    mismatch = fixity.Mismatch(d.keys[part], "derivative", d.video_id, expected,
                               found[0] if found else None)
    with ctx.db() as conn:
        audit.append(conn, ctx.audit_key, user.name, "fixity.mismatch",
                     {**mismatch.as_json(), "derivative_id": d.derivative_id,
                      "case": d.case_id, "part": part})
    raise ConflictError(f"redaction {d.derivative_id}: the stored {part} no longer matches the "
                        "SHA-256 recorded when it was written; it is not served (audited; "
                        "render the redaction again)")


def verify(ctx: Context, user: User, derivative_id: str) -> dict[str, Any]:
    """Re-hash the stored derivative and check its lineage against the audit row that sealed
    it: the hashes, the plan version and the original's recorded SHA-256."""
    d = derivative(ctx, user, derivative_id)
    stored = ctx.store.sha256_of(d.keys["video"])
    parts = {part: ctx.store.sha256_of(d.keys[part]) for part in ("report", "pdf", "sheet")}
    with ctx.db() as conn:
        row = conn.execute("SELECT details FROM audit_log WHERE id = %s AND action ="
                           " 'redaction.create'", (d.audit_id,)).fetchone()
        original = conn.execute("SELECT sha256 FROM videos WHERE id = %s",
                                (d.video_id,)).fetchone()
        plan = conn.execute("SELECT 1 FROM redaction_plans WHERE video_id = %s AND"
                            " version = %s", (d.video_id, d.plan_version)).fetchone()
    details = dict(row["details"]) if row else {}
    checks = {
        "stored_sha256": stored is not None and stored[0] == d.sha256,
        "audit_row": bool(details) and details.get("sha256") == d.sha256
        and details.get("original_sha256") == d.original_sha256
        and details.get("plan_version") == d.plan_version,
        "original": original is not None and str(original["sha256"]) == d.original_sha256,
        "plan": plan is not None,
        **{part: found is not None and found[0] == d.hashes[part]
           for part, found in parts.items()},
    }
    return {"derivative_id": derivative_id, "ok": all(checks.values()), "checks": checks}


def plan_summary(ctx: Context, user: User, video_id: str) -> dict[str, Any]:
    """The video's plan for a reviewer (redact role, its case): tracks with their frames,
    times and stored track ids, low-confidence frames and the legal bases to choose from.
    Until a worker has computed it (queued on the first ask, audited when recorded), the
    job computing it (`pending` holds the job as `job` shows it)."""
    with ctx.db() as conn:
        case = _processed_video(conn, ctx.audit_key, user, video_id)
        media = conn.execute(f"SELECT {FIRST_FRAME_COLUMNS} FROM videos v WHERE v.id = %s",
                             (uid(video_id),)).fetchone()
    plan = _plan_or_job(ctx, user, video_id, case)
    if isinstance(plan, str):
        with ctx.db() as conn:
            found = redaction_jobs.load(conn, plan)
        assert found is not None
        return {"pending": redaction_jobs.as_json(found)}
    # Every face track of the video with its frames: each view is audited, as a listing of
    # its tracks is (bb23).
    ctx.audit(user.name, "redaction.plan.view", {
        "video_id": video_id, "case": case, "plan_version": plan.version,
        "tracks": len(plan.tracks)})
    red = ctx.settings.redaction
    return {"video_id": video_id, "version": plan.version, "algorithm": ALGORITHM,
            "frame_rate": str(plan.frame_rate), "n_frames": plan.n_frames,
            "width_px": plan.width_px, "height_px": plan.height_px,
            "duration_s": plan.duration_s, "first_frame_s": first_frame_s(media or {}),
            "legal_bases": list(red.legal_bases),
            "default_legal_basis": red.default_legal_basis,
            "low_confidence_frames": plan.low_confidence_frames(),
            "tracks": [{"id": t.id, "scene": t.scene, "first_frame": t.first_frame,
                        "last_frame": t.last_frame, "start_s": plan.time_s(t.first_frame),
                        "end_s": plan.time_s(t.last_frame), "detections": len(t.detections),
                        "db_track_ids": list(t.db_track_ids),
                        "min_probability": round(min(d[5] for d in t.detections), 4),
                        "detectors": sorted({d[6] for d in t.detections}),
                        "low_confidence_detections": sum(plan.low_confidence(d)
                                                         for d in t.detections)}
                       for t in plan.tracks]}
