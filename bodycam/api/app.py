"""The Bodycam server: FastAPI app factory; routes are thin adapters over bodycam.actions."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bodycam import audit
from bodycam.api import (
    problems,
    routes_audit,
    routes_auth,
    routes_governance,
    routes_redaction,
    routes_videos,
    routes_watchlist,
    s3events,
)
from bodycam.api.deps import refuse_nul, refuse_repeats, refuse_unformed
from bodycam.api.s3events import events_token
from bodycam.api.schemas import Health
from bodycam.config import Settings, get_settings
from bodycam.context import shared
from bodycam.web import routes as web_routes
from bodycam.web.core import HERE as WEB

__all__ = ["app", "create_app", "events_token"]
log = logging.getLogger(__name__)


def _backstop(stop: threading.Event) -> None:
    """What the server alone can do, every `jobs.reconcile_interval_s`, since it alone holds
    the audit key:
    - anchor the audit log's head where its own anchor failed (the object store was down
      when the row committed, and nothing was appended since: audit.anchor_head); the
      workers' scheduled task does it for their rows;
    - record the redaction jobs the workers computed that no client has asked after
      (a client's next look records one at once: actions.redaction.record_job)."""
    from bodycam import redaction_jobs
    from bodycam.actions.redaction import record_job

    while not stop.wait(get_settings().jobs.reconcile_interval_s):
        c = shared()
        try:
            with c.db() as conn:
                audit.anchor_head(conn, c.store, c.audit_key)
        except Exception as exc:  # noqa: BLE001 - a service down: the next round tries again
            log.warning("anchoring the audit log's head: %s", type(exc).__name__)
        try:
            with c.db() as conn:
                computed = redaction_jobs.computed(conn)
            for job_id in computed:
                record_job(c, job_id)
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("recording computed redaction jobs: %s", type(exc).__name__)


@asynccontextmanager
async def _lifespan(_: FastAPI) -> AsyncIterator[None]:
    from bodycam.api.uploads import sweep_orphans, upload_dir

    try:  # no upload of this process is in flight yet: what a killed one left goes now
        sweep_orphans(upload_dir(get_settings()))
    except Exception as exc:  # noqa: BLE001 - the next upload sweeps again
        log.warning("sweeping the upload folder: %s", type(exc).__name__)
    stop = threading.Event()
    threading.Thread(target=_backstop, args=(stop,), name="server-backstop",
                     daemon=True).start()
    try:
        yield
    finally:
        stop.set()

class BodyTooLargeError(StarletteHTTPException):
    """A request's body went past its limit while it was read: an HTTP error, so a route
    reading it answers 413 (FastAPI turns any other error of a body into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request's body is over the limit of {limit / 2**20:g} MiB")


class BodyIdleError(StarletteHTTPException):
    """No byte of a request's body arrived for `server.upload_idle_s`: an HTTP error, so a
    route reading the body answers 408."""

    def __init__(self, idle_s: float) -> None:
        super().__init__(408, f"no byte of the request's body arrived for {idle_s:g} s: it "
                              "was dropped and nothing was stored")


class BodyLimit:
    """Bodies are bounded before a route reads them: a video upload by `limits.max_bytes`
    (its route streams it to disk), a multipart form of photos by `server.max_form_bytes`,
    any other by `server.max_body_bytes`. A declared length over the limit is answered 413
    at once, unread; a body that grows past it (chunked, or a length that lied) is answered
    413 when it does. (A 500-MB JSON body without a token took the server, which holds the
    audit and export keys, from 160 MB to 1.16 GB before its 401: black-box round bb17.)

    A body that stops arriving is answered 408 after `server.upload_idle_s`, as a video
    upload is (its route times its own chunks): a photo form that promised more bytes than
    it sent held its connection unanswered for good, 300 of them at once (bb30)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "POST"
                                       and scope["path"].rstrip("/") == "/api/v1/videos"):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        server = get_settings().server
        form = headers.get("content-type", "").startswith("multipart/form-data")
        limit = server.max_form_bytes if form else server.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(BodyTooLargeError(limit), scope, receive, send)
            return
        seen = 0
        started = False
        whole = False  # the body has all arrived: a later receive waits for a disconnect

        async def counted() -> Message:
            nonlocal seen, whole
            if whole:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), server.upload_idle_s)
            except TimeoutError:
                raise BodyIdleError(server.upload_idle_s) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(limit)
                whole = not message.get("more_body", False)
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except (BodyTooLargeError, BodyIdleError) as exc:
            if started:
                raise
            await self._refuse(exc, scope, receive, send)

    @staticmethod
    async def _refuse(exc: StarletteHTTPException, scope: Scope, receive: Receive,
                      send: Send) -> None:
        await problems.problem(exc.status_code, exc.detail)(scope, receive, send)


