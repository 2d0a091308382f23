"""Routes: audit verify, rows, export key, live check, and exports with signed manifests."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from bodycam.accounts import User
from bodycam.actions import auditing
from bodycam.api.deps import PageDep, UserDep, attachment, context, parse_range, ranged
from bodycam.api.problems import PROBLEM_RESPONSES
from bodycam.api.schemas import (
    CASE,
    AuditExportIn,
    AuditRowOut,
    CheckLiveIn,
    CheckLiveOut,
    ExportOut,
    KeyOut,
    MatchesExportIn,
    PageOf,
    VerifyOut,
)

router = APIRouter(prefix="/api/v1", tags=["audit"], responses=PROBLEM_RESPONSES)


@router.post("/audit/verify", response_model=VerifyOut, summary="Check the whole audit chain")
async def verify(user: UserDep) -> dict[str, object]:
    """`ok` only when every row, seal and anchor is intact."""
    return await run_in_threadpool(auditing.verify, context(), user)


@router.get("/audit", response_model=PageOf[AuditRowOut], summary="Audit rows (auditor)")
async def rows(user: UserDep, p: PageDep,
               actor: Annotated[str | None, Query()] = None,
               action: Annotated[str | None, Query()] = None,
               case: Annotated[str | None, Query(), CASE] = None,
               date_from: Annotated[str | None, Query(alias="from")] = None,
               date_to: Annotated[str | None, Query(alias="to")] = None) -> dict[str, object]:
    """Paginated, oldest first, filtered by actor, action, case and time."""
    items, more = await run_in_threadpool(auditing.rows, context(), user, p.limit, p.offset,
                                          actor, action, case, date_from, date_to)
    return {"items": items, "next_offset": p.offset + p.limit if more else None}


@router.get("/audit/export-key", response_model=KeyOut, response_model_exclude_none=True,
            summary="The key that verifies export manifests (audited)")
async def export_key(user: UserDep) -> dict[str, object]:
    """Derived from, and not revealing, the audit key; for offline checks of exports."""
    return {"key": await run_in_threadpool(auditing.export_key, context(), user)}


@router.post("/audit/check-live", response_model=CheckLiveOut,
             summary="Check an audit export's ends against the live log")
async def check_live(body: CheckLiveIn, user: UserDep) -> dict[str, object]:
    """`problem` is null when the export's first and last rows are in the live chain."""
    return {"problem": await run_in_threadpool(auditing.check_live, context(), user,
                                               body.manifest)}


@router.post("/exports/matches", status_code=201, response_model=ExportOut,
             summary="Export matches and reviews with a signed manifest")
async def export_matches(body: MatchesExportIn, user: UserDep) -> dict[str, object]:
    """Written on the server; fetch it with `GET /exports/{id}`; audited."""
    return await run_in_threadpool(auditing.make_matches_export, context(), user, body.format,
                                   body.status, body.case)


@router.post("/exports/audit", status_code=201, response_model=ExportOut,
             summary="Export the audit log with a signed manifest")
async def export_audit(body: AuditExportIn, user: UserDep) -> dict[str, object]:
    """Written on the server; fetch it with `GET /exports/{id}`; audited."""
    return await run_in_threadpool(auditing.make_audit_export, context(), user, body.format,
                                   body.from_, body.to)


@router.get("/exports/{export_id}", response_class=StreamingResponse,
            summary="An export's file (HTTP ranges)",
            responses={200: {"content": {"application/x-ndjson": {}, "text/csv": {}}},
                       206: {"description": "the range asked for"},
                       416: {"description": "range not satisfiable"}})
async def export_file(export_id: str, user: UserDep,
                      range_: Annotated[str | None, Header(alias="range")] = None
                      ) -> StreamingResponse:
    """Only to the account that made it (others: 403, audited); each download audited."""
    return await _export_part(export_id, user, False, range_)


@router.get("/exports/{export_id}/manifest", response_class=StreamingResponse,
            summary="An export's signed manifest (HTTP ranges)",
            responses={200: {"content": {"application/json": {}}},
                       206: {"description": "the range asked for"},
                       416: {"description": "range not satisfiable"}})
async def export_manifest(export_id: str, user: UserDep,
                          range_: Annotated[str | None, Header(alias="range")] = None
                          ) -> StreamingResponse:
    """Only to the account that made it (others: 403, audited); each download audited."""
    return await _export_part(export_id, user, True, range_)


async def _export_part(export_id: str, user: User, manifest: bool, range_: str | None
                       ) -> StreamingResponse:
    found = await run_in_threadpool(auditing.export_file, context(), user, export_id, manifest,
                                    range_, lambda size: parse_range(range_, size))
    return ranged(found.body, found.size, found.span, found.media_type,
                  {"Cache-Control": "no-store",
                   "Content-Disposition": attachment(found.name, "export")}, seek=True)
