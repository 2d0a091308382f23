"""Tamper-evident audit log: append-only, hash-chained, sealed, anchored; verifiable exports.

Each row's `hash` is SHA-256 over its canonical content (id, at, actor, action, details) and
the previous row's hash, so anyone can re-check a chain, offline too. Each row's `seal` is an
HMAC of its hash with a key the database never holds: a database superuser who edits a row
and recomputes the chain still cannot forge the seals. The server holds the audit key; worker
hosts hold only a key derived from it (`worker_key`), which seals rows of system actors alone.

Rows deleted from the end of the log leave a valid chain behind, so the head is recorded in
two places the verifier cross-checks, neither of which can be rolled back by replaying an
older state:

- **Object store anchors, one object per row id** (`audit/anchors/<id, 12 digits>.json`),
  written after every commit and never overwritten or deleted by the application. Each holds
  the row's id and hash, sealed with the audit key (or the workers'). The verifier lists the
  anchors above the log's last row: a validly sealed one means rows were deleted from the end
  (putting back an older anchor cannot hide a newer one, because the newer object is still
  there); an anchor whose seal is wrong is reported as forged and ignored for the head, so a
  bogus anchor with a huge id never stops valid anchoring (anchoring writes its own object
  and reads nothing).
- **A database high-water mark** (`audit_head`, one row, updated in the same transaction as
  every append; a trigger lets it only move forward). An attacker must roll back both this row
  and every later anchor object to hide a deletion.

Exports carry a manifest signed with HMAC-SHA-256 under an export key derived from the audit
key (`export_key`); the manifest names the first and last rows (id and hash) of the exported
range of the live chain, so removing rows and recomputing the chain and the file's digest
breaks the signature. CSV cells that a spreadsheet would run as a formula are prefixed with
`'` (and a leading `'` is doubled), which the verifier undoes before re-checking row hashes.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import hmac
import io
import json
import logging
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bodycam.errors import InvalidInputError, TransientError

if TYPE_CHECKING:  # the CLI verifies exports with this module: no database driver for it
    from bodycam.db import Conn

log = logging.getLogger(__name__)

GENESIS = "0" * 64
ANCHOR_PREFIX = "audit/anchors/"
LEGACY_ANCHOR_KEY = "audit/head.json"  # the single, overwritable anchor of earlier versions
_ID_DIGITS = 12
_LOCK = 727002
_pending: weakref.WeakKeyDictionary[Conn, tuple[int, str]] = weakref.WeakKeyDictionary()
# Rows committed mid-block by `commit`, anchored when the block ends.
_committed: weakref.WeakKeyDictionary[Conn, tuple[int, str]] = weakref.WeakKeyDictionary()


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
    """HMAC-SHA-256 of a row hash with the audit key (or the workers' key, `worker_key`)."""
    return hmac.new(key.encode(), hash_hex.encode(), hashlib.sha256).hexdigest()


# The rows workers write, by actor and action: the only ones the workers' key seals. A row
# a worker would write with another actor or action (a new task) must be named here.
WORKER_ROWS = {
    "system:worker": frozenset({"processing.done", "processing.failed",
                                "processing.quarantined", "redaction.failed"}),
    "system:matching": frozenset({"matches.create"}),
    "system:incoming": frozenset({"ingest", "ingest.duplicate", "ingest.incoming",
                                  "ingest.rejected"}),
    "system:retention": frozenset({"purge", "matches.end"}),
    "system:fixity": frozenset({"fixity.ok", "fixity.failed", "fixity.mismatch"}),
}


@functools.lru_cache(maxsize=4)  # verify derives it for every worker row and anchor
def worker_key(audit_key: str) -> str:
    """The key worker hosts seal their rows with, derived one-way from the audit key.

    A worker host is given this key, never the audit key: the rows and anchors it seals verify
    (the verifier derives the same key), but only the rows workers write (WORKER_ROWS: the
    processing, matching, incoming, retention and fixity rows of their system actors). A
    worker host that is taken over can therefore append no row in a person's name, and no
    login, account change or search, that verifies: the server holds the audit key alone.
    """
    return derive_key(audit_key, "worker seal")


def sealed_by(key: str, digest: str, actor: str, action: str, sealed: str) -> bool:
    """Whether a row's seal is valid: made with `key`, or with the workers' key derived from
    it on a row workers write (WORKER_ROWS). (A worker, holding only the workers' key, checks
    its own rows' seals with it and cannot check the server's.)"""
    if hmac.compare_digest(seal(key, digest), sealed):
        return True
    return action in WORKER_ROWS.get(actor, ()) and hmac.compare_digest(
        seal(worker_key(key), digest), sealed)


def lock(conn: Conn) -> None:
    """Take the audit log's lock until the caller's transaction ends (`append` takes it too).

    Every audited change holds it from its audit row to its commit (the account functions of
    migration 011 refuse to run without it), so state read after taking it stays as read
    until this transaction ends: an action whose answer depends on state that other audited
    actions change (an account, an assignment, a subject) takes this first, then reads that
    state, acts and appends. Two such actions at once then give one winner, and the other
    sees the winner's change and answers as it would have afterwards, without an audit row.
    Order: this lock, then the rows (two actions locking in the other order can deadlock);
    held_cases is the exception: a purge locks it first, and a hold or release follows.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))


def append(conn: Conn, key: str, actor: str, action: str, details: dict[str, Any]) -> AuditRow:
    """Add a row inside the caller's transaction: if it fails, the action fails with it."""
    # The hash covers the details as jsonb gives them back, so they are made jsonb first:
    # a round trip through Python's JSON alone kept 1e16 a float and -0.0 negative, where
    # jsonb gives 10000000000000000 and 0.0, and every later `verify` failed at that row.
    made = conn.execute("SELECT %s::jsonb AS d", (json.dumps(details, default=str),)).fetchone()
    assert made is not None
    details = made["d"]
    lock(conn)
    last = conn.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
    row_id = int(last["id"]) + 1 if last else 1
    prev = str(last["hash"]) if last else GENESIS
    at = datetime.now(UTC)
    digest = row_hash(row_id, at, actor, action, details, prev)
    conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, details, prev_hash, hash, seal)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (row_id, at, actor, action, json.dumps(details), prev, digest, seal(key, digest)))
    # The high-water mark moves in the same transaction (its trigger refuses to go back).
    conn.execute("INSERT INTO audit_head (last_id, last_hash) VALUES (%s, %s)"
                 " ON CONFLICT (singleton) DO UPDATE SET last_id = excluded.last_id,"
                 " last_hash = excluded.last_hash", (row_id, digest))
    _pending[conn] = (row_id, digest)
    return AuditRow(row_id, at, actor, action, details, prev, digest)


