"""Routes: subjects (enrol, list, remove, approve), search, photo faces, review and reopen,
persons."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from bodycam.actions import watchlist
from bodycam.api.deps import PageDep, UserDep, context, page_of, paginate
from bodycam.api.problems import PROBLEM_RESPONSES, ProblemError
from bodycam.api.schemas import (
    CASE,
    TEXT_MAX,
    ApprovedOut,
    CaseVideoOut,
    EnrolOut,
    MatchOut,
    PageOf,
    PersonOut,
    PhotoFacesOut,
    RemovedOut,
    ReopenIn,
    ReopenOut,
    ReviewIn,
    ReviewOut,
    SearchOut,
    SubjectOut,
)
from bodycam.api.uploads import upload_dir
from bodycam.media.files import safe_name

router = APIRouter(prefix="/api/v1", tags=["watchlist"], responses=PROBLEM_RESPONSES)
MAX_PHOTO_BYTES = 50 * 1024 * 1024
MAX_PHOTOS = 20


def _save_photos(photos: list[UploadFile]) -> tuple[Path, list[str]]:
    """Write uploaded photos into a new private folder (0700, files 0600), each in a folder
    of its own under its own (escaped) name, so messages name the client's file even when
    two share a name; returns the folder and paths."""
    if len(photos) > MAX_PHOTOS:
        raise ProblemError(422, f"at most {MAX_PHOTOS} photos per request")
    folder = Path(tempfile.mkdtemp(prefix="photos-", dir=upload_dir(context().settings)))
    paths: list[str] = []
    try:
        for i, photo in enumerate(photos):
            base = safe_name(Path(photo.filename or f"photo{i}").name).replace("/", "_")
            name = base if base not in (".", "..", "") else f"photo{i}"
            (folder / str(i)).mkdir(mode=0o700)
            target = folder / str(i) / name
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            size = 0
            with os.fdopen(fd, "wb") as out:
                while chunk := photo.file.read(1 << 20):
                    size += len(chunk)
                    if size > MAX_PHOTO_BYTES:
                        raise ProblemError(413, f"{name}: a photo may be at most "
                                                f"{MAX_PHOTO_BYTES} bytes")
                    out.write(chunk)
            paths.append(str(target))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder, paths


@contextmanager
def _photos(photos: list[UploadFile]) -> Iterator[list[str]]:
    folder, paths = _save_photos(photos)
    try:
        yield paths
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@router.post("/subjects", status_code=201, response_model=EnrolOut,
             summary="Enrol a subject in a case from photos")
def enroll(user: UserDep, name: Annotated[str, Form(max_length=TEXT_MAX)],
           photo: Annotated[list[UploadFile],
                            File(description="a photo of the face (repeatable)")],
           case: Annotated[str | None, Form(max_length=TEXT_MAX), CASE] = None,
           reason: Annotated[str | None, Form(max_length=TEXT_MAX)] = None,
           expires: Annotated[str | None, Form(description="ISO date it lapses")] = None,
           face: Annotated[int | None, Form(description="face index, largest first")] = None,
           ) -> dict[str, object]:
    """Every photo is checked for one usable face before anything is stored; the subject is
    then matched against the case's tracks (pending matches to review)."""
    with _photos(photo) as paths:
        return watchlist.enroll(context(), user, name, paths, case, reason, expires, face)


@router.get("/subjects", response_model=PageOf[SubjectOut],
            summary="Active subjects of the cases the caller sees")
async def subjects(user: UserDep, p: PageDep,
                   case: Annotated[str | None, Query(), CASE] = None) -> dict[str, object]:
    """Paginated `subjects list --json` items; audited."""
    rows = await run_in_threadpool(watchlist.list_subjects, context(), user, case)
    return paginate([r.as_json() for r in rows], p)


@router.delete("/subjects/{subject_id}", response_model=RemovedOut,
               summary="Take a subject off the watchlist")
async def remove(subject_id: str, user: UserDep) -> dict[str, object]:
    """Its face templates are deleted, its record kept; audited."""
    return await run_in_threadpool(watchlist.remove_subject, context(), user, subject_id)


@router.post("/subjects/{subject_id}/approve", response_model=ApprovedOut,
             summary="Approve an enrolment (supervisor, never one's own)")
async def approve(subject_id: str, user: UserDep) -> dict[str, object]:
    """Matching against the case's tracks starts once approved."""
    return await run_in_threadpool(watchlist.approve_subject, context(), user, subject_id)


