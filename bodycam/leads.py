"""How pending watchlist leads end without a decision: their entry is removed or lapses, or
face matching is turned off (the redact-only profile)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from bodycam import audit
from bodycam.db import Conn, uids

WITHDRAWN = "withdrawn"  # a match's status: ended undecided, with reviews on record


def end_pending(conn: Conn, key: str, actor: str, why: str,
                subject_ids: Sequence[object] | None = None) -> tuple[int, int]:
    """End the pending matches of these subjects (of every subject when None): a lead no one
    reviewed is deleted; one with reviews on record (a reopened match's earlier rounds, a
    first of two confirmations) is kept as `withdrawn`, with its reviews, as the record of
    what was decided. Audited per case (`matches.end`: the withdrawn ids, how many were
    deleted, and `why`), so an auditor's case filter finds them. Returns (deleted,
    withdrawn). (Deleting them all took every earlier round of a reopened match with it.)"""
    ids = None if subject_ids is None else uids(subject_ids)
    rows = conn.execute(
        "SELECT m.id, m.case_id, EXISTS (SELECT 1 FROM reviews r WHERE r.match_id = m.id)"
        " AS reviewed FROM matches m WHERE m.status = 'pending' AND (%(ids)s::uuid[] IS NULL"
        " OR m.subject_id = ANY(%(ids)s::uuid[])) ORDER BY m.case_id, m.id FOR UPDATE",
        {"ids": ids}).fetchall()
    kept = [r["id"] for r in rows if r["reviewed"]]
    gone = [r["id"] for r in rows if not r["reviewed"]]
    conn.execute("UPDATE matches SET status = %s, decided_at = now() WHERE id = ANY(%s)",
                 (WITHDRAWN, kept))
    conn.execute("DELETE FROM matches WHERE id = ANY(%s)", (gone,))
    by_case: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for r in rows:
        by_case[str(r["case_id"])][0 if r["reviewed"] else 1].append(str(r["id"]))
    for case, (withdrawn, deleted) in by_case.items():
        audit.append(conn, key, actor, "matches.end", {
            "case": case, "withdrawn_match_ids": withdrawn, "deleted_pending": len(deleted),
            "reason": why})
    return len(gone), len(kept)
