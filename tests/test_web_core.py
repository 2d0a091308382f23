"""The web app's sessions in a real browser: login form, HttpOnly SameSite=Strict cookie, CSRF on
every change, pages refused (and audited) for roles that may not open them, sign-out revokes."""

from __future__ import annotations

import httpx
from playwright.sync_api import Page
from starlette.requests import Request

from bodycam.web.core import SESSION_COOKIE, cookie_args, cookie_name, csrf_for, session_of
from tests.conftest import StackHandle
from tests.web import make_account, shot, sign_in

ZERO = "00000000-0000-0000-0000-000000000000"


def _audit(stack: StackHandle, action: str, actor: str) -> list[dict[str, object]]:
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT actor, action, details FROM audit_log WHERE action = %s"
                            " AND actor = %s ORDER BY id", (action, actor)).fetchall()
    return [dict(r) for r in rows]


def test_the_root_serves_the_login_page_and_a_wrong_token_is_refused_and_audited(
        page: Page, api_url: str, operator_token: str, stack: StackHandle) -> None:
    r = httpx.get(api_url + "/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Sign in" in r.text and r.headers["cache-control"] == "no-store"
    clerk = make_account(api_url, operator_token, ["clerk"])
    missing: list[str] = []
    page.on("response", lambda resp: missing.append(resp.url) if resp.status >= 400 else None)
    page.goto(api_url + "/")
    page.wait_for_load_state("networkidle")
    assert not missing, missing  # the page's icon, style and script too (no favicon: bb25)
    assert page.locator('link[rel="icon"]').count() == 1
    shot(page, "login")
    page.get_by_label("Account name").fill(clerk.name)
    page.get_by_label("Token").fill("bct_wrong")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong account name or token."
    assert not [c for c in page.context.cookies() if c["name"] == "bodycam_session"]
    assert _audit(stack, "login.failed", "anonymous") or \
        any(r["details"].get("claimed") == clerk.name  # type: ignore[union-attr]
            for r in _failed(stack)), "the failure is audited"


def _failed(stack: StackHandle) -> list[dict[str, object]]:
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT actor, action, details FROM audit_log"
                            " WHERE action LIKE '%%failed%%' ORDER BY id").fetchall()
    return [dict(r) for r in rows]


def test_a_login_form_posted_without_its_own_nonce_is_refused(api_url: str,
                                                               operator_token: str) -> None:
    """Login CSRF: a form posted from elsewhere carries no matching nonce cookie."""
    r = httpx.post(api_url + "/login", data={"user": "operator", "token": operator_token,
                                             "csrf": "forged"}, timeout=30)
    assert r.status_code == 403 and "bodycam_session" not in r.headers.get("set-cookie", "")
    # The name it carried is shown back in the form's field only, never as the signed-in
    # account (with a sign-out button) another site could write into the page (bb42).
    posted = "supervisor Jane Doe - call 555-0100"
    r = httpx.post(api_url + "/login", data={"user": posted, "token": "x", "csrf": "forged"},
                   timeout=30)
    assert r.status_code == 403 and r.text.count(posted) == 1, r.text
    assert 'action="/logout"' not in r.text and f'value="{posted}"' in r.text


def test_signing_in_sets_an_httponly_strict_cookie_and_shows_the_roles_pages(
        page: Page, api_url: str, operator_token: str) -> None:
    inv = make_account(api_url, operator_token, ["investigator"])
    sign_in(page, api_url, inv)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "bodycam_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie").find("bodycam_session") < 0, "not readable by JS"
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Search").is_visible()
    assert nav.get_by_role("link", name="Audit log").count() == 0
    assert nav.get_by_role("link", name="Upload").count() == 0
    shot(page, "home-investigator")


def test_a_page_of_another_role_is_refused_with_the_role_needed_and_audited(
        page: Page, api_url: str, operator_token: str, stack: StackHandle) -> None:
    clerk = make_account(api_url, operator_token, ["clerk"])
    sign_in(page, api_url, clerk)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for path, role in (("audit", "auditor"), ("search", "investigator"), ("accounts", "admin"),
                       ("review", "investigator")):
        resp = page.goto(f"{api_url}/app/{path}")
        assert resp is not None and resp.status == 403
        assert role in page.locator("#refusal").inner_text()
        page.wait_for_load_state("load")
    # The refused page runs none of the page's script (it threw on the missing page: bb25).
    assert not errors, errors
    refused = [r["details"] for r in _audit(stack, "refused", clerk.name)]
    assert {d["attempted"] for d in refused} >= {"audit.verify", "search", "users"}  # type: ignore[index]
    # And the API behind those pages refuses the cookie just as it refuses the token.
    status = page.evaluate("fetch('/api/v1/audit').then(r => r.status)")
    assert status == 403


