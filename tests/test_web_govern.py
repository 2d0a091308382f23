"""Supervisor and admin pages in a real browser: accounts, cases and holds, thresholds, policy."""

from __future__ import annotations

import re
import secrets
from typing import Any

import httpx
from playwright.sync_api import Browser, Page, Route, expect

from tests.conftest import StackHandle
from tests.web import Account, make_account, shot, sign_in

V = "/api/v1"


def _audit(stack: StackHandle, action: str, actor: str) -> list[dict[str, Any]]:
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT details FROM audit_log WHERE action = %s AND actor = %s"
                            " ORDER BY id", (action, actor)).fetchall()
    return [dict(r["details"]) for r in rows]


def _api(method: str, url: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                         **kw)


def _users(api_url: str, token: str) -> list[dict[str, Any]]:
    """Every account, page by page (the session's stack holds more than one page of them);
    asserts no page carries a token."""
    items: list[dict[str, Any]] = []
    offset: int | None = 0
    while offset is not None:
        r = _api("GET", api_url + V + "/users", token, params={"offset": offset})
        assert r.status_code == 200 and "bct_" not in r.text, r.text[:200]
        items += r.json()["items"]
        offset = r.json()["next_offset"]
    return items


def _flash(page: Page) -> str:
    flash = page.locator("#flash")
    expect(flash).not_to_be_empty()
    return flash.inner_text()


def test_an_admin_creates_an_account_whose_token_shown_once_signs_in_then_assigns_and_disables(
        page: Page, browser: Browser, api_url: str, operator_token: str,
        stack: StackHandle) -> None:
    admin = make_account(api_url, operator_token, ["admin"])
    sign_in(page, api_url, admin)
    page.goto(api_url + "/app/accounts")
    expect(page.locator(f'#accounts tr[data-user="{admin.name}"]')).to_be_visible()
    name = f"web-new-{secrets.token_hex(3)}"
    page.get_by_label("Account name").fill(name)
    page.get_by_label("investigator").check()
    page.get_by_role("button", name="Create account").click()
    token_box = page.get_by_label("Account token")
    expect(token_box).to_be_visible()
    token = token_box.input_value()
    assert token and name in _flash(page)
    expect(page.locator(f'#accounts tr[data-user="{name}"]')).to_contain_text("investigator")
    # The token shown works: a person signs in with it in a browser of their own.
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    try:
        sign_in(ctx.new_page(), api_url, Account(name, ["investigator"], token))
    finally:
        ctx.close()
    # Shown once: a reload does not show it again, and the list never carries it.
    page.reload()
    expect(page.get_by_label("Account token")).to_be_hidden()
    assert token not in page.content()
    assert token not in str(_users(api_url, operator_token))
    # The same name again is refused with the server's line.
    page.get_by_label("Account name").fill(name)
    page.get_by_label("clerk").check()
    page.get_by_role("button", name="Create account").click()
    expect(page.locator("#flash")).to_have_text(f"user {name} already exists")
    # Assign a case through the page.
    case = f"T-WEB-GOV-{secrets.token_hex(2)}"
    page.get_by_label("Account", exact=True).select_option(name)
    page.get_by_label("Case", exact=True).fill(case)
    page.get_by_role("button", name="Assign case").click()
    expect(page.locator(f'#accounts tr[data-user="{name}"]')).to_contain_text(case)
    users = {u["name"]: u for u in _users(api_url, operator_token)}
    assert users[name]["cases"] == [case]
    assert {"user": name, "case": case} in _audit(stack, "case.assign", admin.name)
    shot(page, "admin-accounts")
    # Disable (after a confirmation): its token stops working at once.
    page.once("dialog", lambda d: d.accept())
    page.get_by_role("button", name=f"Disable {name}").click()
    expect(page.locator(f'#accounts tr[data-user="{name}"]')).to_contain_text("disabled")
    assert _api("GET", api_url + V + "/auth/me", token).status_code == 401
    # Dismissing the confirmation changes nothing.
    other = make_account(api_url, operator_token, ["clerk"])
    page.reload()
    page.once("dialog", lambda d: d.dismiss())
    page.get_by_role("button", name=f"Disable {other.name}").click()
    assert _api("GET", api_url + V + "/auth/me", other.token).status_code == 200
    assert not [d for d in _audit(stack, "user.disable", admin.name) if d["user"] == other.name]