@router.post("/search", response_model=SearchOut, summary="Where does this person appear?")
def search(user: UserDep,
           case: Annotated[str | None, Form(max_length=TEXT_MAX), CASE] = None,
           purpose: Annotated[str | None, Form(max_length=TEXT_MAX)] = None,
           subject: Annotated[str | None, Form()] = None,
           track: Annotated[str | None, Form()] = None,
           threshold: Annotated[float | None, Form()] = None,
           limit: Annotated[int | None, Form()] = None,
           video: Annotated[str | None, Form()] = None,
           date_from: Annotated[str | None, Form(alias="from")] = None,
           date_to: Annotated[str | None, Form(alias="to")] = None,
           face: Annotated[int | None, Form()] = None,
           photo: Annotated[UploadFile | None, File(description="probe photo")] = None,
           ) -> dict[str, object]:
    """Ranked leads in one case, for a recorded purpose (the `search --json` object, plus
    `note` when there is one); leads for human review, not identifications; audited."""
    with _photos([photo] if photo is not None else []) as paths:
        result = watchlist.search(context(), user, case, purpose, paths[0] if paths else None,
                                  subject, track, threshold, limit, video, date_from, date_to,
                                  face)
    out = result.as_json()
    if result.note:
        out["note"] = result.note
    return out


@router.post("/photos/faces", response_model=PhotoFacesOut,
             summary="The faces of a probe photo, to choose one (`face`)")
def photo_faces(user: UserDep, case: Annotated[str | None, Form(), CASE] = None,
                photo: Annotated[UploadFile | None, File(description="probe photo")] = None,
                ) -> dict[str, object]:
    """Boxes `[x, y, w, h]` in the photo's pixels, largest first: `index` is the `face` that
    search and enrolment take; same detector; nothing is stored; audited (`photo.faces`)."""
    with _photos([photo] if photo is not None else []) as paths:
        return watchlist.photo_faces(context(), user, case, paths[0] if paths else None)


@router.get("/cases/{case:path}/videos", response_model=PageOf[CaseVideoOut],
            summary="The videos of a case, with duration and state (investigator)")
async def case_videos(case: Annotated[str, CASE], user: UserDep, p: PageDep
                      ) -> dict[str, object]:
    """Paginated, newest first; investigator of the case."""
    rows = await run_in_threadpool(watchlist.case_videos, context(), user, case)
    return paginate(rows, p)


@router.get("/matches", response_model=PageOf[MatchOut],
            summary="Watchlist matches of the cases the caller sees")
async def matches(user: UserDep, p: PageDep, status: Annotated[str | None, Query()] = None,
                  case: Annotated[str | None, Query(), CASE] = None) -> dict[str, object]:
    """Paginated `matches --json` items, each with `enrolled_by`, `reviewers_required` and
    `confirmations_missing` (by others than the enroller); audited."""
    rows, total = await run_in_threadpool(watchlist.match_items, context(), user, status, case,
                                          p.offset, p.limit)
    return page_of(rows, total, p)


@router.post("/matches/{match_id}/review", response_model=ReviewOut,
             summary="Confirm or reject a match")
async def review(match_id: str, body: ReviewIn, user: UserDep) -> dict[str, object]:
    """The reviewer and why are recorded; four-eyes rules apply (403 when refused)."""
    return await run_in_threadpool(watchlist.review, context(), user, match_id, body.decision,
                                   body.note)


@router.post("/matches/{match_id}/reopen", response_model=ReopenOut,
             summary="Reopen a decided match for a new review round (supervisor)")
async def reopen(match_id: str, body: ReopenIn, user: UserDep) -> dict[str, object]:
    """Pending again, with a reason; the earlier reviews stay on record and no longer count
    (409 when it is pending); audited."""
    return await run_in_threadpool(watchlist.reopen, context(), user, match_id, body.reason)


@router.get("/persons", response_model=PageOf[PersonOut],
            summary="Unknown persons of a case, grouped across videos")
async def persons(user: UserDep, p: PageDep, case: Annotated[str, Query(), CASE],
                  purpose: Annotated[str | None, Query(max_length=TEXT_MAX)] = None,
                  ) -> dict[str, object]:
    """Paginated `persons --json` items; needs a purpose; audited."""
    rows, total = await run_in_threadpool(watchlist.persons, context(), user, case, purpose,
                                          p.offset, p.limit)
    return page_of([r.as_json() for r in rows], total, p)


@router.get("/subjects/{subject_id}/photo", summary="A subject's enrolment photo (JPEG)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
async def subject_photo(subject_id: str, user: UserDep) -> Response:
    """The first enrolment photo, re-encoded without its metadata, for an investigator or
    supervisor of the subject's case; audited; never cached (`Cache-Control: no-store`)."""
    data = await run_in_threadpool(watchlist.subject_photo, context(), user, subject_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
