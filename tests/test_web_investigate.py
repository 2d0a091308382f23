"""Investigator pages in a browser: enrol, search, timeline, player, face picker, case, persons."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, Response

from tests.conftest import HAMILTON, TESTDATA, StackHandle
from tests.web import Account, make_account, shot, sign_in

CASE = "T-WEB-INV"
OTHER = "T-WEB-INV-OTHER"  # nobody's case but the operator's
P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"
GROUP = TESTDATA / "faces" / "groups" / "two_people.jpg"
NAME = f"Web-Subject-{secrets.token_hex(2)}"
V = "/api/v1"
# The text fields of every form the page sends (the browser does not expose multipart bodies).
RECORD_FORMS = """
window.__sent = [];
const send = window.fetch;
window.fetch = (url, opts) => {
  if (opts && opts.body instanceof FormData) {
    window.__sent.push([String(url), Object.fromEntries(
      [...opts.body].filter(([, v]) => typeof v === "string"))]);
  }
  return send(url, opts);
};
"""


@dataclass
class World:
    """The case's processed clip and an investigator assigned to that case only."""

    url: str
    op: str
    inv: Account
    video: str

    def api(self, method: str, path: str, token: str | None = None,
            **kw: object) -> httpx.Response:
        h = {"Authorization": f"Bearer {token or self.inv.token}"}
        return httpx.request(method, self.url + V + path, headers=h, timeout=600,
                             **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world(stack: StackHandle, api_url: str, operator_token: str,
          processed: Callable[[Path, str], str]) -> World:
    inv = make_account(api_url, operator_token, ["investigator"], (CASE,))
    return World(api_url, operator_token, inv, processed(HAMILTON, CASE))


def _audit(stack: StackHandle, action: str, actor: str) -> list[dict[str, object]]:
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT details FROM audit_log WHERE action = %s AND actor = %s"
                            " ORDER BY id", (action, actor)).fetchall()
    return [dict(r["details"]) for r in rows]


def _flash(page: Page) -> str:
    return page.locator("#flash").inner_text()


def _enrol_form(page: Page, world: World, name: str, reason: str) -> None:
    """The investigator signed in on the case's enrolment page, its name and reason filled."""
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/enrol?case={CASE}")
    page.get_by_label("Name").fill(name)
    page.get_by_label("Reason").fill(reason)


def test_enrolling_through_the_page_shows_the_photo_checks_reason_then_the_subject_and_its_matches(
        page: Page, world: World) -> None:
    _enrol_form(page, world, NAME, "web test: wanted for questioning")
    # A file that is not a photo: refused with the check's reason, nothing stored.
    page.get_by_label("Photos of the face").set_input_files(str(HAMILTON))
    page.get_by_role("button", name="Enrol").click()
    page.locator("#enrol-lines li.error").first.wait_for()
    assert "not a readable image" in page.locator("#enrol-lines").inner_text()
    assert NAME not in world.api("GET", "/subjects", params={"case": CASE}).text
    page.get_by_label("Photos of the face").set_input_files(str(P06))
    page.get_by_role("button", name="Enrol").click()
    page.locator("#enrol-lines li.ok").wait_for()
    subjects = world.api("GET", "/subjects", params={"case": CASE}).json()["items"]
    [mine] = [s for s in subjects if s["name"] == NAME]
    text = page.locator("#enrol-lines").inner_text()
    assert mine["subject_id"] in text
    pending = [m for m in world.api("GET", "/matches", params={"case": CASE}).json()["items"]
               if m["subject_id"] == mine["subject_id"]]
    assert pending, "p06 appears in HAMILTON: enrolment makes pending matches"
    assert f"{len(pending)} pending match" in text
    shot(page, "investigator-enrol")