def test_an_admin_holds_a_case_with_a_reason_the_audit_log_keeps_then_releases_it(
        page: Page, api_url: str, operator_token: str, stack: StackHandle) -> None:
    admin = make_account(api_url, operator_token, ["admin"])
    inv = make_account(api_url, operator_token, ["investigator"])
    case = f"T-WEB-HOLD-{secrets.token_hex(2)}"
    sign_in(page, api_url, admin)
    page.goto(api_url + "/app/cases")
    hold = page.locator("#hold-form")
    hold.get_by_label("Case").fill(case)
    hold.get_by_role("button", name="Hold case").click()  # no reason: the form will not send
    assert not [d for d in _audit(stack, "case.hold", admin.name) if d["case"] == case]
    reason = f"preservation order {secrets.token_hex(3)}"
    hold.get_by_label("Reason").fill(reason)
    hold.get_by_role("button", name="Hold case").click()
    row = page.locator(f'#cases tr[data-case="{case}"]')
    expect(row).to_contain_text("held")
    expect(row).to_contain_text(reason)
    # no footage in the case: the page says so, as a mistyped number would look (bb33)
    expect(page.locator("#flash")).to_have_text(
        f"Case {case} is on legal hold. It holds no footage yet: the hold covers what arrives "
        "(check the case number).")
    assert {"case": case, "reason": reason} in _audit(stack, "case.hold", admin.name)
    # Assign an account on the same page, release the hold, then unassign the account.
    form = page.locator("#case-assign-form")
    form.get_by_label("Account name").fill(inv.name)
    form.get_by_label("Case").fill(case)
    form.get_by_role("button", name="Assign", exact=True).click()
    expect(row).to_contain_text(inv.name)
    shot(page, "admin-cases")
    hold.get_by_label("Case").fill(case)
    hold.get_by_label("Reason").fill("order lifted")
    # Releasing asks once more (it lets retention delete what the hold kept): declined,
    # nothing is sent.
    asked: list[str] = []
    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    hold.get_by_role("button", name="Release hold").click()
    assert asked and case in asked[0]
    expect(row).not_to_contain_text("not held")
    assert not [d for d in _audit(stack, "case.release", admin.name) if d["case"] == case]
    page.once("dialog", lambda d: d.accept())
    hold.get_by_role("button", name="Release hold").click()
    expect(row).to_contain_text("not held")
    assert {"case": case, "reason": "order lifted"} in _audit(stack, "case.release", admin.name)
    form.get_by_role("button", name="Unassign").click()
    expect(row).to_have_count(0)  # nothing else keeps the case: no footage, hold or account
    assert {"user": inv.name, "case": case} in _audit(stack, "case.unassign", admin.name)
    me = _api("GET", api_url + V + "/auth/me", inv.token).json()
    assert case not in (me["cases"] or [])
    # Unassigning again is refused with the server's line.
    form.get_by_role("button", name="Unassign").click()
    expect(page.locator("#flash")).to_have_text(f"user {inv.name} is not assigned to case {case}")


def test_an_admin_switches_the_policy_and_back_with_reasons_after_a_redact_only_warning(
        page: Page, api_url: str, operator_token: str, stack: StackHandle) -> None:
    admin = make_account(api_url, operator_token, ["admin"])
    before = _api("GET", api_url + V + "/policy", operator_token).json()
    other = "identify-eu" if before["profile"] != "identify-eu" else "identify"
    sign_in(page, api_url, admin)
    page.goto(api_url + "/app/policy")
    expect(page.locator("#policy-profile")).to_have_text(before["profile"])
    # Redact-only is warned about, and not sent without the explicit confirmation.
    warning = page.locator("#pol-warning")
    expect(warning).to_be_hidden()
    page.get_by_label("Profile", exact=True).select_option("redact-only")
    expect(warning).to_be_visible()
    expect(warning).to_contain_text("permanently deletes every stored face embedding")
    shot(page, "admin-policy")
    page.get_by_label("Reason").fill("must not happen")
    page.get_by_role("button", name="Change policy").click()
    expect(page.locator("#flash")).to_contain_text("Tick the box to confirm")
    assert _api("GET", api_url + V + "/policy", operator_token).json() == before
    # A switch and back, each with its reason.
    try:
        for profile in (other, before["profile"]):
            page.get_by_label("Profile", exact=True).select_option(profile)
            expect(warning).to_be_hidden()
            page.get_by_label("Reason").fill(f"web test: to {profile}")
            page.get_by_role("button", name="Change policy").click()
            expect(page.locator("#policy-profile")).to_have_text(profile)
            assert _api("GET", api_url + V + "/policy",
                        operator_token).json()["profile"] == profile
    finally:
        if _api("GET", api_url + V + "/policy", operator_token).json() != before:
            _api("PUT", api_url + V + "/policy", operator_token,
                 json={"reason": "web test: restore", "profile": before["profile"]})
    changes = _audit(stack, "policy.change", admin.name)
    assert [(c["to"]["profile"], c["reason"]) for c in changes] == [
        (other, f"web test: to {other}"),
        (before["profile"], f"web test: to {before['profile']}")]
    # Footage with no embeddings is analysed again on the admin's word, with the reason.
    page.get_by_label("Why (recorded in the audit log)").fill("web test: the ban was lifted")
    # It first enrols again every entry the session's redact-only switches left without
    # templates (about 0.15 s a photo here; the full suite's watchlist took over 5 s): while
    # it runs, the page says so and a second click cannot send it again (the request is held
    # in the browser until that is seen; the last outcome stayed up, as if nothing happened).
    held: list[Route] = []
    page.route("**/api/v1/reprocess", lambda route: held.append(route))
    button = page.get_by_role("button", name="Analyse again")
    button.click()
    expect(page.locator("#flash")).to_contain_text("Enrolling the watchlist again")
    expect(button).to_be_disabled()
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    held[0].continue_()
    expect(page.locator("#flash")).to_contain_text(re.compile(r"^\d+ videos queued again"),
                                                   timeout=120_000)
    expect(button).to_be_enabled()
    page.unroute("**/api/v1/reprocess")
    [again] = _audit(stack, "reprocess", admin.name)
    assert again["reason"] == "web test: the ban was lifted"


