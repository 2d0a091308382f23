"""Tamper-evident audit log: append-only, hash-chained, sealed, anchored; verifiable exports.

Each row's `hash` is SHA-256 over its canonical content (id, at, actor, action, details) and
the previous row's hash, so anyone can re-check a chain, offline too. Each row's `seal` is an
HMAC of its hash with a key the database never holds: a database superuser who edits a row
and recomputes the chain still cannot forge the seals. After every commit the head (last id
and hash) is written outside the database, to the object store, which exposes rows deleted
from the end of the log.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bodycam.db import Conn
from bodycam.errors import InvalidInputError, TransientError

GENESIS = "0" * 64
ANCHOR_KEY = "audit/head.json"
_LOCK = 727002
_pending: weakref.WeakKeyDictionary[Conn, tuple[int, str]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class AuditRow:
    """One audit record."""

    id: int
    at: datetime
    actor: str
    action: str
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def as_json(self) -> dict[str, Any]:
        """The exported form."""
        return {"id": self.id, "at": _ts(self.at), "actor": self.actor, "action": self.action,
                "details": self.details, "prev_hash": self.prev_hash, "hash": self.hash}


def _ts(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(row_id: int, at: datetime | str, actor: str, action: str,
              details: dict[str, Any], prev_hash: str) -> bytes:
    """The exact bytes a row's hash covers (sorted keys, no spaces, UTF-8)."""
    body = {"id": row_id, "at": at if isinstance(at, str) else _ts(at), "actor": actor,
            "action": action, "details": details, "prev_hash": prev_hash}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(row_id: int, at: datetime | str, actor: str, action: str,
             details: dict[str, Any], prev_hash: str) -> str:
    """SHA-256 (hex) of a row's canonical content."""
    return hashlib.sha256(canonical(row_id, at, actor, action, details, prev_hash)).hexdigest()


def seal(key: str, hash_hex: str) -> str:
    """HMAC-SHA-256 of a row hash with the audit key."""
    return hmac.new(key.encode(), hash_hex.encode(), hashlib.sha256).hexdigest()


def append(conn: Conn, key: str, actor: str, action: str, details: dict[str, Any]) -> AuditRow:
    """Add a row inside the caller's transaction: if it fails, the action fails with it."""
    # Round-trip the details through JSON so the hash covers exactly what jsonb returns.
    details = json.loads(json.dumps(details, default=str))
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
    last = conn.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    row_id = int(last["id"]) + 1 if last else 1
    prev = str(last["hash"]) if last else GENESIS
    at = datetime.now(UTC)
    digest = row_hash(row_id, at, actor, action, details, prev)
    conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, details, prev_hash, hash, seal)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (row_id, at, actor, action, json.dumps(details), prev, digest, seal(key, digest)))
    _pending[conn] = (row_id, digest)
    return AuditRow(row_id, at, actor, action, details, prev, digest)


def anchor_after_commit(conn: Conn, store: Any, key: str) -> None:
    """Write the committed head outside the database (called after commit)."""
    head = _pending.pop(conn, None)
    if head is None:
        return
    current = read_anchor(store)
    if current and int(current["id"]) >= head[0]:
        return  # a later head was anchored already
    body = {"id": head[0], "hash": head[1], "seal": seal(key, f"anchor:{head[0]}:{head[1]}")}
    try:
        store.put_bytes(ANCHOR_KEY, json.dumps(body).encode(), "application/json")
    except Exception as exc:
        raise TransientError(f"audit row {head[0]} committed but its anchor failed: "
                             f"{type(exc).__name__}") from exc