def test_a_change_with_the_cookie_needs_the_pages_csrf_token(
        page: Page, api_url: str, operator_token: str, stack: StackHandle) -> None:
    clerk = make_account(api_url, operator_token, ["clerk"])
    sign_in(page, api_url, clerk)
    page.goto(api_url + "/app/videos")
    retry = f"/api/v1/videos/{ZERO}/retry"
    post = ("([url, headers]) => fetch(url, {method: 'POST', headers})"
            ".then(async r => [r.status, (await r.json()).detail])")
    status, detail = page.evaluate(post, [retry, {}])
    assert status == 403 and "X-CSRF-Token" in detail
    assert page.evaluate(post, [retry, {"X-CSRF-Token": "f" * 64}])[0] == 403
    # Each refusal is audited, as every 403 is (they left no row: bb27); so is a sign-out
    # form posted without the session's token.
    out = page.evaluate("fetch('/logout', {method: 'POST', body: new URLSearchParams("
                        "{csrf: 'forged'})}).then(r => r.status)")
    assert out == 403
    assert [(r["details"]["attempted"], r["details"]["object"])  # type: ignore[index]
            for r in _audit(stack, "refused", clerk.name)] == [
        ("csrf", f"POST {retry}"), ("csrf", f"POST {retry}"), ("csrf", "POST /logout")]
    own = page.locator('meta[name="csrf-token"]').get_attribute("content")
    assert page.evaluate(post, [retry, {"X-CSRF-Token": own}])[0] == 404, \
        "past the CSRF check, the server looks for the video"
    # A bearer-token client is not a browser: no CSRF token is asked of it.
    r = httpx.post(api_url + retry, headers={"Authorization": f"Bearer {clerk.token}"},
                   timeout=30)
    assert r.status_code == 404


def test_the_cookie_acts_only_for_the_apps_own_pages_and_the_users_own_requests(
        page: Page, api_url: str, operator_token: str) -> None:
    """SameSite=Strict keeps another site's requests from carrying the cookie in a current
    browser; the server also ignores the cookie on any request whose fetch metadata says
    another site (or a sibling host) made it, reads included (each read of a face is audited
    as its viewer's)."""
    inv = make_account(api_url, operator_token, ["investigator"])
    sign_in(page, api_url, inv)
    assert page.evaluate("fetch('/api/v1/auth/me').then(r => r.status)") == 200, \
        "the app's own pages send same-origin"
    [cookie] = [c for c in page.context.cookies() if c["name"] == "bodycam_session"]
    jar = {"bodycam_session": cookie["value"]}
    for site, status in (("cross-site", 401), ("same-site", 401), ("Cross-Site", 401),
                         ("same-origin", 200), ("none", 200), (None, 200)):
        headers = {} if site is None else {"Sec-Fetch-Site": site}
        r = httpx.get(api_url + "/api/v1/auth/me", cookies=jar, headers=headers, timeout=30)
        assert r.status_code == status, (site, r.status_code)
    # The header twice (no browser sends it so): every value must allow the cookie.
    r = httpx.get(api_url + "/api/v1/auth/me", cookies=jar, timeout=30,
                  headers=[("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Site", "cross-site")])
    assert r.status_code == 401
    r = httpx.get(api_url + "/app/search", cookies=jar, headers={"Sec-Fetch-Site": "cross-site"},
                  timeout=30, follow_redirects=False)
    assert r.status_code in (302, 303, 307) or "Sign in" in r.text, "a page asks to sign in"
    # A bearer token is not sent by a browser on its own: fetch metadata does not matter.
    r = httpx.get(api_url + "/api/v1/auth/me", headers={
        "Authorization": f"Bearer {inv.token}", "Sec-Fetch-Site": "cross-site"}, timeout=30)
    assert r.status_code == 200


def test_signing_out_revokes_the_session_on_the_server(
        page: Page, api_url: str, operator_token: str) -> None:
    aud = make_account(api_url, operator_token, ["auditor"])
    sign_in(page, api_url, aud)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "bodycam_session"]
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(api_url + "/")
    again = httpx.get(api_url + "/api/v1/auth/me", cookies={"bodycam_session": cookie["value"]},
                      timeout=30)
    assert again.status_code == 401, "the old cookie no longer works anywhere"
    assert page.goto(api_url + "/app/audit") is not None
    assert page.url == api_url + "/", "back to the login page"


