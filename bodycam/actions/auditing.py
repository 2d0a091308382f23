"""Audit actions: verify the chain, list rows, exports with signed manifests, the export key."""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from bodycam import audit
from bodycam.accounts import User, refuse, require, require_now, require_role
from bodycam.context import Context
from bodycam.errors import InvalidInputError, NotFoundError
from bodycam.exports import export_audit, export_matches
from bodycam.timeparse import parse_period

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv")
OWNER = "owner.json"


def verify(ctx: Context, user: User) -> dict[str, object]:
    """Check the whole audit chain (auditor)."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "audit.verify")
        v = audit.verify(conn, ctx.audit_key, ctx.store)
    return {"ok": v.ok, "count": v.count, "first_bad_id": v.first_bad_id, "reason": v.reason}


def export_key(ctx: Context, user: User) -> str:
    """The key that verifies export manifests (auditor); each reveal is audited."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "audit.export")
        audit.append(conn, ctx.audit_key, user.name, "audit.export_key", {})
    return audit.export_key(ctx.export_signing_key)


def check_live(ctx: Context, user: User, manifest: dict[str, Any]) -> str | None:
    """Whether an audit export's first and last rows are in the live chain (auditor)."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "audit.verify")
        return audit.check_live(conn, manifest)


def rows(ctx: Context, user: User, limit: int, offset: int, actor: str | None = None,
         action: str | None = None, case: str | None = None, date_from: str | None = None,
         date_to: str | None = None) -> tuple[list[dict[str, Any]], bool]:
    """A page of audit rows (auditor), oldest first, with whether more follow."""
    start, end = parse_period(date_from, date_to)
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, "audit.export")
        found = conn.execute(
            "SELECT id, at, actor, action, details, prev_hash, hash FROM audit_log"
            " WHERE (%(actor)s::text IS NULL OR actor = %(actor)s)"
            " AND (%(action)s::text IS NULL OR action = %(action)s)"
            # In any letter case: the rows of a case are found however it was spelled,
            # a refused probe of `case-b` under CASE-B too (bb42).
            " AND (%(case)s::text IS NULL OR lower(details->>'case') = lower(%(case)s)"
            " OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(CASE WHEN jsonb_typeof("
            "details->'cases') = 'array' THEN details->'cases' ELSE '[]' END) AS c(name)"
            " WHERE lower(c.name) = lower(%(case)s)))"
            " AND (%(from)s::timestamptz IS NULL OR at >= %(from)s)"
            " AND (%(to)s::timestamptz IS NULL OR at <= %(to)s)"
            " ORDER BY id LIMIT %(limit)s OFFSET %(offset)s",
            {"actor": actor, "action": action, "case": case, "from": start, "to": end,
             "limit": limit + 1, "offset": offset}).fetchall()
        # The log names who searched for which subject, and why: reading it is on record
        # too, as exporting it is (bb23).
        shown = [int(r["id"]) for r in found[:limit]]
        audit.append(conn, ctx.audit_key, user.name, "audit.list", {
            "filters": {"actor": actor, "action": action, "case": case, "from": date_from,
                        "to": date_to},
            "offset": offset, "count": len(shown), "first_id": shown[0] if shown else None,
            "last_id": shown[-1] if shown else None})
    out = [audit.AuditRow(int(r["id"]), r["at"], r["actor"], r["action"], r["details"],
                          r["prev_hash"], r["hash"]).as_json() for r in found[:limit]]
    return out, len(found) > limit


def export_dir(ctx: Context) -> Path:
    """The private folder exports made through the server are written to (0700)."""
    folder = ctx.settings.server.export_dir or ctx.settings.home_dir / "exports"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder


def sweep_exports(ctx: Context) -> int:
    """Remove exports older than server.export_keep_days (they hold subject names and
    search purposes, outside retention); run before each new export; returns how many. The
    audit rows that record them stay, and whoever made one keeps their downloaded copy."""
    cutoff = time.time() - ctx.settings.server.export_keep_days * 86400
    removed = 0
    for folder in export_dir(ctx).iterdir():
        owner = folder / OWNER
        try:
            if owner.is_file() and owner.stat().st_mtime < cutoff:
                shutil.rmtree(folder)
                removed += 1
        except FileNotFoundError:
            continue
    if removed:
        log.info("removed %d exports older than %d days", removed,
                 ctx.settings.server.export_keep_days)
    return removed


def _new_export(ctx: Context, user: User, fmt: str) -> tuple[str, Path]:
    if fmt not in FORMATS:
        raise InvalidInputError(f"format {fmt}: choose jsonl or csv")
    sweep_exports(ctx)  # here, where exports live: the server's host
    export_id = str(uuid.uuid4())
    folder = export_dir(ctx) / export_id
    folder.mkdir(mode=0o700)
    fd = os.open(folder / OWNER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps({"user": user.name}))
    return export_id, folder / f"export.{fmt}"


def make_matches_export(ctx: Context, user: User, fmt: str, status: str | None,
                        case: str | None) -> dict[str, object]:
    """Export matches with a signed manifest on the server (auditor); audited (`export`)."""
    return _export(ctx, user, "matches.export", fmt,
                   functools.partial(export_matches, status=status, case_id=case))


def make_audit_export(ctx: Context, user: User, fmt: str, date_from: str | None,
                      date_to: str | None) -> dict[str, object]:
    """Export the audit log (a window) with a signed manifest (auditor); audited."""
    start, end = parse_period(date_from, date_to)
    return _export(ctx, user, "audit.export", fmt,
                   functools.partial(export_audit, date_from=start, date_to=end))


def _export(ctx: Context, user: User, action: str, fmt: str,
            write: Callable[[Context, User, str, str, Path, str], dict[str, Any]]
            ) -> dict[str, object]:
    """Check the role, write the export and its manifest into a new owner-only folder
    (`write(ctx, user, action, fmt, path, export_id)`: the right is named once)."""
    with ctx.db() as conn:
        require(conn, ctx.audit_key, user, action)
    export_id, path = _new_export(ctx, user, fmt)
    try:
        manifest = write(ctx, user, action, fmt, path, export_id)
    except BaseException:  # refused at the end (the account changed meanwhile), or failed
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    _owner_only(path.parent)
    return {"export_id": export_id, "manifest": manifest}


def _owner_only(folder: Path) -> None:
    for p in folder.iterdir():
        os.chmod(p, 0o600)


@dataclass(frozen=True)
class ExportFile:
    """An export's file, or its manifest, being served."""

    name: str
    media_type: str
    body: IO[bytes]  # open at its start; the route reads `span` of it
    size: int
    span: tuple[int, int] | None  # (first, last) byte of a range; None: the whole file


