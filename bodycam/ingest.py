"""Evidence ingest with chain of custody: validate, stream once while hashing, record, queue."""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from bodycam import audit, jobs
from bodycam.accounts import case_number, spelled_as_known
from bodycam.context import Context
from bodycam.db import Conn
from bodycam.domain import MediaInfo
from bodycam.errors import InvalidInputError, InvalidMediaError, PermanentError, TransientError
from bodycam.media.files import private_copy, safe_name, sha256_file
from bodycam.media.probe import probe
from bodycam.storage import INCOMING, ObjectInfo, OriginalUpload, StoredObject
from bodycam.timeparse import parse_recorded_at

log = logging.getLogger(__name__)
# Officer and device: a case number's characters, in any script (officers' names are).
_FIELD = re.compile(r"^[\w .:/#@+-]{1,200}$")


@dataclass(frozen=True)
class Custody:
    """Who brought the evidence in, for which case, from which officer and device."""

    case_id: str
    officer: str
    device: str
    uploader: str
    recorded_at: datetime | None = None
    source: str = "cli"

    def __post_init__(self) -> None:
        for name in ("case_id", "officer", "device", "uploader"):
            value = getattr(self, name)
            if not value or not str(value).strip():
                field = "case" if name == "case_id" else name
                named = incoming_field(field) if self.source == "incoming" else field
                raise InvalidInputError(f"missing {named}: every video must be bound to a case, "
                                        "an officer and a device")
            # Trimmed and stored as every other path names them (bb38: incoming/ kept
            # " C-1 " and "C-1\n", a case of its own that no hold, search or list reached).
            if name == "case_id":
                object.__setattr__(self, name, case_number(str(value)))
            elif not _FIELD.fullmatch(str(value).strip()):
                raise InvalidInputError(f"{name} has characters that are not allowed: {value!r}")
            else:
                object.__setattr__(self, name, str(value).strip())


@dataclass(frozen=True)
class IngestResult:
    """The outcome of ingesting one file (the `ingest --json` contract)."""

    video_id: str
    sha256: str
    status: str
    duplicate: bool
    filename: str

    def as_json(self) -> dict[str, object]:
        """JSON object printed by the CLI."""
        return {"video_id": self.video_id, "sha256": self.sha256, "status": self.status,
                "duplicate": self.duplicate, "filename": self.filename}


def ingest_file(ctx: Context, name: str, custody: Custody) -> IngestResult:
    """Ingest one local file. Bad input raises InvalidMediaError and leaves nothing behind.

    The file is read once, into a private copy, while it is hashed; that copy is probed and
    uploaded, so the bytes recorded are the bytes validated even if the path changes meanwhile.
    """
    limits = ctx.settings.limits
    label = safe_name(name)
    with private_copy(name, limits.max_bytes) as copy:
        info = probe(copy.path, limits, name=label, owner=custody.uploader)
        return _store_and_record(ctx, copy.path, copy.sha256, safe_name(Path(name).name), info,
                                 custody)


def ingest_private(ctx: Context, path: Path, filename: str, custody: Custody,
                   sha256: str | None = None, sent: OriginalUpload | None = None
                   ) -> IngestResult:
    """Ingest a file that is already private to this process (an upload the server spooled
    into a 0600 file while hashing it), without copying it again.

    `filename` is the client's name for it (recorded, escaped); `sha256`, when given, is what
    the spooled bytes hashed to (else they are hashed here); the stored bytes must hash to it
    too. `sent` is the same bytes already sent to the store while they arrived (see
    `begin_upload`): completed only once the file is probed and found new to the case,
    aborted otherwise. Bad input raises InvalidMediaError and leaves nothing behind; the
    caller deletes the file.
    """
    label = safe_name(Path(filename).name) or "upload"
    try:
        info = probe(path, ctx.settings.limits, name=label, owner=custody.uploader)
        return _store_and_record(ctx, path, sha256 or sha256_file(path), label, info, custody,
                                 sent)
    finally:
        if sent is not None:
            sent.abort()  # a no-op once completed