def commit(conn: Conn) -> None:
    """Commit what was appended so far, in the middle of a `Context.db` block whose request
    then fails (a refusal, a failed login): its rows stand, and they are anchored when the
    block ends, however it ends. A plain `conn.commit()` there left them unanchored: the
    rollback that followed the error forgot them, so deleting them went unnoticed."""
    conn.commit()
    if (head := _pending.pop(conn, None)) is not None:
        _committed[conn] = head


def after_rollback(conn: Conn, store: Any, key: str) -> None:
    """The transaction on `conn` was rolled back: its own rows are gone, nothing of them is
    anchored; rows committed earlier in the block (see `commit`) are anchored now (a failed
    anchor is logged, so the block's own error is the one the caller sees)."""
    _pending.pop(conn, None)
    if (head := _committed.pop(conn, None)) is not None:
        _anchor_or_log(store, key, head)


def anchor_key(row_id: int) -> str:
    """The object that anchors row `row_id` (zero-padded so keys sort by id)."""
    return f"{ANCHOR_PREFIX}{row_id:0{_ID_DIGITS}d}.json"


def anchor_seal(key: str, row_id: int, hash_hex: str) -> str:
    """The seal of an anchor object."""
    return seal(key, f"anchor:{row_id}:{hash_hex}")


def anchor_after_commit(conn: Conn, store: Any, key: str) -> None:
    """Write the committed head outside the database (called after commit).

    One new object per row id: nothing is read first, so no existing object (forged or
    not) can stop it, and nothing is overwritten, so no older state can be put back over it.
    """
    heads = [h for h in (_committed.pop(conn, None), _pending.pop(conn, None)) if h]
    if heads:
        _anchor_or_log(store, key, max(heads))


