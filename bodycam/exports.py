"""Exports for auditors and courts: audit log and matches, each with a signed manifest."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bodycam import audit
from bodycam.accounts import User, as_spelled, require_now
from bodycam.context import Context
from bodycam.matching import list_matches

MATCH_COLUMNS = ("match_id", "subject_id", "subject", "case", "video_id", "track_id", "start_s",
                 "end_s", "similarity", "threshold", "model", "status", "created_at",
                 "reviewers", "round", "earlier_reviews", "reopened_by", "reopen_reason",
                 "reopened_from", "entry", "enrolled_by", "reviews", "decided_at")


def _head(ctx: Context) -> dict[str, Any] | None:
    with ctx.db() as conn:
        row = conn.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    return {"id": int(row["id"]), "hash": str(row["hash"])} if row else None


def _record(ctx: Context, user: User, action: str, details: dict[str, Any]) -> None:
    """Audit an export once it is written, if the account may still make it (`require_now`:
    one disabled or its role taken while the file was written is refused, audited)."""
    with ctx.db() as conn:
        require_now(conn, ctx.audit_key, user, action)
        audit.append(conn, ctx.audit_key, user.name, "export", details)


def export_audit(ctx: Context, user: User, action: str, fmt: str, path: Path, export_id: str,
                 date_from: datetime | None = None, date_to: datetime | None = None
                 ) -> dict[str, Any]:
    """Write the audit log (optionally a time window) and its manifest; the export is audited
    (`action` names the right it needs; the row names `export_id`, as its downloads do)."""
    with ctx.db() as conn:
        records = [r.as_json() for r in audit.rows(conn, date_from, date_to)]
    # The exported range's ends in the live chain, signed with the manifest: rows removed
    # from the file (and the chain recomputed) no longer reach them.
    first = ({"id": records[0]["id"], "hash": records[0]["hash"],
              "prev_hash": records[0]["prev_hash"]} if records else None)
    last = {"id": records[-1]["id"], "hash": records[-1]["hash"]} if records else None
    manifest = audit.write_export(
        path, "audit", fmt, records, audit.CSV_COLUMNS, _head(ctx),
        {"first_row": first, "last_row": last,
         "from": date_from.isoformat() if date_from else None,
         "to": date_to.isoformat() if date_to else None, "exported_by": user.name,
         "exported_at": datetime.now(UTC).isoformat()}, ctx.export_signing_key)
    _record(ctx, user, action, {"export_id": export_id, "kind": "audit", "format": fmt,
                                "rows": manifest["rows"], "sha256": manifest["sha256"],
                                "from": manifest["from"], "to": manifest["to"]})
    return manifest


def export_matches(ctx: Context, user: User, action: str, fmt: str, path: Path,
                   export_id: str, status: str | None = None, case_id: str | None = None
                   ) -> dict[str, Any]:
    """Write matches with their review state and a manifest; the export is audited, naming
    every case whose matches it holds (`cases`: an export of all cases was recorded with no
    case, and the auditor's case filter missed it: bb23)."""
    with ctx.db() as conn:
        case_id = as_spelled(conn, case_id) if case_id is not None else None
        records = [{k: j[k] for k in MATCH_COLUMNS}
                   for j in (m.export_json() for m in
                             list_matches(conn, status, case_id, with_reviews=True))]
    manifest = audit.write_export(
        path, "matches", fmt, records, MATCH_COLUMNS, _head(ctx),
        {"status": status, "case": case_id, "cases": sorted({str(r["case"]) for r in records}),
         "exported_by": user.name, "exported_at": datetime.now(UTC).isoformat()},
        ctx.export_signing_key)
    _record(ctx, user, action, {"export_id": export_id, "kind": "matches", "format": fmt,
                                "rows": manifest["rows"], "sha256": manifest["sha256"],
                                "case": case_id, "cases": manifest["cases"]})
    return manifest
