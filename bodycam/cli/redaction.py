"""`bodycam redact`: a redacted derivative for release, rendered by a worker from the video's
plan and recorded by the server."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from bodycam.cli.base import JsonFlag, app, client_call, emit_json, err, fail


def _finite(text: str) -> float:
    """A number as typed; ValueError for one that is not finite (nan, inf: JSON cannot carry
    them, and the request failed with a traceback)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _region(text: str, reason: str | None, basis: str | None) -> dict[str, Any]:
    """`X1,Y1,X2,Y2@START-END` (pixels, seconds) as the API's region."""
    try:
        box_s, span = text.split("@", 1)
        box = [_finite(v) for v in box_s.split(",")]
        start, end = (_finite(v) for v in span.split("-", 1))
    except ValueError:
        fail(f"--region {text!r}: give X1,Y1,X2,Y2@START-END (pixels, seconds, finite)")
    if len(box) != 4:
        fail(f"--region {text!r}: the box needs four numbers X1,Y1,X2,Y2")
    if not reason or not basis:
        fail("--region needs --region-reason and --region-basis (a configured legal basis)")
    return {"box_px": box, "start_s": start, "end_s": end, "reason": reason,
            "legal_basis": basis}


def _span(text: str) -> list[float]:
    try:
        a, b = (_finite(v) for v in text.split("-", 1))
    except ValueError:
        fail(f"--mute {text!r}: give START-END in seconds (finite)")
    return [a, b]


QUEUED_NOTICE_S = 30.0  # a job queued this long with no worker taking it is said to be
STALL_NOTICE_S = 60.0  # a running job whose progress has not moved this long is said to be


