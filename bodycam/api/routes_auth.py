"""Routes: log in, log out, who am I."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from bodycam.actions import sessions
from bodycam.api.deps import SessionDep, UserDep, client_of, context, login_limited
from bodycam.api.problems import PROBLEM_RESPONSES
from bodycam.api.schemas import LoginIn, LogoutOut, MeOut, SessionOut

router = APIRouter(prefix="/api/v1/auth", tags=["auth"], responses=PROBLEM_RESPONSES)


@router.post("/login", response_model=SessionOut, summary="Exchange an account token for a "
             "session token", responses={429: {"description": "too many failures"}})
async def login(body: LoginIn, request: Request) -> dict[str, object]:
    """A session token that expires after `auth.session_ttl_s` (default 12 h). Failures are
    audited (`login.failed`) and rate-limited per client address and per name (429)."""
    return await run_in_threadpool(login_limited, context(), client_of(request), body.user,
                                   body.token)


@router.post("/logout", response_model=LogoutOut, summary="Revoke the bearer token")
async def logout(user: UserDep, s: SessionDep) -> dict[str, object]:
    """The token of this request stops working at once."""
    return await run_in_threadpool(sessions.logout, context(), user, s)


@router.get("/me", response_model=MeOut, summary="The caller's account, roles and cases")
async def me(user: UserDep, s: SessionDep) -> dict[str, object]:
    """Who the token belongs to; `cases` is null for roles that see every case."""
    return await run_in_threadpool(sessions.me, context(), user, s)
