"""Routes: upload, jobs, job progress (SSE), retry, tracks, originals and thumbnails."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from bodycam import auth
from bodycam.accounts import User
from bodycam.actions import evidence
from bodycam.api.deps import (
    PageDep,
    SessionDep,
    UserDep,
    attachment,
    context,
    page_of,
    paginate,
    parse_range,
    ranged,
)
from bodycam.api.problems import PROBLEM_RESPONSES, ProblemError
from bodycam.api.schemas import IngestOut, JobOut, PageOf, RetryOut
from bodycam.api.uploads import Tee, spool
from bodycam.auth import UnauthenticatedError
from bodycam.errors import BodycamError
from bodycam.evidence import TrackRow

router = APIRouter(prefix="/api/v1", tags=["videos"], responses=PROBLEM_RESPONSES)
# Progress streams one account may hold open in this server process at once. Each open
# stream polls the database through the server's worker threads: 1,500 streams of one
# account slowed every other user's requests (/healthz included) to 5-7 s.
MAX_STREAMS_PER_ACCOUNT = 8
_streams: dict[str, int] = {}
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


@router.post("/videos", status_code=201, response_model=IngestOut,
             summary="Upload a video (streamed) and queue it for processing",
             responses={200: {"model": IngestOut, "description": "the same bytes are already in "
                              "this case: the existing video, `duplicate: true`"},
                        413: {"description": "over limits.max_bytes"}},
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string",
                                                         "format": "binary"}}}}})
async def upload(request: Request, user: UserDep, s: SessionDep,
                 case: Annotated[str | None, Query(description="case number (required)")] = None,
                 officer: Annotated[str | None, Query()] = None,
                 device: Annotated[str | None, Query()] = None,
                 recorded_at: Annotated[str | None, Query(description="ISO 8601")] = None,
                 filename: Annotated[str | None, Query(max_length=1000)] = None,
                 x_content_sha256: Annotated[str | None, Header(
                     description="SHA-256 of the body; a mismatch stores nothing")] = None,
                 ) -> Response:
    """The body is the raw file. It is streamed to a private file while hashed (memory stays
    flat for multi-GB files), checked against `X-Content-SHA256` when sent, then probed and
    stored with its chain of custody. Bad media: 422 and nothing stored."""
    ctx = context()
    name = filename or "upload"
    await run_in_threadpool(evidence.authorize_ingest, ctx, user)
    custody = evidence.custody_for(user, case, officer, device, recorded_at)
    limit = ctx.settings.limits.max_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, f"upload is larger than limits.max_bytes ({limit} bytes):"
                                " nothing was stored")
    if x_content_sha256 is not None and not _SHA256.match(x_content_sha256.strip()):
        raise ProblemError(422, "X-Content-SHA256 must be 64 hex digits")
    # With the SHA-256 declared up front, the body goes to the store while it arrives; the
    # upload is completed only once the body hashed to it and passed the probe.
    sent = (await run_in_threadpool(evidence.begin_upload, ctx,
                                    x_content_sha256.strip().lower())
            if x_content_sha256 is not None else None)
    tee = Tee(sent) if sent is not None else None
    try:
        try:
            spooled = await spool(request.stream(), ctx.settings, limit, x_content_sha256, tee)
        except ProblemError as exc:
            await run_in_threadpool(evidence.reject, ctx, user, name, custody.case_id,
                                    exc.detail)
            raise
        try:
            # The body may take minutes: the account and token are checked again as they
            # stand now (an upload finished and was ingested 8 s after its account was
            # disabled and its token revoked).
            try:
                user = await run_in_threadpool(_account_now, s)
            except UnauthenticatedError as exc:
                await run_in_threadpool(evidence.reject, ctx, user, name, custody.case_id,
                                        str(exc))
                raise
            result = await run_in_threadpool(
                evidence.ingest_upload, ctx, user, spooled.path, name, custody, spooled.sha256,
                tee.upload if tee is not None else None)
        finally:
            spooled.release()
    finally:
        if tee is not None and tee.upload is not None:
            await run_in_threadpool(tee.upload.abort)  # a no-op once completed
    return JSONResponse(result.as_json(), status_code=200 if result.duplicate else 201)


def _account_now(s: auth.Session) -> User:
    with context().db() as conn:
        return auth.still_valid(conn, s)


@router.get("/jobs", response_model=PageOf[JobOut], summary="Jobs of the cases the caller sees")
async def jobs(user: UserDep, p: PageDep,
               status: Annotated[str | None, Query()] = None,
               video_id: Annotated[str | None, Query()] = None) -> dict[str, object]:
    """Paginated `jobs --json` items, newest first."""
    rows = await run_in_threadpool(evidence.list_jobs, context(), user, status, video_id)
    return paginate([r.as_json() for r in rows], p)


@router.get("/videos/{video_id}", response_model=JobOut, summary="A video's job row")
async def video(video_id: str, user: UserDep) -> dict[str, object]:
    """Status, stage, progress, attempts and error of one video."""
    return (await run_in_threadpool(evidence.get_video, context(), user, video_id)).as_json()


@router.get("/videos/{video_id}/events", summary="Job progress as server-sent events",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "`event: progress` with the job row as data on "
                                            "every change, until a terminal status"}})
async def events(video_id: str, s: SessionDep, request: Request) -> StreamingResponse:
    """Polls the jobs table; sends the row whenever it changes; ends after `done`, `failed`
    or `quarantined`. Every poll checks the caller again (see _recheck): the stream ends with
    `event: error` once a new request would be refused."""
    ctx = context()
    first = await run_in_threadpool(evidence.get_video, ctx, s.user, video_id)
    name = s.user.name
    if _streams.get(name, 0) >= MAX_STREAMS_PER_ACCOUNT:
        raise ProblemError(429, f"{name} already has {MAX_STREAMS_PER_ACCOUNT} progress "
                                "streams open: close one, or poll GET /videos/{id}",
                           {"Retry-After": "1"})

    async def stream() -> AsyncIterator[str]:
        # Counted while it runs (one event loop: no lock needed); a stream whose response
        # never started is never counted.
        _streams[name] = _streams.get(name, 0) + 1
        try:
            row, last = first, ""
            while True:
                data = json.dumps(row.as_json())
                if data != last:
                    yield f"event: progress\ndata: {data}\n\n"
                    last = data
                if row.status in evidence.TERMINAL or await request.is_disconnected():
                    return
                await asyncio.sleep(ctx.settings.server.sse_poll_s)
                try:
                    row = await run_in_threadpool(_recheck, s, video_id)
                except BodycamError as exc:
                    yield f"event: error\ndata: {json.dumps({'detail': str(exc)})}\n\n"
                    return
        finally:
            _streams[name] -= 1
            if not _streams[name]:
                del _streams[name]

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def _recheck(s: auth.Session, video_id: str) -> evidence.jobs.JobRow:
    """The video's job row for the stream's caller as they stand now. A stream outlives the
    check of its request, so each poll reads the token and account again (revoked, expired or
    disabled: refused) and checks the role and case again (a refusal is audited)."""
    ctx = context()
    with ctx.db() as conn:
        user = auth.still_valid(conn, s)
    return evidence.get_video(ctx, user, video_id)


@router.post("/videos/{video_id}/retry", response_model=RetryOut,
             summary="Queue a failed or quarantined video again")
async def retry(video_id: str, user: UserDep) -> dict[str, object]:
    """Its unfinished units are queued again; audited."""
    return await run_in_threadpool(evidence.retry, context(), user, video_id)


@router.get("/videos/{video_id}/tracks", response_model=PageOf[TrackRow],
            summary="A video's face tracks")
async def tracks(video_id: str, user: UserDep, p: PageDep) -> dict[str, object]:
    """Paginated `tracks --json` items in time order."""
    rows, total = await run_in_threadpool(evidence.tracks, context(), user, video_id,
                                          p.offset, p.limit)
    return page_of([r.as_json() for r in rows], total, p)


@router.get("/videos/{video_id}/original", summary="The stored original (HTTP ranges)",
            response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}},
                       206: {"description": "the range asked for"},
                       416: {"description": "range not satisfiable"}})
async def original(video_id: str, user: UserDep,
                   range_: Annotated[str | None, Header(alias="range")] = None
                   ) -> StreamingResponse:
    """The evidence file as ingested, after the case check; each access is audited."""
    ctx = context()
    found = await run_in_threadpool(evidence.original, ctx, user, video_id, range_,
                                    lambda size: parse_range(range_, size))
    return ranged(found.body, found.size_bytes, found.span, "application/octet-stream",
                  {"Cache-Control": "no-store", "ETag": f'"{found.sha256}"',
                   "Content-Disposition": attachment(found.filename, "original")})


@router.get("/tracks/{track_id}/thumbnail", summary="A track's thumbnail (JPEG)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def thumbnail(track_id: str, user: UserDep) -> Response:
    """The face crop of a track, never cached (`Cache-Control: no-store`)."""
    data = await run_in_threadpool(evidence.thumbnail, context(), user, track_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