def test_a_photo_search_shows_a_timeline_with_threshold_and_model_and_a_mark_plays_the_original(
        page: Page, world: World, stack: StackHandle) -> None:
    expected = world.api("POST", "/search", data={"case": CASE, "purpose": "expected"},
                         files={"photo": ("p.png", P06.read_bytes(), "image/png")}).json()
    assert expected["results"], "p06 appears in HAMILTON"
    ranges: list[int] = []

    def seen(resp: Response) -> None:
        if "/original" in resp.url:
            ranges.append(resp.status)

    page.on("response", seen)
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/search?case={CASE}")
    page.get_by_label("Purpose").fill("web test: where does p06 appear")
    page.get_by_label("Photo of the face").set_input_files(str(P06))
    page.get_by_role("button", name="Search", exact=True).click()
    card = page.locator("article.result").first
    card.wait_for()
    marks = page.locator(".timeline .mark")
    assert marks.count() == len(expected["results"]) >= 1
    meta = page.locator("#results-meta").inner_text()
    assert f"Threshold {expected['threshold']}" in meta and expected["model"] in meta
    assert f"Threshold {expected['threshold']}" in card.inner_text()
    assert expected["model"] in card.inner_text()
    thumbs = card.locator("img.thumb")
    thumbs.first.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    # The latest appearance, chosen with the keyboard: the player starts at its second.
    latest = max(expected["results"], key=lambda a: a["start_s"])
    starts = [float(x) for x in marks.evaluate_all("ms => ms.map(m => m.dataset.start)")]
    assert sorted(starts) == sorted(a["start_s"] for a in expected["results"])
    marks.nth(starts.index(max(starts))).focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "start => { const v = document.getElementById('player');"
        " return v.readyState >= 1 && !v.seeking && Math.abs(v.currentTime - start) < 1; }",
        arg=latest["start_s"] + latest["first_frame_s"], timeout=60_000)
    assert 206 in ranges, f"the original is served by range requests: {ranges}"
    opened = _audit(stack, "video.original", world.inv.name)
    assert any(d["video_id"] == world.video and d["range"] for d in opened)
    # Each face picture shown was audited, with its case: who looked at whose face.
    shown = {d["track_id"] for d in _audit(stack, "track.thumbnail", world.inv.name)
             if d["case"] == CASE}
    assert {t for a in expected["results"] for t in a["track_ids"]} & shown
    shot(page, "investigator-search")


def test_a_group_photo_shows_a_face_picker_whose_choice_is_the_face_searched(
        page: Page, world: World) -> None:
    faces = world.api("POST", "/photos/faces", data={"case": CASE},
                      files={"photo": ("g.jpg", GROUP.read_bytes(), "image/jpeg")}).json()
    assert len(faces["faces"]) >= 2, faces
    page.add_init_script(RECORD_FORMS)
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/search?case={CASE}")
    page.get_by_label("Purpose").fill("web test: group photo")
    page.get_by_label("Photo of the face").set_input_files(str(GROUP))
    page.get_by_role("button", name="Search", exact=True).click()
    picker = page.get_by_role("region", name="Choose a face")
    picker.wait_for()
    boxes = picker.get_by_role("button")
    assert boxes.count() == len(faces["faces"])
    src = page.locator("#picker-img").get_attribute("src") or ""
    assert src.startswith("blob:"), "the photo is shown from the browser, not sent back"
    assert "faces" in _flash(page)
    # Keyboard: the largest face has the focus; Tab reaches the next one.
    assert page.evaluate("document.activeElement.dataset.index") == "0"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.index") == "1"
    page.keyboard.press("Enter")
    page.locator("#results").wait_for()
    [body] = [fields for url, fields in page.evaluate("window.__sent")
              if url.endswith("/search")]
    assert body["face"] == "1" and body["case"] == CASE
    assert boxes.nth(1).get_attribute("aria-pressed") == "true"


