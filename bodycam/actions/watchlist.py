"""Watchlist actions: enrol, list, remove and approve subjects; search; matches; review and
reopen; persons."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from bodycam import audit, matching, policy, subjects
from bodycam import search as s
from bodycam.accounts import User, case_of, require, require_now, require_role, require_visible
from bodycam.actions._common import refusals_audited
from bodycam.context import Context
from bodycam.db import uid
from bodycam.errors import InvalidInputError, NotFoundError
from bodycam.matching import Person
from bodycam.subjects import Subject
from bodycam.timeparse import parse_period, parse_when


def enroll(ctx: Context, user: User, name: str, photos: list[str], case: str | None,
           reason: str | None, expires: str | None = None, face: int | None = None
           ) -> dict[str, object]:
    """Enrol a subject in a case (investigator of the case) from photo files private to the
    server, then match it against the case's tracks; audited (`subject.enroll`)."""
    if not case:
        raise InvalidInputError("missing case: a subject belongs to a case")
    if not reason:
        raise InvalidInputError("missing reason: say why this person is enrolled")
    expires_at = parse_when(expires, "expires")
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise InvalidInputError(f"expires {expires}: already past; an entry would lapse "
                                "before it could match")
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "subjects.enroll", case)
    with refusals_audited(ctx, user, "subjects.enroll", case):
        with ctx.db() as conn:
            policy.require_identify(conn, "enrolment")
        sid, notes = subjects.enroll(ctx, name, photos, case, reason, user, expires_at, face)
    with ctx.db() as conn:
        notes += matching.resembling(conn, ctx.settings, ctx.audit_key, user.name, sid)
        made = matching.match_subject(conn, ctx.settings, ctx.audit_key, sid)
        awaiting = not subjects.get_subject(conn, sid).approved
    return {"subject_id": sid, "pending_matches": made, "notes": notes,
            "awaiting_approval": awaiting}


def list_subjects(ctx: Context, user: User, case: str | None = None) -> list[Subject]:
    """Active subjects of the cases the user sees; audited (`subjects.list`)."""
    with ctx.db() as conn:
        return subjects.view_subjects(conn, ctx.audit_key, user, case)


def remove_subject(ctx: Context, user: User, subject_id: str) -> dict[str, object]:
    """Take a subject off the watchlist (its templates deleted); audited."""
    with ctx.db() as conn:
        subjects.remove_subject(conn, ctx.audit_key, subject_id, user)
    return {"subject_id": subject_id, "removed": True}


def approve_subject(ctx: Context, user: User, subject_id: str) -> dict[str, object]:
    """A supervisor approves an enrolment (never their own); matching then runs."""
    with ctx.db() as conn:
        case = case_of(conn, "subject", subject_id)  # named in a refusal's audit row only
        require_role(conn, ctx.audit_key, user, "subjects.approve", case, f"subject {subject_id}")
    with refusals_audited(ctx, user, "subjects.approve", case, f"subject {subject_id}"), \
            ctx.db() as conn:
        subjects.approve_subject(conn, ctx.audit_key, subject_id, user)
        made = matching.match_subject(conn, ctx.settings, ctx.audit_key, subject_id)
    return {"subject_id": subject_id, "pending_matches": made}


def search(ctx: Context, user: User, case: str | None, purpose: str | None,
           photo: str | None = None, subject: str | None = None, track: str | None = None,
           threshold: float | None = None, limit: int | None = None,
           video: str | None = None, date_from: str | None = None, date_to: str | None = None,
           face: int | None = None) -> s.SearchResult:
    """Where does this person appear, in one case, for a recorded purpose (investigator of
    the case); every id must belong to the case; audited (`search`)."""
    case, purpose = s.bound(case, purpose)  # refused before the role is looked at
    probe = s.Probe(photo, face, subject, track)
    filters = s.Filters(video, *parse_period(date_from, date_to))
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "search", case)
    with refusals_audited(ctx, user, "search", case):
        return s.search(ctx, probe, case, purpose, user, threshold, limit, filters)


def photo_faces(ctx: Context, user: User, case: str | None, path: str | None
                ) -> dict[str, object]:
    """The faces of a probe photo, largest first with the index `search` and `enroll` take as
    `face` (investigator of the case; nothing is stored); audited (`photo.faces`)."""
    case = s.bound_case(case)
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "search", case)
    if path is None:
        raise InvalidInputError("missing photo: send the probe photo as the file field `photo`")
    with refusals_audited(ctx, user, "search", case):
        with ctx.db() as conn:
            policy.require_identify(conn, "face detection")
        data, image, _scale, found = subjects.detect_faces(ctx.settings, path)
    faces = [{"index": i, "box": [round(d.box_px[0], 1), round(d.box_px[1], 1),
                                  round(d.box_px[2] - d.box_px[0], 1),
                                  round(d.box_px[3] - d.box_px[1], 1)],
              "height_px": round(d.height_px, 1), "probability": round(d.probability, 3)}
             for i, d in enumerate(found)]
    sha = hashlib.sha256(data).hexdigest()
    ctx.audit(user.name, "photo.faces", {"case": case, "photo_sha256": sha,
                                         "faces": len(faces)})
    width = image.shape[1] / _scale
    height = image.shape[0] / _scale
    return {"photo": Path(path).name, "photo_sha256": sha, "width": round(width),
            "height": round(height), "faces": faces}


