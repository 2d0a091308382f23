"""The clerk's pages in a real browser: upload with per-file progress and SHA-256, refusals shown
as the server words them, the videos list following processing, and retry of a quarantined video."""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from bodycam import jobs, queue
from bodycam.config import JobSettings
from tests.conftest import HAMILTON, StackHandle, turned_clips
from tests.web import Account, make_account, shot, sign_in

DONE_WITHIN_MS = 360_000
# Retrying needs the case: a clerk sees the videos they uploaded, but acts on assigned cases.
CASE = f"WEB-CLERK-{secrets.token_hex(3)}"
RETRY_CASE = f"WEB-RETRY-{secrets.token_hex(3)}"
# File names come from users: shown as text, never parsed as markup (the CSP would also block
# the handler; the text comparisons are what catch a missing esc()).
MARKUP = "<img src=x onerror=window.pwned=1>"


@dataclass
class Upload:
    """What the upload page showed for each file, and the clerk who sent them."""

    clerk: Account
    case: str
    rows: dict[str, dict[str, str | None]]
    progress: dict[str, str | None]
    not_video: Path
    ran_markup: bool


@pytest.fixture(scope="module")
def clerk(api_url: str, operator_token: str) -> Account:
    """One clerk for the module, assigned to the cases its uploads go to."""
    return make_account(api_url, operator_token, ["clerk"], (CASE, RETRY_CASE))


def _row(page: Page, name: str) -> dict[str, str | None]:
    li = page.locator(f'li.upload[data-file="{name}"]')
    return {"state": li.get_attribute("data-state"), "video_id": li.get_attribute("data-video-id"),
            "sha256": li.locator(".sha256").all_inner_texts()[0] if li.locator(".sha256").count()
            else None,
            "duplicate": li.locator(".duplicate").all_inner_texts()[0]
            if li.locator(".duplicate").count() else None,
            "outcome": li.locator(".outcome").inner_text(),
            "name": li.locator("strong").inner_text()}


def _fill(page: Page, case: str, officer: str = "Off. Reyes #4411",
          device: str = "AXON-B3-0042") -> None:
    page.get_by_label("Case number").fill(case)
    page.get_by_label("Officer").fill(officer)
    page.get_by_label("Device").fill(device)


@pytest.fixture(scope="module")
def uploaded(browser: Browser, api_url: str, clerk: Account,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upload]:
    """HAMILTON and a text file named .mp4, chosen together and uploaded through the page."""
    folder = tmp_path_factory.mktemp("clerk-files")
    not_video = folder / f"{MARKUP}notes-not-a-video.mp4"
    not_video.write_text("interview notes, typed up; this is not a video\n" * 40)
    case = CASE
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    page = ctx.new_page()
    try:
        sign_in(page, api_url, clerk)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Upload").click()
        page.wait_for_url(api_url + "/app/upload")
        _fill(page, case)
        page.get_by_label("Recorded at").fill("2026-03-14T09:30:00")
        page.get_by_label("Video files").set_input_files([str(not_video), str(HAMILTON)])
        page.get_by_role("button", name="Upload").click()
        for name in (not_video.name, HAMILTON.name):  # the refusal does not stop the next
            expect(page.locator(f'li.upload[data-file="{name}"]')).to_have_attribute(
                "data-state", re.compile("stored|refused"), timeout=120_000)
        rows = {name: _row(page, name) for name in (HAMILTON.name, not_video.name)}
        progress = {name: page.get_by_label(f"Upload of {name}").get_attribute("value")
                    for name in rows}
        shot(page, "clerk-upload")
        ran = page.evaluate("window.pwned !== undefined")
        yield Upload(clerk, case, rows, progress, not_video, ran)
    finally:
        ctx.close()