def test_a_group_photo_is_enrolled_only_once_its_face_is_chosen(
        page: Page, world: World, stack: StackHandle) -> None:
    """The web enrolment took a group photo's largest face without a word (bb25): it now
    shows the search's face picker, and among several photos each must show one person."""
    page.add_init_script(RECORD_FORMS)
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/enrol?case={CASE}")
    name = f"Web-Group-{secrets.token_hex(2)}"
    page.get_by_label("Name").fill(name)
    page.get_by_label("Reason").fill("web test: a group photo")
    # Among several photos, a group photo is refused on the page: nothing is sent.
    page.get_by_label("Photos of the face").set_input_files([str(P06), str(GROUP)])
    page.get_by_role("button", name="Enrol").click()
    page.wait_for_function("() => document.querySelector('#flash').textContent"
                           ".includes('two_people.jpg shows')")
    assert "enrol from it alone" in _flash(page)
    assert not [u for u, _f in page.evaluate("window.__sent") if u.endswith("/subjects")]
    # Alone, its faces are shown; the one chosen is the one enrolled.
    page.get_by_label("Photos of the face").set_input_files(str(GROUP))
    page.get_by_role("button", name="Enrol").click()
    picker = page.get_by_role("region", name="Choose a face")
    picker.wait_for()
    assert picker.get_by_role("button").count() >= 2
    assert not [u for u, _f in page.evaluate("window.__sent") if u.endswith("/subjects")]
    picker.get_by_role("button").nth(1).click()
    page.locator("#enrol-lines li.ok").wait_for()
    [body] = [f for u, f in page.evaluate("window.__sent") if u.endswith("/subjects")]
    assert body["face"] == "1" and body["name"] == name
    [mine] = [s for s in world.api("GET", "/subjects", params={"case": CASE}).json()["items"]
              if s["name"] == name]
    with stack.ctx.db() as conn:
        [row] = conn.execute("SELECT face_index FROM subject_faces WHERE subject_id = %s",
                             (mine["subject_id"],)).fetchall()
    assert row["face_index"] == 1


def test_case_and_purpose_are_required_before_sending_and_a_refusal_for_another_case_is_shown(
        page: Page, world: World, stack: StackHandle) -> None:
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if r.method == "POST" else None)
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/search")
    page.wait_for_function("() => document.querySelectorAll('#my-cases option').length > 0")
    page.get_by_label("Case").fill("")
    page.get_by_label("Photo of the face").set_input_files(str(P06))
    go = page.get_by_role("button", name="Search", exact=True)
    go.click()
    assert _flash(page) == "Case is required."
    assert page.get_by_label("Case").get_attribute("aria-invalid") == "true"
    page.get_by_label("Case").fill(CASE)
    go.click()
    assert _flash(page) == "Purpose is required."
    assert not [u for u in sent if "/api/v1/" in u], "nothing was sent"
    # A case the investigator is not on: the server refuses, the page says so, it is audited.
    before = len(_audit(stack, "refused", world.inv.name))
    page.get_by_label("Case").fill(OTHER)
    page.get_by_label("Purpose").fill("web test: not my case")
    go.click()
    page.wait_for_function("() => document.getElementById('flash').className === 'error'")
    assert f"not assigned to case {OTHER}" in _flash(page)
    page.get_by_role("radio", name="Track id").check()
    track = world.api("GET", f"/videos/{world.video}/tracks").json()["items"][0]["track_id"]
    page.get_by_role("textbox", name="Track id").fill(track)
    page.evaluate("document.getElementById('flash').className = ''")
    go.click()
    page.wait_for_function("() => document.getElementById('flash').className === 'error'")
    assert f"not assigned to case {OTHER}" in _flash(page)
    refused = _audit(stack, "refused", world.inv.name)[before:]
    assert [d["case"] for d in refused if d["attempted"] == "search"] == [OTHER, OTHER]