def begin_upload(ctx: Context, sha256: str) -> OriginalUpload | None:
    """Begin sending an upload that declares `sha256` to the store while it arrives, so that
    storing it overlaps its transfer (`ingest_private` completes or aborts it). None when the
    store cannot begin one now (the file is then stored once received, or refused there with
    the store's error).

    It is begun whatever the store or the case holds, so that the upload takes as long either
    way: a declared digest answered sooner when a case held it would tell an uploader who
    may not see that case, by the clock, what it holds, without their having the bytes."""
    try:
        return ctx.store.begin_original(sha256, ctx.settings.limits.max_bytes)
    except TransientError as exc:
        log.warning("cannot stream an upload to the store (%s); it is stored once received",
                    type(exc).__name__)
        return None


def _store_and_record(ctx: Context, path: Path, sha256: str, filename: str, info: MediaInfo,
                      custody: Custody, sent: OriginalUpload | None = None) -> IngestResult:
    """Record a validated private file that hashed to `sha256`, storing it first unless this
    case has it already (then the duplicate is audited and nothing is written). With `sent`
    (these bytes, already sent while they arrived), storing is completing that upload."""
    with ctx.db() as conn:
        existing = _find(conn, custody.case_id, sha256)
        if existing is None:  # before storing anything; _record asks again, under a lock
            spelled_as_known(conn, custody.case_id)
    if existing is not None:
        return _duplicate(ctx, existing, sha256, filename, custody)
    stored = None
    if sent is not None and sent.sha256 == sha256:
        try:
            stored = sent.finish()
        except TransientError as exc:  # stored from the file below, or refused there
            log.warning("completing a streamed upload failed (%s); storing it again",
                        type(exc).__name__)
    try:
        if stored is None:
            with open(path, "rb") as f:
                stored = ctx.store.put_original(f, sha256, ctx.settings.limits.max_bytes)
    except ValueError as exc:
        raise InvalidMediaError(filename, str(exc)) from None
    if ctx.settings.jobs.cache_uploads:
        _cache_upload(ctx, path, sha256)
    try:
        video_id, units = _record(ctx, stored, filename, info, custody)
    except psycopg.errors.UniqueViolation:  # the same file ingested concurrently
        with ctx.db() as conn:
            found = _find(conn, custody.case_id, sha256)
        assert found is not None
        return _duplicate(ctx, found, sha256, filename, custody)
    log.info("ingested video %s (%d units)", video_id, len(units))
    ctx.queue_units(video_id, units)  # recorded, stored and audited whatever the broker says
    return IngestResult(video_id, sha256, "queued", False, filename)


def _duplicate(ctx: Context, existing: tuple[str, str, str], sha256: str, filename: str,
               custody: Custody) -> IngestResult:
    """The case has these bytes already: audited, nothing written (also for the loser of two
    concurrent uploads, which was answered without an audit row). The answer names the video
    as its record does (it named the new upload's name, which no record holds: bb43); the
    audit row keeps the name this upload came under."""
    ctx.audit(custody.uploader, "ingest.duplicate",
              {"video_id": existing[0], "case": custody.case_id, "sha256": sha256,
               "filename": filename})
    return IngestResult(existing[0], sha256, existing[1], True, existing[2])


def _cache_upload(ctx: Context, path: Path, sha256: str) -> None:
    """Link the stored upload into this home's cache of originals (see jobs.cache_uploads),
    then keep the cache inside its budget as a worker would."""
    from bodycam import cache as originals

    folder = originals.cache_dir(ctx.settings.home_dir)
    if originals.adopt(folder, path, sha256):
        with ctx.db() as conn:
            running = originals.running_originals(conn)
        originals.evict(folder, ctx.settings.jobs.cache_max_bytes, running | {sha256})


def _find(conn: Conn, case_id: str, sha256: str) -> tuple[str, str, str] | None:
    """The case's video of these bytes: (id, status, the file name it was recorded under)."""
    row = conn.execute(
        "SELECT id::text AS id, status, original_filename FROM videos WHERE case_id = %s"
        " AND sha256 = %s", (case_id, sha256),
    ).fetchone()
    return (str(row["id"]), str(row["status"]), str(row["original_filename"])) if row else None