def test_a_clerk_uploads_two_files_the_video_is_stored_with_its_sha256_and_the_other_refused(
        uploaded: Upload, api_url: str, stack: StackHandle) -> None:
    stored = uploaded.rows[HAMILTON.name]
    assert stored["state"] == "stored", stored
    assert stored["sha256"] == hashlib.sha256(HAMILTON.read_bytes()).hexdigest()
    assert stored["duplicate"] == "no"
    assert uploaded.progress[HAMILTON.name] == "100", "the file's bar reached its end"
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT sha256, case_id, officer, device, uploader, recorded_at"
                           " FROM videos WHERE id::text = %s", (stored["video_id"],)).fetchone()
    assert row is not None and row["sha256"] == stored["sha256"]
    assert (row["case_id"], row["officer"], row["device"], row["uploader"]) == (
        uploaded.case, "Off. Reyes #4411", "AXON-B3-0042", uploaded.clerk.name)
    assert row["recorded_at"] is not None, "the recorded-at field reached the server"
    # The refused file shows the server's own reason, word for word, and nothing was stored.
    refused = uploaded.rows[uploaded.not_video.name]
    assert refused["state"] == "refused" and refused["video_id"] is None
    assert uploaded.progress[uploaded.not_video.name] == "100", \
        "its bytes were sent (upload.onprogress moved its bar) before the server refused it"
    again = httpx.post(f"{api_url}/api/v1/videos", content=uploaded.not_video.read_bytes(),
                       params={"case": uploaded.case, "officer": "O", "device": "D",
                               "filename": uploaded.not_video.name},
                       headers={"Authorization": f"Bearer {uploaded.clerk.token}"}, timeout=60)
    assert again.status_code == 422
    assert refused["outcome"] == "Refused: " + again.json()["detail"]
    assert "\n" not in str(refused["outcome"]), "one clean line"
    assert str(refused["name"]) == uploaded.not_video.name and not uploaded.ran_markup


def test_uploading_the_same_clip_again_to_the_case_shows_it_as_a_duplicate(
        uploaded: Upload, page: Page, api_url: str) -> None:
    sign_in(page, api_url, uploaded.clerk)
    page.goto(api_url + "/app/upload")
    _fill(page, uploaded.case)
    page.get_by_label("Video files").set_input_files(str(HAMILTON))
    page.get_by_role("button", name="Upload").click()
    li = page.locator(f'li.upload[data-file="{HAMILTON.name}"]')
    expect(li).to_have_attribute("data-state", "stored", timeout=60_000)
    again = _row(page, HAMILTON.name)
    first = uploaded.rows[HAMILTON.name]
    assert again["duplicate"] == "yes" and again["video_id"] == first["video_id"]
    assert again["sha256"] == first["sha256"]


def test_an_empty_case_or_a_bad_officer_is_refused_in_the_page_before_any_byte_is_sent(
        page: Page, api_url: str, clerk: Account) -> None:
    sign_in(page, api_url, clerk)
    page.goto(api_url + "/app/upload")
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/api/v1/videos" in r.url else None)
    _fill(page, "   ", officer="Off. <b>Reyes</b>")
    page.get_by_label("Video files").set_input_files(str(HAMILTON))
    page.get_by_role("button", name="Upload").click()
    case = page.get_by_label("Case number")
    expect(case).to_have_attribute("aria-invalid", "true")
    expect(case).to_be_focused()
    problem = page.locator("#" + str(case.get_attribute("aria-describedby")))
    expect(problem).to_have_text("Case number is required: every video must be bound to a case.")
    officer = page.get_by_label("Officer")
    expect(officer).to_have_attribute("aria-invalid", "true")
    assert "may only use letters" in page.locator(
        "#" + str(officer.get_attribute("aria-describedby"))).inner_text()
    lines = page.locator("#form-problems li").all_inner_texts()
    assert len(lines) == 2 and all("\n" not in line for line in lines), lines
    expect(page.get_by_label("Device")).not_to_have_attribute("aria-invalid", "true")
    assert page.locator("li.upload").count() == 0 and sent == [], "nothing was sent"
    # The same bad officer sent straight to the API is refused there too: the page mirrors
    # the server's rule, it does not replace it.
    r = httpx.post(f"{api_url}/api/v1/videos", content=HAMILTON.read_bytes(),
                   params={"case": "WEB-X", "officer": "Off. <b>Reyes</b>", "device": "D"},
                   headers={"Authorization": f"Bearer {clerk.token}"}, timeout=60)
    assert r.status_code == 422 and "officer" in r.json()["detail"]
    # Fixed, the form sends the file.
    page.get_by_label("Case number").fill(f"WEB-VALID-{secrets.token_hex(2)}")
    page.get_by_label("Officer").fill("Off. Reyes")
    page.get_by_label("Video files").set_input_files(str(HAMILTON))
    with page.expect_response(lambda r: "/api/v1/videos" in r.url) as resp:
        page.get_by_role("button", name="Upload").click()
    assert resp.value.status in (200, 201)
    expect(page.get_by_label("Case number")).not_to_have_attribute("aria-invalid", "true")


