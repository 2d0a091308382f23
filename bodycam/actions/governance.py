"""Governance actions: users, case assignments and holds, policy, thresholds, purge, fixity."""

from __future__ import annotations

from bodycam import accounts, audit, fixity, jobs, matching, policy, retention, subjects, text
from bodycam.accounts import User, require
from bodycam.context import Context
from bodycam.db import Conn
from bodycam.errors import ConflictError
from bodycam.search import DIMS, set_thresholds


def create_user(ctx: Context, user: User, name: str, roles: list[str]) -> dict[str, object]:
    """Create an account (admin); its account token is returned once; audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "users")
        token = accounts.create_user(conn, ctx.audit_key, name, roles, user.name,
                                     ctx.settings.auth.account_token_days)
    return {"name": name, "roles": sorted(set(roles)), "token": token}


def list_users(ctx: Context, user: User) -> list[dict[str, object]]:
    """Accounts, roles, state and cases (admin; never tokens)."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "users")
        return accounts.list_users(conn)


def disable_user(ctx: Context, user: User, name: str) -> dict[str, object]:
    """Disable an account and revoke all of its tokens (admin); audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "users")
        accounts.disable_user(conn, ctx.audit_key, name, user.name)
    return {"name": name, "disabled": True}


def assign_case(ctx: Context, user: User, name: str, case: str) -> dict[str, object]:
    """Let an account see a case (supervisor, admin); audited. The answer's `note` says when
    the account sees every case anyway (a supervisor "assigned only to C2" read C1: bb47)."""
    case = accounts.case_number(case)
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.assign")
        wide = accounts.assign_case(conn, ctx.audit_key, name, case, user.name)
    if not wide:
        return {"name": name, "case": case}
    return {"name": name, "case": case,
            "note": f"{name} has the {' and '.join(wide)} role, which sees every case: this"
                    " assignment limits nothing"}


def unassign_case(ctx: Context, user: User, name: str, case: str) -> dict[str, object]:
    """Take a case away from an account (supervisor, admin); audited (`case.unassign`)."""
    case = accounts.case_number(case)
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.assign")
        accounts.unassign_case(conn, ctx.audit_key, name, case, user.name)
    return {"name": name, "case": case}


def list_cases(ctx: Context, user: User) -> list[dict[str, object]]:
    """Every case known (assigned, held, or holding footage or subjects) with the accounts
    that see it (a disabled account is not one: bb34) and its hold (supervisor, admin: they
    see every case)."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.assign")
        rows = conn.execute(
            "SELECT c.case_id, h.held_by, h.held_at, h.reason,"
            " COALESCE(array_agg(a.user_name ORDER BY a.user_name)"
            " FILTER (WHERE a.user_name IS NOT NULL), '{}') AS users"
            " FROM known_cases c LEFT JOIN held_cases h ON h.case_id = c.case_id"
            " LEFT JOIN case_assignments a ON a.case_id = c.case_id AND a.user_name IN"
            " (SELECT name FROM users WHERE disabled_at IS NULL)"
            " GROUP BY c.case_id, h.held_by, h.held_at, h.reason ORDER BY c.case_id").fetchall()
    return [{"case": r["case_id"], "users": list(r["users"]), "held": r["held_by"] is not None,
             "held_by": r["held_by"], "hold_reason": r["reason"],
             "held_at": r["held_at"].isoformat() if r["held_at"] else None} for r in rows]


def hold_case(ctx: Context, user: User, case: str, reason: str) -> dict[str, object]:
    """Put a case on legal hold (supervisor, admin): its biometric data outlives retention.
    Audited (`case.hold`); a case already on hold is refused (ConflictError, naming who holds
    it and why), unaudited: its hold stays as placed, and so is a case number that is a known
    case's in other letter case (bb34). A case with no footage yet may be held (a hold may
    come before the footage); the answer counts its videos, so that a mistyped case number
    shows (bb33)."""
    reason = text.required(reason, "reason", "a legal hold must say why")
    case = accounts.case_number(case)
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.hold")
        accounts.spelled_as_known(conn, case)
        # The row decides (a second hold at once waits for the first to commit, then inserts
        # nothing); the audit row follows the row, as in a purge, which locks held_cases first.
        if conn.execute("INSERT INTO held_cases (case_id, held_by, reason) VALUES (%s, %s, %s)"
                        " ON CONFLICT (case_id) DO NOTHING RETURNING case_id",
                        (case, user.name, reason)).fetchone() is None:
            held = conn.execute("SELECT held_by, reason FROM held_cases WHERE case_id = %s",
                                (case,)).fetchone()
            who = f" (by {held['held_by']}, reason {held['reason']!r})" if held else ""
            raise ConflictError(f"case {case} is already on hold{who}")
        audit.append(conn, ctx.audit_key, user.name, "case.hold", {"case": case,
                                                                   "reason": reason})
        return {"case": case, "held": True, "videos": _videos_in(conn, case)}


def _videos_in(conn: Conn, case: str) -> int:
    """How many videos a case holds."""
    row = conn.execute("SELECT count(*) AS n FROM videos WHERE case_id = %s", (case,)).fetchone()
    return int(row["n"]) if row else 0


def release_case(ctx: Context, user: User, case: str, reason: str) -> dict[str, object]:
    """Lift a legal hold (supervisor, admin); audited. A case not on hold is refused
    (ConflictError), unaudited."""
    reason = text.required(reason, "reason", "lifting a legal hold must say why")
    case = accounts.case_number(case)
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.hold")
        if conn.execute("DELETE FROM held_cases WHERE case_id = %s RETURNING case_id",
                        (case,)).fetchone() is None:
            raise ConflictError(f"case {case} is not on hold")
        audit.append(conn, ctx.audit_key, user.name, "case.release", {"case": case,
                                                                      "reason": reason})
        return {"case": case, "held": False, "videos": _videos_in(conn, case)}