def _record(ctx: Context, stored: StoredObject, filename: str, info: MediaInfo,
            custody: Custody) -> tuple[str, list[int]]:
    with ctx.db() as conn:
        spelled_as_known(conn, custody.case_id)
        row = conn.execute(
            "INSERT INTO videos (case_id, sha256, object_key, original_filename, size_bytes,"
            " container, codec, width_px, height_px, duration_s, media, uploader, officer,"
            " device, recorded_at, source, stage_times)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " jsonb_build_object('ingested', now())) RETURNING id::text AS id",
            (custody.case_id, stored.sha256, stored.key, filename, stored.size_bytes,
             info.container, info.codec, info.width_px, info.height_px, info.duration_s,
             json.dumps(info.as_json()), custody.uploader, custody.officer, custody.device,
             custody.recorded_at, custody.source),
        ).fetchone()
        assert row is not None
        video_id = str(row["id"])
        jobs.create_units(conn, video_id, info.duration_s, ctx.settings.jobs.chunk_s)
        audit.append(conn, ctx.audit_key, custody.uploader, "ingest", {
            "video_id": video_id, "case": custody.case_id, "sha256": stored.sha256,
            "filename": filename, "size_bytes": stored.size_bytes, "officer": custody.officer,
            "device": custody.device, "source": custody.source,
            "recorded_at": custody.recorded_at.isoformat() if custody.recorded_at else None})
        units = jobs.pending_units(conn, video_id)
    return video_id, units


# --- the incoming/ prefix ------------------------------------------------------------------


def incoming_field(name: str) -> str:
    """How a rejection names a custody field of an incoming/ object: it has no command line
    (a rejection said `missing --device` to whoever dropped the file), and its sidecar is
    named as the object plus `.json` (gen1.json beside gen1.mp4 was not read: bb40)."""
    return f"{name} (an object tag, or a key of its sidecar JSON, the object's name + .json)"


INCOMING_ACTOR = "system:incoming"  # who ingests what arrives in incoming/ (nobody verified)
MAX_SIDECAR_BYTES = 64 * 1024
MAX_INCOMING_ATTEMPTS = 5  # unexpected failures of one object before it is given up
# A claim left `working` this long was dropped (a worker killed, the database lost before the
# outcome was written): the object is handled again, by the reconciler too (bb36).
STALE_CLAIM_S = 600


def incoming_metadata(ctx: Context, key: str, found: ObjectInfo | None) -> dict[str, str]:
    """Custody fields of an object in incoming/: its sidecar JSON first (`found`, as listed
    with the object), then its tags.

    Raises InvalidInputError (permanent: the object is rejected once, kept, never retried)
    when the sidecar is too large, not valid JSON, or not a JSON object of plain values.
    """
    meta = ctx.store.get_tags(key)
    sidecar = f"{key}.json"
    if found is not None:
        if found.size_bytes > MAX_SIDECAR_BYTES:
            raise InvalidInputError(f"{sidecar}: sidecar is {found.size_bytes} bytes, more than"
                                    f" {MAX_SIDECAR_BYTES}")
        try:
            loaded = json.loads(ctx.store.get_bytes(sidecar))
        except ValueError:
            raise InvalidInputError(f"{sidecar}: sidecar is not valid JSON") from None
        if not isinstance(loaded, dict):
            raise InvalidInputError(f"{sidecar}: sidecar must be a JSON object of custody fields"
                                    f" (case, officer, device), not a {type(loaded).__name__}")
        bad = sorted(str(k) for k, v in loaded.items()
                     if v is not None and not isinstance(v, str | int | float | bool))
        if bad:
            raise InvalidInputError(f"{sidecar}: sidecar fields must be plain values, not lists"
                                    f" or objects ({', '.join(bad)[:200]})")
        meta.update({str(k): str(v) for k, v in loaded.items() if v is not None})
    return meta


