"""Accounts, roles and case assignments; every refused attempt is audited."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn

from bodycam import audit
from bodycam.db import Conn, uid
from bodycam.errors import ConflictError, InvalidInputError, NotFoundError, PermanentError

ROLES = ("clerk", "investigator", "supervisor", "auditor", "admin")
OPERATOR = "operator"

# Which roles may perform each action. The auditor reads and exports the log, never searches.
PERMISSIONS: dict[str, tuple[str, ...]] = {
    "ingest": ("clerk",),
    "jobs": ("clerk", "supervisor", "admin"),
    "retry": ("clerk", "supervisor"),
    # Tracks, thumbnails and originals: supervisors review matches, so they see the footage.
    "tracks": ("investigator", "supervisor"),
    # Redacted derivatives for release: those who see the footage prepare them.
    "redact": ("investigator", "supervisor"),
    "subjects.enroll": ("investigator",),
    "subjects.list": ("investigator", "supervisor"),
    "subjects.remove": ("investigator", "supervisor"),
    "subjects.approve": ("supervisor",),
    "search": ("investigator",),
    "matches": ("investigator", "supervisor"),
    "review": ("investigator", "supervisor"),
    "matches.reopen": ("supervisor",),
    "persons": ("investigator",),
    "thresholds.set": ("supervisor",),
    "cases.hold": ("supervisor", "admin"),
    "cases.assign": ("supervisor", "admin"),
    "audit.verify": ("auditor",),
    "fixity": ("auditor",),
    "audit.export": ("auditor",),
    "matches.export": ("auditor",),
    "users": ("admin",),
    "events.token": ("admin",),
    "policy.set": ("admin",),
    "purge": ("admin",),
    "reprocess": ("admin",),
}
# Reads recorded under a name of their own, allowed to the roles of the permission they fall
# under: a refused one is audited under its own name (a refused download of an original was
# recorded as an attempt to list tracks: bb23).
ACTS_UNDER: dict[str, str] = {
    "video.original": "tracks",
    "track.thumbnail": "tracks",
    "subject.photo": "subjects.list",
    "redaction.download": "redact",
    "export.download": "audit.export",
}
SEE_ALL_CASES = ("supervisor", "admin")
# Not starting with `-`: a command given such a name took it for an option (bb53: `-rf`).
NAME = re.compile(r"^[A-Za-z0-9_.@][A-Za-z0-9_.@-]{0,63}$")


class AccessDeniedError(PermanentError):
    """The acting user may not do this; the message names the role needed."""


@dataclass(frozen=True)
class User:
    """An authenticated account, with the bearer token its request came with (None for a
    tool in the server's own process): `require_now` reads it again."""

    name: str
    roles: tuple[str, ...]
    token_id: str | None = field(default=None, compare=False)

    def has(self, role: str) -> bool:
        """Whether the account holds a role."""
        return role in self.roles


def token_hash(token: str) -> str:
    """What is stored instead of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(conn: Conn, key: str, name: str, roles: list[str], by: str,
                token_days: int = 365) -> str:
    """Create an account; returns its API token (an account token in `api_tokens`, valid for
    token_days), which is shown once: only its hash is stored."""
    from bodycam import auth

    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise InvalidInputError(f"unknown role {', '.join(bad) or '(none)'}: "
                                f"choose from {', '.join(ROLES)}")
    if not NAME.match(name):
        raise InvalidInputError(f"user name {name[:64]!r} is not allowed: use 1 to 64 letters,"
                                " digits and . _ @ - (not starting with -)")
    # Every account change checks the state it depends on under the audit log's lock, which
    # every other account change holds until it commits: of two at once, one wins and the
    # other gets the sequential answer (here 409, not the primary key's violation).
    audit.lock(conn)
    same = conn.execute("SELECT name FROM users WHERE lower(name) = lower(%s) ORDER BY name"
                        " LIMIT 1", (name,)).fetchone()
    if same is not None and same["name"] == name:
        raise ConflictError(f"user {name} already exists")
    if same is not None:  # `Operator` beside `operator` read as one account to a reader of
        # reviews, `decided_by` and the audit log (bb42)
        raise ConflictError(f"user {name} would read as user {same['name']}: account names"
                            " that differ only in letter case are refused; choose another")
    # The sealed audit row first: the database function that makes the change refuses
    # unless this transaction appended it (migration 011), and journals the change with it.
    row = audit.append(conn, key, by, "user.create", {"user": name, "roles": sorted(set(roles))})
    conn.execute("SELECT bodycam_user_create(%s::bigint, %s::text, %s::text[], %s::text)",
                 (row.id, name, sorted(set(roles)), by))
    expires = datetime.now(UTC) + timedelta(days=token_days)
    return auth.issue(conn, row.id, name, "account", expires, by)


def set_roles(conn: Conn, key: str, name: str, roles: list[str], by: str) -> None:
    """Replace an account's roles; audited (`user.roles`)."""
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise InvalidInputError(f"unknown role {', '.join(bad) or '(none)'}: "
                                f"choose from {', '.join(ROLES)}")
    audit.lock(conn)
    if not conn.execute("SELECT 1 FROM users WHERE name = %s", (name,)).fetchone():
        raise NotFoundError(f"no user {name}")
    row = audit.append(conn, key, by, "user.roles", {"user": name, "roles": sorted(set(roles))})
    conn.execute("SELECT bodycam_user_set_roles(%s::bigint, %s::text, %s::text[])",
                 (row.id, name, sorted(set(roles))))


def disable_user(conn: Conn, key: str, name: str, by: str) -> None:
    """Disable an account and revoke its tokens; the record stays."""
    audit.lock(conn)
    if not conn.execute("SELECT 1 FROM users WHERE name = %s AND disabled_at IS NULL",
                        (name,)).fetchone():
        raise NotFoundError(f"no active user {name}")
    if enabled_admins(conn) == [name]:  # no account could then be added, enabled or assigned
        raise ConflictError(f"{name} is the last enabled admin: add another admin first (a "
                            "disabled account is never enabled again)")
    live = conn.execute("SELECT count(*) AS n FROM api_tokens WHERE user_name = %s"
                        " AND revoked_at IS NULL", (name,)).fetchone()
    row = audit.append(conn, key, by, "user.disable",
                       {"user": name, "tokens_revoked": int(live["n"]) if live else 0})
    conn.execute("SELECT bodycam_user_disable(%s::bigint, %s::text)", (row.id, name))


# ASCII only: full-width or Devanagari digits and Cyrillic look-alikes were taken as new case
# numbers, so "２０２６/119" filed footage beside case 2026/119, not in it.
CASE_NUMBER = re.compile(r"^[A-Za-z0-9 .:/#@+_-]{1,200}$")


def case_number(text: str | None) -> str:
    """A case number as ingest and assignment take it: trimmed, 1 to 200 ASCII letters,
    digits, spaces and `. : / # @ + - _`, and not only dots (`.` and `..` cannot be named in
    a route's path, so such a case could be assigned but never held, released or
    unassigned)."""
    case = (text or "").strip()
    if not case:
        raise InvalidInputError("missing case: name the case number")
    if not CASE_NUMBER.match(case) or set(case) == {"."}:
        raise InvalidInputError(f"case {case!r} is not a case number: use ASCII letters, "
                                "digits, spaces and . : / # @ + - _")
    return case


def spelled_as_known(conn: Conn, case: str) -> None:
    """Refuse a case number that differs from one in use only in letter case (ConflictError,
    naming the one to use). `case-a` beside `CASE-A` split a case in two: a hold, an assignment
    or footage under the one was not under the other, and a hold on the wrong one left the
    other to be purged on schedule (bb34). A spelling in use is taken (a database from before
    this rule may hold two). Within the caller's transaction, two new spellings of one case
    wait for each other (an advisory lock on the folded number)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('case:' || lower(%s)))", (case,))
    known = _spellings(conn, case)
    if known and case not in known:
        raise ConflictError(f"case {case} is case {known[0]}: case numbers that differ "
                            f"only in letter case name one case; use {known[0]}")


def _spellings(conn: Conn, case: str) -> list[str]:
    """The case numbers in use that differ from `case` at most in letter case."""
    return [str(r["case_id"]) for r in conn.execute(
        "SELECT case_id FROM known_cases WHERE lower(case_id) = lower(%s) ORDER BY case_id",
        (case,)).fetchall()]


def as_spelled(conn: Conn, case: str) -> str:
    """A case number as it is in use, for a read that names it: `case-a` read an empty log
    and made a signed export of no rows for case CASE-A (bb42), where a change is told the
    spelling to use (spelled_as_known). A spelling in use, or a case not in use, is as given."""
    known = _spellings(conn, case)
    return case if not known or case in known else known[0]


def assign_case(conn: Conn, key: str, name: str, case_id: str, by: str) -> list[str]:
    """Let an investigator see a case; raises ConflictError (unaudited) when the account has
    it already, is disabled, or when the case number is another's in other letter case. Returns the
    account's roles that see every case anyway (SEE_ALL_CASES): for them it limits nothing."""
    audit.lock(conn)
    spelled_as_known(conn, case_id)
    found = conn.execute("SELECT roles, disabled_at FROM users WHERE name = %s",
                         (name,)).fetchone()
    if not found:
        raise NotFoundError(f"no user {name}")
    if found["disabled_at"] is not None:  # the web app's form offers none (bb56)
        raise ConflictError(f"user {name} is disabled")
    if _assigned(conn, name, case_id):
        raise ConflictError(f"user {name} is already assigned to case {case_id}")
    row = audit.append(conn, key, by, "case.assign", {"user": name, "case": case_id})
    conn.execute("SELECT bodycam_case_assign(%s::bigint, %s::text, %s::text, %s::text)",
                 (row.id, name, case_id, by))
    return [r for r in found["roles"] if r in SEE_ALL_CASES]


def unassign_case(conn: Conn, key: str, name: str, case_id: str, by: str) -> None:
    """Take a case away from an account."""
    audit.lock(conn)
    if not _assigned(conn, name, case_id):
        raise NotFoundError(f"user {name} is not assigned to case {case_id}")
    row = audit.append(conn, key, by, "case.unassign", {"user": name, "case": case_id})
    conn.execute("SELECT bodycam_case_unassign(%s::bigint, %s::text, %s::text)",
                 (row.id, name, case_id))


def list_users(conn: Conn) -> list[dict[str, object]]:
    """Accounts with roles, state and assigned cases (never tokens)."""
    rows = conn.execute(
        "SELECT u.name, u.roles, u.created_by, u.created_at, u.disabled_at,"
        " COALESCE(array_agg(a.case_id ORDER BY a.case_id) FILTER (WHERE a.case_id IS NOT NULL),"
        " '{}') AS cases FROM users u LEFT JOIN case_assignments a ON a.user_name = u.name"
        " GROUP BY u.name ORDER BY u.name").fetchall()
    return [{"name": r["name"], "roles": list(r["roles"]), "created_by": r["created_by"],
             "created_at": r["created_at"].isoformat(), "disabled": r["disabled_at"] is not None,
             "cases": list(r["cases"])} for r in rows]


def require_role(conn: Conn, key: str, user: User, action: str,
                 case_id: str | None = None, about: str | None = None,
                 cases: list[str] | None = None) -> None:
    """Refuse (and audit the refusal, naming `case_id` for the auditor: the case of the object
    acted on, and the object, `about`, and the cases it holds) unless the user's roles allow
    the action."""
    allowed = PERMISSIONS[ACTS_UNDER.get(action, action)]
    if not any(user.has(r) for r in allowed):
        reason = (f"`{action}` needs the {' or '.join(allowed)} role; {user.name} has "
                  f"{', '.join(user.roles)}")
        refuse(conn, key, user, action, reason, case_id, about, cases=cases)


def require(conn: Conn, key: str, user: User, action: str, case_id: str | None = None) -> None:
    """Refuse (and audit the refusal) unless the user's roles allow the action on the case."""
    require_role(conn, key, user, action, case_id)
    if case_id is not None and not can_see_case(conn, user, case_id):
        refuse(conn, key, user, action, f"{user.name} is not assigned to case {case_id}",
               case_id)


def require_now(conn: Conn, key: str, user: User, action: str, case_id: str | None = None
                ) -> User:
    """`require` again, for an action about to store its result: call it first in the
    transaction that writes the result and its audit row. The account (disabled or not, its
    roles), its case, and the token the request came with (revoked by a logout, expired) are
    read as they stand now, under the audit log's lock, which a disabling, a role change, an
    unassignment or a logout holds until it commits: one committed while the request ran
    refuses the action, and one made later waits until the action has committed. Raises
    UnauthenticatedError (as a new request would be answered) or AccessDeniedError; either
    is audited (a search cut off by a disabling left no row: bb19)."""
    from bodycam.auth import UnauthenticatedError

    def lapsed(reason: str) -> NoReturn:
        refuse(conn, key, user, action, reason, case_id, error=UnauthenticatedError(reason))

    audit.lock(conn)
    row = conn.execute("SELECT roles FROM users WHERE name = %s AND disabled_at IS NULL",
                       (user.name,)).fetchone()
    if row is None:
        lapsed(f"account {user.name} is disabled")
    if user.token_id is not None and conn.execute(
            "SELECT 1 FROM api_tokens WHERE id = %s AND revoked_at IS NULL"
            " AND expires_at > now()", (uid(user.token_id),)).fetchone() is None:
        lapsed(f"the token of {user.name} was revoked or expired while the request ran:"
               " log in again")
    now = User(user.name, tuple(row["roles"]), user.token_id)
    require(conn, key, now, action, case_id)
    return now


def refuse(conn: Conn, key: str, user: User | str, action: str, reason: str,
           case_id: str | None, about: str | None = None,
           error: PermanentError | None = None, cases: list[str] | None = None) -> NoReturn:
    """Audit a refused attempt (the object it was about, where there is one, and every case
    it holds, `cases`, where it holds several), commit it, and raise `error`, by default
    AccessDeniedError."""
    name = user.name if isinstance(user, User) else user
    audit.append(conn, key, name, "refused", {"attempted": action, "reason": reason,
                                              "case": case_id,
                                              **({"object": about} if about else {}),
                                              **({"cases": cases} if cases else {})})
    audit.commit(conn)
    raise error if error is not None else AccessDeniedError(f"refused: {reason}")


@dataclass(frozen=True)
class Scope:
    """Who acts and on which case: every id a user passes is resolved inside this case, and
    an id from any other case is refused (and the refusal audited) where it is resolved."""

    actor: str
    case_id: str
    audit_key: str

    def require(self, conn: Conn, action: str, kind: str, object_id: str,
                found_case: str | None) -> None:
        """NotFoundError unless the object (`kind` `object_id`, found in `found_case`)
        belongs to this case: an id of another case is answered as one that names nothing
        (the answer told which ids exist elsewhere: bb32). Both refusals are audited, the
        same way: only the other case's was, and its audit row's time told it apart (bb38)."""
        unknown = NotFoundError(f"no {kind} {object_id} in case {self.case_id}")
        about = f"{kind} {object_id[:80]}"
        if found_case is None:
            refuse(conn, self.audit_key, self.actor, action, f"{about} names nothing",
                   self.case_id, about, unknown)
        if found_case != self.case_id:
            # Recorded under the object's case, as every refusal about an object is: its
            # auditor's case filter missed a probe of it from another case (bb23).
            refuse(conn, self.audit_key, self.actor, action,
                   f"{kind} {object_id} is not in case {self.case_id}", found_case, about,
                   unknown)


def require_visible(conn: Conn, key: str, user: User, action: str, kind: str,
                    object_id: str, found_case: str | None) -> str:
    """The case of an object the user names by id, when their role allows the action and
    they may see the case; otherwise the attempt is refused and audited, naming the object
    and its case (a clerk's or an auditor's probes of evidence ids were audited with neither:
    bb19). Raises NotFoundError when the id names nothing (after the role: a role that may
    not act learns nothing of which ids exist), and the same NotFoundError for an id of a
    case the user is not assigned to (a 403 there told which ids exist: bb32). Both are
    audited the same way: only the other case's was, and the time its audit row took told
    the two apart (bb38)."""
    about = f"{kind} {object_id[:80]}"  # an id as sent: bounded where it is recorded
    require_role(conn, key, user, action, found_case, about)
    unknown = NotFoundError(f"no {kind} {object_id}")
    if found_case is None:
        refuse(conn, key, user, action, f"{about} names nothing", None, about, unknown)
    if not can_see_case(conn, user, found_case):
        # The audit row names the object's case for the auditor; the answer is the one for
        # an id that names nothing.
        refuse(conn, key, user, action, f"{about} is in a case {user.name} is not"
                                        " assigned to", found_case, about, unknown)
    return found_case


CASE_OF = {
    "video": "SELECT case_id FROM videos WHERE id = %s",
    "subject": "SELECT case_id FROM subjects WHERE id = %s",
    "match": "SELECT case_id FROM matches WHERE id = %s",
    "track": "SELECT v.case_id FROM tracks t JOIN videos v ON v.id = t.video_id"
             " WHERE t.id = %s",
    "redaction": "SELECT case_id FROM redactions WHERE id = %s",
    "redaction job": "SELECT case_id FROM redaction_jobs WHERE id = %s",
}


def case_of(conn: Conn, kind: str, object_id: str) -> str | None:
    """The case a video, subject, match or track belongs to (None when the id is unknown)."""
    row = conn.execute(CASE_OF[kind], (uid(object_id),)).fetchone()
    return str(row["case_id"]) if row else None


def can_see_case(conn: Conn, user: User, case_id: str) -> bool:
    """Supervisors and admins see every case; others only the cases assigned to them."""
    return any(user.has(r) for r in SEE_ALL_CASES) or _assigned(conn, user.name, case_id)


def _assigned(conn: Conn, name: str, case_id: str) -> bool:
    return conn.execute("SELECT 1 FROM case_assignments WHERE user_name = %s AND case_id = %s",
                        (name, case_id)).fetchone() is not None


def visible_cases(conn: Conn, user: User) -> list[str] | None:
    """The cases a user may see, or None for all."""
    if any(user.has(r) for r in SEE_ALL_CASES):
        return None
    rows = conn.execute("SELECT case_id FROM case_assignments WHERE user_name = %s",
                        (user.name,)).fetchall()
    return [str(r["case_id"]) for r in rows]


def enabled_admins(conn: Conn) -> list[str]:
    """The names of the enabled accounts with the admin role."""
    return [str(r["name"]) for r in conn.execute(
        "SELECT name FROM users WHERE 'admin' = ANY(roles) AND disabled_at IS NULL"
        " ORDER BY name").fetchall()]


def bootstrap_admin(conn: Conn, key: str, name: str) -> str:
    """Create the first admin account where no enabled one exists (a deployment that
    `bodycam up` did not start has none); returns its token, shown once."""
    audit.lock(conn)
    if admins := enabled_admins(conn):
        raise ConflictError(f"an enabled admin account exists ({', '.join(admins[:3])}): "
                            "accounts are added by an admin (`bodycam users add`)")
    return create_user(conn, key, name, ["admin"], "bodycam bootstrap-admin")


def bootstrap_operator(conn: Conn, key: str) -> str | None:
    """Create the embedded stack's `operator` account with every role, once; returns its
    token when created."""
    if conn.execute("SELECT 1 FROM users WHERE name = %s", (OPERATOR,)).fetchone():
        return None
    return create_user(conn, key, OPERATOR, list(ROLES), "bodycam up")
