"""FastAPI app: accepts S3 event notifications (AWS/MinIO JSON) for incoming/, health."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import unquote_plus

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from bodycam.context import shared
from bodycam.queue import INGEST_OBJECT
from bodycam.storage import INCOMING

log = logging.getLogger(__name__)
app = FastAPI(title="Bodycam", version="0.1.0")
ctx = shared


class EventAccepted(BaseModel):
    """How many objects of the notification were queued for ingest."""

    queued: int


@app.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers and its settings resolve."""
    ctx()
    return {"status": "ok"}


@app.post("/s3/events", response_model=EventAccepted)
def s3_events(payload: dict[str, Any]) -> EventAccepted:
    """Queue ingest of each created object under incoming/ named by an S3 event notification.

    Accepts the AWS S3 / MinIO event JSON (`Records[].s3.object.key`, `eTag`). Objects in
    other prefixes and non-create events are ignored; a lost event is caught by the reconciler.
    """
    records = payload.get("Records")
    if not isinstance(records, list):
        raise HTTPException(status_code=422, detail="expected an S3 event with a Records array")
    queued = 0
    for rec in records:
        try:
            event = str(rec.get("eventName", ""))
            obj = rec["s3"]["object"]
            key = unquote_plus(str(obj["key"]))
        except (KeyError, TypeError, AttributeError):
            raise HTTPException(status_code=422, detail="record without s3.object.key") from None
        if "ObjectCreated" not in event and not event.startswith("s3:ObjectCreated"):
            continue
        if not key.startswith(INCOMING) or key.endswith(".json"):
            continue
        etag = str(obj.get("eTag") or obj.get("etag") or "").strip('"')
        if not etag:
            etag = next((o.etag for o in ctx().store.list(key) if o.key == key), "")
        if not etag:
            continue  # already moved or deleted; nothing to ingest
        ctx().send(INGEST_OBJECT, key, etag)
        queued += 1
    log.info("S3 event: %d objects queued", queued)
    return EventAccepted(queued=queued)
