"""Automatic watchlist matching (pending leads), human review, and unknown-person grouping."""

from __future__ import annotations

import logging
import threading
import uuid
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from bodycam import audit, policy, text
from bodycam.accounts import (
    User,
    case_of,
    require,
    require_now,
    require_visible,
    visible_cases,
)
from bodycam.config import Settings
from bodycam.db import Conn, uid
from bodycam.domain import FIRST_FRAME_COLUMNS, first_frame_s
from bodycam.errors import ConflictError, InvalidInputError, NotFoundError
from bodycam.leads import WITHDRAWN, end_pending
from bodycam.search import best_subjects, case_gallery, resolve_threshold
from bodycam.subjects import subject_vectors

log = logging.getLogger(__name__)
PERSON_NS = uuid.UUID("0c9a8f3e-51b7-4f8e-a0d4-6d2b7f9e1c42")


@dataclass(frozen=True)
class Match:
    """A lead: a subject's face found in a track, awaiting or after human review."""

    match_id: str
    subject_id: str
    subject_name: str
    track_id: str
    video_id: str
    case_id: str
    start_s: float
    end_s: float
    similarity: float
    threshold: float
    model: str
    status: str
    created_at: datetime
    reviewers: tuple[str, ...]  # of the current review round
    review_round: int  # one more each time a supervisor reopens it
    earlier_reviews: tuple[str, ...]  # "reviewer decision (round N)", of earlier rounds
    reopened_by: str | None  # who reopened the current round, why, and from which decision
    reopen_reason: str | None
    reopened_from: str | None
    entry: str  # the watchlist entry: active, lapsed or removed
    enrolled_by: str  # who enrolled the subject
    confirmations: int  # of the current round that count (`_INDEPENDENT`)
    first_frame_s: float = 0.0  # the video's first frame in its file: a player adds it
    # Every review of every round, oldest first ({reviewer, decision, note, at, round}), and
    # when the match was decided: the export's proof of who decided what (it listed the
    # round's reviewers without their decisions: bb23). Read for the export only.
    reviews: tuple[dict[str, Any], ...] = ()
    decided_at: datetime | None = None

    def as_json(self) -> dict[str, object]:
        """JSON for the CLI and exports."""
        return {"match_id": self.match_id, "subject_id": self.subject_id,
                "subject": self.subject_name, "track_id": self.track_id,
                "video_id": self.video_id, "case": self.case_id,
                "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "similarity": round(self.similarity, 4), "threshold": self.threshold,
                "model": self.model, "status": self.status,
                "created_at": self.created_at.isoformat(), "reviewers": list(self.reviewers),
                "round": self.review_round, "earlier_reviews": list(self.earlier_reviews),
                "reopened_by": self.reopened_by, "reopen_reason": self.reopen_reason,
                "reopened_from": self.reopened_from, "entry": self.entry,
                "first_frame_s": self.first_frame_s}

    def export_json(self) -> dict[str, object]:
        """as_json, with what an auditor's export adds: each review with its note and time,
        when the match was decided, and who enrolled the subject (the four-eyes rule)."""
        return {**self.as_json(), "reviews": list(self.reviews),
                "decided_at": self.decided_at.isoformat() if self.decided_at else None,
                "enrolled_by": self.enrolled_by}


STATUSES = ("pending", "confirmed", "rejected", WITHDRAWN)  # of a match
DECIDED = "decided"  # a listing's filter: confirmed or rejected

SYSTEM_ACTOR = "system:matching"  # who puts automatic leads before reviewers