@pytest.fixture(scope="module")
def done_video(uploaded: Upload, browser: Browser, api_url: str) -> str:
    """The uploaded clip once the videos page shows it done (processing takes 1-2 minutes)."""
    vid = str(uploaded.rows[HAMILTON.name]["video_id"])
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    page = ctx.new_page()
    try:
        sign_in(page, api_url, uploaded.clerk)
        page.goto(f"{api_url}/app/videos?case={uploaded.case}")
        row = page.locator(f'tr[data-video-id="{vid}"]')
        expect(row).to_have_attribute("data-status", re.compile("queued|processing|done"))
        if row.get_attribute("data-status") != "done":  # still running: the page refreshes
            expect(page.locator("#jobs-summary")).to_contain_text("still queued or processing")
        expect(row).to_have_attribute("data-status", "done", timeout=DONE_WITHIN_MS)
        expect(page.locator("#jobs-summary")).not_to_contain_text("still queued")
    finally:
        ctx.close()
    return vid


def test_the_videos_page_follows_the_clip_until_it_is_done_without_a_retry_button(
        uploaded: Upload, page: Page, api_url: str, done_video: str) -> None:
    sign_in(page, api_url, uploaded.clerk)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Videos").click()
    row = page.locator(f'tr[data-video-id="{done_video}"]')
    expect(row).to_have_attribute("data-status", "done")
    expect(row.locator("td.stage")).to_have_text("done")
    assert row.get_by_label(f"Processing of {HAMILTON.name}").get_attribute("value") == "100"
    assert row.locator("td").first.inner_text() == uploaded.case
    assert row.get_by_role("button", name="Retry").count() == 0
    # Filters: by status (server side) and by case; a status the clip does not have hides it.
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#jobs-body")).to_contain_text("No video matches")
    page.get_by_label("Status").select_option("done")
    page.get_by_label("Case number").fill(uploaded.case)
    page.get_by_role("button", name="Filter").click()
    expect(page.locator(f'tr[data-video-id="{done_video}"]')).to_be_visible()
    assert page.locator("#jobs-body tr").count() == 1
    shot(page, "clerk-videos")
    # The server refuses a retry of a done video, and says why.
    r = httpx.post(f"{api_url}/api/v1/videos/{done_video}/retry",
                   headers={"Authorization": f"Bearer {uploaded.clerk.token}"}, timeout=30)
    assert r.status_code == 409 and "only a failed or quarantined" in r.json()["detail"]


@pytest.fixture
def parked(stack: StackHandle, done_video: str) -> Iterator[None]:
    """GPU workers stop taking units (after the shared clip is done), so a ghost can fail one."""
    control = queue.client(stack.ctx.services.redis_url).control
    deadline = time.monotonic() + 60
    while len(control.cancel_consumer("gpu", reply=True, timeout=2) or []) < 2:
        assert time.monotonic() < deadline, "GPU workers did not answer"
    try:
        yield
    finally:
        control.add_consumer("gpu", reply=True, timeout=5)


def _quarantine(stack: StackHandle, vid: str, why: str) -> None:
    """A ghost worker claims the video's first unit and fails it past max_attempts."""
    deadline = time.monotonic() + 30
    while (lease := _claim(stack, vid)) is None:
        assert time.monotonic() < deadline, "the unit never became claimable"
        time.sleep(0.2)
    with stack.ctx.db() as conn:
        state = jobs.fail(conn, stack.ctx.audit_key, lease, why, jobs.Failure.ERROR,
                          JobSettings(max_attempts=1))
    assert state == "quarantined"


def _claim(stack: StackHandle, vid: str) -> jobs.Lease | None:
    with stack.ctx.db() as conn:
        return jobs.claim(conn, vid, 0, "ghost:web", lease_s=60)