def _arrival(objects: dict[str, ObjectInfo], key: str) -> str:
    """When the store says an object and its sidecar were last put: a new put of either is
    a new drop of the object, whatever its bytes (the etag of the same bytes is the same)."""
    obj, sidecar = objects.get(key), objects.get(f"{key}.json")
    return f"{obj.modified if obj else ''}|{sidecar.modified if sidecar else ''}"


def _listed(ctx: Context, key: str) -> dict[str, ObjectInfo]:
    """An object and its sidecar as the store lists them now (one listing)."""
    return {o.key: o for o in ctx.store.list(key) if o.key in (key, f"{key}.json")}


def _drop(objects: dict[str, ObjectInfo], key: str) -> tuple[str, str] | None:
    return (objects[key].etag, _arrival(objects, key)) if key in objects else None


def current_drop(ctx: Context, key: str) -> tuple[str, str] | None:
    """(etag, arrival) of an object in incoming/ now; None where there is none."""
    return _drop(_listed(ctx, key), key)


def ingest_incoming(ctx: Context, key: str, etag: str) -> IngestResult | None:
    """Ingest one object put straight into incoming/ (by an S3 event or the reconciler).

    Only an object that exists now with that etag is handled (a forged or stale request does
    nothing and records nothing). Each drop of an object (key, etag, and when it and its
    sidecar were put) is handled once: the outcome is recorded in incoming_objects, a
    rejected object stays where it is with its reason and is not retried until it or its
    sidecar is put again, an accepted one moves into the evidence store (unless it was put
    again meanwhile: that drop keeps its own turn). An unexpected failure is retried by the
    reconciler at most MAX_INCOMING_ATTEMPTS times, then rejected with its reason; a claim
    left `working` for STALE_CLAIM_S is taken over. A sidecar's key stands for its video.

    Nobody authenticated the upload, so the audit actor is `system:incoming`; an `uploader`
    named in the sidecar or tags is recorded only as an unverified claim.
    """
    if key.endswith(".json"):  # a sidecar put (after its video, say): its video's turn
        video = key[:-len(".json")]
        now = None if video.endswith(".json") else current_drop(ctx, video)
        if now is None:
            return None
        key, etag = video, now[0]
    if not key.startswith(INCOMING) or key.endswith("/"):
        return None
    objects = _listed(ctx, key)
    now = _drop(objects, key)
    if now is None or now[0] != etag:
        log.info("incoming object %s: no such object with that etag now; nothing to do", key)
        return None
    arrival = now[1]
    with ctx.db() as conn:
        claimed = conn.execute(
            "INSERT INTO incoming_objects (key, etag, state, attempts, arrival)"
            " VALUES (%s, %s, 'working', 1, %s)"
            " ON CONFLICT (key, etag) DO UPDATE SET state = 'working', updated_at = now(),"
            " attempts = CASE WHEN incoming_objects.state IN ('ingested', 'rejected') THEN 1"
            "                 ELSE incoming_objects.attempts + 1 END,"
            " arrival = EXCLUDED.arrival"
            " WHERE (incoming_objects.state = 'working'"
            "        AND incoming_objects.updated_at < now() - make_interval(secs => %s))"
            " OR incoming_objects.state = 'error'"
            " OR (incoming_objects.state IN ('ingested', 'rejected')"
            "     AND incoming_objects.arrival <> ''"
            "     AND incoming_objects.arrival <> EXCLUDED.arrival)"
            " RETURNING attempts", (key, etag, arrival, STALE_CLAIM_S),
        ).fetchone()
    if claimed is None:
        return None  # already handled, or being handled
    attempts = int(claimed["attempts"])
    filename = key[len(INCOMING):].rsplit("/", 1)[-1]
    claimed_uploader: str | None = None
    try:
        meta = incoming_metadata(ctx, key, objects.get(f"{key}.json"))
        claimed_uploader = meta.get("uploader")
        custody = Custody(
            case_id=meta.get("case", meta.get("case_id", "")),
            officer=meta.get("officer", ""), device=meta.get("device", ""),
            uploader=INCOMING_ACTOR,
            recorded_at=parse_recorded_at(meta.get("recorded_at"),
                                          incoming_field("recorded_at")),
            source="incoming",
        )
        with tempfile.NamedTemporaryFile(suffix=Path(filename).suffix) as tmp:
            ctx.store.download_to(key, tmp.name)
            info = probe(Path(tmp.name), ctx.settings.limits, name=key)
            result = _store_and_record(ctx, Path(tmp.name), sha256_file(tmp.name), filename,
                                       info, custody)
    except PermanentError as exc:
        _reject_incoming(ctx, key, etag, str(exc))
        raise
    except BaseException as exc:
        if attempts >= MAX_INCOMING_ATTEMPTS:
            _reject_incoming(ctx, key, etag, f"gave up after {attempts} attempts: last failure"
                                             f" {type(exc).__name__}")
        else:
            _mark_incoming(ctx, key, etag, "error", None,
                           f"attempt {attempts}: {type(exc).__name__}; will retry")
        raise
    _mark_incoming(ctx, key, etag, "ingested", result.video_id, None)
    ctx.audit(INCOMING_ACTOR, "ingest.incoming", {
        "video_id": result.video_id, "case": custody.case_id, "object": key, "etag": etag,
        "duplicate": result.duplicate,
        "claimed_uploader": claimed_uploader[:200] if claimed_uploader else None,
        "claim_verified": False})
    remove_drop(ctx, key, etag, arrival)
    return result


