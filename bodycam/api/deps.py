"""Request dependencies: the context, the account of the bearer token or session cookie,
pagination."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Annotated, NoReturn, get_origin
from urllib.parse import quote

from fastapi import Depends, Header, Query, Request, Security, params
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from bodycam import auth
from bodycam.accounts import User, refuse
from bodycam.actions import sessions
from bodycam.api.problems import ProblemError
from bodycam.api.schemas import NUL
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


FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def refuse_unformed(request: Request) -> None:
    """A route that takes a form refuses any other body (415) naming what it takes: a JSON
    body sent to the search route was told "missing --case" (bb32)."""
    route = getattr(request.scope.get("route"), "dependant", None)
    if route is None or not any(isinstance(p.field_info, params.Form)
                                for p in route.body_params):
        return
    sent = _media_type(request)
    if sent not in FORM_TYPES:
        raise ProblemError(415, f"{request.url.path[:80]} takes a form (multipart/form-data), "
                                f"not {sent[:60] or 'a body without a type'}: send each field "
                                "as a part of it")


async def refuse_repeats(request: Request) -> None:
    """A query or form field given more than once is refused (422) unless the route takes it
    as a list (an enrolment's photos). The last value won without a word: a video stored in
    the second of two cases named, the first of two probe photos never searched (bb30).
    A form is read only for a route that reads one (FastAPI has parsed it already; a video
    upload's body is its own stream). A key given twice in a JSON object is refused as well:
    a proxy reading the first of two `case` keys and the server the last would judge two
    different requests (bb34)."""
    twice = _twice(k for k, _ in request.query_params.multi_items())
    where = "query"
    route = getattr(request.scope.get("route"), "dependant", None)
    if not twice and route is not None and route.body_params:
        if _media_type(request) == "application/json":
            twice, where = _json_repeats(await request.body()), "JSON body"
        else:
            lists = {p.alias for p in route.body_params
                     if get_origin(p.field_info.annotation) is list}
            form = await request.form()
            twice = [k for k in _twice(k for k, _ in form.multi_items()) if k not in lists]
            where = "form"
    if twice:
        raise ProblemError(422, f"the {where} gives {twice[0][:40]!r} more than once: give "
                                "each field once")


def _media_type(request: Request) -> str:
    """The request body's media type, without its parameters (`; boundary=...`)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _json_repeats(body: bytes) -> list[str]:
    """The keys that an object of a JSON body gives more than once, at any depth (none for a
    body that is not JSON: the route answers that itself)."""
    found: list[str] = []

    def pairs(items: list[tuple[str, object]]) -> dict[str, object]:
        found.extend(_twice(k for k, _ in items))
        return dict(items)

    try:
        json.loads(body, object_pairs_hook=pairs)
    except (ValueError, RecursionError):
        return []
    return found


def _twice(keys: Iterable[str]) -> list[str]:
    """The keys given more than once, in order."""
    counts = Counter(keys)
    return [k for k, n in counts.items() if n > 1]


def client_of(request: Request) -> str:
    """The client's address (the peer; a proxy in front must be trusted to say more), or the
    stack's unix socket (which only the stack's account can reach)."""
    return request.client.host if request.client else "unix socket"


def authenticate(ctx: Context, client: str, token: str | None, claimed: str | None,
                 kind: str | None = None) -> auth.Session:
    """Authenticate a bearer token, rate-limited per client and claimed name (429; a valid
    token is served from a blocked client). Every failure is audited; those with a token are
    counted (a request that sends none guesses nothing, so it is audited but not counted).
    `kind`: the only kind of token taken (`auth.authenticate`)."""
    with limiter().attempt(client, claimed, counted=bool(token),
                           vouch=_vouch(ctx, token, claimed, kind)), ctx.db() as conn:
        return auth.authenticate(conn, ctx.audit_key, token, claimed, client, kind)


def login_limited(ctx: Context, client: str, name: str, token: str) -> dict[str, object]:
    """A session token for an account's token (`sessions.login`), rate-limited as
    `authenticate` is; the API's and the web app's sign-in."""
    with limiter().attempt(client, name, vouch=_vouch(ctx, token, name)):
        return sessions.login(ctx, name, token, client)


def _vouch(ctx: Context, token: str | None, claimed: str | None, kind: str | None = None
           ) -> Callable[[], bool]:
    """Whether a token is valid, looked up only when its client is blocked (not audited)."""
    def vouch() -> bool:
        with ctx.db() as conn:
            return auth.accepted(conn, token, claimed, kind)
    return vouch


BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="an account's API token or a session token from /auth/login")


async def session(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None,
                                         Security(BEARER)] = None,
                  x_bodycam_user: Annotated[str | None, Header(
                      description="who the caller claims to be (optional)")] = None,
                  ) -> auth.Session:
    """The authenticated token of the request (401 otherwise): the bearer token, else the web
    app's session cookie (a session token only). A cookie is sent by the browser on its own,
    so every call that changes something with it must also carry the session's CSRF token
    (403 otherwise)."""
    from bodycam.web.core import CSRF_HEADER, SAFE_METHODS, csrf_ok, session_of

    token = credentials.credentials.strip() or None if credentials else None
    cookie = session_of(request) if credentials is None else None
    s = await run_in_threadpool(authenticate, context(), client_of(request), token or cookie,
                                x_bodycam_user, None if token else auth.SESSION_KIND)
    if cookie is not None and request.method not in SAFE_METHODS \
            and not csrf_ok(cookie, request.headers.get(CSRF_HEADER)):
        await run_in_threadpool(refuse_forged, context(), s.user, request,
                                f"the {CSRF_HEADER} header of its page")
    return s


