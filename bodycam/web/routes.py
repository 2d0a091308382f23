"""Web app routes: the login page at /, login and logout forms, and every registered page under
/app. Pages are HTML shells; their data comes from the same /api/v1 routes the CLI uses, called
by the page's script with the session cookie and the CSRF token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bodycam import auth
from bodycam.accounts import AccessDeniedError
from bodycam.actions import sessions
from bodycam.api.deps import client_of, context, login_limited, refuse_forged
from bodycam.limits import RateLimitedError
from bodycam.web.core import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Page,
    audited_refusal,
    authenticate_cookie,
    cookie_args,
    cookie_name,
    csrf_for,
    csrf_ok,
    new_login_nonce,
    session_of,
    templates,
)
from bodycam.web.pages import PAGES

router = APIRouter(include_in_schema=False)
NO_STORE = {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                       "media-src 'self' blob:; frame-ancestors 'none'; "
                                       "form-action 'self'; base-uri 'none'"}


def _login_page(request: Request, error: str | None = None, user: str = "",
                status: int = 200) -> Response:
    nonce = new_login_nonce()
    resp = templates.TemplateResponse(request, "login.html", {
        # Not `user`: the base page shows that as the signed-in account, with a sign-out
        # button, and another site's form could post any text there (bb42).
        "error": error, "typed_name": user, "nonce": nonce, "title": "Sign in"},
        status_code=status, headers=NO_STORE)
    resp.set_cookie(cookie_name(request, LOGIN_COOKIE), nonce, **cookie_args(request, 900))
    return resp


@router.get("/", response_class=HTMLResponse)
async def index(request: Request) -> Response:
    """The login page, or the app when the session cookie still works."""
    found = await run_in_threadpool(authenticate_cookie, context(), request)
    if found is not None:
        return RedirectResponse("/app", status_code=303)
    return _login_page(request)


@router.post("/login")
async def login(request: Request, user: str = Form(""), token: str = Form(""),
                csrf: str = Form("")) -> Response:
    """Exchange the account's token for a session cookie (12 h); failures are audited and
    rate-limited exactly as `POST /api/v1/auth/login`."""
    nonce = request.cookies.get(cookie_name(request, LOGIN_COOKIE))
    if not nonce or not csrf or nonce != csrf:
        return _login_page(request, "The sign-in form expired; please try again.", user, 403)
    if not user.strip() or not token.strip():
        return _login_page(request, "Enter your account name and token.", user, 422)
    client = client_of(request)
    try:
        found = await run_in_threadpool(login_limited, context(), client, user.strip(),
                                        token.strip())
    except RateLimitedError as exc:
        return _login_page(request, str(exc), user, 429)
    except auth.UnauthenticatedError:  # counted: its reservation stays
        return _login_page(request, "Wrong account name or token.", user, 401)
    resp = RedirectResponse("/app", status_code=303)
    ttl = context().settings.auth.session_ttl_s
    resp.set_cookie(cookie_name(request, SESSION_COOKIE), str(found["token"]),
                    **cookie_args(request, int(ttl)))
    _forget(request, resp, LOGIN_COOKIE)
    return resp


@router.post("/logout")
async def logout(request: Request, csrf: str = Form("")) -> Response:
    """Revoke the session on the server and clear the cookie (CSRF token required)."""
    token = session_of(request)
    found = await run_in_threadpool(authenticate_cookie, context(), request)
    if token is None or found is None:
        resp = RedirectResponse("/", status_code=303)
    elif not csrf_ok(token, csrf):
        try:
            await run_in_threadpool(refuse_forged, context(), found.user, request,
                                    "the app's own sign-out form")
        except AccessDeniedError:
            return HTMLResponse("refused: sign out from the app's own page", 403,
                                headers=NO_STORE)
    else:
        await run_in_threadpool(sessions.logout, context(), found.user, found)
        resp = RedirectResponse("/", status_code=303)
    _forget(request, resp, SESSION_COOKIE)
    return resp


def _forget(request: Request, resp: Response, name: str) -> None:
    """Delete one of the app's cookies (a `__Host-` cookie is deleted only as it was set)."""
    args = cookie_args(request, 0)
    resp.delete_cookie(cookie_name(request, name), path="/", secure=args["secure"],
                       httponly=True, samesite="strict")


def _shell(request: Request, template: str, found: auth.Session, token: str, title: str,
           status: int = 200, **extra: Any) -> Response:
    user = found.user
    nav = [p for p in PAGES if p.nav and p.allows(user)]
    return templates.TemplateResponse(request, template, {
        "title": title, "user": user.name, "roles": list(user.roles), "nav": nav,
        "csrf": csrf_for(token), "csrf_field": CSRF_FIELD, **extra},
        status_code=status, headers=NO_STORE)


async def _page(request: Request, page: Page | None, **extra: Any) -> Response:
    found = await run_in_threadpool(authenticate_cookie, context(), request)
    token = session_of(request)
    if found is None or token is None:
        return RedirectResponse("/", status_code=303)
    if page is None:
        return _shell(request, "home.html", found, token, "Bodycam", **extra)
    refusal = await audited_refusal(context(), found.user, page)
    if refusal is not None:
        return _shell(request, "refused.html", found, token, page.title, 403,
                      refusal=refusal, page=page)
    return _shell(request, page.template, found, token, page.title, page=page, **extra)


@router.get("/app", response_class=HTMLResponse)
async def home(request: Request) -> Response:
    """What the signed-in account can do, by role."""
    return await _page(request, None)


@router.get("/app/{path:path}", response_class=HTMLResponse)
async def app_page(request: Request, path: str) -> Response:
    """A registered page; 404 for any other path; 403 (audited) for a role that may not."""
    page = next((p for p in PAGES if p.path == path), None)
    if page is None:
        return HTMLResponse("no such page", 404, headers=NO_STORE)
    return await _page(request, page, params=dict(request.query_params))
