"""Bearer tokens of the HTTP API: issue, authenticate, revoke, log in; failures audited (and
limited by bodycam.limits).

Only SHA-256 hashes of tokens are stored (table `api_tokens`); a token is looked up by its hash
and the stored hash is compared again with hmac.compare_digest. Account tokens are printed once
by `users add` and expire after `auth.account_token_days`; session tokens come from `login` and
expire after `auth.session_ttl_s`. Disabling an account revokes all of its tokens.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bodycam import audit
from bodycam.accounts import User, token_hash
from bodycam.config import AuthSettings
from bodycam.db import Conn, uid
from bodycam.errors import PermanentError

TOKEN_PREFIX = "bct_"
SESSION_KIND = "session"  # what a sign-in issues (12 h); the web app's cookie holds one
KINDS = ("account", SESSION_KIND)


class UnauthenticatedError(PermanentError):
    """No token, or one that is unknown, expired, revoked or of a disabled account (HTTP 401)."""


@dataclass(frozen=True)
class Session:
    """An authenticated bearer token: the account and the token's id, kind and expiry."""

    user: User
    token_id: str
    kind: str
    expires_at: datetime

    def as_json(self) -> dict[str, object]:
        """What `GET /auth/me` and the login answer show about the token."""
        return {"user": self.user.name, "roles": list(self.user.roles),
                "expires_at": self.expires_at.isoformat()}


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def issue(conn: Conn, audit_id: int, user_name: str, kind: str, expires_at: datetime, by: str,
          token_id: str | None = None) -> str:
    """Store the hash of a new token of `kind` for the account; returns the token, which is
    returned once and never stored. `audit_id` is the audit row this transaction appended for
    it (`user.create` or `login`): the database function refuses without one (migration 011).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown token kind {kind}")
    token = new_token()
    conn.execute("SELECT bodycam_token_issue(%s::bigint, %s::uuid, %s::text, %s::text, %s::text,"
                 " %s::timestamptz, %s::text)",
                 (audit_id, token_id or str(uuid.uuid4()), user_name, token_hash(token), kind,
                  expires_at, by))
    return token


def account_ttl(cfg: AuthSettings) -> timedelta:
    """How long an account token lives."""
    return timedelta(days=cfg.account_token_days)


def authenticate(conn: Conn, key: str, token: str | None, claimed: str | None = None,
                 client: str | None = None, kind: str | None = None) -> Session:
    """The account and token behind a bearer token; raises UnauthenticatedError otherwise.

    `claimed` (the X-Bodycam-User header, or the name given at login) must be the token's
    account: a token of another account is refused like a wrong one. `kind`, when given, is
    the only kind accepted (the web app's cookie holds a session, never an account's
    365-day token: bb47). Every failure is audited
    (`login.failed`, the claimed name and why, never the token) and committed before raising.
    """
    name = (claimed or "").strip()
    if not token:
        login_failed(conn, key, name or "(none)", "no token given", client)
        raise UnauthenticatedError("no credentials: send Authorization: Bearer TOKEN")
    row, label, refusal = _check(conn, token, name, kind)
    if refusal is not None:
        login_failed(conn, key, label, refusal[0], client)
        raise UnauthenticatedError(refusal[1])
    assert row is not None
    return Session(User(str(row["name"]), tuple(row["roles"]), str(row["id"])), str(row["id"]),
                   str(row["kind"]), row["expires_at"])


def accepted(conn: Conn, token: str | None, claimed: str | None = None,
             kind: str | None = None) -> bool:
    """Whether `authenticate` would accept the token for the claimed name; nothing audited.
    A client address blocked for its failures still serves the valid tokens sent from it
    (bb34: a spray of made-up tokens locked every user behind the address out)."""
    return bool(token) and _check(conn, str(token), (claimed or "").strip(), kind)[2] is None


def _check(conn: Conn, token: str, name: str, kind: str | None = None
           ) -> tuple[dict[str, Any] | None, str, tuple[str, str] | None]:
    """The token's row, the name to record, and why it is refused (the audit's reason and
    the answer), None when it is accepted."""
    digest = token_hash(token.strip())
    row = conn.execute(
        "SELECT t.id::text AS id, t.sha256, t.kind, t.expires_at, t.revoked_at,"
        " t.expires_at <= now() AS expired, u.name, u.roles, u.disabled_at"
        " FROM api_tokens t JOIN users u ON u.name = t.user_name WHERE t.sha256 = %s",
        (digest,)).fetchone()
    # Compare the stored hash again in constant time (and a dummy when none was found).
    stored = str(row["sha256"]) if row else token_hash("")
    label = name or (str(row["name"]) if row else "(unknown)")
    if row is None or not hmac.compare_digest(stored, digest) or (name and name != row["name"]):
        return row, label, ("invalid credentials", f"invalid credentials for {label}")
    if row["disabled_at"] is not None:
        return row, label, ("account disabled", f"account {label} is disabled")
    if row["revoked_at"] is not None:
        return row, label, ("token revoked", f"token of {label} was revoked: log in again")
    if row["expired"]:
        return row, label, ("token expired", f"token of {label} has expired: log in again")
    if kind is not None and row["kind"] != kind:
        return row, label, (f"{row['kind']} token where a {kind} token is taken",
                            f"an {row['kind']} token of {label} is not a {kind}: sign in")
    return row, label, None


def still_valid(conn: Conn, session: Session) -> User:
    """The account of an authenticated token as it stands now, with its roles of now.

    For a response that outlives the check of its request (an event stream): once the token
    is revoked or expires or the account is disabled, a new request is refused, and so is
    this (UnauthenticatedError). Not audited as a failed login: the token was valid."""
    row = conn.execute(
        "SELECT u.name, u.roles FROM api_tokens t JOIN users u ON u.name = t.user_name"
        " WHERE t.id = %s AND t.revoked_at IS NULL AND t.expires_at > now()"
        " AND u.disabled_at IS NULL", (uid(session.token_id),)).fetchone()
    if row is None:
        raise UnauthenticatedError(
            f"the token of {session.user.name} is no longer valid: log in again")
    return User(str(row["name"]), tuple(row["roles"]), session.token_id)


_CONTROLS = dict.fromkeys([*range(32), 127], "\ufffd")


def _printable(text: str) -> str:
    return text.translate(_CONTROLS)


def login_failed(conn: Conn, key: str, name: str, reason: str, client: str | None = None
                 ) -> None:
    """Audit a failed authentication (claimed name and reason, never the token) and commit."""
    # The claimed name is attacker-chosen text: kept short, recorded as a claim, not an actor,
    # with control characters shown as U+FFFD (a NUL cannot be stored, and then neither the
    # row nor the failure's count would be).
    details: dict[str, object] = {"claimed_user": _printable(name[:64]), "reason": reason}
    if client:
        details["client"] = _printable(client[:64])
    audit.append(conn, key, "anonymous", "login.failed", details)
    audit.commit(conn)


def login(conn: Conn, key: str, cfg: AuthSettings, name: str, token: str,
          client: str | None = None) -> tuple[str, Session]:
    """Exchange an account's token for a session token; returns (session token, session).

    Audited (`login`, with the session token's id). A session token may not make another one:
    only account tokens log in, so a stolen session cannot be extended.
    """
    found = authenticate(conn, key, token, name, client)
    if found.kind != "account":
        login_failed(conn, key, name, "a session token cannot log in", client)
        raise UnauthenticatedError(f"log in with the account token of {name}, not a session")
    token_id = str(uuid.uuid4())
    expires = datetime.now(UTC) + timedelta(seconds=cfg.session_ttl_s)
    row = audit.append(conn, key, found.user.name, "login", {"token_id": token_id,
                                                             "expires_at": expires.isoformat()})
    session = issue(conn, row.id, found.user.name, "session", expires, found.user.name, token_id)
    return session, Session(found.user, token_id, "session", expires)


def revoke(conn: Conn, key: str, token_id: str, by: str) -> None:
    """Revoke one token (logout); audited."""
    row = audit.append(conn, key, by, "logout", {"token_id": token_id})
    conn.execute("SELECT bodycam_token_revoke(%s::bigint, %s::uuid)", (row.id, token_id))