def show_policy(ctx: Context, user: User) -> dict[str, object]:
    """The policy in force (any account)."""
    with ctx.db() as conn:
        return policy.current(conn).as_json()


def set_policy(ctx: Context, user: User, reason: str, profile: str | None = None,
               reviewers: int | None = None, retention_days: int | None = None
               ) -> dict[str, object]:
    """Change the policy profile or its parameters (admin, with a reason); audited. Pending
    matches the confirmations given now settle (a lowered reviewer count) are confirmed
    (`settled_matches`)."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "policy.set")
        new = policy.change(conn, ctx.audit_key, user.name, reason, profile, reviewers,
                            retention_days)
        settled = matching.settle_pending(conn, ctx.audit_key, user.name) \
            if new.profile != "redact-only" else []
        return {**new.as_json(), "settled_matches": settled}


def list_thresholds(ctx: Context, user: User) -> list[dict[str, object]]:
    """Each model's thresholds in force: configured, calibrated floor, and the last recorded
    supervisor change with who made it and why (any account, like the policy)."""
    search = ctx.settings.search
    with ctx.db() as conn:
        found = {str(r["model"]): r for r in conn.execute(
            "SELECT DISTINCT ON (model) model, default_threshold, floor, changed_by, reason,"
            " changed_at FROM thresholds ORDER BY model, id DESC").fetchall()}
    out: list[dict[str, object]] = []
    for model in DIMS:
        calibrated = search.threshold_floor.get(model)
        default, floor = search.default_threshold.get(model), calibrated
        row = found.get(model)
        if row is not None:
            # Stored as float4: rounded back to the value the supervisor gave.
            default, floor = round(float(row["default_threshold"]), 6), round(
                float(row["floor"]), 6)
            if calibrated is not None:
                floor, default = max(floor, calibrated), max(default, calibrated)
        out.append({"model": model, "default": default, "floor": floor,
                    "calibrated_floor": calibrated,
                    "changed_by": row["changed_by"] if row else None,
                    "reason": row["reason"] if row else None,
                    "changed_at": row["changed_at"].isoformat() if row else None})
    return out


def change_thresholds(ctx: Context, user: User, model: str, default: float, floor: float,
                      reason: str) -> dict[str, object]:
    """Record a model's new default threshold and floor (supervisor); audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "thresholds.set")
        set_thresholds(conn, ctx.audit_key, ctx.settings, user.name, model, default, floor,
                       reason)
    return {"model": model, "default": default, "floor": floor}


def purge(ctx: Context, user: User, dry_run: bool) -> dict[str, object]:
    """Remove expired bystander embeddings and crops (admin); audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "purge")
    return retention.purge(ctx, user.name, dry_run).as_json()


def reprocess(ctx: Context, user: User, reason: str) -> dict[str, object]:
    """Queue again every done video analysed without embeddings (stored while the redact-only
    profile was in force), so that its faces can be searched and matched (admin, with a
    reason; not under redact-only); audited (`reprocess`, with each video and its case)."""
    reason = text.required(reason, "reason", "re-analysing footage must say why")
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "reprocess")
        policy.require_identify(conn, "reprocess")
    # The watchlist first, so that the videos analysed again are matched against it.
    rebuilt, unrebuilt = subjects.enrol_again(ctx)
    with ctx.db() as conn:
        policy.require_identify(conn, "reprocess")
        units, left = jobs.requeue_unembedded(conn)
        videos, kept = ([{"video_id": v, "case": case, "units": len(idx)}
                         for (v, case), idx in found.items()] for found in (units, left))
        cases = sorted({case for _v, case in (*units, *left)})
        audit.append(conn, ctx.audit_key, user.name, "reprocess",
                     {"reason": reason, "videos": videos, "left_with_matches": kept,
                      "templates_rebuilt": rebuilt, "templates_not_rebuilt": unrebuilt,
                      **({"cases": cases} if cases else {})})
    for sid in rebuilt:  # the tracks that kept or have their embeddings
        with ctx.db() as conn:
            matching.match_subject(conn, ctx.settings, ctx.audit_key, sid)
    for (video_id, _), idxs in units.items():
        ctx.queue_units(video_id, idxs)
    return {"videos": videos, "units_queued": sum(len(i) for i in units.values()),
            "left_with_matches": kept, "templates_rebuilt": rebuilt,
            "templates_not_rebuilt": unrebuilt}


def run_fixity(ctx: Context, user: User) -> dict[str, object]:
    """Re-hash every stored original, enrolment photo and derivative now (auditor); audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "fixity")
    return fixity.run(ctx, user.name).as_json()


def notifier_token(ctx: Context) -> str:
    """The bearer token the S3 notifier must send to `POST /s3/events`.

    Derived from the audit key that `bodycam up` generates (or BODYCAM_AUDIT_KEY), so the
    server needs no other secret. MinIO sends `Authorization: Bearer TOKEN` when
    MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_<ID> is set. SeaweedFS's filer webhook (notification.toml
    `bearer_token`) sends the same header but its own payload, not the S3 event JSON: with
    SeaweedFS, as on the embedded stack, the reconciler (celery beat) lists incoming/ instead.
    """
    return audit.derive_key(ctx.audit_key, "s3 event notifications")


def events_token(ctx: Context, user: User) -> str:
    """The S3 notifier's bearer token (admin); each reveal is audited (`events.token`)."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "events.token")
        audit.append(conn, ctx.audit_key, user.name, "events.token", {})
    return notifier_token(ctx)
