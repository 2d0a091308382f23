"""Policy profiles: what this deployment may do with faces (identify, or redact only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bodycam import audit, text
from bodycam.db import Conn
from bodycam.errors import InvalidInputError, PermanentError
from bodycam.leads import end_pending

# Each profile's defaults: reviewers needed to confirm a match, and whether a supervisor must
# approve an enrolment before it is matched. identify-eu follows the stricter EU-style rules.
PROFILES: dict[str, tuple[int, bool]] = {
    "identify": (1, False),
    "identify-eu": (2, True),
    "redact-only": (1, False),
}


# A century: more than any retention law asks, and far inside Postgres' date range (a value of
# 100,000,000 days was stored, and every later purge failed with "timestamp out of range").
MAX_RETENTION_DAYS = 36_500


class PolicyRefusedError(PermanentError):
    """The active policy profile forbids this action."""


class ReviewRefusedError(PermanentError):
    """A review or an approval the four-eyes rules do not allow: a match already decided,
    reviewed twice by one reviewer or confirmed by its subject's enroller alone; an enrolment
    approved by its author."""


@dataclass(frozen=True)
class Policy:
    """The active profile and its parameters."""

    profile: str = "identify"
    # The reviewer count as set (an admin's, or a profile's default): stored, so a switch
    # back finds it; the profile's own count raises it (`reviewers_required`).
    reviewers_set: int = 1
    retention_days: int = 30
    enrolment_approval: bool = False
    reviewers_explicit: bool = False  # set by an admin, kept across profile switches

    @property
    def reviewers_required(self) -> int:
        """Confirmations a match needs: the count as set, at least the profile's own."""
        return max(self.reviewers_set, PROFILES.get(self.profile, (1, False))[0])

    def as_json(self) -> dict[str, object]:
        """JSON for the CLI and the audit log."""
        return {"profile": self.profile, "reviewers_required": self.reviewers_required,
                "retention_days": self.retention_days,
                "enrolment_approval": self.enrolment_approval,
                "reviewers_explicit": self.reviewers_explicit}


def current(conn: Conn) -> Policy:
    """The active policy (defaults before any change is recorded)."""
    row = conn.execute(
        "SELECT profile, reviewers_required, retention_days, enrolment_approval,"
        " reviewers_explicit FROM policy ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return Policy()
    return Policy(str(row["profile"]), int(row["reviewers_required"]),
                  int(row["retention_days"]), bool(row["enrolment_approval"]),
                  bool(row["reviewers_explicit"]))


def change(conn: Conn, key: str, by: str, reason: str, profile: str | None = None,
           reviewers: int | None = None, retention_days: int | None = None) -> Policy:
    """Record a policy change (admins only, checked by the caller) with its reason.

    A profile switch brings the profile's defaults, except for a reviewer count an admin
    set explicitly (`--reviewers`): that is kept until an admin changes it, but a profile
    never needs fewer than its own count: a count of 1 set under `identify` left
    `identify-eu` with one confirmation, which its users take to need two (bb50). The count
    as set is stored, so a switch back finds it; fewer than a profile's own is refused.
    Switching to redact-only purges every stored face embedding and enrolment template in the
    same transaction, audited with the counts; from then on the database
    refuses to store new ones (migration 007).
    """
    reason = text.required(reason, "reason", "a policy change must say why")
    if reviewers is not None and not 1 <= reviewers <= 5:
        raise InvalidInputError(f"reviewers {reviewers}: between 1 and 5")
    if retention_days is not None and not 1 <= retention_days <= MAX_RETENTION_DAYS:
        raise InvalidInputError(
            f"retention_days {retention_days}: between 1 and {MAX_RETENTION_DAYS}")
    # One change at a time, each from the one before: two made at once each read the same
    # policy and the later row dropped the other's change (bb53: a switch to identify-eu sent
    # beside a reviewer count was lost 2 times in 10). Readers are not held. Not the audit
    # log's lock: a switch to redact-only locks the embedding tables below before its audit
    # row, in the order of the workers that write embeddings and then audit.
    conn.execute("LOCK TABLE policy IN SHARE ROW EXCLUSIVE MODE")
    old = current(conn)
    name = profile or old.profile
    if name not in PROFILES:
        raise InvalidInputError(f"unknown profile {name}: choose from {', '.join(PROFILES)}")
    default_reviewers, approval = PROFILES[name]
    if reviewers is not None and reviewers < default_reviewers:
        raise InvalidInputError(f"reviewers {reviewers}: the {name} profile needs at least "
                                f"{default_reviewers} confirmations of a match")
    if reviewers is not None:
        count, explicit = reviewers, True
    elif profile and not old.reviewers_explicit:
        count, explicit = default_reviewers, False
    else:
        count, explicit = old.reviewers_set, old.reviewers_explicit
    new = Policy(
        profile=name,
        reviewers_set=count,
        retention_days=retention_days if retention_days is not None else old.retention_days,
        enrolment_approval=approval if profile else old.enrolment_approval,
        reviewers_explicit=explicit,
    )
    if new.profile == "redact-only":
        # Wait for transactions writing embeddings to finish, so that none commits one after
        # the purge; writers that start later see redact-only and their embeddings are dropped.
        conn.execute("LOCK TABLE tracks, detections, subject_faces IN SHARE ROW EXCLUSIVE MODE")
    conn.execute("INSERT INTO policy (profile, reviewers_required, retention_days,"
                 " enrolment_approval, reviewers_explicit, changed_by, reason)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (new.profile, new.reviewers_set, new.retention_days,
                  new.enrolment_approval, new.reviewers_explicit, by, reason))
    audit.append(conn, key, by, "policy.change", {"from": old.as_json(), "to": new.as_json(),
                                                   "reason": reason})
    if new.profile == "redact-only":
        purged = purge_biometrics(conn, key, by)
        audit.append(conn, key, by, "policy.purge_biometrics",
                     {**purged, "reason": "the redact-only profile allows no face embeddings"})
    return new