def _anchor_or_log(store: Any, key: str, head: tuple[int, str]) -> None:
    """Anchor a committed row; a failure is logged, not raised. The action is committed:
    answering 503 told the user it failed, and their retry was then refused as done already.
    Until the store is back the row is covered by the chain alone; the next action's anchor,
    or the server's backstop (anchor_head), covers it."""
    try:
        _write_anchor(store, key, head)
    except TransientError as exc:
        log.error("%s; it is anchored once the object store answers again", exc)


def anchor_head(conn: Conn, store: Any, key: str) -> bool:
    """Anchor the log's last row if no anchor object names it yet and its seal is valid (the
    server's backstop, run every `jobs.reconcile_interval_s`, for an anchor that failed while
    the object store was down); True when one was written. `key` is the audit key: the
    workers' key cannot check the server's rows."""
    last = conn.execute("SELECT id, actor, action, hash, seal FROM audit_log"
                        " ORDER BY id DESC LIMIT 1").fetchone()
    if last is None or store.exists(anchor_key(int(last["id"]))):
        return False
    if not sealed_by(key, str(last["hash"]), str(last["actor"]), str(last["action"]),
                     str(last["seal"])):
        # Not written by the application (one inserted in the database): anchoring it would
        # vouch for it, and deleting it afterwards would then look like a lost row.
        log.error("audit row %d has no valid seal: not anchored; run `bodycam audit verify`",
                  int(last["id"]))
        return False
    _write_anchor(store, key, (int(last["id"]), str(last["hash"])))
    log.warning("audit row %d anchored by the server's backstop", int(last["id"]))
    return True


def _write_anchor(store: Any, key: str, head: tuple[int, str]) -> None:
    body = {"id": head[0], "hash": head[1], "seal": anchor_seal(key, head[0], head[1])}
    try:
        store.put_bytes(anchor_key(head[0]), json.dumps(body).encode(), "application/json")
    except Exception as exc:
        raise TransientError(f"audit row {head[0]} committed but its anchor failed: "
                             f"{type(exc).__name__}") from exc


@dataclass(frozen=True)
class Anchor:
    """An anchor object as found in the store."""

    object_key: str
    id: int
    hash: str
    valid: bool  # its seal checks out with the audit key or the workers' key


def _anchor_keys_above(store: Any, row_id: int) -> Iterator[str]:
    """Keys of anchor objects whose id is above `row_id`.

    Keys are fixed-width digits, so "greater than" is a set of key prefixes: at each digit
    position, the same leading digits followed by any larger digit (at most 9 per position;
    most listings are empty). This reads only what lies above the log's end however long
    the log is.
    """
    digits = f"{max(row_id, 0):0{_ID_DIGITS}d}"
    for i, ch in enumerate(digits):
        for d in range(int(ch) + 1, 10):
            for obj in store.list(f"{ANCHOR_PREFIX}{digits[:i]}{d}"):
                yield obj.key


def _load_anchor(store: Any, object_key: str, key: str) -> Anchor:
    try:
        body = json.loads(store.get_bytes(object_key))
        aid, digest, sealed = int(body["id"]), str(body["hash"]), str(body.get("seal", ""))
    except (ValueError, KeyError, TypeError):
        return Anchor(object_key, -1, "", False)
    named = object_key == LEGACY_ANCHOR_KEY or object_key == anchor_key(aid)
    valid = named and any(hmac.compare_digest(anchor_seal(k, aid, digest), sealed)
                          for k in (key, worker_key(key)))
    return Anchor(object_key, aid, digest, valid)


def anchors_above(store: Any, key: str, row_id: int) -> list[Anchor]:
    """Anchor objects (valid or forged) that claim a row above `row_id`, by id."""
    found = [_load_anchor(store, k, key) for k in _anchor_keys_above(store, row_id)]
    if store.exists(LEGACY_ANCHOR_KEY):
        legacy = _load_anchor(store, LEGACY_ANCHOR_KEY, key)
        if legacy.id > row_id or not legacy.valid:
            found.append(legacy)
    return sorted(found, key=lambda a: a.id)


@dataclass(frozen=True)
class Verdict:
    """The outcome of a verification."""

    ok: bool
    count: int
    first_bad_id: int | None = None
    reason: str | None = None
    notes: tuple[str, ...] = field(default=())


