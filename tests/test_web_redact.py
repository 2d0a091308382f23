"""The redaction screen in a real browser: the plan's tracks with thumbnails on a timeline, a
kept track and a manual box, the render's preview and report; other cases refused."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
from imageio_ffmpeg import get_ffmpeg_exe
from playwright.sync_api import Page, expect

from tests.web import make_account, shot, sign_in

V = "/api/v1"


def test_a_reviewer_keeps_a_track_adds_a_box_renders_and_sees_the_preview_and_report(
        page: Page, api_url: str, operator_token: str, processed: Any,
        make_clip: Any, tmp_path: Path) -> None:
    case = f"web-redact-{secrets.token_hex(3)}"
    inv = make_account(api_url, operator_token, ["investigator"], (case,))
    outsider = make_account(api_url, operator_token, ["investigator"],
                            (f"other-{secrets.token_hex(3)}",))
    made, _truth = make_clip("--seed", "11", "--duration", "4", "--size", "960x540",
                             "--min-scene", "1.5", "--max-scene", "3", "--boxes")
    # The picture starts a second after the sound: the player's clock is a second ahead of
    # the plan's times, which count from the first frame.
    path = tmp_path / "late-picture.mp4"
    subprocess.run([get_ffmpeg_exe(), "-v", "error", "-itsoffset", "1", "-i", str(made), "-f",
                    "lavfi", "-i", "sine=frequency=440:duration=5", "-map", "0:v", "-map", "1:a",
                    "-c:v", "copy", "-c:a", "aac", str(path)], check=True, timeout=120)
    vid = str(processed(path, case))
    r = httpx.get(f"{api_url}{V}/videos/{vid}/redaction-plan", timeout=600,
                  headers={"Authorization": f"Bearer {outsider.token}"})
    assert r.status_code == 404, "another case's investigator sees no plan, nor that it exists"
    sign_in(page, api_url, inv)
    page.goto(f"{api_url}/app/redact?video={vid}")
    rows = page.locator("#tracks .track-row")
    expect(rows.first).to_be_visible(timeout=600_000)
    n = rows.count()
    assert n >= 2, n
    expect(page.locator("#tracks img").first).to_have_attribute(
        "alt", re.compile(r"^Face of track P\d+$"))
    assert page.locator("#summary").inner_text().startswith("Plan version")
    plan = httpx.get(f"{api_url}{V}/videos/{vid}/redaction-plan", timeout=60,
                     headers={"Authorization": f"Bearer {inv.token}"}).json()
    assert abs(plan["first_frame_s"] - 1.0) < 0.05, plan["first_frame_s"]
    # A track played from the list starts at its first frame in the file; a box's time taken
    # from the player is in the plan's times (it was typed from the player's clock, a second
    # late).
    first = plan["tracks"][0]
    rows.first.get_by_role("button", name=f"Play {first['id']}").click()
    page.wait_for_function(
        "t => { const v = document.getElementById('player');"
        " return v.readyState >= 1 && !v.seeking && Math.abs(v.currentTime - t) < 0.1; }",
        arg=first["start_s"] + plan["first_frame_s"], timeout=60_000)
    page.get_by_role("button", name="From the player's time").click()
    at = float(page.locator("#r-start").input_value())
    player_s = page.evaluate("document.getElementById('player').currentTime")
    assert abs(at - (player_s - plan["first_frame_s"])) < 0.02 and abs(at - first["start_s"]) < 0.1
    expect(page.locator("#clock")).to_contain_text(f"Video time {at:.2f} s")

    def add_box(x1: str, y1: str, x2: str, y2: str) -> None:
        for field, value in (("r-x1", x1), ("r-y1", y1), ("r-x2", x2), ("r-y2", y2),
                             ("r-start", "0"), ("r-end", "1.5"),
                             ("r-reason", "a licence plate")):
            page.locator(f"#{field}").fill(value)
        page.get_by_role("button", name="Add box").click()

    # A box the server would refuse is refused before it is listed (one was listed, could
    # not be taken out, and failed every render); a listed box can be taken out; loading a
    # plan starts with no box (one drawn for one video was rendered into the next video's
    # release: bb25).
    add_box("300", "200", "100", "50")
    expect(page.locator("#flash")).to_have_class("error")
    expect(page.locator("#regions li")).to_have_count(0)
    add_box("10", "10", "200", "120")
    expect(page.locator("#regions li")).to_have_count(1)
    page.get_by_role("button", name="Remove the box 10,10,200,120").click()
    expect(page.locator("#regions li")).to_have_count(0)
    add_box("10", "10", "200", "120")
    expect(page.locator("#regions li")).to_have_count(1)
    page.locator("#video").fill(vid)
    page.get_by_role("button", name="Load plan").click()
    expect(page.locator("#regions li")).to_have_count(0)
    expect(rows.first).to_be_visible(timeout=600_000)
    keep = rows.nth(1).get_attribute("data-track")
    rows.nth(1).get_by_role("checkbox").check()
    # A kept face is shown for the reason stated: none is filled in (bb42).
    expect(page.locator("#keep-reason")).to_have_value("")
    page.get_by_role("button", name="Render redacted video").click()
    expect(page.locator("#flash")).to_contain_text("missing", timeout=60_000)
    page.locator("#keep-reason").fill("the requester, shown at their request")
    page.locator("#keep-basis").select_option("requester shown")
    add_box("10", "10", "200", "120")
    expect(page.locator("#regions li")).to_have_count(1)
    page.get_by_role("button", name="Render redacted video").click()
    expect(page.locator("#result")).to_be_visible(timeout=600_000)
    page.wait_for_function("() => document.getElementById('sheet').naturalWidth > 0")
    shot(page, "redact")
    href = page.locator("#report-json").get_attribute("href")
    assert href is not None and href.endswith("/report")
    report = httpx.get(api_url + href, timeout=60,
                       headers={"Authorization": f"Bearer {inv.token}"}).json()
    assert [k["track"] for k in report["kept_tracks"]] == [keep]
    assert report["kept_tracks"][0]["decided_by"] == inv.name
    assert (report["kept_tracks"][0]["reason"], report["kept_tracks"][0]["legal_basis"]) == (
        "the requester, shown at their request", "requester shown")
    manual = [x for x in report["redacted_regions"] if x["kind"] == "manual"]
    assert manual and manual[0]["reason"] == "a licence plate"
    # Breaking it: the outsider's session cannot fetch this derivative.
    r = httpx.get(api_url + href, timeout=60,
                  headers={"Authorization": f"Bearer {outsider.token}"})
    assert r.status_code == 404
