"""The Bodycam server: FastAPI app factory; routes are thin adapters over bodycam.actions."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse

from bodycam.api import (
    problems,
    routes_audit,
    routes_auth,
    routes_governance,
    routes_videos,
    routes_watchlist,
    s3events,
)
from bodycam.api.s3events import events_token
from bodycam.api.schemas import Health
from bodycam.context import shared

__all__ = ["app", "create_app", "events_token"]

PLACEHOLDER = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Bodycam</title></head>
<body><h1>Bodycam server</h1>
<p>Bodycam server: the web app comes with the next release; API docs at
<a href="/docs">/docs</a> (schema: <a href="/openapi.json">/openapi.json</a>).</p>
</body></html>
"""


def create_app() -> FastAPI:
    """A new app with every router and the problem+json error handlers."""
    api = FastAPI(title="Bodycam", version="1.0.0",
                  description="Batch body-camera footage in, auditable face evidence out. "
                              "Bearer tokens; errors are RFC 7807 problem documents.")
    problems.install(api)
    for module in _routers():
        api.include_router(module)

    @api.get("/healthz", response_model=Health, tags=["meta"], summary="Liveness")
    def healthz() -> Health:
        """The process answers and its settings resolve."""
        shared()
        return Health(status="ok")

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(PLACEHOLDER)

    return api


def _routers() -> list[APIRouter]:
    return [routes_auth.router, routes_videos.router, routes_watchlist.router,
            routes_audit.router, routes_governance.router, s3events.router]


app = create_app()