def test_a_supervisor_sets_a_threshold_with_a_reason_and_an_invalid_one_gets_the_servers_line(
        page: Page, api_url: str, operator_token: str, stack: StackHandle) -> None:
    sup = make_account(api_url, operator_token, ["supervisor"])
    [now] = [t for t in _api("GET", api_url + V + "/thresholds", sup.token).json()
             if t["model"] == "dlib-resnet"]
    sign_in(page, api_url, sup)
    page.goto(api_url + "/app/thresholds")
    row = page.locator('#thresholds tr[data-model="dlib-resnet"]')
    expect(row.locator(".default")).to_have_text(str(now["default"]))
    expect(row.locator(".floor")).to_have_text(str(now["floor"]))
    raised = round(min(1.0, now["default"] + 0.01), 2)
    form = page.locator("#thresholds-form")
    form.get_by_label("Model").select_option("dlib-resnet")
    try:
        form.get_by_label("Default threshold").fill(str(raised))
        form.get_by_label("Floor").fill(str(now["floor"]))
        form.get_by_label("Reason").fill("web test: stricter for a week")
        form.get_by_role("button", name="Set thresholds").click()
        expect(row.locator(".default")).to_have_text(str(raised))
        expect(row).to_contain_text("web test: stricter for a week")
        shot(page, "supervisor-thresholds")
        assert _audit(stack, "threshold.change", sup.name)[-1]["reason"] == \
            "web test: stricter for a week"
        # Invalid values: the page shows exactly the line the server gives a client.
        for default, floor in ((str(raised), "0.5"), ("nan", str(now["floor"])),
                               ("abc", str(now["floor"]))):
            form.get_by_label("Default threshold").fill(default)
            form.get_by_label("Floor").fill(floor)
            form.get_by_label("Reason").fill("web test: invalid")
            form.get_by_role("button", name="Set thresholds").click()
            server = _api("PUT", api_url + V + "/thresholds/dlib-resnet", sup.token,
                          json={"default": default, "floor": floor,
                                "reason": "web test: invalid"})
            assert server.status_code == 422
            expect(page.locator("#flash")).to_have_text(server.json()["detail"])
            assert "\n" not in server.json()["detail"]
            expect(row.locator(".default")).to_have_text(str(raised))
        assert len(_audit(stack, "threshold.change", sup.name)) == 1, "nothing else recorded"
    finally:
        _api("PUT", api_url + V + "/thresholds/dlib-resnet", sup.token,
             json={"default": now["default"], "floor": now["floor"],
                   "reason": "web test: restore"})


def test_a_supervisor_opens_cases_and_thresholds_but_is_refused_accounts_and_policy(
        page: Page, api_url: str, operator_token: str, stack: StackHandle) -> None:
    sup = make_account(api_url, operator_token, ["supervisor"])
    sign_in(page, api_url, sup)
    for path in ("cases", "thresholds"):
        resp = page.goto(f"{api_url}/app/{path}")
        assert resp is not None and resp.status == 200
    for path, action in (("accounts", "users"), ("policy", "policy.set")):
        resp = page.goto(f"{api_url}/app/{path}")
        assert resp is not None and resp.status == 403
        assert "admin" in page.locator("#refusal").inner_text()
        assert action in [d["attempted"] for d in _audit(stack, "refused", sup.name)]
    nav = page.get_by_role("navigation", name="Main")
    assert nav.get_by_role("link", name="Accounts").count() == 0
    assert nav.get_by_role("link", name="Cases").count() == 1
