"""Policy profiles: what this deployment may do with faces (identify, or redact only)."""

from __future__ import annotations

from dataclasses import dataclass

from bodycam import audit
from bodycam.db import Conn
from bodycam.errors import InvalidInputError, PermanentError

# Each profile's defaults: reviewers needed to confirm a match, and whether a supervisor must
# approve an enrolment before it is matched. identify-eu follows the stricter EU-style rules.
PROFILES: dict[str, tuple[int, bool]] = {
    "identify": (1, False),
    "identify-eu": (2, True),
    "redact-only": (1, False),
}


class PolicyRefusedError(PermanentError):
    """The active policy profile forbids this action."""


@dataclass(frozen=True)
class Policy:
    """The active profile and its parameters."""

    profile: str = "identify"
    reviewers_required: int = 1
    retention_days: int = 30
    enrolment_approval: bool = False

    def as_json(self) -> dict[str, object]:
        """JSON for the CLI and the audit log."""
        return {"profile": self.profile, "reviewers_required": self.reviewers_required,
                "retention_days": self.retention_days,
                "enrolment_approval": self.enrolment_approval}


def current(conn: Conn) -> Policy:
    """The active policy (defaults before any change is recorded)."""
    row = conn.execute(
        "SELECT profile, reviewers_required, retention_days, enrolment_approval FROM policy"
        " ORDER BY id DESC LIMIT 1").fetchone()
    if row is None:
        return Policy()
    return Policy(str(row["profile"]), int(row["reviewers_required"]),
                  int(row["retention_days"]), bool(row["enrolment_approval"]))


def change(conn: Conn, key: str, by: str, reason: str, profile: str | None = None,
           reviewers: int | None = None, retention_days: int | None = None) -> Policy:
    """Record a policy change (admins only, checked by the caller) with its reason."""
    if not reason or not reason.strip():
        raise InvalidInputError("missing --reason: a policy change must say why")
    old = current(conn)
    name = profile or old.profile
    if name not in PROFILES:
        raise InvalidInputError(f"unknown profile {name}: choose from {', '.join(PROFILES)}")
    default_reviewers, approval = PROFILES[name]
    new = Policy(
        profile=name,
        reviewers_required=reviewers if reviewers is not None else (
            default_reviewers if profile else old.reviewers_required),
        retention_days=retention_days if retention_days is not None else old.retention_days,
        enrolment_approval=approval if profile else old.enrolment_approval,
    )
    conn.execute("INSERT INTO policy (profile, reviewers_required, retention_days,"
                 " enrolment_approval, changed_by, reason) VALUES (%s, %s, %s, %s, %s, %s)",
                 (new.profile, new.reviewers_required, new.retention_days,
                  new.enrolment_approval, by, reason.strip()))
    audit.append(conn, key, by, "policy.change", {"from": old.as_json(), "to": new.as_json(),
                                                   "reason": reason.strip()})
    return new


def embeddings_allowed(conn: Conn) -> bool:
    """False in redact-only mode: no embedding may be computed or stored."""
    return current(conn).profile != "redact-only"


def require_identify(conn: Conn, action: str) -> None:
    """Refuse face matching actions under the redact-only profile."""
    if current(conn).profile == "redact-only":
        raise PolicyRefusedError(
            f"{action} is disabled: this deployment runs the redact-only policy profile, "
            "under which no face embeddings exist and face matching is not permitted")