def purge_biometrics(conn: Conn, key: str, by: str) -> dict[str, Any]:
    """Delete every face embedding and enrolment template, and end the pending matches that
    can no longer be reviewed (`leads.end_pending`); returns how many of each (originals,
    crops and decided matches stay: they are evidence, not templates).

    Cases on legal hold lose theirs too: a ban on face matching leaves no template anywhere,
    and a hold keeps the evidence (the originals, from which a later lawful profile can
    compute them again). The audit row names each held case that had some."""
    held = [str(r["case_id"]) for r in conn.execute(
        "SELECT h.case_id FROM held_cases h WHERE EXISTS (SELECT 1 FROM tracks t JOIN videos v"
        " ON v.id = t.video_id WHERE v.case_id = h.case_id AND t.embedding IS NOT NULL)"
        " OR EXISTS (SELECT 1 FROM subject_faces f JOIN subjects s ON s.id = f.subject_id"
        " WHERE s.case_id = h.case_id) ORDER BY h.case_id").fetchall()]
    tracks = conn.execute("UPDATE tracks SET embedding = NULL WHERE embedding IS NOT NULL"
                          ).rowcount
    detections = conn.execute("UPDATE detections SET embedding = NULL"
                              " WHERE embedding IS NOT NULL").rowcount
    templates = conn.execute("DELETE FROM subject_faces").rowcount
    pending, withdrawn = end_pending(conn, key, by, "face matching was turned off"
                                     " (the redact-only profile)")
    return {"track_embeddings": tracks, "detection_embeddings": detections,
            "subject_templates": templates, "pending_matches": pending,
            "withdrawn_matches": withdrawn, "held_cases_purged": held}


def embeddings_allowed(conn: Conn) -> bool:
    """False in redact-only mode: no embedding may be computed or stored."""
    return current(conn).profile != "redact-only"


def require_identify(conn: Conn, action: str) -> None:
    """Refuse face matching actions under the redact-only profile."""
    if current(conn).profile == "redact-only":
        raise PolicyRefusedError(
            f"{action} is disabled: this deployment runs the redact-only policy profile, "
            "under which no face embeddings exist and face matching is not permitted")
