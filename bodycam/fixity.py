"""Fixity: re-hash stored originals, enrolment photos and derivatives against their recorded
SHA-256, and audit."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import psycopg

from bodycam import audit
from bodycam.context import Context
from bodycam.db import Conn, autocommit
from bodycam.errors import ConflictError
from bodycam.storage import original_key

log = logging.getLogger(__name__)
FIXITY_TASK = "bodycam.fixity"
SCHEDULED_ACTOR = "system:fixity"
FIXITY_LOCK = 727003  # pg advisory lock held by the one fixity run (727001 migrate, 727002 audit)
# How long a check asked on demand waits for one running (a small store's takes seconds).
ASKED_WAIT_S = 10.0


@dataclass(frozen=True)
class Mismatch:
    """A stored object whose bytes no longer have the SHA-256 recorded when it was written."""

    key: str
    kind: str  # "original", "derivative" or "enrolment photo"
    video_id: str | None  # the video it is or comes from; None for an enrolment photo
    expected_sha256: str
    actual_sha256: str | None  # None: the object is missing
    subject_id: str | None = None  # the watchlist entry an enrolment photo belongs to

    def as_json(self) -> dict[str, object]:
        """JSON for the CLI and the audit row (ids and hashes only)."""
        return {"key": self.key, "kind": self.kind, "video_id": self.video_id,
                **({"subject_id": self.subject_id} if self.subject_id else {}),
                "expected_sha256": self.expected_sha256, "actual_sha256": self.actual_sha256,
                "missing": self.actual_sha256 is None}


@dataclass(frozen=True)
class FixityReport:
    """One fixity run: what was re-hashed and what did not match."""

    originals: int
    derivatives: int
    baselined: int
    bytes_hashed: int
    duration_s: float
    mismatches: list[Mismatch] = field(default_factory=list)
    photos: int = 0  # enrolment photos re-hashed (the record of who is sought)

    @property
    def ok(self) -> bool:
        """Whether every object matched its recorded hash."""
        return not self.mismatches

    def summary(self) -> dict[str, object]:
        """Counts for the `fixity.ok` / `fixity.failed` audit row."""
        return {"originals": self.originals, "photos": self.photos,
                "derivatives": self.derivatives, "baselined": self.baselined,
                "bytes_hashed": self.bytes_hashed,
                "mismatches": len(self.mismatches), "duration_s": round(self.duration_s, 3)}

    def as_json(self) -> dict[str, object]:
        """JSON for `bodycam fixity --json`."""
        return {"ok": self.ok, **self.summary(),
                "mismatched": [m.as_json() for m in self.mismatches]}


def record(conn: Conn, key: str, data: bytes) -> None:
    """Record the SHA-256 of a derived object as it is written (in the writer's transaction);
    writing the key again replaces its hash, since the new bytes are the ones to keep."""
    conn.execute(
        "INSERT INTO object_hashes (key, sha256, size_bytes) VALUES (%s, %s, %s)"
        " ON CONFLICT (key) DO UPDATE SET sha256 = excluded.sha256,"
        " size_bytes = excluded.size_bytes, written_at = now()",
        (key, hashlib.sha256(data).hexdigest(), len(data)))


class FixityRunningError(ConflictError):
    """Another fixity check is running (FIXITY_LOCK)."""


@contextmanager
def _one_at_a_time(ctx: Context, wait_s: float) -> Iterator[None]:
    """Hold FIXITY_LOCK for a run, waiting up to `wait_s` for a run that holds it; raises
    FixityRunningError past that. The lock is a session's, on a connection of its own with
    no transaction open (a run takes hours on a large store, and an open snapshot would hold
    back vacuum). A run reads every stored byte: three asked at once read the store three
    times over (bb42)."""
    with autocommit(ctx.services.database_url) as conn:
        try:
            conn.execute(f"SET lock_timeout = '{max(1, round(wait_s * 1000))}ms'")
            conn.execute("SELECT pg_advisory_lock(%s)", (FIXITY_LOCK,))
        except psycopg.errors.LockNotAvailable:
            raise FixityRunningError("a fixity check is running: ask again once it has "
                                     "ended") from None
        try:
            yield
        finally:
            with suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (FIXITY_LOCK,))


def run(ctx: Context, actor: str, wait_s: float = ASKED_WAIT_S) -> FixityReport:
    """One fixity run at a time (`_one_at_a_time`): see `_run`. The scheduler's does not
    wait (`wait_s` 0): a run asked meanwhile is that interval's check."""
    with _one_at_a_time(ctx, wait_s):
        return _run(ctx, actor)


def _run(ctx: Context, actor: str) -> FixityReport:
    """Re-hash every original (against videos.sha256), every enrolment photo of the watchlist
    (against subject_photos.photo_sha256: they are stored by it; a removed entry's too) and
    every referenced derivative (track thumbnails; redacted videos, their reports, PDFs and
    contact sheets) against object_hashes; audit each mismatch (`fixity.mismatch`) and the
    run (`fixity.ok` or `fixity.failed`).

    A derivative written before hashes were recorded gets its current hash as a baseline.
    Raises TransientError when the database or the store is unreachable (nothing is audited).
    """
    started = time.monotonic()
    with ctx.db() as conn:
        videos = conn.execute(
            "SELECT id::text AS id, sha256, object_key FROM videos ORDER BY ingested_at, id"
        ).fetchall()
        photos = conn.execute(
            "SELECT DISTINCT f.photo_key AS key, f.photo_sha256 AS sha256,"
            " f.subject_id::text AS subject_id, s.case_id FROM subject_photos f"
            " JOIN subjects s ON s.id = f.subject_id ORDER BY 1, 3").fetchall()
        derived = conn.execute(
            "SELECT t.thumbnail_key AS key, t.video_id::text AS video_id, h.sha256"
            " FROM tracks t LEFT JOIN object_hashes h ON h.key = t.thumbnail_key"
            " WHERE t.thumbnail_key IS NOT NULL"
            " UNION ALL SELECT k.key, r.video_id::text, h.sha256 FROM redactions r"
            " CROSS JOIN LATERAL (VALUES (r.object_key), (r.report_key), (r.pdf_key),"
            " (r.sheet_key)) AS k (key) LEFT JOIN object_hashes h ON h.key = k.key"
            " ORDER BY key").fetchall()
    mismatches: list[Mismatch] = []
    hashed = 0
    # Stored by their SHA-256, each once: one file ingested into several cases, one photo
    # enrolled for several subjects.
    seen: dict[str, tuple[str, int] | None] = {}
    stored: list[tuple[str, str, str | None, str, str | None]] = [
        (str(v["object_key"] or original_key(str(v["sha256"]))), "original", str(v["id"]),
         str(v["sha256"]), None) for v in videos]
    stored += [(str(ph["key"]), "enrolment photo", None, str(ph["sha256"]),
                str(ph["subject_id"])) for ph in photos]
    for key, kind, video_id, expected, subject_id in stored:
        if key not in seen:
            got = seen[key] = ctx.store.sha256_of(key)
            hashed += got[1] if got else 0
        found = seen[key]
        if found is None or found[0] != expected:
            mismatches.append(Mismatch(key, kind, video_id, expected,
                                       found[0] if found else None, subject_id))
    photo_case = {str(ph["subject_id"]): ph["case_id"] for ph in photos}
    baseline: list[tuple[str, str, int]] = []
    for d in derived:
        found = ctx.store.sha256_of(str(d["key"]))
        hashed += found[1] if found else 0
        if d["sha256"] is None:
            if found is not None:
                baseline.append((str(d["key"]), found[0], found[1]))
            continue
        if found is None or found[0] != d["sha256"]:
            mismatches.append(Mismatch(str(d["key"]), "derivative", str(d["video_id"]),
                                       str(d["sha256"]), found[0] if found else None))
    report = FixityReport(len(videos), len(derived), len(baseline), hashed,
                          time.monotonic() - started, mismatches, len(photos))
    with ctx.db() as conn:
        for key, sha, size in baseline:
            conn.execute("INSERT INTO object_hashes (key, sha256, size_bytes)"
                         " VALUES (%s, %s, %s) ON CONFLICT (key) DO NOTHING", (key, sha, size))
        for m in mismatches:  # under the video's or the entry's case, for the case filter
            case = (photo_case.get(m.subject_id) if m.subject_id else
                    (row := conn.execute("SELECT case_id FROM videos WHERE id = %s",
                                         (m.video_id,)).fetchone()) and row["case_id"])
            audit.append(conn, ctx.audit_key, actor, "fixity.mismatch",
                         {**m.as_json(), "case": case or None})
        audit.append(conn, ctx.audit_key, actor, "fixity.ok" if report.ok else "fixity.failed",
                     report.summary())
    for m in mismatches:
        log.error("fixity: %s %s of %s does not match its recorded SHA-256", m.kind, m.key,
                  f"subject {m.subject_id}" if m.subject_id else f"video {m.video_id}")
    log.info("fixity: %d originals, %d enrolment photos, %d derivatives, %d mismatches in"
             " %.1fs", report.originals, report.photos, report.derivatives, len(mismatches),
             report.duration_s)
    return report