def _match_pairs(conn: Conn, settings: Settings, key: str, cause: dict[str, str],
                 subject_ids: list[str], track_sql: str, params: tuple[object, ...]) -> int:
    """Identify tracks among their case's subjects and insert pending matches; the new
    matches are audited by id (`matches.create`, per case, with `cause`: the video processed
    or the subject enrolled or approved), so every lead put before a reviewer is on record.

    A track becomes a lead for one of `subject_ids` only when that subject is the case's
    best-matching enrolled subject for it (open-set identification, see
    search.best_subjects) and the similarity reaches the threshold: a poor face that
    resembles many people is not put in front of reviewers once per subject.

    The rule holds for the leads already pending on these tracks too: one of an active
    subject that is no longer the track's best match (an entry enrolled since matches it
    better) is ended (leads.end_pending). Before, it stayed pending beside the better
    entry's lead, and one face was confirmed as two entries (bb32).
    """
    model = settings.pipeline.embedder
    tracks = conn.execute(track_sql, params).fetchall()
    if not tracks or not subject_ids:
        return 0
    try:
        thr = resolve_threshold(settings, model, None, conn)
    except InvalidInputError:
        # No calibrated threshold for this model yet: no automatic leads rather than guesses.
        log.warning("no calibrated threshold for %s: automatic matching skipped", model)
        return 0
    wanted = set(subject_ids)
    by_case = defaultdict(list)
    for r in tracks:
        by_case[str(r["case_id"])].append(r)
    made = 0
    for case_id, rows in by_case.items():
        new: list[str] = []
        gallery = case_gallery(conn, case_id, model)
        if not wanted & set(gallery):
            continue
        tmat = np.stack([np.asarray(r["embedding"].to_numpy(), np.float32)
                         for r in rows])
        bests = best_subjects(tmat, gallery)
        _end_outmatched(conn, key, rows, bests, gallery)
        for r, best in zip(rows, bests, strict=True):
            for sid, sim in best.items():
                if sid not in wanted or sim < thr:
                    continue
                row = conn.execute(
                    "INSERT INTO matches (subject_id, track_id, video_id, case_id, similarity,"
                    " threshold, model) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (subject_id, track_id) DO NOTHING RETURNING id::text AS id",
                    (sid, r["id"], r["video_id"], case_id, sim, thr, model),
                ).fetchone()
                if row is not None:
                    new.append(str(row["id"]))
        if new:
            audit.append(conn, key, SYSTEM_ACTOR, "matches.create",
                         {**cause, "case": case_id, "match_ids": new, "threshold": thr,
                          "model": model})
            made += len(new)
    return made


def _end_outmatched(conn: Conn, key: str, rows: list[dict[str, Any]],
                    bests: list[dict[str, float]], gallery: dict[str, np.ndarray]) -> None:
    """End the pending leads on these tracks of active subjects that are not the track's
    best match (a lapsed entry's leads wait for it, as listings do). Under the audit log's
    lock, taken before the leads' rows as a review takes them (end_pending ends only those
    still pending then)."""
    best_of = {str(r["id"]): set(best) for r, best in zip(rows, bests, strict=True)}
    pending = conn.execute(
        "SELECT id::text AS id, track_id::text AS tid, subject_id::text AS sid FROM matches"
        " WHERE status = 'pending' AND track_id = ANY(%s)", (list(best_of),)).fetchall()
    outmatched = [p["id"] for p in pending
                  if p["sid"] in gallery and p["sid"] not in best_of[p["tid"]]]
    if outmatched:
        audit.lock(conn)
        end_pending(conn, key, SYSTEM_ACTOR, "another watchlist entry of the case matches "
                    "the track better", match_ids=outmatched)