def verify(conn: Conn, key: str, store: Any | None) -> Verdict:
    """Walk the whole log (ids contiguous, links, hashes, seals), then cross-check its end
    with the database high-water mark and the object store anchors (see the module doc),
    then check that every journalled account change was made through the audited path."""
    verdict = _verify_chain(conn, key, store)
    if not verdict.ok:
        return verdict
    bad = unaudited_account_changes(conn)
    if bad:
        first = bad[0]
        return Verdict(False, verdict.count, None,
                       f"{len(bad)} account change(s) with no audit row, made outside the"
                       f" audited path: change {first['id']} ({first['action']} of"
                       f" {first['details'].get('user')}, by {first['actor']}, at"
                       f" {_ts(first['at'])})", verdict.notes)
    return verdict


def unaudited_account_changes(conn: Conn) -> list[dict[str, Any]]:
    """Rows of the account_changes journal (migration 011) whose change was not backed by an
    audit row of this log: made directly in the database, not through the audited functions."""
    if conn.execute("SELECT to_regclass('public.account_changes') AS t").fetchone() == {"t": None}:
        return []
    return [dict(r) for r in conn.execute(
        "SELECT c.id, c.at, c.actor, c.action, c.details FROM account_changes c"
        " LEFT JOIN audit_log a ON a.id = c.audit_id WHERE a.id IS NULL ORDER BY c.id"
        " LIMIT 100").fetchall()]


def _verify_chain(conn: Conn, key: str, store: Any | None) -> Verdict:
    prev = GENESIS
    expected_id = 1
    count = 0
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
            if not sealed_by(key, digest, str(r["actor"]), str(r["action"]), str(r["seal"])):
                why = ("sealed with the workers' key but not a row workers write: a worker"
                       " host wrote it in another's name"
                       if hmac.compare_digest(seal(worker_key(key), digest), str(r["seal"]))
                       else "written or rewritten outside the application")
                return Verdict(False, count, rid, f"row {rid} has an invalid seal: {why}")
            prev = digest
            expected_id += 1
            count += 1
    # The head and the anchors are read after the walk: a row committed meanwhile is above
    # `count` but present, and is checked by the next verification, not reported as deleted.
    head = conn.execute("SELECT last_id, last_hash FROM audit_head").fetchone()
    if head is not None:
        hid = int(head["last_id"])
        if hid > count and _live_hash(conn, hid) != head["last_hash"]:
            return Verdict(False, count, count + 1,
                           f"rows {count + 1}..{hid} are missing: the database high-water mark"
                           f" is row {hid} but the log ends earlier (deleted)")
        if hid == count and head["last_hash"] != prev:
            return Verdict(False, count, hid, f"row {hid} differs from the database"
                                              " high-water mark")
    elif count:
        return Verdict(False, count, None, "the database high-water mark is missing: deleted")
    if store is None:
        return Verdict(True, count)
    above = anchors_above(store, key, count)
    deleted = [a for a in above if a.valid and _live_hash(conn, a.id) != a.hash]
    if deleted:
        top = deleted[-1]
        return Verdict(False, count, count + 1,
                       f"rows {count + 1}..{top.id} are missing: {top.object_key} anchors row"
                       f" {top.id} but the log ends earlier (deleted)")
    if count and store.exists(anchor_key(count)):
        own = _load_anchor(store, anchor_key(count), key)
        if own.valid and own.hash != prev:
            return Verdict(False, count, count, f"row {count} differs from its anchor")
    forged = [a for a in above if not a.valid]
    if forged:
        names = ", ".join(a.object_key for a in forged[:5])
        return Verdict(False, count, None,
                       f"{len(forged)} anchor object(s) with an invalid seal, written outside"
                       f" the application (forged): {names}; the rows themselves verify")
    return Verdict(True, count)