def _export_data(ctx: Context, export_id: str) -> Path | None:
    """The data file of a finished export (its owner recorded), or None."""
    try:
        folder = export_dir(ctx) / str(uuid.UUID(export_id))
    except ValueError:
        return None
    if not (folder / OWNER).is_file():
        return None
    return next((p for p in folder.iterdir() if p.name.startswith("export.")
                 and not p.name.endswith(".manifest.json")), None)


def export_file(ctx: Context, user: User, export_id: str, manifest: bool,
                byte_range: str | None = None,
                span_of: Callable[[int], tuple[int, int] | None] = lambda _size: None
                ) -> ExportFile:
    """An export or its manifest, only to the account that made it (others refused, audited
    under the export and every case it holds); each download audited (`export.download`, its
    part and the range asked for, `span_of(size)`) once the file is open, and a range that
    cannot be served refused before anything is recorded. (Ranges were served outside
    `deps.parse_range` and each request recorded as the whole export, a 416 too; manifests
    were not recorded; a refusal named no export or case: bb27.)"""
    with ctx.db() as conn:
        data = _export_data(ctx, export_id)
        # What was delivered, as the export's own row names it (its id alone could not be
        # tied to a content or a case: bb23); a refusal names it too, a role's as well (bb28).
        made = json.loads(audit.manifest_path(data).read_text()) if data else {}
        case, cases, about = made.get("case"), made.get("cases"), export_id if data else None
        require_role(conn, ctx.audit_key, user, "export.download", case, about, cases)
        if data is None:
            raise NotFoundError(f"no export {export_id[:64]}")
        if json.loads((data.parent / OWNER).read_text()).get("user") != user.name:
            refuse(conn, ctx.audit_key, user, "export.download",
                   f"export {export_id} was made by another account", case, about,
                   cases=cases)
        path = audit.manifest_path(data) if manifest else data
        body = path.open("rb")
        try:
            size = os.fstat(body.fileno()).st_size
            span = span_of(size)
            require_now(conn, ctx.audit_key, user, "export.download")
            audit.append(conn, ctx.audit_key, user.name, "export.download", {
                "export_id": export_id, "part": "manifest" if manifest else "export",
                "kind": made.get("kind"), "sha256": made.get("sha256"), "rows": made.get("rows"),
                **{k: made[k] for k in ("case", "cases") if made.get(k)},
                **({"range": byte_range} if span is not None else {})})
        except BaseException:
            body.close()
            raise
    kind = ("application/json" if manifest else "text/csv" if data.suffix == ".csv"
            else "application/x-ndjson")
    return ExportFile(path.name, kind, body, size, span)