def resembling(conn: Conn, settings: Settings, key: str, actor: str, subject_id: str
               ) -> list[str]:
    """Notes naming the case's other active subjects whose enrolment photos match this
    subject's at the case's threshold: the same person enrolled twice splits their leads
    between two entries (bb25 enrolled one twice without a word). Each comparison shown is
    audited (`subject.resembles`); nothing is refused: two people may look alike."""
    model = settings.pipeline.embedder
    row = conn.execute("SELECT case_id FROM subjects WHERE id = %s", (subject_id,)).fetchone()
    mine = np.stack(subject_vectors(conn, subject_id, model) or [np.zeros(0, np.float32)])
    if row is None or mine.size == 0:
        return []
    try:
        thr = resolve_threshold(settings, model, None, conn)
    except InvalidInputError:
        return []
    case_id = str(row["case_id"])
    alike = sorted(((float(np.max(mine @ vectors.T)), sid)
                    for sid, vectors in case_gallery(conn, case_id, model).items()
                    if sid != subject_id), reverse=True)
    alike = [(sim, sid) for sim, sid in alike if sim >= thr]
    if not alike:
        return []
    names = {str(r["id"]): str(r["name"]) for r in conn.execute(
        "SELECT id::text AS id, name FROM subjects WHERE id = ANY(%s::uuid[])",
        ([sid for _sim, sid in alike],)).fetchall()}
    audit.append(conn, key, actor, "subject.resembles", {
        "subject_id": subject_id, "case": case_id, "threshold": thr, "model": model,
        "resembles": [{"subject_id": sid, "similarity": round(sim, 4)} for sim, sid in alike]})
    return [f"the photos match subject {sid} ({names.get(sid, '?')}) of case {case_id} at "
            f"{sim:.3f} (threshold {thr}): if it is the same person, remove one of the two "
            "entries, or each lead goes to one of them" for sim, sid in alike]


_TRACKS = ("SELECT t.id, t.video_id, v.case_id, t.embedding FROM tracks t JOIN videos v"
           " ON v.id = t.video_id WHERE t.model = %s AND t.embedding IS NOT NULL"
           " AND t.purged_at IS NULL")


def match_video(conn: Conn, settings: Settings, key: str, video_id: str) -> int:
    """After a video is processed: compare its tracks with its case's subjects."""
    if not policy.embeddings_allowed(conn):
        return 0
    row = conn.execute("SELECT case_id FROM videos WHERE id = %s", (video_id,)).fetchone()
    if row is None:
        return 0
    subjects = [str(r["id"]) for r in conn.execute(
        "SELECT id FROM subjects WHERE case_id = %s AND removed_at IS NULL"
        " AND approved_at IS NOT NULL AND (expires_at IS NULL OR expires_at > now())",
        (row["case_id"],)).fetchall()]
    return _match_pairs(conn, settings, key, {"video_id": video_id}, subjects,
                        _TRACKS + " AND t.video_id = %s", (settings.pipeline.embedder, video_id))


def match_subject(conn: Conn, settings: Settings, key: str, subject_id: str) -> int:
    """After enrolment or approval: compare the subject with its case's existing tracks
    (never under the redact-only profile, whatever the caller)."""
    if not policy.embeddings_allowed(conn):
        return 0
    row = conn.execute("SELECT case_id, approved_at FROM subjects WHERE id = %s",
                       (subject_id,)).fetchone()
    if row is None:
        raise NotFoundError(f"no subject {subject_id}")
    if row["approved_at"] is None:
        return 0  # awaiting a supervisor's approval
    return _match_pairs(conn, settings, key, {"subject_id": subject_id}, [subject_id],
                        _TRACKS + " AND v.case_id = %s",
                        (settings.pipeline.embedder, row["case_id"]))


# The confirmations of a match's current round that count toward its reviewers: by neither
# the subject's enroller nor the round's reopener (four eyes). Over `matches m` joined to
# `subjects s`; the one rule for a review's outcome and a listing's missing confirmations.
_INDEPENDENT = ("(SELECT count(*) FROM reviews r WHERE r.match_id = m.id"
                " AND r.review_round = m.review_round AND r.decision = 'confirm'"
                " AND r.reviewer <> s.created_by AND r.reviewer IS DISTINCT FROM m.reopened_by)")

# Which matches a listing holds: by status, case, and the cases a user may see; a lapsed
# entry's leads are no longer pending, as a removed one's (ended: leads.end_pending) are not.
_LISTED_FROM = " FROM matches m JOIN subjects s ON s.id = m.subject_id"
_LISTED = (" WHERE (%(status)s::text IS NULL OR m.status = %(status)s"
           " OR (%(status)s = 'decided' AND m.status IN ('confirmed', 'rejected')))"
           " AND (%(case)s::text IS NULL OR m.case_id = %(case)s)"
           " AND (%(cases)s::text[] IS NULL OR m.case_id = ANY(%(cases)s::text[]))"
           " AND (m.status <> 'pending' OR s.expires_at IS NULL OR s.expires_at > now())")


