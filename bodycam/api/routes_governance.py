"""Routes: users, case assignments and holds, policy, thresholds, purge, fixity, events token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from bodycam.actions import governance
from bodycam.api.deps import PageDep, UserDep, context, paginate
from bodycam.api.problems import PROBLEM_RESPONSES
from bodycam.api.schemas import (
    CASE,
    AssignedOut,
    AssignIn,
    AssignOut,
    CaseOut,
    DisabledOut,
    HoldOut,
    KeyOut,
    PageOf,
    PolicyIn,
    PurgeIn,
    ReasonIn,
    ReprocessOut,
    ThresholdsIn,
    ThresholdsNowOut,
    ThresholdsOut,
    UserCreatedOut,
    UserIn,
    UserOut,
)

router = APIRouter(prefix="/api/v1", tags=["governance"], responses=PROBLEM_RESPONSES)


@router.post("/users", status_code=201, response_model=UserCreatedOut,
             summary="Create an account (its token is shown once)")
async def users_add(body: UserIn, user: UserDep) -> dict[str, object]:
    """Only the token's SHA-256 is stored; audited."""
    return await run_in_threadpool(governance.create_user, context(), user, body.name,
                                   body.roles)


@router.get("/users", response_model=PageOf[UserOut], summary="Accounts, roles and cases")
async def users_list(user: UserDep, p: PageDep) -> dict[str, object]:
    """Paginated `users list --json` items (never tokens)."""
    return paginate(await run_in_threadpool(governance.list_users, context(), user), p)


@router.post("/users/{name}/disable", response_model=DisabledOut,
             summary="Disable an account and revoke its tokens")
async def users_disable(name: str, user: UserDep) -> dict[str, object]:
    """The record stays; every token of the account stops working; audited."""
    return await run_in_threadpool(governance.disable_user, context(), user, name)


@router.post("/users/{name}/cases", response_model=AssignedOut, response_model_exclude_none=True,
             summary="Assign a case to an account")
async def users_assign(name: str, body: AssignIn, user: UserDep) -> dict[str, object]:
    """Investigators see only the cases assigned to them; audited."""
    return await run_in_threadpool(governance.assign_case, context(), user, name, body.case)


@router.delete("/users/{name}/cases/{case:path}", response_model=AssignOut,
               summary="Take a case away from an account")
async def users_unassign(name: str, case: Annotated[str, CASE], user: UserDep
                         ) -> dict[str, object]:
    """The account no longer sees the case; audited (`case.unassign`)."""
    return await run_in_threadpool(governance.unassign_case, context(), user, name, case)


@router.get("/cases", response_model=PageOf[CaseOut],
            summary="Cases with their assigned accounts and legal holds")
async def cases_list(user: UserDep, p: PageDep) -> dict[str, object]:
    """Every case assigned, held, or holding footage or subjects (supervisor, admin)."""
    return paginate(await run_in_threadpool(governance.list_cases, context(), user), p)


@router.post("/cases/{case:path}/hold", response_model=HoldOut, summary="Put a case on legal hold")
async def hold(case: str, body: ReasonIn, user: UserDep) -> dict[str, object]:
    """Its biometric data is kept past the retention period; audited."""
    return await run_in_threadpool(governance.hold_case, context(), user, case, body.reason)


@router.post("/cases/{case:path}/release", response_model=HoldOut, summary="Lift a legal hold")
async def release(case: str, body: ReasonIn, user: UserDep) -> dict[str, object]:
    """Audited with the reason."""
    return await run_in_threadpool(governance.release_case, context(), user, case,
                                   body.reason)


@router.get("/policy", summary="The policy in force")
async def policy_show(user: UserDep) -> dict[str, object]:
    """Profile, reviewers required, retention."""
    return await run_in_threadpool(governance.show_policy, context(), user)


@router.put("/policy", summary="Change the policy (admin, with a reason)")
async def policy_set(body: PolicyIn, user: UserDep) -> dict[str, object]:
    """The new policy; audited."""
    return await run_in_threadpool(governance.set_policy, context(), user, body.reason,
                                   body.profile, body.reviewers, body.retention_days)


@router.get("/thresholds", response_model=list[ThresholdsNowOut],
            summary="Each model's thresholds in force")
async def thresholds_list(user: UserDep) -> list[dict[str, object]]:
    """Default, floor, calibrated floor and the last recorded change (who, when, why)."""
    return await run_in_threadpool(governance.list_thresholds, context(), user)


@router.put("/thresholds/{model}", response_model=ThresholdsOut,
            summary="Change a model's default threshold and floor (supervisor)")
async def thresholds(model: str, body: ThresholdsIn, user: UserDep) -> dict[str, object]:
    """Never below the calibrated floor; audited with the reason."""
    return await run_in_threadpool(governance.change_thresholds, context(), user, model,
                                   body.default, body.floor, body.reason)


@router.post("/purge", summary="Remove expired bystander biometric data (admin)")
async def purge(body: PurgeIn, user: UserDep) -> dict[str, object]:
    """The purge plan (what was, or would be, removed); originals are never touched."""
    return await run_in_threadpool(governance.purge, context(), user, body.dry_run)


@router.post("/reprocess", response_model=ReprocessOut,
             summary="Analyse again the footage stored under redact-only (admin, with a reason)")
async def reprocess(body: ReasonIn, user: UserDep) -> dict[str, object]:
    """Every done video analysed without embeddings is queued again, so that its faces can be
    searched; refused under redact-only; audited with each video and its case."""
    return await run_in_threadpool(governance.reprocess, context(), user, body.reason)


@router.post("/fixity",
             summary="Re-hash every stored original, enrolment photo and derivative (auditor)")
async def fixity(user: UserDep) -> JSONResponse:
    """The `fixity --json` report; each mismatch is audited."""
    return JSONResponse(await run_in_threadpool(governance.run_fixity, context(), user))


@router.get("/events-token", response_model=KeyOut, response_model_exclude_none=True,
            summary="The S3 notifier's bearer token (admin, audited)")
async def events_token(user: UserDep) -> dict[str, object]:
    """For MINIO_NOTIFY_WEBHOOK_AUTH_TOKEN_<ID>; each reveal is audited."""
    return {"token": await run_in_threadpool(governance.events_token, context(), user)}
