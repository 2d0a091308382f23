"""Request dependencies: the context, the account of the bearer token or session cookie,
pagination."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Annotated
from urllib.parse import quote

from fastapi import Depends, Header, Query, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bodycam import auth
from bodycam.accounts import AccessDeniedError, User
from bodycam.api.problems import ProblemError
from bodycam.api.schemas import NUL
from bodycam.auth import UnauthenticatedError
from bodycam.context import Context, shared
from bodycam.limits import FailureLimiter

_limiter: FailureLimiter | None = None


def context() -> Context:
    """The server's process-wide context (settings, services, audit key)."""
    return shared()


def limiter() -> FailureLimiter:
    """The process's failed-authentication limiter (in-process: see FailureLimiter)."""
    global _limiter
    if _limiter is None:
        cfg = shared().settings.auth
        _limiter = FailureLimiter(cfg.max_failures, cfg.max_client_failures,
                                  cfg.failure_window_s)
    return _limiter


async def refuse_nul(request: Request) -> None:
    """Every route's first dependency: a path or query with a NUL character (`%00`) is
    refused (400) before anything else runs.

    PostgreSQL cannot store NUL in text, so such a value used to fail deep inside a case
    check or an audit row: a 500, with the refusal (or the failed login) unaudited. JSON
    bodies are checked by their schema (`schemas.Body`); a form field reaching the database
    with one is refused by the problem handler (400) as a last resort."""
    if NUL in request.scope["path"]:
        where = "path"
    elif any(NUL in k or NUL in v for k, v in request.query_params.multi_items()):
        where = "query"
    else:
        return
    raise ProblemError(400, f"the request's {where} holds a NUL character (%00), which no "
                            "field accepts")


def client_of(request: Request) -> str:
    """The client's address (the peer; a proxy in front must be trusted to say more), or the
    stack's unix socket (which only the stack's account can reach)."""
    return request.client.host if request.client else "unix socket"


def authenticate(ctx: Context, client: str, token: str | None, claimed: str | None
                 ) -> auth.Session:
    """Authenticate a bearer token, rate-limited per client and claimed name (429). Every
    failure is audited; those with a token are counted (a request that sends none guesses
    nothing, so it is audited but not counted)."""
    stamp = limiter().reserve(client, claimed)
    failed = False
    try:
        with ctx.db() as conn:
            return auth.authenticate(conn, ctx.audit_key, token, claimed, client)
    except UnauthenticatedError:
        failed = bool(token)  # counted (its reservation stays) when it guessed a token
        raise
    finally:
        if not failed:
            limiter().release(client, claimed, stamp)


BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="an account's API token or a session token from /auth/login")


async def session(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None,
                                         Security(BEARER)] = None,
                  x_bodycam_user: Annotated[str | None, Header(
                      description="who the caller claims to be (optional)")] = None,
                  ) -> auth.Session:
    """The authenticated token of the request (401 otherwise): the bearer token, else the web
    app's session cookie. A cookie is sent by the browser on its own, so every call that
    changes something with it must also carry the session's CSRF token (403 otherwise)."""
    from bodycam.web.core import CSRF_HEADER, SAFE_METHODS, csrf_ok, session_of

    token = credentials.credentials.strip() or None if credentials else None
    cookie = session_of(request) if credentials is None else None
    s = await run_in_threadpool(authenticate, context(), client_of(request), token or cookie,
                                x_bodycam_user)
    if cookie is not None and request.method not in SAFE_METHODS \
            and not csrf_ok(cookie, request.headers.get(CSRF_HEADER)):
        raise AccessDeniedError(f"refused: a change made with the session cookie needs the "
                                f"{CSRF_HEADER} header of its page")
    return s


async def current_user(s: Annotated[auth.Session, Depends(session)]) -> User:
    """The acting account."""
    return s.user


MAX_OFFSET = 1_000_000_000  # a larger one overflowed the database's OFFSET (a 500)


@dataclass(frozen=True)
class Page:
    """limit/offset of a list route."""

    limit: int
    offset: int


def page(limit: Annotated[int, Query(ge=1, le=1000, description="items per page")] = 100,
         offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="items to skip")] = 0
         ) -> Page:
    """Pagination parameters."""
    return Page(limit, offset)


def paginate(items: list[dict[str, object]], p: Page) -> dict[str, object]:
    """`{"items", "next_offset"}` of one page of a list."""
    return page_of(items[p.offset:p.offset + p.limit], len(items), p)


def page_of(items: list[dict[str, object]], total: int, p: Page) -> dict[str, object]:
    """`{"items", "next_offset"}` of a page an action cut itself (it audits what it shows)."""
    more = p.offset + p.limit < total
    return {"items": items, "next_offset": p.offset + p.limit if more else None}


UserDep = Annotated[User, Depends(current_user)]
SessionDep = Annotated[auth.Session, Depends(session)]
PageDep = Annotated[Page, Depends(page)]


READ_BYTES = 1 << 20


def attachment(filename: str, fallback: str) -> str:
    """A Content-Disposition header naming a download: an ASCII name any client reads, and
    the name itself, UTF-8 and percent-encoded (RFC 6266). Headers are Latin-1: a file name
    in another script made every read of its video a 500, in every player (bb25)."""
    name = filename[:200]
    plain = re.sub(r"[^A-Za-z0-9._-]", "_", name) or fallback
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")  # 19 digits: any size there is


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `bytes=` range, None for the whole file; 416 when it cannot
    be satisfied."""
    if header is None:
        return None
    m = _RANGE.match(header.strip())
    if m is None or (not m.group(1) and not m.group(2)):
        raise ProblemError(416, f"unsupported range {header[:100]!r}: give one bytes=FIRST-LAST",
                           {"Content-Range": f"bytes */{size}"})
    if not m.group(1):  # the last N bytes
        n = int(m.group(2))
        first, last = max(0, size - n), size - 1
    else:
        first = int(m.group(1))
        last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if first >= size or last < first:
        raise ProblemError(416, f"range {header[:100]!r} is outside the file ({size} bytes)",
                           {"Content-Range": f"bytes */{size}"})
    return first, last


def chunks(body: IO[bytes]) -> Iterator[bytes]:
    """A stored object's body as a streamed response's chunks; closed when done."""
    try:
        while data := body.read(READ_BYTES):
            yield data
    finally:
        body.close()