def remove_drop(ctx: Context, key: str, etag: str, arrival: str) -> bool:
    """Delete an ingested object and its sidecar, unless either was put again while it was
    read (a dock re-sending, two cameras' files of one name): that drop is left for its own
    turn. The new footage was deleted unseen (bb36). Returns whether it was deleted."""
    objects = _listed(ctx, key)
    if _drop(objects, key) != (etag, arrival):
        log.info("incoming object %s was put again while it was ingested: kept for its turn",
                 key)
        return False
    ctx.store.delete(key)
    if f"{key}.json" in objects:
        ctx.store.delete(f"{key}.json")
    return True


def _reject_incoming(ctx: Context, key: str, etag: str, reason: str) -> None:
    _mark_incoming(ctx, key, etag, "rejected", None, reason)
    ctx.audit(INCOMING_ACTOR, "ingest.rejected", {"object": key, "etag": etag,
                                                  "reason": reason})
    log.warning("rejected incoming object %s: %s", key, reason)


def _mark_incoming(ctx: Context, key: str, etag: str, state: str, video_id: str | None,
                   error: str | None) -> None:
    with ctx.db() as conn:
        conn.execute(
            "UPDATE incoming_objects SET state = %s, video_id = %s, error = %s,"
            " updated_at = now() WHERE key = %s AND etag = %s",
            (state, video_id, error, key, etag),
        )


def unhandled_incoming(ctx: Context) -> list[tuple[str, str]]:
    """(key, etag) of objects in incoming/ that no event or earlier pass has handled: new
    ones, those put again (or given a sidecar) since they were handled, those whose earlier
    attempts failed unexpectedly (state `error`: retried, bounded), and those whose claim
    was left `working` by a dead worker or a lost database (STALE_CLAIM_S)."""
    objects = {o.key: o for o in ctx.store.list(INCOMING)}
    listed = [(key, o.etag, _arrival(objects, key)) for key, o in objects.items()
              if not key.endswith(".json") and not key.endswith("/")]
    if not listed:
        return []
    with ctx.db() as conn:
        rows = {(str(r["key"]), str(r["etag"])): r for r in conn.execute(
            "SELECT key, etag, state, arrival,"
            " updated_at < now() - make_interval(secs => %s) AS stale"
            " FROM incoming_objects WHERE key = ANY(%s)",
            (STALE_CLAIM_S, [k for k, _e, _a in listed])).fetchall()}

    def due(row: dict[str, Any] | None, arrival: str) -> bool:
        if row is None or row["state"] == "error":
            return True
        if row["state"] == "working":
            return bool(row["stale"])
        return bool(row["arrival"]) and row["arrival"] != arrival

    return [(key, etag) for key, etag, arrival in listed if due(rows.get((key, etag)), arrival)]