def test_the_cookie_takes_only_a_session_never_an_accounts_token(
        page: Page, api_url: str, operator_token: str) -> None:
    """A sign-in puts a 12-hour session in the cookie. An account's 365-day token put there
    (by a sibling host of the site, say: the user's work would be filed under the planter's
    account) was taken as a session, and signing out revoked it (bb47)."""
    clerk = make_account(api_url, operator_token, ["clerk"])
    jar = {"bodycam_session": clerk.token}
    assert httpx.get(api_url + "/api/v1/auth/me", cookies=jar, timeout=30).status_code == 401
    r = httpx.get(api_url + "/app", cookies=jar, timeout=30, follow_redirects=False)
    assert r.status_code in (302, 303, 307) or "Sign in" in r.text, "a page asks to sign in"
    httpx.post(api_url + "/logout", cookies=jar, data={"csrf": csrf_for(clerk.token)},
               timeout=30)
    bearer = {"Authorization": f"Bearer {clerk.token}"}
    assert httpx.get(api_url + "/api/v1/auth/me", headers=bearer, timeout=30).status_code \
        == 200, "a sign-out of the web app leaves the account's token alone"
    sign_in(page, api_url, clerk)
    [cookie] = [c for c in page.context.cookies() if c["name"] == "bodycam_session"]
    assert httpx.get(api_url + "/api/v1/auth/me", cookies={"bodycam_session": cookie["value"]},
                     timeout=30).status_code == 200, "the session a sign-in gave works"


def test_under_tls_the_cookies_are_named_for_this_host_only() -> None:
    """`__Host-` cookies are taken by a browser only from this very host (Secure, Path=/, no
    Domain): a sibling host of the site cannot plant one. Under TLS the app sets and reads
    only those (behind a proxy: `server.trusted_proxies` and X-Forwarded-Proto)."""
    def request(scheme: str, cookie: str) -> Request:
        return Request({"type": "http", "scheme": scheme, "method": "GET", "path": "/",
                        "headers": [(b"cookie", cookie.encode())], "server": ("h", 443)})

    tls = request("https", "bodycam_session=planted")
    assert cookie_name(tls, SESSION_COOKIE) == "__Host-bodycam_session"
    assert cookie_args(tls, 60)["secure"] and cookie_args(tls, 60)["path"] == "/"
    assert session_of(tls) is None, "a cookie without the prefix is not read under TLS"
    assert session_of(request("https", "__Host-bodycam_session=s")) == "s"
    assert session_of(request("http", "bodycam_session=s")) == "s"


def test_every_page_labels_its_controls_describes_its_images_and_fits_1280x720(
        page: Page, api_url: str, operator_token: str) -> None:
    """Accessibility basics on every page, as the operator (every role opens every page)."""
    from bodycam.web.pages import PAGES

    op = make_account(api_url, operator_token,
                      ["clerk", "investigator", "supervisor", "auditor", "admin"])
    sign_in(page, api_url, op)
    problems: list[str] = []
    for p in ["", *(f"/{pg.path}" for pg in PAGES)]:
        resp = page.goto(f"{api_url}/app{p}")
        assert resp is not None and resp.status == 200, p
        page.wait_for_load_state("networkidle")
        found = page.evaluate("""() => {
            const out = [];
            for (const el of document.querySelectorAll('input, select, textarea')) {
                if (el.type === 'hidden' || el.offsetParent === null) continue;
                const named = (el.labels && el.labels.length) || el.getAttribute('aria-label')
                    || el.getAttribute('aria-labelledby');
                if (!named) out.push('unlabelled ' + el.tagName + '#' + (el.id || el.name));
            }
            for (const el of document.querySelectorAll('img')) {
                if (!el.hasAttribute('alt')) out.push('img without alt ' + el.src);
            }
            for (const el of document.querySelectorAll('button, a[href]')) {
                const name = el.innerText || el.getAttribute('aria-label')
                    || el.getAttribute('title') || '';
                if (el.offsetParent !== null && !name.trim())
                    out.push('nameless ' + el.outerHTML.slice(0, 80));
            }
            if (document.querySelectorAll('h1').length !== 1) out.push('h1 count');
            if (document.documentElement.scrollWidth > window.innerWidth)
                out.push('scrolls sideways');
            return out;
        }""")
        problems += [f"/app{p}: {f}" for f in found]
    assert not problems, "\n".join(problems)
    # Keyboard: the first Tab reaches the skip link, which moves focus to the content.
    page.goto(f"{api_url}/app/search")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