_REVIEWS = (" ARRAY(SELECT jsonb_build_object('reviewer', r.reviewer, 'decision', r.decision,"
            " 'note', r.note, 'at', replace(to_char(r.created_at AT TIME ZONE 'UTC',"
            " 'YYYY-MM-DD HH24:MI:SS.US+00:00'), ' ', 'T'), 'round', r.review_round)"
            " FROM reviews r WHERE r.match_id = m.id ORDER BY r.id)")


def list_matches(conn: Conn, status: str | None = None, case_id: str | None = None,
                 cases: list[str] | None = None, offset: int = 0, limit: int | None = None,
                 with_reviews: bool = False) -> list[Match]:
    """Matches, newest first, from `offset`, at most `limit`, of a status or `decided` (confirmed
    or rejected); `cases` limits them to the cases a user may see. The page is cut by the
    database, whose reviewers are read for the page's rows only. Every review's record (note,
    time) is read only `with_reviews`: the export's, not each listing's."""
    if status is not None and status not in (*STATUSES, DECIDED):
        raise InvalidInputError(f"status {status[:40]!r}: choose from "
                                f"{', '.join((*STATUSES, DECIDED))}")
    rows = conn.execute(
        "SELECT m.id::text AS id, m.subject_id::text AS sid, s.name, m.track_id::text AS tid,"
        " m.video_id::text AS vid, m.case_id, t.start_s, t.end_s, m.similarity, m.threshold,"
        " m.model, m.status, m.created_at,"
        " ARRAY(SELECT r.reviewer FROM reviews r WHERE r.match_id = m.id"
        " AND r.review_round = m.review_round ORDER BY r.id)"
        " AS reviewers, m.review_round, ARRAY(SELECT r.reviewer || ' ' || r.decision"
        " || ' (round ' || r.review_round || ')' FROM reviews r WHERE r.match_id = m.id"
        " AND r.review_round < m.review_round ORDER BY r.id) AS earlier, m.reopened_by,"
        " m.reopen_reason, m.reopened_from, CASE WHEN s.removed_at IS NOT NULL THEN 'removed'"
        " WHEN s.expires_at <= now() THEN 'lapsed' ELSE 'active' END AS entry,"
        " s.created_by, " + _INDEPENDENT + " AS confirmations, m.decided_at,"
        + (_REVIEWS if with_reviews else " '{}'::jsonb[]") + " AS reviews, " + FIRST_FRAME_COLUMNS
        + _LISTED_FROM + " JOIN tracks t ON t.id = m.track_id"
        " JOIN videos v ON v.id = m.video_id" + _LISTED
        + " ORDER BY m.created_at DESC, m.id OFFSET %(offset)s LIMIT %(limit)s",
        {"status": status, "case": case_id, "cases": cases, "offset": offset,
         "limit": limit}).fetchall()
    return [Match(r["id"], r["sid"], r["name"], r["tid"], r["vid"], r["case_id"],
                  float(r["start_s"]), float(r["end_s"]), float(r["similarity"]),
                  float(r["threshold"]), r["model"], r["status"], r["created_at"],
                  tuple(r["reviewers"]), int(r["review_round"]), tuple(r["earlier"]),
                  r["reopened_by"], r["reopen_reason"], r["reopened_from"], str(r["entry"]),
                  str(r["created_by"]), int(r["confirmations"]), first_frame_s(r),
                  tuple(r["reviews"]), r["decided_at"])
            for r in rows]


def count_matches(conn: Conn, status: str | None, case_id: str | None,
                  cases: list[str] | None) -> int:
    """How many matches `list_matches` would list without a page."""
    row = conn.execute("SELECT count(*) AS n" + _LISTED_FROM + _LISTED,
                       {"status": status, "case": case_id, "cases": cases}).fetchone()
    return int(row["n"]) if row else 0