def _live_hash(conn: Conn, row_id: int) -> str | None:
    """The hash of a row as committed now (None when there is no such row)."""
    row = conn.execute("SELECT hash FROM audit_log WHERE id = %s", (row_id,)).fetchone()
    return str(row["hash"]) if row else None


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
# A spreadsheet runs a cell starting with one of these as a formula (OWASP: CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: object) -> str:
    """A CSV cell that no spreadsheet evaluates: `'` before a formula start (and before a
    leading `'`, so that `csv_value` undoes it exactly)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith((*_FORMULA_START, "'")) else text


def csv_value(cell: str) -> str:
    """The value a `csv_cell` was made from."""
    return cell[1:] if cell.startswith("'") else cell


def _serialise(records: Iterable[dict[str, Any]], fmt: str, columns: tuple[str, ...]) -> bytes:
    if fmt == "jsonl":
        return b"".join(json.dumps(r, sort_keys=True, ensure_ascii=False).encode() + b"\n"
                        for r in records)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        for r in records:
            w.writerow([csv_cell(json.dumps(r[c], sort_keys=True, separators=(",", ":"),
                                            ensure_ascii=False)
                                 if isinstance(r[c], dict | list) else r[c])
                        for c in columns])
        return buf.getvalue().encode()
    raise InvalidInputError(f"format {fmt}: use jsonl or csv")


def derive_key(audit_key: str, purpose: str) -> str:
    """A key for one purpose, derived one-way from the audit key (HMAC-SHA-256 as a PRF):
    holding it reveals neither the audit key nor the keys of other purposes."""
    return hmac.new(audit_key.encode(), f"bodycam {purpose} v1".encode(),
                    hashlib.sha256).hexdigest()


SIGNATURE_ALG = "Ed25519"


def _export_signer(signing_key: str) -> Ed25519PrivateKey:
    """The private key that signs export manifests, derived from the export signing key: a
    secret of the server's alone. (Until 2026-12-05 it was derived from the audit key, which
    every worker host holds to seal its rows: a worker host could re-sign a shortened export.)"""
    seed = bytes.fromhex(derive_key(signing_key, "export manifest signing ed25519"))
    return Ed25519PrivateKey.from_private_bytes(seed)


def export_key(signing_key: str) -> str:
    """The public key (Ed25519, hex) that verifies export manifests: auditors and courts are
    given it (`bodycam audit export-key`) to verify exports offline, and it cannot sign one.
    (Until 2026-12-05 manifests carried an HMAC whose key verifiers were given, and with it
    they could re-sign an export from which they had dropped rows.)"""
    public = _export_signer(signing_key).public_key()
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex()


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def write_export(path: Path, kind: str, fmt: str, records: list[dict[str, Any]],
                 columns: tuple[str, ...], head: dict[str, Any] | None,
                 extra: dict[str, Any], signing_key: str) -> dict[str, Any]:
    """Write an export and its signed manifest (`FILE.manifest.json`); returns the manifest."""
    data = _serialise(records, fmt, columns)
    path.write_bytes(data)
    manifest = {"kind": kind, "format": fmt, "file": path.name, "rows": len(records),
                "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                "chain_head": head, "columns": list(columns), **extra,
                "signature_alg": SIGNATURE_ALG}
    manifest["signature"] = _export_signer(signing_key).sign(_manifest_bytes(manifest)).hex()
    manifest_path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def manifest_path(path: Path) -> Path:
    """Where an export's manifest lives."""
    return path.with_name(path.name + ".manifest.json")


def read_manifest(path: Path) -> dict[str, Any]:
    """An export's manifest; raises InvalidInputError when it is missing or not JSON."""
    mpath = manifest_path(path)
    if not mpath.exists():
        raise InvalidInputError(f"no manifest beside the export ({mpath.name})")
    try:
        loaded = json.loads(mpath.read_text())
    except ValueError:
        raise InvalidInputError("the manifest is not valid JSON") from None
    if not isinstance(loaded, dict):
        raise InvalidInputError("the manifest is not a JSON object")
    return loaded


def _signature_ok(public_key: str, manifest: dict[str, Any]) -> bool:
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key.strip()))
        key.verify(bytes.fromhex(str(manifest.get("signature", ""))), _manifest_bytes(manifest))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_export(path: Path, public_key: str) -> Verdict:
    """Check an export offline: the manifest's signature (the export key, public), the
    file's bytes and row count, and for audit exports every row's hash and link, contiguous
    ids, and the first and last rows named by the signed manifest. Any changed byte fails."""
    try:
        manifest = read_manifest(path)
    except InvalidInputError as exc:
        return Verdict(False, 0, None, str(exc))
    alg = manifest.get("signature_alg")
    if alg != SIGNATURE_ALG:
        return Verdict(False, 0, None, f"the manifest is signed with {alg!r}, not"
                                       f" {SIGNATURE_ALG}: before 2026-12-05 every verifier"
                                       " held that key and could sign with it, so it proves"
                                       " nothing; export again")
    if not _signature_ok(public_key, manifest):
        return Verdict(False, 0, None, "the manifest's signature does not verify with the"
                                       " export key: the manifest was written or changed"
                                       " outside the application")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
        return Verdict(False, 0, None, "the file's SHA-256 differs from the manifest: altered")
    records = _parse(data, manifest["format"], tuple(manifest.get("columns", CSV_COLUMNS)))
    if len(records) != manifest.get("rows"):
        return Verdict(False, len(records), None, "row count differs from the manifest")
    if manifest.get("kind") == "audit":
        return _verify_audit_rows(records, manifest)
    return Verdict(True, len(records))


