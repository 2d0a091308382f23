"""How pending watchlist leads end without a decision: their entry is removed or lapses, face
matching is turned off (the redact-only profile), or another entry enrolled later matches the
track better."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from bodycam import audit
from bodycam.db import Conn, uids

WITHDRAWN = "withdrawn"  # a match's status: ended undecided, with reviews on record


def end_pending(conn: Conn, key: str, actor: str, why: str,
                subject_ids: Sequence[object] | None = None,
                match_ids: Sequence[object] | None = None) -> tuple[int, int]:
    """End the pending matches of these subjects (of every subject when None), of those only
    the `match_ids` when given: a lead no one reviewed is deleted; one with reviews on record
    (a reopened match's earlier rounds, a first of two confirmations), or of a case on legal
    hold (which preserves what the case found; a removal deleted a held case's leads: bb19),
    is kept as `withdrawn`, with its reviews, as the record. Audited per case (`matches.end`:
    the withdrawn and the deleted ids, how many were deleted, and `why`), so an auditor's
    case filter finds them. Returns (deleted, withdrawn). (Deleting them all took every
    earlier round of a reopened match with it.)"""
    ids = None if subject_ids is None else uids(subject_ids)
    mids = None if match_ids is None else uids(match_ids)
    rows = conn.execute(
        "SELECT m.id, m.case_id, EXISTS (SELECT 1 FROM reviews r WHERE r.match_id = m.id)"
        " OR EXISTS (SELECT 1 FROM held_cases h WHERE h.case_id = m.case_id) AS keep"
        " FROM matches m WHERE m.status = 'pending' AND (%(ids)s::uuid[] IS NULL"
        " OR m.subject_id = ANY(%(ids)s::uuid[])) AND (%(mids)s::uuid[] IS NULL"
        " OR m.id = ANY(%(mids)s::uuid[])) ORDER BY m.case_id, m.id FOR UPDATE OF m",
        {"ids": ids, "mids": mids}).fetchall()
    kept = [r["id"] for r in rows if r["keep"]]
    gone = [r["id"] for r in rows if not r["keep"]]
    conn.execute("UPDATE matches SET status = %s, decided_at = now() WHERE id = ANY(%s)",
                 (WITHDRAWN, kept))
    conn.execute("DELETE FROM matches WHERE id = ANY(%s)", (gone,))
    by_case: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for r in rows:
        by_case[str(r["case_id"])][0 if r["keep"] else 1].append(str(r["id"]))
    for case, (withdrawn, deleted) in by_case.items():
        audit.append(conn, key, actor, "matches.end", {
            "case": case, "withdrawn_match_ids": withdrawn, "deleted_pending": len(deleted),
            "deleted_match_ids": deleted, "reason": why})
    return len(gone), len(kept)