def view_matches(conn: Conn, key: str, user: User, status: str | None = None,
                 case_id: str | None = None, offset: int = 0, limit: int | None = None
                 ) -> tuple[list[Match], int]:
    """One page of the matches a user may see (their cases only) and how many there are,
    with an audit row saying who was shown which watchlist leads: that page's. (Each page
    used to record every lead the user could see: listing N leads page by page wrote N^2
    ids, and claimed leads were shown that were not.)"""
    require(conn, key, user, "matches", case_id)  # role, and the case when one is named
    cases = visible_cases(conn, user)
    shown = list_matches(conn, status, case_id, cases, offset, limit)
    total = count_matches(conn, status, case_id, cases)
    audit.append(conn, key, user.name, "matches.list", {
        "case": case_id, "cases": sorted({m.case_id for m in shown}), "status": status,
        "count": total, "offset": offset, "match_ids": [m.match_id for m in shown]})
    return shown, total


def review(conn: Conn, key: str, match_id: str, user: User, confirm: bool, note: str
           ) -> str:
    """Record a reviewer's decision; returns the match's status afterwards.

    Only a match of a case the reviewer may see (others are refused and audited), and not
    under the redact-only profile. A rejection ends the match. A confirmation counts once
    per reviewer; the match is confirmed when the policy's number of reviewers have
    confirmed, and the person who enrolled the subject is never enough on their own.
    """
    note = text.required(note, "note", "record why you confirm or reject this match")
    case = require_visible(conn, key, user, "review", "match", match_id,
                           case_of(conn, "match", match_id))
    policy.require_identify(conn, "match review")
    reviewer = user.name
    # The audit log's lock before the match's row, as a removal of the entry takes them: in
    # the other order a review racing a removal deadlocked (a 500 after a second). Under it,
    # the account as it stands now: one taken off the case (or disabled) since the check
    # above was recorded after it (bb19).
    require_now(conn, key, user, "review", case)
    row = _decidable(conn, match_id, pending=True)
    rnd = int(row["review_round"])  # a reopened match's earlier reviews no longer count
    already = conn.execute("SELECT 1 FROM reviews WHERE match_id = %s AND reviewer = %s"
                           " AND review_round = %s", (match_id, reviewer, rnd)).fetchone()
    if already:
        raise ConflictError(f"{reviewer} has already reviewed match {match_id}")
    needed = policy.current(conn).reviewers_required
    # Neither who enrolled the subject nor who reopened the round is enough on their own: a
    # supervisor who reopened a colleague's rejection could confirm it alone.
    interested = [n for n in (row["created_by"], row["reopened_by"]) if n is not None]

    def independent() -> int:
        n = conn.execute("SELECT " + _INDEPENDENT + " AS n" + _LISTED_FROM
                         + " WHERE m.id = %s", (uid(match_id),)).fetchone()
        return int(n["n"]) if n is not None else 0

    if confirm and reviewer in interested and (have := independent()) < needed:
        why = ("enrolled this subject" if reviewer == row["created_by"]
               else "reopened this match")
        raise policy.ReviewRefusedError(
            f"{reviewer} {why}, so their confirmation does not count (only reviewers other "
            f"than the enroller and the round's reopener confirm): {needed - have} more by "
            "other reviewers needed")
    if confirm:
        _one_identity(conn, match_id)
    conn.execute("INSERT INTO reviews (match_id, reviewer, decision, note, review_round)"
                 " VALUES (%s, %s, %s, %s, %s)",
                 (match_id, reviewer, "confirm" if confirm else "reject", note, rnd))
    audit.append(conn, key, reviewer, "review", {
        "match_id": match_id, "case": case, "decision": "confirm" if confirm else "reject",
        "note": note, **({"round": rnd} if rnd else {})})
    status = ("rejected" if not confirm
              else "confirmed" if independent() >= needed else "pending")
    if status != "pending":
        conn.execute("UPDATE matches SET status = %s, decided_at = now() WHERE id = %s",
                     (status, uid(match_id)))
    return status


