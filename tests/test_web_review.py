"""The review page in a real browser: the pending match beside the enrolment photo, the four-eyes
rule shown and enforced, a required note, the decision audited, the photo route's access rules."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.conftest import HAMILTON, TESTDATA, StackHandle
from tests.web import Account, make_account, shot, sign_in

P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"
V = "/api/v1"


@dataclass
class Queue:
    """A case where investigator A enrolled p06 and HAMILTON made pending p06 matches."""

    case: str
    enroller: Account
    second: Account
    outsider: Account
    clerk: Account
    subject_id: str
    matches: list[dict[str, Any]]


def _h(account: Account) -> dict[str, str]:
    return {"Authorization": f"Bearer {account.token}"}


@pytest.fixture(scope="module")
def queue(api_url: str, operator_token: str, processed: Any) -> Iterator[Queue]:
    case = f"web-review-{secrets.token_hex(3)}"
    enroller = make_account(api_url, operator_token, ["investigator"], (case,))
    second = make_account(api_url, operator_token, ["investigator"], (case,))
    outsider = make_account(api_url, operator_token, ["investigator"],
                            (f"other-{secrets.token_hex(3)}",))
    clerk = make_account(api_url, operator_token, ["clerk"], (case,))
    r = httpx.post(api_url + V + "/subjects", headers=_h(enroller), timeout=300,
                   data={"name": "Review <b>P06</b>", "case": case, "reason": "web review test"},
                   files=[("photo", ("p06.png", P06.read_bytes(), "image/png"))])
    assert r.status_code == 201, r.text
    sid = str(r.json()["subject_id"])
    processed(HAMILTON, case)
    r = httpx.get(api_url + V + "/matches", params={"case": case, "status": "pending"},
                  headers=_h(enroller), timeout=60)
    assert r.status_code == 200, r.text
    found = [m for m in r.json()["items"] if m["subject_id"] == sid]
    assert found, "HAMILTON makes a pending p06 match in the case"
    yield Queue(case, enroller, second, outsider, clerk, sid, found)


def _status(stack: StackHandle, match_id: str) -> str:
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT status FROM matches WHERE id::text = %s",
                           (match_id,)).fetchone()
    assert row is not None
    return str(row["status"])


def _audit(stack: StackHandle, actor: str, action: str) -> list[dict[str, Any]]:
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT details FROM audit_log WHERE actor = %s AND action = %s"
                            " ORDER BY id", (actor, action)).fetchall()
    return [dict(r["details"]) for r in rows]


def _item(page: Page, match_id: str) -> Any:
    return page.locator(f'article.review-item[data-match="{match_id}"]')


def test_the_enroller_sees_photo_crop_clip_and_the_four_eyes_rule_and_cannot_confirm_alone(
        page: Page, api_url: str, queue: Queue, stack: StackHandle) -> None:
    m = queue.matches[0]
    sign_in(page, api_url, queue.enroller)
    page.goto(f"{api_url}/app/review?case={queue.case}")
    item = _item(page, m["match_id"])
    expect(item).to_be_visible(timeout=30_000)
    # The subject's name is shown as text, never as markup.
    expect(item.get_by_role("heading")).to_contain_text("Review <b>P06</b>")
    for alt in ("Enrolment photo of Review <b>P06</b>", "Best face crop of the track"):
        img = item.get_by_alt_text(alt)
        expect(img).to_be_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                               arg=img.element_handle(), timeout=30_000)
    sim, thr = f"{m['similarity']:.2f}", f"{m['threshold']:.2f}"
    expect(item.locator(".similarity")).to_contain_text(f"{sim} ≥ threshold {thr}")
    missing = m["confirmations_missing"]
    assert missing == m["reviewers_required"] >= 1, m
    expect(item.locator(".foureyes")).to_have_text(
        "You enrolled this subject: your confirmation cannot be the only one; "
        f"{missing} more reviewer(s) other than you needed.")
    # The clip is the stored original, served by ranges, starting at the track's first second.
    video = item.locator("video")
    assert f"/videos/{m['video_id']}/original" in str(video.get_attribute("src"))
    page.wait_for_function("v => v.readyState >= 1", arg=video.element_handle(),
                           timeout=60_000)
    assert abs(video.evaluate("v => v.currentTime") - m["start_s"] - m["first_frame_s"]) < 0.5
    shot(page, "review-queue")

    note = item.get_by_label("Note (required): why you confirm or reject this match")
    alert = item.get_by_role("alert")
    # An empty (or blank) note is refused on the page, before anything is sent.
    with stack.ctx.db() as conn:
        before = conn.execute("SELECT count(*) AS n FROM reviews WHERE match_id::text = %s",
                              (m["match_id"],)).fetchone()["n"]
    note.fill("   ")
    item.get_by_role("button", name="Confirm match").click()
    expect(alert).to_have_text("Write a note first: every confirmation or rejection records why.")
    expect(note).to_be_focused()
    # The enroller's confirmation with a note: the server refuses it, and the page says why.
    note.fill("same scar over the left eye")
    item.get_by_role("button", name="Confirm match").click()
    expect(alert).to_contain_text("Refused by the server:")
    expect(alert).to_contain_text("so their confirmation does not count")
    with stack.ctx.db() as conn:
        after = conn.execute("SELECT count(*) AS n FROM reviews WHERE match_id::text = %s",
                             (m["match_id"],)).fetchone()["n"]
    assert after == before, "no review was recorded, from the page or the server"
    assert _status(stack, m["match_id"]) == "pending"
    refused = _audit(stack, queue.enroller.name, "refused")
    assert any(d.get("attempted") == "review" and "does not count" in str(d.get("reason"))
               for d in refused), refused


def test_a_second_investigator_confirms_with_a_note_and_the_match_leaves_the_queue_audited(
        page: Page, api_url: str, queue: Queue, stack: StackHandle) -> None:
    m = queue.matches[0]
    assert _status(stack, m["match_id"]) == "pending"
    sign_in(page, api_url, queue.second)
    page.goto(f"{api_url}/app/review?case={queue.case}")
    item = _item(page, m["match_id"])
    expect(item).to_be_visible(timeout=30_000)
    expect(item.locator(".foureyes")).to_contain_text(
        f"Enrolled by {queue.enroller.name}: the enroller cannot be the only confirmer.")
    # A reject without a note is refused too, before sending.
    item.get_by_role("button", name="Reject match").click()
    expect(item.get_by_role("alert")).to_contain_text("Write a note first")
    assert _status(stack, m["match_id"]) == "pending"
    # A note of punctuation alone is refused by the server, which names the note box, not the
    # CLI's flag (it said "missing --note" here).
    box = item.get_by_label("Note (required): why you confirm or reject this match")
    box.fill(". . .")
    item.get_by_role("button", name="Reject match").click()
    expect(item.get_by_role("alert")).to_have_text(
        "Refused by the server: missing note: record why you confirm or reject this match")
    assert _status(stack, m["match_id"]) == "pending"
    note = f"matches the custody photo <i>{secrets.token_hex(2)}</i>"
    box.fill(note)
    # By keyboard: from the note, the next stop is the Confirm button.
    box.press("Tab")
    expect(item.get_by_role("button", name="Confirm match")).to_be_focused()
    page.keyboard.press("Enter")
    expect(item).to_have_count(0, timeout=30_000)
    expect(page.locator("#flash")).to_contain_text("confirmed")
    assert _status(stack, m["match_id"]) == "confirmed"
    rows = _audit(stack, queue.second.name, "review")
    assert {"match_id": m["match_id"], "case": queue.case, "decision": "confirm",
            "note": note} in rows, rows
    # The API queue no longer lists it either.
    r = httpx.get(api_url + V + "/matches", params={"case": queue.case, "status": "pending"},
                  headers=_h(queue.second), timeout=60)
    assert m["match_id"] not in {x["match_id"] for x in r.json()["items"]}


def test_a_match_decided_by_another_reviewer_meanwhile_leaves_the_queue_with_the_reason(
        page: Page, api_url: str, queue: Queue, stack: StackHandle) -> None:
    """A review overtaken by another reviewer's stayed in the queue, refused at each try,
    until a reload (bb25)."""
    assert len(queue.matches) >= 2, "HAMILTON makes two pending p06 matches"
    m = queue.matches[-1]
    sign_in(page, api_url, queue.second)
    page.goto(f"{api_url}/app/review?case={queue.case}")
    item = _item(page, m["match_id"])
    expect(item).to_be_visible(timeout=30_000)
    r = httpx.post(f"{api_url}{V}/matches/{m['match_id']}/review", headers=_h(queue.enroller),
                   json={"decision": "reject", "note": "not him"}, timeout=60)
    assert r.status_code == 200, r.text
    item.get_by_label("Note (required): why you confirm or reject this match").fill("him")
    item.get_by_role("button", name="Confirm match").click()
    expect(item).to_have_count(0, timeout=30_000)
    expect(page.locator("#flash")).to_contain_text("already rejected")
    expect(page.locator("#flash")).to_contain_text("as it stands now")
    assert _status(stack, m["match_id"]) == "rejected"


def test_a_supervisor_reopens_the_confirmed_match_with_a_reason_and_it_is_pending_again(
        page: Page, api_url: str, queue: Queue, stack: StackHandle,
        operator_token: str) -> None:
    m = queue.matches[0]  # confirmed by the second investigator above
    assert _status(stack, m["match_id"]) == "confirmed"
    sign_in(page, api_url, queue.second)  # an investigator is offered no reopening
    page.goto(f"{api_url}/app/review?case={queue.case}")
    expect(page.locator("#summary")).not_to_contain_text("Loading", timeout=30_000)
    assert page.locator("#decided-sec").count() == 0
    sup = make_account(api_url, operator_token, ["supervisor"])
    page.context.clear_cookies()
    sign_in(page, api_url, sup)
    page.goto(f"{api_url}/app/review?case={queue.case}")
    card = page.locator(f'article.decided-item[data-match="{m["match_id"]}"]')
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".status")).to_have_text("confirmed")
    card.get_by_role("button", name="Reopen match").click()
    expect(card.get_by_role("alert")).to_contain_text("Write a reason first")
    assert _status(stack, m["match_id"]) == "confirmed"
    reason = "the clip shows another man at 3 s"
    card.get_by_label("Reason (required): why this decision is reviewed again").fill(reason)
    card.get_by_role("button", name="Reopen match").click()
    expect(page.locator("#flash")).to_contain_text("review round 1", timeout=30_000)
    expect(_item(page, m["match_id"])).to_be_visible()  # back in the queue
    expect(_item(page, m["match_id"]).locator(".earlier")).to_contain_text(
        f"Reopened by {sup.name} (review round 1): “{reason}”. Earlier reviews, no longer"
        f" counted: {queue.second.name} confirm (round 0).")
    expect(_item(page, m["match_id"]).locator(".foureyes")).to_contain_text(
        "You reopened this match: your confirmation cannot be the only one")
    expect(card).to_have_count(0)
    assert _status(stack, m["match_id"]) == "pending"
    # Each load asks for the decided matches once (it asked for confirmed, then rejected).
    listed = [r["status"] for r in _audit(stack, sup.name, "matches.list")]
    assert listed and set(listed) == {"pending", "decided"}, listed
    assert _audit(stack, sup.name, "match.reopen") == [
        {"match_id": m["match_id"], "case": queue.case, "was": "confirmed", "round": 1,
         "reason": reason}]
    shot(page, "review-reopen")


def test_a_removed_entrys_decision_is_shown_as_standing_with_no_reopening_offered(
        page: Page, api_url: str, queue: Queue, operator_token: str) -> None:
    # The page offered a reopening that the server refuses for a removed or lapsed entry.
    r = httpx.post(api_url + V + "/subjects", headers=_h(queue.enroller), timeout=300,
                   data={"name": "Removed P06", "case": queue.case, "reason": "web test"},
                   files=[("photo", ("p06.png", P06.read_bytes(), "image/png"))])
    assert r.status_code == 201, r.text
    sid = str(r.json()["subject_id"])
    r = httpx.get(api_url + V + "/matches", params={"case": queue.case, "status": "pending"},
                  headers=_h(queue.second), timeout=60)
    [mid, *_] = [m["match_id"] for m in r.json()["items"] if m["subject_id"] == sid]
    r = httpx.post(f"{api_url}{V}/matches/{mid}/review", headers=_h(queue.second), timeout=60,
                   json={"decision": "reject", "note": "another man"})
    assert r.status_code == 200 and r.json()["status"] == "rejected", r.text
    op = {"Authorization": f"Bearer {operator_token}"}
    assert httpx.delete(f"{api_url}{V}/subjects/{sid}", headers=op,
                        timeout=60).status_code == 200
    sup = make_account(api_url, operator_token, ["supervisor"])
    sign_in(page, api_url, sup)
    page.goto(f"{api_url}/app/review?case={queue.case}")
    card = page.locator(f'article.decided-item[data-match="{mid}"]')
    expect(card).to_contain_text("Its watchlist entry was removed: the decision stands",
                                 timeout=30_000)
    expect(card.get_by_role("button", name="Reopen match")).to_have_count(0)
    r = httpx.post(f"{api_url}{V}/matches/{mid}/reopen", headers=_h(sup), timeout=60,
                   json={"reason": "a second look"})
    assert r.status_code == 403 and "was removed" in r.json()["detail"], r.text


def test_the_enrolment_photo_is_not_cached_and_is_refused_outside_the_subjects_case(
        api_url: str, queue: Queue, stack: StackHandle) -> None:
    url = f"{api_url}{V}/subjects/{queue.subject_id}/photo"
    r = httpx.get(url, headers=_h(queue.second), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.headers["cache-control"] == "no-store"
    assert r.content[:3] == b"\xff\xd8\xff" and b"Exif" not in r.content[:64]
    assert any(d.get("subject_id") == queue.subject_id
               for d in _audit(stack, queue.second.name, "subject.photo")), "the view is audited"
    # An investigator of another case, a clerk of this case, nobody, an unknown id: refused.
    before = len(_audit(stack, queue.outsider.name, "refused"))
    out = httpx.get(url, headers=_h(queue.outsider), timeout=60)
    assert out.status_code == 404 and out.headers["content-type"].startswith(
        "application/problem+json") and b"\xff\xd8" not in out.content
    assert len(_audit(stack, queue.outsider.name, "refused")) == before + 1
    assert httpx.get(url, headers=_h(queue.clerk), timeout=60).status_code == 403
    assert httpx.get(url, timeout=60).status_code == 401
    for bogus in ("00000000-0000-0000-0000-000000000000", "x' OR '1'='1", "..%2F..%2Fetc"):
        r = httpx.get(f"{api_url}{V}/subjects/{bogus}/photo", headers=_h(queue.outsider),
                      timeout=60)
        assert r.status_code == 404, (bogus, r.status_code, r.text)


def test_a_clerk_opening_the_review_page_gets_the_403_page(
        page: Page, api_url: str, queue: Queue, stack: StackHandle) -> None:
    sign_in(page, api_url, queue.clerk)
    resp = page.goto(f"{api_url}/app/review")
    assert resp is not None and resp.status == 403
    expect(page.locator("#refusal")).to_contain_text("investigator or supervisor")
    assert page.locator("article.review-item").count() == 0
    assert any(d.get("attempted") == "review" for d in _audit(stack, queue.clerk.name, "refused"))
