"""The web app's sessions: an HttpOnly SameSite=Strict cookie holding a session token, the
CSRF token derived from it, the login/logout forms, and the page registry every area uses."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.templating import Jinja2Templates

from bodycam import accounts, auth
from bodycam.accounts import PERMISSIONS, User

SESSION_COOKIE = "bodycam_session"
LOGIN_COOKIE = "bodycam_login"
# Under TLS the cookies are named `__Host-...`: a browser takes such a cookie only from this
# very host, sent Secure with Path=/ and no Domain, so a sibling host of the site cannot plant
# one (a session of the attacker's account, under which the user's work would be filed: bb47).
HOST_PREFIX = "__Host-"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# Fetch metadata (Sec-Fetch-Site, sent by every current browser): the only requests the cookie
# acts for are the app's own pages' and those the user made (a typed address, a bookmark).
COOKIE_FETCH_SITES = ("same-origin", "none")
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(HERE / "templates"))


def csrf_for(session_token: str) -> str:
    """The CSRF token of a session: derived from the session token, which the page's script
    never sees (the cookie is HttpOnly), so a page of another origin cannot compute it."""
    return hmac.new(session_token.encode(), b"bodycam-csrf-v1", hashlib.sha256).hexdigest()


def csrf_ok(session_token: str, sent: str | None) -> bool:
    """Constant-time check of a CSRF token sent in a header or form field."""
    return bool(sent) and hmac.compare_digest(csrf_for(session_token), str(sent))


def new_login_nonce() -> str:
    """The double-submit value of the login form (cookie and hidden field must agree)."""
    return secrets.token_urlsafe(24)


def cookie_name(request: Request, name: str) -> str:
    """The name of one of the app's cookies on this request: `__Host-` prefixed under TLS."""
    return HOST_PREFIX + name if request.url.scheme == "https" else name


def cookie_args(request: Request, max_age: int) -> dict[str, Any]:
    """Attributes of every cookie the app sets."""
    return {"max_age": max_age, "httponly": True, "samesite": "strict", "path": "/",
            "secure": request.url.scheme == "https"}


@dataclass(frozen=True)
class Page:
    """One page of the app: its path under /app, title, the action of PERMISSIONS whose roles
    may open it (None: any signed-in account), its template and script module."""

    path: str
    title: str
    action: str | None
    template: str
    script: str | None = None
    nav: bool = True
    roles: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "roles", PERMISSIONS[self.action] if self.action else ())

    def allows(self, user: User) -> bool:
        """Whether the user's roles open the page (the API still checks every call)."""
        return self.action is None or any(user.has(r) for r in self.roles)


async def audited_refusal(ctx: Any, user: User, page: Page) -> str | None:
    """None when the user may open the page; else the refusal line (the refusal is audited
    exactly as the API audits one: `refused` with the attempted action)."""
    if page.allows(user):
        return None
    assert page.action is not None
    action = page.action

    def refuse() -> str:
        with ctx.db() as conn:
            try:
                accounts.require(conn, ctx.audit_key, user, action)
            except accounts.AccessDeniedError as exc:
                return str(exc)
        return f"refused: {page.title} is not open to {user.name}"

    return await run_in_threadpool(refuse)


def session_of(request: Request) -> str | None:
    """The session token in the request's cookie, if any, unless another site (or a sibling
    host of this one) made the request.

    SameSite=Strict keeps the browser from sending the cookie with another site's requests;
    this holds where it did send it (an older browser, a sibling host that shares the site).
    Reads matter too: a thumbnail or an original read is audited as its viewer's, so another
    site's `<img>` must not make the browser read faces in its user's name.
    """
    # Every value, should a request carry the header twice (no browser does).
    if any(site.strip().lower() not in COOKIE_FETCH_SITES
           for site in request.headers.getlist("sec-fetch-site")):
        return None
    return request.cookies.get(cookie_name(request, SESSION_COOKIE)) or None


def authenticate_cookie(ctx: Any, request: Request) -> auth.Session | None:
    """The session of the cookie, or None when there is none or it no longer works (expired,
    revoked, account disabled) or is no session (an account's token, which a sign-in never
    puts there). Failures are audited and rate-limited as the API's are."""
    from bodycam.api.deps import authenticate, client_of

    token = session_of(request)
    if token is None:
        return None
    try:
        return authenticate(ctx, client_of(request), token, None, auth.SESSION_KIND)
    except auth.UnauthenticatedError:
        return None