def settle_pending(conn: Conn, key: str, by: str) -> list[str]:
    """Confirm the pending matches that the confirmations already given now settle, after
    an admin lowered the policy's reviewer count; returns their ids. Counted as a review
    counts them (not the enroller, not the round's reopener), each audited; one whose face
    is confirmed as another entry stays pending (`_one_identity`). Lowered from 3 to 1, a
    match one reviewer had confirmed stayed pending, "waiting for 0 more" (bb56). Taken
    after the audit log's lock, as a review takes the match's row."""
    needed = policy.current(conn).reviewers_required
    rows = conn.execute(
        "SELECT m.id::text AS id, m.case_id, " + _INDEPENDENT + " AS n" + _LISTED_FROM
        + " WHERE m.status = 'pending' AND s.removed_at IS NULL"
        " AND (s.expires_at IS NULL OR s.expires_at > now())"
        " AND " + _INDEPENDENT + " >= %s ORDER BY m.id FOR UPDATE OF m",
        (needed,)).fetchall()
    settled: list[str] = []
    for r in rows:
        try:
            _one_identity(conn, r["id"])
        except ConflictError:
            continue
        conn.execute("UPDATE matches SET status = 'confirmed', decided_at = now() WHERE id = %s",
                     (uid(r["id"]),))
        audit.append(conn, key, by, "review.settle", {
            "match_id": r["id"], "case": r["case_id"], "decision": "confirm",
            "confirmations": int(r["n"]), "reviewers_required": needed,
            "reason": "the policy's reviewer count was lowered: the confirmations given meet it"})
        settled.append(r["id"])
    return settled


def _one_identity(conn: Conn, match_id: str) -> None:
    """Refuse to confirm a match whose face is confirmed as another watchlist entry: one face
    is one person (a track was confirmed as two entries: bb32). The decision that stands is
    reopened first, by a supervisor, if it was wrong."""
    other = conn.execute(
        "SELECT o.id::text AS id, o.subject_id::text AS sid FROM matches m JOIN matches o"
        " ON o.track_id = m.track_id AND o.id <> m.id WHERE m.id = %s AND o.status ="
        " 'confirmed' ORDER BY o.id LIMIT 1", (uid(match_id),)).fetchone()
    if other is not None:
        raise ConflictError(
            f"match {match_id}: its face is already confirmed as subject {other['sid']} "
            f"(match {other['id']}); a supervisor reopens that match first if it is wrong")


def _decidable(conn: Conn, match_id: str, pending: bool) -> dict[str, Any]:
    """A match's row locked for a decision (status, round, enroller, reopener): a review's
    (`pending`) or a reopening's (confirmed or rejected). Refused when it is gone (404), in
    another state, or its watchlist entry was removed or lapsed (its legal basis ended: its
    leads can no longer be decided, nor decided again). Taken after the audit log's lock, as
    a removal of the entry is."""
    row = conn.execute(
        "SELECT m.status, m.review_round, m.reopened_by, s.created_by, s.expires_at,"
        " s.removed_at IS NOT NULL AS removed, s.expires_at <= now() AS lapsed"
        " FROM matches m JOIN subjects s ON s.id = m.subject_id"
        " WHERE m.id = %s FOR UPDATE OF m", (uid(match_id),)).fetchone()
    if row is None:
        raise NotFoundError(f"no match {match_id}")
    if pending and row["status"] != "pending":
        raise ConflictError(f"match {match_id} is already {row['status']}")
    if not pending and row["status"] == "pending":
        raise ConflictError(f"match {match_id} is pending: there is no decision to reopen")
    if not pending and row["status"] == WITHDRAWN:
        raise policy.ReviewRefusedError(
            f"match {match_id} was withdrawn undecided (its entry removed or face matching"
            " turned off) and cannot be reopened")
    if row["removed"]:
        raise policy.ReviewRefusedError(
            f"match {match_id}: its watchlist entry was removed and its leads can no longer"
            " be decided")
    if row["lapsed"]:
        raise policy.ReviewRefusedError(
            f"match {match_id}: its watchlist entry lapsed at {row['expires_at'].isoformat()}"
            " and its leads can no longer be decided")
    return dict(row)


