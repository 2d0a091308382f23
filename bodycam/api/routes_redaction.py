"""Routes: redacted derivatives for release (render from the plan, record, download, verify)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import Field

from bodycam.actions import redaction
from bodycam.api.deps import UserDep, attachment, chunks, context, parse_range, ranged
from bodycam.api.problems import PROBLEM_RESPONSES
from bodycam.api.schemas import Body, Out
from bodycam.errors import NotFoundError

router = APIRouter(prefix="/api/v1", tags=["redaction"], responses=PROBLEM_RESPONSES)


class ChoiceIn(Body):
    """A kept or removed track (plan id `P3` or a `tracks` id), or a kept subject, with why;
    reason and legal basis default to the server's (`keep`: public interest, `remove`: false
    positive)."""

    id: str = Field(min_length=1, max_length=100)
    reason: str | None = Field(None, max_length=500)
    legal_basis: str | None = Field(None, max_length=200)


class RegionBody(Body):
    """A box (x1, y1, x2, y2 in the original's display pixels) hidden from start_s to end_s."""

    box_px: tuple[float, float, float, float]
    start_s: float = Field(ge=0)
    end_s: float = Field(ge=0)
    reason: str = Field(min_length=1, max_length=500)
    legal_basis: str = Field(min_length=1, max_length=200)


class RedactIn(Body):
    """Every face is hidden except the tracks and subjects kept; manual regions are added
    and false positives removed, each with a reason and a legal basis from the configured
    list (`redaction.legal_bases`)."""

    keep_tracks: list[ChoiceIn] = Field(default_factory=list, max_length=1000)
    keep_subjects: list[ChoiceIn] = Field(default_factory=list, max_length=100)
    remove_tracks: list[ChoiceIn] = Field(default_factory=list, max_length=1000)
    regions: list[RegionBody] = Field(default_factory=list, max_length=1000)
    style: str = Field("blur", description="blur (default), pixelate or box")
    audio: str = Field("keep", description="keep, strip or mute-ranges")
    mute_ranges: list[tuple[float, float]] = Field(default_factory=list, max_length=1000)


class DerivativeOut(Out):
    """A derivative's custody record."""

    derivative_id: str
    video_id: str
    case: str
    plan_version: int
    sha256: str
    original_sha256: str
    reviewer: str


class VerifyOut(Out):
    """Whether the stored derivative and its lineage check out, per check."""

    derivative_id: str
    ok: bool
    checks: dict[str, bool]


def _request(body: RedactIn) -> redaction.RedactRequest:
    def choices(items: list[ChoiceIn]) -> tuple[redaction.Choice, ...]:
        return tuple(redaction.Choice(c.id, c.reason, c.legal_basis) for c in items)

    return redaction.RedactRequest(
        keep_tracks=choices(body.keep_tracks), keep_subjects=choices(body.keep_subjects),
        remove_tracks=choices(body.remove_tracks),
        regions=tuple(redaction.RegionIn(r.box_px, r.start_s, r.end_s, r.reason, r.legal_basis)
                      for r in body.regions),
        style=body.style, audio=body.audio, mute_ranges=tuple(body.mute_ranges))


class PlanOut(Out):
    """A video's redaction plan for review: its tracks, low-confidence frames and the legal
    bases to choose from."""

    video_id: str
    version: int
    n_frames: int
    duration_s: float
    first_frame_s: float  # the first frame's time in the file: a player's clock minus it
    tracks: list[dict[str, Any]]
    legal_bases: list[str]


class JobOut(Out):
    """A redaction job: a plan or a render, computed by a worker and recorded by the server.
    `state`: queued, running, computed (recorded at the next look), done, failed (`error`
    says why) or refused (the account may no longer redact in the case). A done render
    names its derivative and both SHA-256s; its report is read (audited) from
    `GET /redactions/{id}/report`."""

    job_id: str
    video_id: str
    kind: str
    state: str
    progress: float
    attempts: int
    error: str | None
    requested_by: str
    created_at: str
    updated_at: str
    derivative_id: str | None
    sha256: str | None
    original_sha256: str | None


@router.get("/videos/{video_id}/redaction-plan", response_model=PlanOut,
            responses={202: {"model": JobOut, "description": "The plan is being computed"}},
            summary="A video's redaction plan (computed by a worker on first use)")
async def plan(video_id: str, user: UserDep) -> Any:
    """Every face track the plan found (plan id, frames, times, the `tracks` ids it overlaps),
    for choosing what to keep. The first request queues its computation on a worker and is
    answered 202 with the job (follow it at `/redaction-jobs/{job_id}`, then ask again)."""
    found = await run_in_threadpool(redaction.plan_summary, context(), user, video_id)
    if "pending" in found:
        return JSONResponse(found["pending"], status_code=202)
    return found


@router.post("/videos/{video_id}/redactions", status_code=202, response_model=JobOut,
             summary="Ask for a redacted derivative of a processed video")
async def create(video_id: str, body: RedactIn, user: UserDep) -> dict[str, Any]:
    """Checked against the video's plan now (409 while the plan is still being computed) and
    rendered by a worker: the answer is the job (`/redaction-jobs/{job_id}`). The
    derivative, its report, PDF and contact sheet are stored under their own keys and
    recorded with the reviewer, the settings, the plan version and both SHA-256s in a sealed
    audit row when the job is done."""
    return await run_in_threadpool(redaction.redact, context(), user, video_id, _request(body))


@router.get("/redaction-jobs/{job_id}", response_model=JobOut,
            summary="A redaction job's state (a done render names its derivative)")
async def job(job_id: str, user: UserDep) -> dict[str, Any]:
    """Case checked like the video's own."""
    return await run_in_threadpool(redaction.job, context(), user, job_id)


@router.get("/redactions/{derivative_id}", response_model=DerivativeOut,
            summary="A redacted derivative's custody record")
async def record(derivative_id: str, user: UserDep) -> dict[str, Any]:
    """Case checked like the video's own."""
    d = await run_in_threadpool(redaction.derivative, context(), user, derivative_id)
    return d.as_json()


@router.post("/redactions/{derivative_id}/verify", response_model=VerifyOut,
             summary="Re-hash a derivative and check its lineage")
async def verify(derivative_id: str, user: UserDep) -> dict[str, Any]:
    """The stored bytes against the recorded SHA-256; the sealed audit row, the original and
    the plan version against the record."""
    return await run_in_threadpool(redaction.verify, context(), user, derivative_id)


MEDIA = {"video": "video/mp4", "report": "application/json", "pdf": "application/pdf",
         "sheet": "image/jpeg"}
NAMES = {"video": "redacted.mp4", "report": "report.json", "pdf": "report.pdf",
         "sheet": "contact-sheet.jpg"}


@router.get("/redactions/{derivative_id}/{part}", summary="Download a derivative or its report",
            response_class=StreamingResponse,
            responses={200: {"content": {m: {} for m in MEDIA.values()}},
                       206: {"description": "the range of the video asked for"},
                       416: {"description": "range not satisfiable"}})
async def download(derivative_id: str, user: UserDep,
                   part: Annotated[str, Path(description="video, report, pdf or sheet")],
                   range_: Annotated[str | None, Header(alias="range")] = None,
                   ) -> Response:
    """The redacted MP4 (`video`, HTTP range requests supported), the report as JSON
    (`report`), PDF (`pdf`) or the contact sheet (`sheet`); case checked and each download
    audited."""
    if part not in NAMES:  # no such resource (was a 422 quoting a regex: bb33)
        raise NotFoundError(f"no part {part!r} of a redaction: video, report, pdf or sheet")
    ctx = context()
    got = await run_in_threadpool(redaction.download, ctx, user, derivative_id, part, range_,
                                  lambda size: parse_range(range_, size))
    d = got.derivative
    headers = {"Cache-Control": "no-store",
               "Content-Disposition": attachment(f"{d.derivative_id}-{NAMES[part]}", part)}
    if part == "video":
        return ranged(got.body, d.size_bytes, got.span, MEDIA[part],
                      {**headers, "ETag": json.dumps(d.sha256)})
    return StreamingResponse(chunks(got.body), media_type=MEDIA[part], headers=headers)
