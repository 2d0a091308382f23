"""How pending watchlist leads end without a decision: their entry is removed or lapses, or
face matching is turned off (the redact-only profile)."""

from __future__ import annotations

from collections.abc import Sequence

from bodycam.db import Conn, uids

WITHDRAWN = "withdrawn"  # a match's status: ended undecided, with reviews on record


def end_pending(conn: Conn, subject_ids: Sequence[object] | None = None) -> tuple[int, int]:
    """End the pending matches of these subjects (of every subject when None): a lead no one
    reviewed is deleted; one with reviews on record (a reopened match's earlier rounds, a
    first of two confirmations) is kept as `withdrawn`, with its reviews, as the record of
    what was decided. Returns (deleted, withdrawn). (Deleting them all took every earlier
    round of a reopened match with it.)"""
    ids = None if subject_ids is None else uids(subject_ids)
    where = (" WHERE m.status = 'pending' AND (%(ids)s::uuid[] IS NULL"
             " OR m.subject_id = ANY(%(ids)s::uuid[]))")
    withdrawn = conn.execute(
        "UPDATE matches m SET status = %(w)s, decided_at = now()" + where
        + " AND EXISTS (SELECT 1 FROM reviews r WHERE r.match_id = m.id)",
        {"ids": ids, "w": WITHDRAWN}).rowcount
    deleted = conn.execute("DELETE FROM matches m" + where, {"ids": ids}).rowcount
    return deleted, withdrawn