def reopen(conn: Conn, key: str, match_id: str, user: User, reason: str) -> int:
    """Put a decided match back to pending, in a new review round, for a supervisor of its
    case with a reason (a confirmation found wrong, a rejection made in haste); returns the
    round. The earlier reviews stay as the record; only the new round's count. Not under
    the redact-only profile; audited (`match.reopen`, with what it was)."""
    reason = text.required(reason, "reason", "say why this decision is reopened")
    case = require_visible(conn, key, user, "matches.reopen", "match", match_id,
                           case_of(conn, "match", match_id))
    policy.require_identify(conn, "match review")
    require_now(conn, key, user, "matches.reopen", case)  # the lock, then the account now
    row = _decidable(conn, match_id, pending=False)
    rnd = int(row["review_round"]) + 1
    conn.execute("UPDATE matches SET status = 'pending', decided_at = NULL, review_round = %s,"
                 " reopened_by = %s, reopen_reason = %s, reopened_from = %s WHERE id = %s",
                 (rnd, user.name, reason, row["status"], uid(match_id)))
    audit.append(conn, key, user.name, "match.reopen", {
        "match_id": match_id, "case": case, "was": row["status"], "round": rnd,
        "reason": reason})
    return rnd


@dataclass(frozen=True)
class Person:
    """An unknown person: tracks in one case that are the same face, across videos."""

    person_id: str
    track_ids: tuple[str, ...]
    appearances: tuple[tuple[str, float, float], ...]  # (video_id, start_s, end_s)
    thumbnail: str | None

    def as_json(self) -> dict[str, object]:
        """JSON for the CLI."""
        return {"person_id": self.person_id, "n_tracks": len(self.track_ids),
                "track_ids": list(self.track_ids), "thumbnail": self.thumbnail,
                "appearances": [{"video_id": v, "start_s": round(s, 3), "end_s": round(e, 3)}
                                for v, s, e in self.appearances]}


def cluster_tracks(vectors: np.ndarray, cannot_link: set[tuple[int, int]], threshold: float
                   ) -> list[list[int]]:
    """Complete-linkage grouping: a group's every pair is at least `threshold` similar, and
    no two tracks seen at the same time in the same video (`cannot_link`) share a group."""
    n = len(vectors)
    sims = vectors @ vectors.T if n else np.zeros((0, 0))
    groups: dict[int, list[int]] = {i: [i] for i in range(n)}
    owner = list(range(n))
    # The pairs at least `threshold` similar, most similar first (ties: later tracks first).
    iu, ju = np.nonzero(np.triu(sims >= threshold, k=1))
    order = np.lexsort((-ju, -iu, -sims[iu, ju].astype(np.float64)))
    for i, j in zip(iu[order].tolist(), ju[order].tolist(), strict=True):
        gi, gj = owner[i], owner[j]
        if gi == gj:
            continue
        a, b = groups[gi], groups[gj]
        if any((min(x, y), max(x, y)) in cannot_link for x in a for y in b):
            continue
        if float(np.min(sims[np.ix_(a, b)])) < threshold:
            continue
        a.extend(b)
        for x in b:
            owner[x] = gi
        del groups[gj]
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0])


