"""Retention: bystanders' biometric data (embeddings and face crops) expires, and so do the
templates of watchlist entries past their own expiry date; originals stay."""

from __future__ import annotations

from dataclasses import dataclass

from bodycam import audit, cache, policy, subjects
from bodycam.context import Context

PURGE_TASK = "bodycam.purge"
SCHEDULED_ACTOR = "system:retention"


@dataclass(frozen=True)
class PurgePlan:
    """What a purge removes (or would remove, on a dry run)."""

    retention_days: int
    tracks: int
    detections: int
    thumbnails: int
    subjects: int  # watchlist entries lapsed (past their expiry date)
    subject_templates: int
    dry_run: bool

    def as_json(self) -> dict[str, object]:
        """JSON for the CLI and the audit log."""
        return {"retention_days": self.retention_days, "tracks": self.tracks,
                "detections": self.detections, "thumbnails": self.thumbnails,
                "subjects": self.subjects, "subject_templates": self.subject_templates,
                "dry_run": self.dry_run}

    @property
    def empty(self) -> bool:
        """Whether the purge removes nothing."""
        return not (self.tracks or self.detections or self.thumbnails or self.subjects
                    or self.subject_templates)


# Tracks past the period that no pending or confirmed match names (a rejected match is a
# bystander's, a withdrawn one ended undecided: they keep nothing, unless it was withdrawn
# while a confirmation was reopened: one supervisor's reopening and a removal of the entry
# made the track of a two-person confirmation purgeable) and whose case is not on legal hold.
_EXPIRED = (
    "SELECT t.id, t.thumbnail_key, v.sha256 FROM tracks t JOIN videos v ON v.id = t.video_id"
    " WHERE t.purged_at IS NULL AND t.created_at < now() - make_interval(days => %s)"
    " AND NOT EXISTS (SELECT 1 FROM matches m WHERE m.track_id = t.id"
    " AND (m.status IN ('pending', 'confirmed')"
    " OR (m.status = 'withdrawn' AND m.reopened_from = 'confirmed')))"
    " AND NOT EXISTS (SELECT 1 FROM held_cases h WHERE h.case_id = v.case_id)")
# Detections that joined no track, past the period, outside held cases.
_LOOSE = (
    " FROM videos v WHERE v.id = d.video_id AND d.track_id IS NULL"
    " AND d.embedding IS NOT NULL AND v.ingested_at < now() - make_interval(days => %s)"
    " AND NOT EXISTS (SELECT 1 FROM held_cases h WHERE h.case_id = v.case_id)")
# Watchlist entries past the expiry date they were enrolled with, outside held cases. Matching
# and search already ignore them; a purge retires them as `subjects remove` does.
_LAPSED = (
    "SELECT s.id FROM subjects s WHERE s.removed_at IS NULL AND s.expires_at <= now()"
    " AND NOT EXISTS (SELECT 1 FROM held_cases h WHERE h.case_id = s.case_id)")


def purge(ctx: Context, actor: str, dry_run: bool, audit_empty: bool = True) -> PurgePlan:
    """Remove expired embeddings and crops per the policy period; every purge is audited
    (the scheduler's, run every jobs.purge_interval_s, only when it removes something)."""
    with ctx.db() as conn:
        # Holds are read under a lock that a hold or release waits on: a hold placed while a
        # purge runs is recorded after it (and audited after it), never answered and ignored.
        conn.execute("LOCK TABLE held_cases IN SHARE MODE")
        days = policy.current(conn).retention_days
        expired = conn.execute(_EXPIRED + " FOR UPDATE OF t", (days,)).fetchall()
        ids = [r["id"] for r in expired]
        loose = conn.execute("SELECT count(*) AS n FROM detections d WHERE EXISTS (SELECT 1"
                             + _LOOSE + ")", (days,)).fetchone()
        n_det = conn.execute("SELECT count(*) AS n FROM detections WHERE track_id = ANY(%s)"
                             " AND embedding IS NOT NULL", (ids,)).fetchone()
        thumbs = [str(r["thumbnail_key"]) for r in expired if r["thumbnail_key"]]
        purged_videos = {str(r["sha256"]) for r in expired} | {
            str(r["sha256"]) for r in conn.execute(
                "SELECT sha256 FROM videos WHERE id IN (SELECT d.video_id FROM detections d"
                " WHERE EXISTS (SELECT 1" + _LOOSE + "))", (days,)).fetchall()}
        lapsed = [r["id"] for r in conn.execute(_LAPSED + " FOR UPDATE OF s").fetchall()]
        templates = conn.execute("SELECT count(*) AS n FROM subject_faces"
                                 " WHERE subject_id = ANY(%s)", (lapsed,)).fetchone()
        plan = PurgePlan(days, len(ids), int(n_det["n"] if n_det else 0) +
                         int(loose["n"] if loose else 0), len(thumbs), len(lapsed),
                         int(templates["n"] if templates else 0), dry_run)
        if not dry_run:
            subjects.retire(conn, ctx.audit_key, lapsed, actor,
                            "its watchlist entry lapsed and was purged")
            conn.execute("UPDATE tracks SET embedding = NULL, thumbnail_key = NULL,"
                         " purged_at = now() WHERE id = ANY(%s)", (ids,))
            conn.execute("UPDATE detections SET embedding = NULL WHERE track_id = ANY(%s)",
                         (ids,))
            conn.execute("UPDATE detections d SET embedding = NULL" + _LOOSE, (days,))
        if audit_empty or not plan.empty:
            audit.append(conn, ctx.audit_key, actor, "purge", plan.as_json())
    if not dry_run:
        for key in thumbs:  # after the commit: a failed delete leaves an orphan, not a ghost
            ctx.store.delete(key)
        # The stored original stays (evidence); this machine's working copy of it goes.
        cache.remove(cache.cache_dir(ctx.settings.home_dir), purged_videos)
    return plan