def test_the_case_page_lists_the_cases_videos_subjects_and_pending_matches(
        page: Page, world: World) -> None:
    videos = world.api("GET", f"/cases/{CASE}/videos").json()["items"]
    subjects = world.api("GET", "/subjects", params={"case": CASE}).json()["items"]
    pending = world.api("GET", "/matches", params={"case": CASE, "status": "pending"}
                        ).json()["items"]
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/case")
    page.get_by_label("Case").fill(CASE)
    page.get_by_role("button", name="Open case").click()
    page.locator("#case-videos table").wait_for()
    page.locator("#case-subjects table").wait_for()
    assert page.locator("#case-videos tbody tr").count() == len(videos) >= 1
    assert videos[0]["filename"] in page.locator("#case-videos").inner_text()
    # Each processed video links to its redaction (no page showed the id it asks for: bb25).
    done = [v for v in videos if v["status"] == "done"]
    redact = page.locator("#case-videos").get_by_role("link", name="Redact")
    assert redact.count() == len(done) >= 1
    assert {redact.nth(i).get_attribute("href") for i in range(redact.count())} == {
        f"/app/redact?video={v['video_id']}" for v in done}
    assert page.locator("#case-subjects tbody tr").count() == len(subjects) >= 1
    if pending:
        page.locator("#case-matches table").wait_for()
    assert page.locator("#case-matches tbody tr").count() == len(pending)
    assert page.url.endswith(f"?case={CASE}")
    link = page.get_by_role("link", name="Search in this case")
    assert link.get_attribute("href") == f"/app/search?case={CASE}"
    page.wait_for_function("() => [...document.querySelectorAll('#case-matches img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    shot(page, "investigator-case")
    page.get_by_label("Case").fill(OTHER)
    page.get_by_role("button", name="Open case").click()
    page.locator("#case-videos .error").wait_for()
    assert f"not assigned to case {OTHER}" in page.locator("#case-videos").inner_text()


def test_a_subjects_search_link_on_the_case_page_searches_by_that_subject(
        page: Page, world: World) -> None:
    [subject] = [s for s in world.api("GET", "/subjects", params={"case": CASE}).json()["items"]
                 if s["name"] == NAME]
    expected = world.api("POST", "/search", data={"case": CASE, "purpose": "expected",
                                                  "subject": subject["subject_id"]}).json()
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/case?case={CASE}")
    row = page.locator("#case-subjects tr", has_text=NAME)
    row.get_by_role("link", name="Search").click()
    page.wait_for_url(re.compile(r"/app/search\?case="))
    assert page.get_by_role("radio", name="Enrolled subject").is_checked()
    page.wait_for_function("id => document.getElementById('subject').value === id",
                           arg=subject["subject_id"])
    page.get_by_label("Purpose").fill("web test: by subject")
    page.get_by_role("button", name="Search", exact=True).click()
    page.locator("#results").wait_for()
    assert page.locator(".timeline .mark").count() == len(expected["results"]) >= 1
    assert f"Threshold {expected['threshold']}" in page.locator("#results-meta").inner_text()


def test_the_persons_page_needs_a_purpose_and_shows_each_group_as_face_thumbnails(
        page: Page, world: World, stack: StackHandle) -> None:
    sign_in(page, world.url, world.inv)
    page.goto(f"{world.url}/app/persons?case={CASE}")
    show = page.get_by_role("button", name="Show persons")
    show.click()
    assert _flash(page) == "Purpose is required."
    page.get_by_label("Purpose").fill("web test: who else is there")
    show.click()
    page.locator("#persons").wait_for()
    groups = world.api("GET", "/persons", params={"case": CASE, "purpose": "expected"}
                       ).json()["items"]
    assert page.locator("article.person").count() == len(groups) >= 1
    first = page.locator("article.person").first
    assert first.locator("img.thumb").count() == min(12, len(groups[0]["track_ids"]))
    assert first.locator("li").count() == len(groups[0]["appearances"])
    page.wait_for_function("() => [...document.querySelectorAll('img.thumb')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    assert any(d["purpose"] == "web test: who else is there" and d["case"] == CASE
               for d in _audit(stack, "persons", world.inv.name)), "the viewing is audited"
    shot(page, "investigator-persons")


def test_the_photo_faces_route_numbers_faces_largest_first_stores_nothing_and_is_audited(
        world: World, stack: StackHandle) -> None:
    r = world.api("POST", "/photos/faces", data={"case": CASE},
                  files={"photo": ("g.jpg", GROUP.read_bytes(), "image/jpeg")})
    assert r.status_code == 200, r.text
    faces = r.json()["faces"]
    assert [f["index"] for f in faces] == list(range(len(faces)))
    heights = [f["box"][3] for f in faces]
    assert heights == sorted(heights, reverse=True)
    assert all(0 <= f["box"][0] < r.json()["width"] and 0 <= f["box"][1] < r.json()["height"]
               for f in faces)
    [row] = [d for d in _audit(stack, "photo.faces", world.inv.name)
             if d["photo_sha256"] == r.json()["photo_sha256"]][-1:]
    assert row["case"] == CASE and row["faces"] == len(faces)
    assert "box" not in str(row), "the audit row holds no face geometry"
    # Another case, no case, and a role that may not search are refused.
    other = world.api("POST", "/photos/faces", data={"case": OTHER},
                      files={"photo": ("g.jpg", GROUP.read_bytes(), "image/jpeg")})
    assert other.status_code == 403 and OTHER in other.json()["detail"]
    none = world.api("POST", "/photos/faces",
                     files={"photo": ("g.jpg", GROUP.read_bytes(), "image/jpeg")})
    assert none.status_code == 422 and "case" in none.json()["detail"]
    clerk = make_account(world.url, world.op, ["clerk"], (CASE,))
    refused = world.api("POST", "/photos/faces", token=clerk.token, data={"case": CASE},
                        files={"photo": ("g.jpg", GROUP.read_bytes(), "image/jpeg")})
    assert refused.status_code == 403 and "investigator" in refused.json()["detail"]


def test_a_clerk_is_refused_the_search_page(page: Page, world: World) -> None:
    clerk = make_account(world.url, world.op, ["clerk"], (CASE,))
    sign_in(page, world.url, clerk)
    resp = page.goto(f"{world.url}/app/search?case={CASE}")
    assert resp is not None and resp.status == 403
    assert "investigator" in page.locator("#refusal").inner_text()
    assert page.locator("#search-form").count() == 0


def test_an_enrolment_awaiting_approval_says_so_on_the_enrol_and_case_pages(
        page: Page, world: World) -> None:
    """Under enrolment approval the page said "0 pending matches made", as if the face had been
    found nowhere, and the case page listed the entry like any other (bb33)."""
    name = f"Web-Awaiting-{secrets.token_hex(2)}"
    before = world.api("GET", "/policy").json()["profile"]
    assert world.api("PUT", "/policy", world.op, json={
        "profile": "identify-eu", "reason": "web test: approval first"}).status_code == 200
    try:
        _enrol_form(page, world, name, "web test: awaits approval")
        page.get_by_label("Photos of the face").set_input_files(str(P06))
        page.get_by_role("button", name="Enrol").click()
        page.locator("#enrol-lines li.ok").wait_for()
        text = page.locator("#enrol-lines").inner_text()
        assert "Awaiting a supervisor's approval" in text and "pending match" not in text, text
        [mine] = [s for s in world.api("GET", "/subjects", params={"case": CASE}).json()["items"]
                  if s["name"] == name]
        assert mine["approved"] is False
        page.goto(f"{world.url}/app/case?case={CASE}")
        row = page.locator("#case-subjects tr", has_text=name)
        row.wait_for()
        assert "(awaiting a supervisor's approval)" in row.inner_text()
        others = page.locator("#case-subjects tbody tr").filter(has_not_text=name)
        # the case's other entries (approved; the first test's, in this module) are not marked
        assert "awaiting" not in " ".join(others.all_inner_texts())
    finally:
        world.api("PUT", "/policy", world.op, json={"profile": before,
                                                    "reason": "web test: restore"})
        for s in world.api("GET", "/subjects", params={"case": CASE}).json()["items"]:
            if s["name"] == name:
                world.api("DELETE", f"/subjects/{s['subject_id']}")
