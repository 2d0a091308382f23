"""Actions on bearer tokens: log in, log out, who am I."""

from __future__ import annotations

from bodycam import accounts, auth
from bodycam.accounts import User
from bodycam.context import Context


def login(ctx: Context, name: str, token: str, client: str | None = None) -> dict[str, object]:
    """Exchange an account token for a session token (`auth.session_ttl_s`); audited."""
    with ctx.db() as conn:
        session, found = auth.login(conn, ctx.audit_key, ctx.settings.auth, name, token, client)
    return {"token": session, **found.as_json()}


def logout(ctx: Context, user: User, session: auth.Session) -> dict[str, object]:
    """Revoke the token the caller used; audited."""
    with ctx.db() as conn:
        auth.revoke(conn, ctx.audit_key, session.token_id, user.name)
    return {"user": user.name, "revoked": True}


def me(ctx: Context, user: User, session: auth.Session) -> dict[str, object]:
    """The caller's account, roles, cases (None: all) and token expiry."""
    with ctx.db() as conn:
        cases = accounts.visible_cases(conn, user)
    return {**session.as_json(), "cases": cases, "kind": session.kind}
