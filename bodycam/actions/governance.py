"""Governance actions: users, case assignments and holds, policy, thresholds, purge, fixity."""

from __future__ import annotations

from bodycam import accounts, audit, fixity, policy, retention
from bodycam.accounts import User, require
from bodycam.context import Context
from bodycam.errors import InvalidInputError
from bodycam.search import set_thresholds


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
    """Let an account see a case (supervisor, admin); audited."""
    if not case or not case.strip():
        raise InvalidInputError("missing --case")
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.assign")
        accounts.assign_case(conn, ctx.audit_key, name, case.strip(), user.name)
    return {"name": name, "case": case.strip()}


def hold_case(ctx: Context, user: User, case: str, reason: str) -> dict[str, object]:
    """Put a case on legal hold (supervisor, admin): its biometric data outlives retention."""
    if not reason or not reason.strip():
        raise InvalidInputError("missing --reason: a legal hold must say why")
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.hold")
        conn.execute("INSERT INTO held_cases (case_id, held_by, reason) VALUES (%s, %s, %s)"
                     " ON CONFLICT (case_id) DO NOTHING", (case, user.name, reason))
        audit.append(conn, ctx.audit_key, user.name, "case.hold", {"case": case,
                                                                   "reason": reason})
    return {"case": case, "held": True}


def release_case(ctx: Context, user: User, case: str, reason: str) -> dict[str, object]:
    """Lift a legal hold (supervisor, admin); audited."""
    if not reason or not reason.strip():
        raise InvalidInputError("missing --reason: lifting a legal hold must say why")
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "cases.hold")
        conn.execute("DELETE FROM held_cases WHERE case_id = %s", (case,))
        audit.append(conn, ctx.audit_key, user.name, "case.release", {"case": case,
                                                                      "reason": reason})
    return {"case": case, "held": False}


def show_policy(ctx: Context, user: User) -> dict[str, object]:
    """The policy in force (any account)."""
    with ctx.db() as conn:
        return policy.current(conn).as_json()


def set_policy(ctx: Context, user: User, reason: str, profile: str | None = None,
               reviewers: int | None = None, retention_days: int | None = None
               ) -> dict[str, object]:
    """Change the policy profile or its parameters (admin, with a reason); audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "policy.set")
        return policy.change(conn, ctx.audit_key, user.name, reason, profile, reviewers,
                             retention_days).as_json()


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


def run_fixity(ctx: Context, user: User) -> dict[str, object]:
    """Re-hash every stored original and derivative now (auditor); audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "audit.verify")
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
        require(conn, ctx.audit_key, user, "users")
        audit.append(conn, ctx.audit_key, user.name, "events.token", {})
    return notifier_token(ctx)
