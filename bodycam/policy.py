"""Policy profiles: what this deployment may do with faces (identify, or redact only)."""

from __future__ import annotations

from dataclasses import dataclass

from bodycam.db import Conn
from bodycam.errors import PermanentError

PROFILES = ("identify", "redact-only")


class PolicyRefusedError(PermanentError):
    """The active policy profile forbids this action."""


@dataclass(frozen=True)
class Policy:
    """The active profile and its parameters."""

    profile: str = "identify"
    reviewers_required: int = 1
    retention_days: int = 30


def current(conn: Conn) -> Policy:
    """The active policy (defaults before any change is recorded)."""
    row = conn.execute(
        "SELECT profile, reviewers_required, retention_days FROM policy ORDER BY id DESC LIMIT 1"
    ).fetchone()
    if row is None:
        return Policy()
    return Policy(str(row["profile"]), int(row["reviewers_required"]),
                  int(row["retention_days"]))


def embeddings_allowed(conn: Conn) -> bool:
    """False in redact-only mode: no embedding may be computed or stored."""
    return current(conn).profile != "redact-only"


def require_identify(conn: Conn, action: str) -> None:
    """Refuse face matching actions under the redact-only profile."""
    if current(conn).profile == "redact-only":
        raise PolicyRefusedError(
            f"{action} is disabled: this deployment runs the redact-only policy profile, "
            "under which no face embeddings exist and face matching is not permitted")