def read_anchor(store: Any) -> dict[str, Any] | None:
    """The last anchored head, if any."""
    if not store.exists(ANCHOR_KEY):
        return None
    loaded: dict[str, Any] = json.loads(store.get_bytes(ANCHOR_KEY))
    return loaded


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification."""

    ok: bool
    count: int
    first_bad_id: int | None = None
    reason: str | None = None


def verify(conn: Conn, key: str, anchor: dict[str, Any] | None) -> Verdict:
    """Walk the whole log: ids contiguous, links, hashes, seals, and the external anchor."""
    prev = GENESIS
    expected_id = 1
    count = 0
    last_hash = GENESIS
    with conn.cursor(name="audit_verify") as cur:
        cur.itersize = 2000
        cur.execute("SELECT id, at, actor, action, details, prev_hash, hash, seal"
                    " FROM audit_log ORDER BY id")
        for r in cur:
            rid = int(r["id"])
            if rid != expected_id:
                return Verdict(False, count, expected_id,
                               f"row {expected_id} is missing (next row is {rid}): deleted")
            if r["prev_hash"] != prev:
                return Verdict(False, count, rid, f"row {rid} does not link to row {rid - 1}")
            digest = row_hash(rid, r["at"], r["actor"], r["action"], r["details"],
                              r["prev_hash"])
            if digest != r["hash"]:
                return Verdict(False, count, rid, f"row {rid} content does not match its hash:"
                                                  " changed")
            if not hmac.compare_digest(seal(key, digest), str(r["seal"])):
                return Verdict(False, count, rid, f"row {rid} has an invalid seal: written or"
                                                  " rewritten outside the application")
            prev = last_hash = digest
            expected_id += 1
            count += 1
    if anchor is not None:
        aid = int(anchor["id"])
        if not hmac.compare_digest(seal(key, f"anchor:{aid}:{anchor['hash']}"),
                                   str(anchor.get("seal", ""))):
            return Verdict(False, count, aid, "the external anchor has an invalid seal")
        if aid > count:
            return Verdict(False, count, count + 1,
                           f"rows {count + 1}..{aid} are missing: the anchored head is row {aid}"
                           " but the log ends earlier (deleted)")
        row = conn.execute("SELECT hash FROM audit_log WHERE id = %s", (aid,)).fetchone()
        if row is None or row["hash"] != anchor["hash"]:
            return Verdict(False, count, aid, f"row {aid} differs from the anchored head")
    del last_hash
    return Verdict(True, count)


def rows(conn: Conn, date_from: datetime | None = None, date_to: datetime | None = None
         ) -> Iterator[AuditRow]:
    """Audit rows in order, optionally within [from, to]."""
    with conn.cursor(name="audit_rows") as cur:
        cur.itersize = 2000
        cur.execute("SELECT id, at, actor, action, details, prev_hash, hash FROM audit_log"
                    " WHERE (%s::timestamptz IS NULL OR at >= %s::timestamptz)"
                    " AND (%s::timestamptz IS NULL OR at <= %s::timestamptz) ORDER BY id",
                    (date_from, date_from, date_to, date_to))
        for r in cur:
            yield AuditRow(int(r["id"]), r["at"], r["actor"], r["action"], r["details"],
                           r["prev_hash"], r["hash"])


CSV_COLUMNS = ("id", "at", "actor", "action", "details", "prev_hash", "hash")


def _serialise(records: Iterable[dict[str, Any]], fmt: str, columns: tuple[str, ...]) -> bytes:
    if fmt == "jsonl":
        return b"".join(json.dumps(r, sort_keys=True, ensure_ascii=False).encode() + b"\n"
                        for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in records:
            w.writerow([json.dumps(r[c], sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=False) if isinstance(r[c], dict | list)
                        else r[c] for c in columns])
        return buf.getvalue().encode()
    raise InvalidInputError(f"--format {fmt}: use jsonl or csv")


def write_export(path: Path, kind: str, fmt: str, records: list[dict[str, Any]],
                 columns: tuple[str, ...], head: dict[str, Any] | None,
                 extra: dict[str, Any]) -> dict[str, Any]:
    """Write an export and its manifest (`FILE.manifest.json`); returns the manifest."""
    data = _serialise(records, fmt, columns)
    path.write_bytes(data)
    manifest = {"kind": kind, "format": fmt, "file": path.name, "rows": len(records),
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "chain_head": head, "columns": list(columns), **extra}
    manifest_path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def manifest_path(path: Path) -> Path:
    """Where an export's manifest lives."""
    return path.with_name(path.name + ".manifest.json")


def verify_export(path: Path) -> Verdict:
    """Check an export offline against its manifest: bytes, row count, and for audit
    exports every row's hash and link. Any changed byte fails."""
    mpath = manifest_path(path)
    if not mpath.exists():
        return Verdict(False, 0, None, f"no manifest beside the export ({mpath.name})")
    try:
        manifest = json.loads(mpath.read_text())
    except ValueError:
        return Verdict(False, 0, None, "the manifest is not valid JSON")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return Verdict(False, 0, None, "the file's SHA-256 differs from the manifest: altered")
    records = _parse(data, manifest["format"], tuple(manifest.get("columns", CSV_COLUMNS)))
    if len(records) != manifest.get("rows"):
        return Verdict(False, len(records), None, "row count differs from the manifest")
    if manifest.get("kind") == "audit":
        prev: str | None = None
        for r in records:
            rid = int(r["id"])
            if prev is not None and r["prev_hash"] != prev:
                return Verdict(False, len(records), rid, f"row {rid} does not link to the previous")
            if row_hash(rid, r["at"], r["actor"], r["action"], r["details"],
                        r["prev_hash"]) != r["hash"]:
                return Verdict(False, len(records), rid, f"row {rid} does not match its hash")
            prev = r["hash"]
        head = manifest.get("last_row")
        if records and head and (head["id"], head["hash"]) != (int(records[-1]["id"]), prev):
            return Verdict(False, len(records), None, "the last row differs from the manifest")
    return Verdict(True, len(records))


def _parse(data: bytes, fmt: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    reader = csv.reader(io.StringIO(data.decode()))
    header = next(reader, None)
    if header is None or tuple(header) != columns:
        raise InvalidInputError("the CSV header differs from the manifest's columns")
    out = []
    for rec in reader:
        row: dict[str, Any] = dict(zip(columns, rec, strict=True))
        if "details" in row:
            row["details"] = json.loads(row["details"])
        out.append(row)
    return out