class HostCheck:
    """A request must name this server: an address (no page can be served under one by
    pointing a name at it), `localhost`, the host of `api_url`, or a name in
    `server.allowed_hosts`. Any other Host was served (bb42): a web page whose name its
    owner points at this server's address after it loads (DNS rebinding) is, to the browser,
    the same origin as the server, and could read what the server answers without a
    session. It gets 400, one line naming the host and the setting."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = Headers(scope=scope).get("host")
            if host is not None and not host_allowed(host, get_settings()):
                shown = host.encode("ascii", "backslashreplace").decode()[:200]
                await problems.problem(
                    400, f"this server does not answer to the host {shown!r}; a name it "
                    "should answer to goes in BODYCAM_SERVER__ALLOWED_HOSTS"
                )(scope, receive, send)
                return
        await self.app(scope, receive, send)


def host_allowed(host: str, settings: Settings) -> bool:
    """Whether a Host header (`name[:port]`, `[v6]:port`) names this server."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    name = name.rstrip(".")
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    names = {"localhost"} | {n.strip().lower().rstrip(".")
                             for n in settings.server.allowed_hosts.split(",") if n.strip()}
    if settings.api_url:
        names.add((urlsplit(settings.api_url).hostname or "").rstrip("."))
    return name in names


class ResponseHeaders:
    """Headers every response gets unless its route set them: `nosniff` (no browser reads a
    JSON answer or a stored file as a script or a page), and on the API `no-store` (its
    answers carry session tokens and case data that no cache should keep).

    Also the answer to an error no handler knows: a 500 problem document with those headers,
    logged once, on a connection that stays open. (Starlette's own handler for `Exception`
    sits outside every middleware: its 500 had neither header, and it raised the error again,
    so the server dropped the client's keep-alive connection.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = str(scope["path"]).startswith("/api/")

        started = False

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                if api:
                    headers.setdefault("Cache-Control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, with_headers)
        except ClientDisconnect:  # the client left mid-body: no one to answer, no fault here
            log.warning("%s %s: the client left before its body was read", scope["method"],
                        scope["path"])
        except Exception as exc:
            if started:  # part of an answer is out: nothing else can be said
                raise
            await problems.internal(exc)(scope, receive, with_headers)


def create_app() -> FastAPI:
    """A new app with every router and the problem+json error handlers."""
    api = FastAPI(title="Bodycam", version="1.0.0",
                  description="Batch body-camera footage in, auditable face evidence out. "
                              "Bearer tokens; errors are RFC 7807 problem documents.",
                  dependencies=[Depends(refuse_nul), Depends(refuse_unformed),
                                Depends(refuse_repeats)],
                  # No Swagger UI or ReDoc pages: FastAPI's load their scripts from a CDN into
                  # this origin, where a script could act with a signed-in user's cookie.
                  # The contract is /openapi.json, for any OpenAPI viewer.
                  docs_url=None, redoc_url=None, lifespan=_lifespan)
    problems.install(api)
    for module in _routers():
        api.include_router(module)

    @api.get("/healthz", response_model=Health, tags=["meta"], summary="Liveness")
    def healthz() -> Health:
        """The process answers and its settings resolve."""
        shared()
        return Health(status="ok")

    api.add_middleware(BodyLimit)
    api.add_middleware(HostCheck)
    api.add_middleware(ResponseHeaders)
    api.include_router(web_routes.router)
    api.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")
    return api


def _routers() -> list[APIRouter]:
    return [routes_auth.router, routes_videos.router, routes_watchlist.router,
            routes_audit.router, routes_governance.router, routes_redaction.router,
            s3events.router]


app = create_app()
