"""The Bodycam server: FastAPI app factory; routes are thin adapters over bodycam.actions."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

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
from bodycam.api.deps import refuse_nul
from bodycam.api.s3events import events_token
from bodycam.api.schemas import Health
from bodycam.context import shared
from bodycam.web import routes as web_routes
from bodycam.web.core import HERE as WEB

__all__ = ["app", "create_app", "events_token"]

def create_app() -> FastAPI:
    """A new app with every router and the problem+json error handlers."""
    api = FastAPI(title="Bodycam", version="1.0.0",
                  description="Batch body-camera footage in, auditable face evidence out. "
                              "Bearer tokens; errors are RFC 7807 problem documents.",
                  dependencies=[Depends(refuse_nul)])
    problems.install(api)
    for module in _routers():
        api.include_router(module)

    @api.get("/healthz", response_model=Health, tags=["meta"], summary="Liveness")
    def healthz() -> Health:
        """The process answers and its settings resolve."""
        shared()
        return Health(status="ok")

    api.include_router(web_routes.router)
    api.mount("/static", StaticFiles(directory=str(WEB / "static")), name="static")
    return api


def _routers() -> list[APIRouter]:
    return [routes_auth.router, routes_videos.router, routes_watchlist.router,
            routes_audit.router, routes_governance.router, routes_redaction.router,
            s3events.router]


app = create_app()