def test_a_quarantined_video_has_a_retry_button_that_queues_it_and_a_stale_one_shows_the_refusal(
        page: Page, api_url: str, stack: StackHandle, clerk: Account, done_video: str,
        parked: None) -> None:
    case = RETRY_CASE
    auth = {"Authorization": f"Bearer {clerk.token}"}
    r = httpx.post(f"{api_url}/api/v1/videos", content=HAMILTON.read_bytes(), headers=auth,
                   params={"case": case, "officer": "O", "device": "D",
                           "filename": MARKUP + HAMILTON.name}, timeout=120)
    assert r.status_code == 201, r.text
    vid = r.json()["video_id"]
    _quarantine(stack, vid, "ValueError: decoder state lost")
    sign_in(page, api_url, clerk)
    page.goto(f"{api_url}/app/videos?case={case}")
    row = page.locator(f'tr[data-video-id="{vid}"]')
    expect(row).to_have_attribute("data-status", "quarantined")
    expect(row.locator("td.problem")).to_contain_text("Processing stopped after 1 failed attempt")
    row.get_by_text("Server's message").click()  # the technical line, one click away
    expect(row.locator("td.problem details")).to_contain_text("decoder state lost")
    button = row.get_by_role("button", name="Retry")
    expect(button).to_be_visible()
    # Someone else retries it first: the page's button is stale and the server's 409 is shown.
    assert httpx.post(f"{api_url}/api/v1/videos/{vid}/retry", headers=auth,
                      timeout=30).status_code == 200
    button.click()
    expect(page.locator("#flash")).to_have_class("error")
    expect(page.locator("#flash")).to_contain_text(f"video {vid} is queued: only a failed or")
    expect(row).to_have_attribute("data-status", "queued")
    assert row.get_by_role("button", name="Retry").count() == 0
    # Quarantined again (the page keeps polling while it is queued): its own Retry works.
    _quarantine(stack, vid, "ValueError: decoder state lost again")
    expect(row).to_have_attribute("data-status", "quarantined", timeout=15_000)
    row.get_by_role("button", name="Retry").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#flash")).to_have_class("ok")
    expect(page.locator("#flash")).to_contain_text(f"{MARKUP}{HAMILTON.name} is queued again")
    expect(row.locator("td.mono")).to_have_text(MARKUP + HAMILTON.name)
    assert page.evaluate("window.pwned === undefined"), "the name was not run as markup"
    expect(row).to_have_attribute("data-status", "queued")
    with stack.ctx.db() as conn:
        retries = conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'retry'"
                               " AND actor = %s AND details->>'video_id' = %s",
                               (clerk.name, vid)).fetchone()["n"]
    assert retries == 2, "the API retry and the page's retry are both audited"
    # Quarantine it once more so the parked messages find nothing to run (no second 1-2 min
    # of processing for this test).
    _quarantine(stack, vid, "ValueError: test over")


def test_an_investigator_opening_the_upload_page_is_refused(
        page: Page, api_url: str, operator_token: str) -> None:
    inv = make_account(api_url, operator_token, ["investigator"])
    sign_in(page, api_url, inv)
    resp = page.goto(api_url + "/app/upload")
    assert resp is not None and resp.status == 403
    expect(page.locator("#refusal")).to_contain_text("clerk")
    assert page.locator("#upload-form").count() == 0
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(api_url + "/")
    clerk = make_account(api_url, operator_token, ["clerk"])
    sign_in(page, api_url, clerk)
    ok = page.goto(api_url + "/app/upload")
    assert ok is not None and ok.status == 200, "the same page opens for a clerk"


def test_a_done_video_s_notice_is_in_its_row(
        page: Page, api_url: str, clerk: Account, tmp_path: Path) -> None:
    """A camera worn sideways: the video is done with no track, and its row says why faces
    may be there all the same (the job's notice), as text."""
    cw, _ccw, _empty = turned_clips(tmp_path)
    r = httpx.post(f"{api_url}/api/v1/videos", content=cw.read_bytes(),
                   headers={"Authorization": f"Bearer {clerk.token}"},
                   params={"case": CASE, "officer": "O", "device": "D",
                           "filename": MARKUP + "sideways.mp4"}, timeout=120)
    assert r.status_code == 201, r.text
    vid = r.json()["video_id"]
    sign_in(page, api_url, clerk)
    page.goto(f"{api_url}/app/videos?case={CASE}")
    row = page.locator(f'tr[data-video-id="{vid}"]')
    expect(row).to_have_attribute("data-status", "done", timeout=DONE_WITHIN_MS)
    note = row.locator("td.problem .notice")
    expect(note).to_contain_text("faces were in")
    expect(note).to_contain_text("-display_rotation 90 -i IN -c copy OUT.mp4")
    assert row.locator("td.problem .error").count() == 0, "a notice is not an error"
