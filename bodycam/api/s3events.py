"""S3 event notifications (AWS/MinIO JSON) for incoming/, with the notifier's own bearer token."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any
from urllib.parse import unquote_plus

from fastapi import APIRouter, Header
from pydantic import BaseModel

from bodycam.actions.governance import notifier_token
from bodycam.api.problems import ProblemError
from bodycam.context import Context, shared
from bodycam.ingest import current_drop
from bodycam.queue import INGEST_OBJECT
from bodycam.storage import INCOMING

log = logging.getLogger(__name__)
router = APIRouter(tags=["s3 events"])

# AWS S3 and MinIO send one record per notification; a few more is tolerated, thousands are not
# (each record costs a listing of the store).
MAX_RECORDS = 100


class EventAccepted(BaseModel):
    """How many objects of the notification were queued for ingest."""

    queued: int


def events_token(context: Context) -> str:
    """The bearer token the S3 notifier must send (see actions.governance.notifier_token)."""
    return notifier_token(context)


def _authorised(authorization: str | None) -> bool:
    if not authorization:
        return False
    scheme, _, token = authorization.strip().partition(" ")
    given = token.strip() if scheme.lower() == "bearer" else authorization.strip()
    return hmac.compare_digest(given.encode(), events_token(shared()).encode())


@router.post("/s3/events", response_model=EventAccepted, summary="S3 event notifications")
def s3_events(payload: dict[str, Any],
              authorization: Annotated[str | None, Header()] = None) -> EventAccepted:
    """Queue ingest of each created object under incoming/ named by an S3 event notification.

    Only with the notifier's bearer token (compared in constant time). Accepts the AWS S3 /
    MinIO event JSON (`Records[].s3.bucket.name`, `.object.key`, `.object.eTag`). A record
    is acted on only when it names the configured bucket, a key under incoming/, and an
    object that exists now with that etag; anything else is ignored, so a forged or stale
    record queues nothing and writes nothing. A lost event is caught by the reconciler.
    """
    if not _authorised(authorization):
        log.warning("S3 event refused: missing or invalid bearer token")
        raise ProblemError(401, "missing or invalid bearer token", {"WWW-Authenticate": "Bearer"})
    records = payload.get("Records")
    if not isinstance(records, list):
        raise ProblemError(422, "expected an S3 event with a Records array")
    if len(records) > MAX_RECORDS:
        raise ProblemError(413, f"at most {MAX_RECORDS} records per notification,"
                                f" this one has {len(records)}")
    c = shared()
    queued = 0
    seen: set[str] = set()
    for rec in records:
        try:
            event = str(rec.get("eventName", ""))
            bucket = str(rec["s3"]["bucket"]["name"])
            obj = rec["s3"]["object"]
            key = unquote_plus(str(obj["key"]))
        except (KeyError, TypeError, AttributeError):
            raise ProblemError(422, "record without s3.bucket.name and s3.object.key") from None
        if "ObjectCreated" not in event:
            continue
        if bucket != c.services.s3.bucket:
            continue
        if not key.startswith(INCOMING) or key.endswith("/"):
            continue
        claimed = str(obj.get("eTag") or obj.get("etag") or "").strip('"')
        if key.endswith(".json"):  # a sidecar, put after its video say: the video's turn
            key, claimed = key[:-len(".json")], ""
            if key.endswith(".json"):
                continue
        if key in seen:
            continue  # the object is listed once per notification, however often it is named
        seen.add(key)
        now = current_drop(c, key)
        etag = now[0] if now is not None else ""
        if not etag or (claimed and claimed != etag):
            continue  # no such object (now), or another version than the event names
        c.send(INGEST_OBJECT, key, etag)
        queued += 1
    log.info("S3 event: %d objects queued", queued)
    return EventAccepted(queued=queued)
