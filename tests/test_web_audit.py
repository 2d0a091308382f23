"""Auditor pages in a real browser: the audit log with filters, the chain status, exports."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Page, expect

from bodycam import audit
from tests.conftest import StackHandle
from tests.web import make_account, shot, sign_in

V = "/api/v1"


def _api(method: str, url: str, token: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, url, headers={"Authorization": f"Bearer {token}"}, timeout=60,
                         **kw)


def test_an_auditor_sees_the_chain_intact_and_filters_the_log_by_action(
        page: Page, api_url: str, operator_token: str) -> None:
    case = f"T-WEB-AUD-{secrets.token_hex(2)}"
    for op in ("hold", "release"):  # rows of two actions on one case
        r = _api("POST", f"{api_url}{V}/cases/{case}/{op}", operator_token,
                 json={"reason": f"web audit test {op}"})
        assert r.status_code == 200, r.text
    aud = make_account(api_url, operator_token, ["auditor"])
    while not _api("GET", api_url + V + "/audit", aud.token,  # more than one page of rows
                   params={"limit": "1", "offset": "60"}).json()["items"]:
        for op in ("hold", "release"):  # a release of a case not on hold is refused
            _api("POST", f"{api_url}{V}/cases/T-WEB-AUD-PAD/{op}", operator_token,
                 json={"reason": "padding"})
    verdict = _api("POST", api_url + V + "/audit/verify", aud.token).json()
    assert verdict["ok"], verdict
    sign_in(page, api_url, aud)
    page.goto(api_url + "/app/audit")
    expect(page.locator("#chain")).to_contain_text("Audit log intact")
    expect(page.locator("#chain")).to_contain_text("rows")
    # Unfiltered, the log has more than a page: next and previous move through it.
    first = page.locator("#audit-rows tbody tr").first
    expect(first).to_have_attribute("data-action", re.compile(r"\S+"))
    first_id = first.locator("td").first.inner_text()
    expect(page.locator("#prev")).to_be_hidden()
    expect(page.locator("#next")).to_be_visible()
    page.locator("#next").click()
    page.wait_for_url("**offset=50**")
    expect(page.locator("#audit-rows tbody tr").first.locator("td").first).not_to_have_text(
        first_id)
    page.locator("#prev").click()
    expect(page.locator("#audit-rows tbody tr").first.locator("td").first).to_have_text(first_id)
    # Filter by action (and case): only that action's rows are shown, as many as the API has.
    page.get_by_label("Action").fill("case.hold")
    page.get_by_label("Case").fill(case)
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url("**action=case.hold**")
    rows = page.locator("#audit-rows tbody tr[data-action]")
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".action")).to_have_text("case.hold")
    expect(rows.first).to_contain_text("web audit test hold")
    page.get_by_label("Case").fill("")
    page.get_by_role("button", name="Apply filters").click()
    page.wait_for_url("**action=case.hold&case=&from**")
    want = _api("GET", api_url + V + "/audit", aud.token,
                params={"action": "case.hold", "limit": "50"}).json()["items"]
    expect(rows).to_have_count(len(want))
    assert set(rows.locator(".action").all_inner_texts()) == {"case.hold"}
    expect(page.locator("#chain")).to_contain_text("Audit log intact")
    shot(page, "auditor-log")
    # A filter nothing matches says so; a bad date gets the server's line.
    page.get_by_label("Actor").fill(f"nobody-{secrets.token_hex(3)}")
    page.get_by_role("button", name="Apply filters").click()
    expect(page.locator("#audit-rows tbody")).to_contain_text("No rows match")
    page.goto(api_url + "/app/audit?from=yesterday")
    bad = _api("GET", api_url + V + "/audit", aud.token, params={"from": "yesterday"})
    assert bad.status_code == 422
    expect(page.locator("#flash")).to_have_text(bad.json()["detail"])


def _download(page: Page, name: str, to: Path) -> bytes:
    with page.expect_download() as info:
        page.get_by_role("link", name=name).first.click()
    info.value.save_as(to)
    return to.read_bytes()


def test_an_auditor_exports_the_audit_log_and_matches_and_both_verify_with_their_manifests(
        page: Page, api_url: str, operator_token: str, stack: StackHandle,
        tmp_path: Path) -> None:
    aud = make_account(api_url, operator_token, ["auditor"])
    key = audit.export_key(stack.ctx.export_signing_key)
    sign_in(page, api_url, aud)
    page.goto(api_url + "/app/exports")
    page.get_by_role("button", name="Export audit log").click()
    expect(page.locator("#exports li")).to_have_count(1)
    expect(page.locator("#flash")).to_contain_text("Audit log exported")
    shot(page, "auditor-exports")
    path = tmp_path / "audit.jsonl"
    _download(page, "Download audit log file", path)
    manifest = _download(page, "Download manifest", tmp_path / "audit.jsonl.manifest.json")
    assert b'"kind": "audit"' in manifest
    verdict = audit.verify_export(path, key)
    assert verdict.ok, verdict.reason
    assert verdict.count == audit.read_manifest(path)["rows"] > 0
    # One changed byte and the pair no longer verifies.
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert not audit.verify_export(path, key).ok
    # A matches export of one case, CSV.
    page.get_by_label("Format").nth(1).select_option("csv")
    page.get_by_label("Case (empty: every case)").fill("T-WEB-NO-SUCH-CASE")
    page.get_by_role("button", name="Export matches").click()
    expect(page.locator("#exports li")).to_have_count(2)
    mpath = tmp_path / "matches.csv"
    _download(page, "Download matches file", mpath)
    _download(page, "Download manifest", tmp_path / "matches.csv.manifest.json")
    m = audit.read_manifest(mpath)
    assert (m["kind"], m["format"], m["case"]) == ("matches", "csv", "T-WEB-NO-SUCH-CASE")
    assert audit.verify_export(mpath, key).ok
    # The download links are the API's, which only the exporting account may use.
    other = make_account(api_url, operator_token, ["auditor"])
    href = page.get_by_role("link", name="Download matches file").get_attribute("href")
    assert href is not None
    assert _api("GET", api_url + href, other.token).status_code == 403


def test_a_clerk_and_an_investigator_are_refused_the_audit_pages(
        page: Page, api_url: str, operator_token: str) -> None:
    for role in ("clerk", "investigator"):
        acct = make_account(api_url, operator_token, [role])
        page.context.clear_cookies()
        sign_in(page, api_url, acct)
        for path in ("audit", "exports"):
            resp = page.goto(f"{api_url}/app/{path}")
            assert resp is not None and resp.status == 403
            assert "auditor" in page.locator("#refusal").inner_text()
            assert page.locator("#audit-rows").count() == 0