def wait_for_job(c: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Follow a redaction job (a worker computes it, the server records it) until it ends;
    the done job, or InvalidInputError naming why it failed or was refused. While it waits
    for another try, what held the last one up is said once; a job no worker has taken for
    QUEUED_NOTICE_S is said to be so, once (with the object store down, or every worker of
    the GPU queue down, the command waited without a word: bb22, bb24). A server that
    stops answering meanwhile is waited out (client.Outage)."""
    from bodycam.client import Outage
    from bodycam.errors import InvalidInputError

    delay = 0.25
    outage = Outage(lambda text: err.print(text, markup=False, highlight=False))
    said = None
    queued_since = moved_at = time.monotonic()
    moved: tuple[Any, ...] = ()
    stall_said = False
    while job["state"] in ("queued", "running", "computed"):
        now = time.monotonic()
        if (where := (job["state"], job["progress"], job["attempts"])) != moved:
            moved, moved_at, stall_said = where, now, False
        if job["state"] != "queued":
            queued_since = now
        if job.get("error") and job["error"] != said:
            # A running job's error is its last attempt's (a running one was not said: bb45)
            said = job["error"]
            err.print(f"redaction job {job['job_id']}: " + (
                f"waiting for another try (attempt {job['attempts']} so far)"
                if job["state"] == "queued" else
                f"attempt {job['attempts']} {job['state']}; the one before failed")
                + f": {said}", markup=False, highlight=False)
        elif said is None and now - queued_since > QUEUED_NOTICE_S:
            said = ""
            err.print(f"redaction job {job['job_id']}: no worker has taken it for "
                      f"{QUEUED_NOTICE_S:.0f} s; still waiting (`bodycam status` says whether "
                      "the GPU-queue workers, the broker and the object store are up)")
        if job["state"] == "running" and not stall_said and now - moved_at > STALL_NOTICE_S:
            stall_said = True
            err.print(f"redaction job {job['job_id']}: no progress for {STALL_NOTICE_S:.0f} s"
                      f" at {100 * float(job['progress']):.0f} % (attempt {job['attempts']}); "
                      "still waiting (a paused object store or database holds its worker; a"
                      " stopped worker's lease runs out and another takes the job over: "
                      "`bodycam status`)")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)
        job = outage.poll(c, f"/api/v1/redaction-jobs/{quote(str(job['job_id']), safe='')}"
                          ) or job
    if job["state"] != "done":
        raise InvalidInputError(f"redaction job {job['job_id']} ({job['kind']}) "
                                f"{job['state']}: {job['error']}")
    return dict(job)


def redact_to(c: Any, video_id: str, body: dict[str, Any], dest: Path
              ) -> tuple[dict[str, Any], dict[str, Path]]:
    """Ask the server for a derivative, download it to dest (kept only when its SHA-256 is
    the one the server recorded) and its report beside it; (the server's answer with the
    report as downloaded, files)."""
    from bodycam.client import sha256_of
    from bodycam.errors import InvalidInputError

    stem = dest.with_suffix("")
    files = {"report": Path(f"{stem}.report.json"), "pdf": Path(f"{stem}.report.pdf"),
             "sheet": Path(f"{stem}.contact.jpg")}
    vid = quote(video_id, safe="")
    plan = c.get(f"/api/v1/videos/{vid}/redaction-plan")
    if "job_id" in plan:  # computed by a worker on first use
        wait_for_job(c, plan)
    made = wait_for_job(c, c.post(f"/api/v1/videos/{vid}/redactions", body))
    did = quote(str(made["derivative_id"]), safe="")
    part = dest.with_name(dest.name + ".part")
    try:
        c.download(f"/api/v1/redactions/{did}/video", part)
        with open(part, "rb") as f:
            digest, _size = sha256_of(f)
        if digest != made["sha256"]:
            raise InvalidInputError(f"the downloaded derivative has SHA-256 {digest}, the "
                                    f"server recorded {made['sha256']}: not kept")
        part.replace(dest)
        for name, path in files.items():
            c.download(f"/api/v1/redactions/{did}/{name}", path)
    except OSError as exc:
        raise InvalidInputError(f"{dest}: cannot write ({exc.strerror or exc})") from None
    finally:
        part.unlink(missing_ok=True)
    # The report as downloaded (its reading audited): the job names only the derivative.
    return {**made, "report": json.loads(files["report"].read_text())}, files


@app.command()
def redact(
    video_id: str,
    output: Annotated[str, typer.Option("-o", "--output", help="the redacted MP4 to write")],
    keep_track: Annotated[list[str] | None, typer.Option(
        "--keep-track", help="a track left visible (plan id P3 or a `tracks` id)")] = None,
    keep_subject: Annotated[list[str] | None, typer.Option(
        "--keep-subject", help="a subject left visible (their confirmed matches)")] = None,
    remove_track: Annotated[list[str] | None, typer.Option(
        "--remove-track", help="a false positive: not hidden")] = None,
    keep_reason: Annotated[str | None, typer.Option(
        help="why the kept faces are shown (needed with --keep-track or --keep-subject; "
             "recorded as given)")] = None,
    keep_basis: Annotated[str | None, typer.Option(
        help="legal basis for showing them, one of BODYCAM_REDACTION__LEGAL_BASES (needed "
             "with --keep-track or --keep-subject)")] = None,
    remove_reason: Annotated[str | None, typer.Option(
        help="why the removed are no faces (default: \"not a face\"); a track with a "
             "confirmed or pending match cannot be removed")] = None,
    region: Annotated[list[str] | None, typer.Option(
        "--region", help="hide X1,Y1,X2,Y2@START-END (pixels, seconds)")] = None,
    region_reason: Annotated[str | None, typer.Option(
        help="why the regions are hidden (needed with --region)")] = None,
    region_basis: Annotated[str | None, typer.Option(
        help="legal basis for the regions (needed with --region)")] = None,
    style: Annotated[str, typer.Option(help="blur, pixelate or box")] = "blur",
    audio: Annotated[str, typer.Option(help="keep, strip or mute-ranges")] = "keep",
    mute: Annotated[list[str] | None, typer.Option(
        "--mute", help="with --audio mute-ranges: START-END seconds")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Hide every face except those kept; write the MP4 and its report (JSON, PDF, contact
    sheet) beside it. The original is never changed."""
    dest = Path(output)
    if dest.exists() and dest.is_dir():
        fail(f"{output}: is a directory; give the MP4 file to write")
    if (keep_track or keep_subject) and not (keep_reason and keep_basis):
        fail("--keep-track and --keep-subject need --keep-reason and --keep-basis (a configured"
             " legal basis): a face shown in a release is shown for the reason you state")
    body = {
        "keep_tracks": [{"id": t, "reason": keep_reason, "legal_basis": keep_basis}
                        for t in keep_track or []],
        "keep_subjects": [{"id": s, "reason": keep_reason, "legal_basis": keep_basis}
                          for s in keep_subject or []],
        "remove_tracks": [{"id": t, "reason": remove_reason} for t in remove_track or []],
        "regions": [_region(r, region_reason, region_basis) for r in region or []],
        "style": style, "audio": audio, "mute_ranges": [_span(m) for m in mute or []],
    }
    made, files = client_call(lambda c: redact_to(c, video_id, body, dest))
    report = made["report"]
    summary = {"json": str(files["report"]), "pdf": str(files["pdf"]),
               "contact_sheet": str(files["sheet"]),
               "redacted_regions": len(report["redacted_regions"]),
               "kept_tracks": list(dict.fromkeys(k["track"] for k in report["kept_tracks"])),
               # stretches of kept tracks another face took over: hidden
               "taken_over": [r["track"] for r in report["redacted_regions"]
                              if "taken_over" in r],
               "low_confidence_frames": len(report["low_confidence_frames"]),
               "plan_version": report["plan_version"]}
    if as_json:
        emit_json({"derivative_id": made["derivative_id"], "sha256": made["sha256"],
                   "original_sha256": made["original_sha256"], "report": summary})
        return
    err.print(f"{dest}: derivative {made['derivative_id']} sha256 {made['sha256'][:16]}… "
              f"({summary['redacted_regions']} regions hidden, kept "
              f"{', '.join(summary['kept_tracks']) or 'none'}"
              + (f"; hidden where another face took a track over: "
                 f"{', '.join(summary['taken_over'])}" if summary["taken_over"] else "")
              + f"); report {files['report']}, "
              f"{files['pdf']}, {files['sheet']}")
