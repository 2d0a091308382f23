"""RFC 7807 problem documents for every error the server returns."""

from __future__ import annotations

import logging
import os
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from bodycam.accounts import AccessDeniedError
from bodycam.auth import UnauthenticatedError
from bodycam.errors import (
    BodycamError,
    ConflictError,
    NotFoundError,
    PermanentError,
    TransientError,
    host_error,
)
from bodycam.limits import RateLimitedError
from bodycam.policy import PolicyRefusedError, ReviewRefusedError

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
BASE = "https://bodycam.invalid/problems/"
SLUGS = {400: ("bad-request", "Bad request"), 401: ("unauthenticated", "Unauthenticated"),
         403: ("forbidden", "Forbidden"), 404: ("not-found", "Not found"),
         405: ("method-not-allowed", "Method not allowed"),
         408: ("request-timeout", "Request timeout"), 409: ("conflict", "Conflict"),
         413: ("too-large", "Too large"), 415: ("unsupported-media-type", "Unsupported type"),
         416: ("range-not-satisfiable", "Range not satisfiable"),
         422: ("invalid-input", "Invalid input"), 429: ("rate-limited", "Too many requests"),
         500: ("internal", "Internal error"), 503: ("unavailable", "Service unavailable"),
         507: ("insufficient-storage", "Insufficient storage")}


class Problem(BaseModel):
    """An RFC 7807 problem document; `detail` is the one-line message the CLI prints."""

    type: str
    title: str
    status: int
    detail: str


class ProblemError(Exception):
    """Raised by routes for an HTTP error that no library error expresses."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}


DETAIL_MAX = 500  # characters of a detail: messages name ids the client sent, of any length


def problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A problem+json response; a detail past DETAIL_MAX is cut (an id of 5,000 characters
    was echoed whole)."""
    if len(detail) > DETAIL_MAX:
        detail = detail[:DETAIL_MAX - 1] + "…"
    slug, title = SLUGS.get(status, ("error", "Error"))
    body = {"type": BASE + slug, "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def internal(exc: BaseException) -> JSONResponse:
    """The answer to an error no handler knows, logged with its traceback (the middleware in
    bodycam.api.app gives it, inside the one that sets every response's headers). The
    server's host out of descriptors, disk or memory is a 503 naming it (an ingest got
    "internal error" when the server had run out of file descriptors: bb14)."""
    if host_error(exc):
        assert isinstance(exc, OSError)
        reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        log.error("the server's host: %s", reason)
        return problem(503, f"the server's host is out of resources ({reason.lower()}); "
                            "nothing was stored: try again later", {"Retry-After": "10"})
    log.error("unhandled %s", type(exc).__name__, exc_info=exc)
    return problem(500, "internal error")


def status_of(exc: BodycamError) -> int:
    """The HTTP status of a library error."""
    if isinstance(exc, UnauthenticatedError):
        return 401
    if isinstance(exc, AccessDeniedError | PolicyRefusedError | ReviewRefusedError):
        return 403
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError):
        return 409
    if isinstance(exc, RateLimitedError):
        return 429
    if isinstance(exc, TransientError):
        return 503
    if isinstance(exc, PermanentError):
        return 422
    return 500


def _validation_detail(exc: RequestValidationError) -> str:
    first: dict[str, Any] = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    # The framework's own words where they would puzzle a client ("Field required";
    # "Value error, Expected UploadFile, received: <class 'str'>" for a photo sent as text).
    if first.get("type") == "missing":
        return f"missing {where}: the request needs it"
    if first.get("type") == "json_invalid":  # was "invalid 0: JSON decode error" (bb32)
        return "the body is not valid JSON"
    if "UploadFile" in str(first.get("msg", "")):
        return f"invalid {where}: send it as a file part of a multipart form"
    return f"invalid {where}: {first.get('msg', 'invalid value')}"


def install(app: FastAPI) -> None:
    """Make every error of the app a problem document."""

    @app.exception_handler(BodycamError)
    async def _bodycam(_: Request, exc: BodycamError) -> JSONResponse:
        status = status_of(exc)
        headers: dict[str, str] = {}
        if status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if isinstance(exc, RateLimitedError):
            headers["Retry-After"] = str(exc.retry_after_s)
        if status == 500:
            log.error("unexpected %s", type(exc).__name__)
            return problem(500, "internal error")
        return problem(status, str(exc), headers)

    @app.exception_handler(ProblemError)
    async def _problem(_: Request, exc: ProblemError) -> JSONResponse:
        return problem(exc.status, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else SLUGS.get(
            exc.status_code, ("", "error"))[1]
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such route"
        return problem(exc.status_code, detail, dict(exc.headers or {}))

    @app.exception_handler(psycopg.errors.TransactionRollback)
    async def _collided(_: Request, exc: psycopg.errors.TransactionRollback) -> JSONResponse:
        # Postgres undid this transaction to end a deadlock (or a serialization failure) with
        # a concurrent one: nothing of it is stored, and sent again it will run alone.
        log.warning("request undone by the database: %s", type(exc).__name__)
        return problem(503, "the request collided with a concurrent change and was undone: "
                            "send it again", {"Retry-After": "1"})

    @app.exception_handler(psycopg.OperationalError)
    @app.exception_handler(psycopg.InterfaceError)
    async def _lost(_: Request, exc: psycopg.Error) -> JSONResponse:
        # The connection failed mid-request (the database killed, restarting, a backend
        # ended): a 503 naming it as an unreachable one is, not "internal error" (bb45).
        from bodycam.context import shared

        log.error("the database connection failed during a request: %s", type(exc).__name__)
        return problem(503, f"the database connection failed during the request "
                            f"({type(exc).__name__}); nothing it had not committed is kept: "
                            f"{shared().remedy('database_url')}", {"Retry-After": "5"})

    @app.exception_handler(psycopg.errors.RaiseException)
    async def _raised(_: Request, exc: psycopg.errors.RaiseException) -> JSONResponse:
        # The database's own guard (migration 007) when the profile switched to redact-only
        # while an enrolment ran: the same refusal the enrolment gives once the switch is in.
        if "redact-only policy forbids" in str(exc):
            return problem(403, "enrolment is disabled: this deployment switched to the "
                                "redact-only policy profile while the request ran; nothing "
                                "was stored")
        return internal(exc)

    @app.exception_handler(psycopg.DataError)
    async def _data(_: Request, exc: psycopg.DataError) -> JSONResponse:
        # Text PostgreSQL cannot hold (a NUL character) that no earlier check caught: the
        # request's fault, not the server's (see deps.refuse_nul).
        if "NUL" in str(exc) or exc.sqlstate == "22P05":
            return problem(400, "a value holds a NUL character, which no field accepts")
        return internal(exc)


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": SLUGS[code][1],
           "content": {PROBLEM_JSON: {}}} for code in (401, 403, 404, 422)}