def _verify_audit_rows(records: list[dict[str, Any]], manifest: dict[str, Any]) -> Verdict:
    n = len(records)
    first, last = manifest.get("first_row"), manifest.get("last_row")
    if not records:
        ok = first is None and last is None
        return Verdict(ok, 0, None, None if ok else "the manifest names rows the file lacks")
    if not isinstance(first, dict) or not isinstance(last, dict):
        return Verdict(False, n, None, "the manifest does not name the first and last rows")
    prev: str | None = None
    expected = int(first["id"])
    for r in records:
        rid = int(r["id"])
        if rid != expected:
            return Verdict(False, n, expected, f"row {expected} is missing from the export")
        link = first.get("prev_hash") if prev is None else prev
        if r["prev_hash"] != link:
            return Verdict(False, n, rid, f"row {rid} does not link to the previous")
        if row_hash(rid, r["at"], r["actor"], r["action"], r["details"],
                    r["prev_hash"]) != r["hash"]:
            return Verdict(False, n, rid, f"row {rid} does not match its hash")
        prev = r["hash"]
        expected += 1
    if (int(records[0]["id"]), records[0]["hash"]) != (int(first["id"]), first.get("hash")):
        return Verdict(False, n, None, "the first row differs from the manifest")
    if (int(records[-1]["id"]), prev) != (int(last["id"]), last.get("hash")):
        return Verdict(False, n, None, "the last row differs from the manifest")
    return Verdict(True, n)


def check_live(conn: Conn, manifest: dict[str, Any]) -> str | None:
    """Whether an audit export's first and last rows are rows of the live chain, with the
    same hashes; returns the reason when not.

    Only an audit export's manifest is checked (InvalidInputError otherwise): one that names
    both ends, each by a row id and a hash, or neither (an export of no rows, which holds
    nothing to compare). Anything else once passed as "no problem": `{}`, one end alone, an
    id of 1.9 or true; and (bb42) a manifest of 49 rows that named neither end."""
    if manifest.get("kind") != "audit":
        raise InvalidInputError("not the manifest of an audit export (kind must be audit)")
    ends = {end: manifest.get(end) for end in ("first_row", "last_row")}
    if all(row is None for row in ends.values()):
        if manifest.get("rows") == 0 and type(manifest.get("rows")) is int:
            return None
        raise InvalidInputError("the manifest names no first_row and last_row: only an export"
                                " of no rows (rows 0) has none")
    for end, row in ends.items():
        if not (isinstance(row, dict) and type(row.get("id")) is int
                and 0 < row["id"] < 2 ** 63 and isinstance(row.get("hash"), str)):
            raise InvalidInputError(f"the manifest's {end} must name a row: its id (a whole "
                                    "number) and its hash")
    for end, row in ends.items():
        assert row is not None  # checked above
        live = conn.execute("SELECT hash FROM audit_log WHERE id = %s", (row["id"],)).fetchone()
        if live is None or live["hash"] != row["hash"]:
            return f"the export's {end.replace('_', ' ')} ({row['id']}) is not in the live log"
    return None


def _parse(data: bytes, fmt: str, columns: tuple[str, ...]) -> list[dict[str, Any]]:
    if fmt == "jsonl":
        # Records end at "\n" alone: splitlines() also splits at U+2028 and other separators
        # a note may hold, and one such note made every later export unverifiable (bb24).
        return [json.loads(line) for line in data.decode().split("\n") if line.strip()]
    reader = csv.reader(io.StringIO(data.decode()))
    header = next(reader, None)
    if header is None or tuple(header) != columns:
        raise InvalidInputError("the CSV header differs from the manifest's columns")
    out = []
    for rec in reader:
        row: dict[str, Any] = dict(zip(columns, (csv_value(c) for c in rec), strict=True))
        if "details" in row:
            row["details"] = json.loads(row["details"])
        out.append(row)
    return out