def persons(conn: Conn, key: str, settings: Settings, case_id: str, purpose: str,
            actor: str, offset: int = 0, limit: int | None = None
            ) -> tuple[list[Person], int]:
    """One page of a case's tracks grouped into persons (grouped again whenever the stored
    tracks or the threshold changed) and how many persons there are.

    Grouping faces across videos is biometric processing like a search: it needs a purpose
    and is audited with what it returned (the page's tracks).
    """
    purpose = text.required(purpose, "purpose", "say why you are grouping this case's faces")
    policy.require_identify(conn, "persons")
    found = _grouped(conn, settings, case_id)
    shown = found[offset:offset + limit if limit is not None else None]
    audit.append(conn, key, actor, "persons", {
        "case": case_id, "purpose": purpose, "persons": len(found), "offset": offset,
        "track_ids": [t for p in shown for t in p.track_ids]})
    return shown, len(found)


# The tracks grouped into unknown persons: a case's searchable tracks of the model in use,
# retention not purged; a track a reviewer confirmed as a watchlist entry's is known.
_UNKNOWN = (" FROM tracks t JOIN videos v ON v.id = t.video_id"
            " WHERE v.case_id = %s AND t.model = %s AND t.embedding IS NOT NULL"
            " AND t.purged_at IS NULL AND NOT EXISTS (SELECT 1 FROM matches m"
            " WHERE m.track_id = t.id AND m.status = 'confirmed')")
# The last grouping of a few cases, with what it was computed from: a page of persons reads
# the tracks' ids, not their vectors, and groups again only when they or the threshold
# changed. One entry per case: a grouping of tracks since purged is dropped when its case
# is next grouped, or pushed out by other cases.
_GROUPINGS: OrderedDict[str, tuple[tuple[str, float, str], list[Person]]] = OrderedDict()
_GROUPINGS_KEPT = 8
_GROUPINGS_LOCK = threading.Lock()


def _grouped(conn: Conn, settings: Settings, case_id: str) -> list[Person]:
    """The case's unknown persons, largest first: the grouping kept for the same tracks and
    threshold, else grouped now."""
    model = settings.pipeline.embedder
    thr = resolve_threshold(settings, model, None, conn)
    row = conn.execute("SELECT md5(string_agg(t.id::text, ',' ORDER BY t.id)) AS d"
                       + _UNKNOWN, (case_id, model)).fetchone()
    basis = (model, thr, str(row["d"]) if row else "")
    with _GROUPINGS_LOCK:
        kept = _GROUPINGS.get(case_id)
        if kept is not None and kept[0] == basis:
            _GROUPINGS.move_to_end(case_id)
            return kept[1]
    found = _persons(conn, case_id, model, thr)
    with _GROUPINGS_LOCK:
        _GROUPINGS[case_id] = (basis, found)
        _GROUPINGS.move_to_end(case_id)
        while len(_GROUPINGS) > _GROUPINGS_KEPT:
            _GROUPINGS.popitem(last=False)
    return found


def _persons(conn: Conn, case_id: str, model: str, thr: float) -> list[Person]:
    rows = conn.execute(
        "SELECT t.id::text AS id, t.video_id::text AS vid, t.start_s, t.end_s, t.quality,"
        " t.thumbnail_key, t.embedding" + _UNKNOWN + " ORDER BY t.video_id, t.start_s, t.id",
        (case_id, model)).fetchall()
    if not rows:
        return []
    vecs = np.stack([np.asarray(r["embedding"].to_numpy(), np.float32) for r in rows])
    by_video: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_video[r["vid"]].append(i)
    cannot: set[tuple[int, int]] = set()
    for idx in by_video.values():
        for a in idx:
            for b in idx:
                if a < b and rows[a]["start_s"] < rows[b]["end_s"] and \
                        rows[b]["start_s"] < rows[a]["end_s"]:
                    cannot.add((a, b))
    out = []
    for group in cluster_tracks(vecs, cannot, thr):
        members = [rows[i] for i in group]
        best = max(members, key=lambda r: r["quality"])
        pid = uuid.uuid5(PERSON_NS, min(r["id"] for r in members))
        out.append(Person(str(pid), tuple(r["id"] for r in members),
                          tuple((r["vid"], float(r["start_s"]), float(r["end_s"]))
                                for r in members), best["thumbnail_key"]))
    return sorted(out, key=lambda p: -len(p.track_ids))