def case_videos(ctx: Context, user: User, case: str) -> list[dict[str, object]]:
    """The videos of a case with their duration and processing state (investigator of the
    case), newest first; refusals audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "tracks", case)
        rows = conn.execute(
            "SELECT v.id::text AS video_id, v.original_filename, v.duration_s, v.status,"
            " v.stage, v.progress, v.recorded_at, v.ingested_at, v.officer, v.device,"
            " (SELECT count(*) FROM tracks t WHERE t.video_id = v.id AND t.purged_at IS NULL)"
            " AS n_tracks FROM videos v WHERE v.case_id = %s ORDER BY v.ingested_at DESC, v.id",
            (case,)).fetchall()
    return [{"video_id": r["video_id"], "case": case, "filename": r["original_filename"],
             "duration_s": round(float(r["duration_s"]), 3), "status": r["status"],
             "stage": r["stage"], "progress": round(float(r["progress"]), 3),
             "recorded_at": r["recorded_at"].isoformat() if r["recorded_at"] else None,
             "ingested_at": r["ingested_at"].isoformat(), "officer": r["officer"],
             "device": r["device"], "tracks": int(r["n_tracks"])} for r in rows]


def review(ctx: Context, user: User, match_id: str, decision: str, note: str
           ) -> dict[str, object]:
    """Confirm or reject a match of a case the reviewer sees (four-eyes rules); audited."""
    if decision not in ("confirm", "reject"):
        raise InvalidInputError("decision: give confirm or reject")
    with ctx.db() as conn:
        case = case_of(conn, "match", match_id)  # named in a refusal's audit row only
        require_role(conn, ctx.audit_key, user, "review", case, f"match {match_id}")
    with refusals_audited(ctx, user, "review", case, f"match {match_id}"), ctx.db() as conn:
        status = matching.review(conn, ctx.audit_key, match_id, user, decision == "confirm",
                                 note or "")
    return {"match_id": match_id, "status": status}


def reopen(ctx: Context, user: User, match_id: str, reason: str) -> dict[str, object]:
    """Put a decided match of a case the supervisor sees back to pending for a new review
    round, with a reason; audited (`match.reopen`; a refusal as `refused`)."""
    with ctx.db() as conn:
        case = case_of(conn, "match", match_id)  # named in a refusal's audit row only
        require_role(conn, ctx.audit_key, user, "matches.reopen", case, f"match {match_id}")
    with refusals_audited(ctx, user, "matches.reopen", case, f"match {match_id}"), \
            ctx.db() as conn:
        rnd = matching.reopen(conn, ctx.audit_key, match_id, user, reason)
    return {"match_id": match_id, "status": "pending", "round": rnd}


def persons(ctx: Context, user: User, case: str, purpose: str | None, offset: int = 0,
            limit: int | None = None) -> tuple[list[Person], int]:
    """A page of the unknown persons of a case (investigator of the case), with a recorded
    purpose, and how many there are."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "persons", case)
    with refusals_audited(ctx, user, "persons", case), ctx.db() as conn:
        return matching.persons(conn, ctx.audit_key, ctx.settings, case, purpose or "",
                                user.name, offset, limit)


def match_items(ctx: Context, user: User, status: str | None = None, case: str | None = None,
                offset: int = 0, limit: int | None = None
                ) -> tuple[list[dict[str, object]], int]:
    """A page of the `matches --json` items of the cases the user sees (audited as
    `matches.list`, that page's ids) and how many there are,
    each with what its reviewer must know: who enrolled the subject (`enrolled_by`), the
    reviewers the policy requires, and, while pending, how many more confirmations by someone
    other than the enroller it needs (`confirmations_missing`)."""
    with ctx.db() as conn:
        rows, total = matching.view_matches(conn, ctx.audit_key, user, status, case, offset,
                                            limit)
        needed = policy.current(conn).reviewers_required
    out = [{**m.as_json(), "enrolled_by": m.enrolled_by, "reviewers_required": needed,
            "confirmations_missing": max(0, needed - m.confirmations)
            if m.status == "pending" else 0} for m in rows]
    return out, total


def subject_photo(ctx: Context, user: User, subject_id: str) -> bytes:
    """A subject's first enrolment photo as a JPEG (EXIF dropped, at most 640 px a side), for
    an investigator or supervisor of the subject's case; audited (`subject.photo`)."""
    with ctx.db() as conn:
        case = require_visible(conn, ctx.audit_key, user, "subject.photo", "subject",
                               subject_id, case_of(conn, "subject", subject_id))
        row = conn.execute(
            "SELECT f.photo_key, f.photo_sha256 FROM subject_photos f JOIN subjects s"
            " ON s.id = f.subject_id WHERE s.id = %s AND s.removed_at IS NULL"
            " AND (s.expires_at IS NULL OR s.expires_at > now())"
            " ORDER BY f.id LIMIT 1", (uid(subject_id),)).fetchone()
        if row is None:
            raise NotFoundError(f"subject {subject_id} has no enrolment photo on show: the "
                                "entry was removed or lapsed")
        # Recorded once it can be served (a store that could not be reached, or a photo
        # gone from it, was recorded as a view: bb24).
        preview = subjects.preview_jpeg(ctx.store.get_bytes(str(row["photo_key"])),
                                        "the enrolment photo", 640)
        require_now(conn, ctx.audit_key, user, "subject.photo", case)
        audit.append(conn, ctx.audit_key, user.name, "subject.photo", {
            "subject_id": subject_id, "case": case, "photo_sha256": row["photo_sha256"]})
    return preview