def refuse_forged(ctx: Context, user: User, request: Request, needed: str) -> NoReturn:
    """Refuse, audited, a change sent with the session cookie but not the session's CSRF
    token (a page of another site can make a browser send the cookie; the refusal left no
    row, where every 403 is audited: bb27)."""
    with ctx.db() as conn:
        refuse(conn, ctx.audit_key, user, "csrf",
               f"a change made with the session cookie needs {needed}", None,
               about=f"{request.method} {request.url.path}")


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


# 19 digits: any size there is. The unit is case-insensitive (RFC 9110, 14.1).
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$", re.IGNORECASE)
_RANGES = re.compile(r"^bytes=\d{0,19}-\d{0,19}(\s*,\s*\d{0,19}-\d{0,19})+$", re.IGNORECASE)
_UNIT = re.compile(r"^\s*bytes\s*=", re.IGNORECASE)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single `bytes=` range, None for the whole file; 416 when it cannot
    be satisfied. Several ranges, or a unit other than bytes, are answered with the whole
    file, as HTTP lets a server that sends no multipart answer do and asks of one that does
    not know the unit (RFC 9110, 14.2; they were a 416: bb27, bb28)."""
    if header is None or not _UNIT.match(header) or _RANGES.match(header.strip()):
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


def ranged(body: IO[bytes], size: int, span: tuple[int, int] | None, media_type: str,
           headers: dict[str, str], seek: bool = False) -> StreamingResponse:
    """A download of `size` bytes, whole (200) or the range `span` (206, with its
    Content-Range): a stored object's body opened at the range, or a local file read from it
    (`seek`). Every route that serves files answers ranges so."""
    first, last = span if span is not None else (0, size - 1)
    headers = {**headers, "Accept-Ranges": "bytes", "Content-Length": str(max(0, last - first + 1))}
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    return StreamingResponse(chunks(body, span if seek else None),
                             status_code=206 if span is not None else 200,
                             media_type=media_type, headers=headers)


def chunks(body: IO[bytes], span: tuple[int, int] | None = None) -> Iterator[bytes]:
    """A body as a streamed response's chunks, closed when done: a stored object's, opened
    at the range it serves, or a local file's, of which `span` (first, last) is read."""
    try:
        left = None
        if span is not None:
            body.seek(span[0])
            left = span[1] - span[0] + 1
        while data := body.read(READ_BYTES if left is None else min(READ_BYTES, left)):
            if left is not None:
                left -= len(data)
            yield data
    finally:
        body.close()
