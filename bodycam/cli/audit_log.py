"""Audit commands through the server: verify, export, export-key, verify-export."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bodycam.cli.base import (
    app,
    client_call,
    date_option,
    err,
    export_to,
    fail,
    guarded,
    out,
)
from bodycam.errors import BodycamError

audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the whole chain; exit 0 with the row count only when it is intact."""
    verdict = client_call(lambda c: c.post("/api/v1/audit/verify"))
    if not verdict["ok"]:
        # A change with no audit row (an account's, made in the database) has no bad row.
        bad = verdict.get("first_bad_id")
        fail("audit log NOT intact: " + (f"first bad row {bad}: " if bad is not None else "")
             + str(verdict["reason"]))
    out.print(f"audit log intact: {verdict['count']} rows")


@audit_app.command("export")
def audit_export(
    output: Annotated[str, typer.Option("-o", "--output", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    date_from: Annotated[str | None, typer.Option("--from")] = None,
    date_to: Annotated[str | None, typer.Option("--to")] = None,
) -> None:
    """Export the audit log with a manifest (rows, SHA-256, chain head)."""
    date_option(date_from, "--from")
    date_option(date_to, "--to")
    m = export_to("/api/v1/exports/audit", output, fmt,
                {"format": fmt, "from": date_from, "to": date_to})
    err.print(f"wrote {m['rows']} audit rows to {output} (sha256 {m['sha256']}); "
              f"manifest {output}.manifest.json")


@audit_app.command("verify-export")
def audit_verify_export(
    path: str,
    key_file: Annotated[str | None, typer.Option(
        "--key-file", help="file holding the export key (`bodycam audit export-key`); "
                           "default: asked of the server (auditor)")] = None,
) -> None:
    """Check an export against its signed manifest (offline with --key-file): any change,
    removed row or re-computed chain fails. Without --key-file the key comes from the server,
    which also checks an audit export's first and last rows against the live log."""
    from pathlib import Path

    from bodycam import audit
    from bodycam.client import Client

    if not Path(path).is_file():
        fail(f"{path}: no such file")
    live: Any = None
    if key_file is not None:
        try:
            key = Path(key_file).read_text().strip()
        except OSError as exc:
            fail(f"{key_file}: cannot read the export key ({exc.strerror})")
    else:
        try:
            live = Client.connect()
            key = str(live.get("/api/v1/audit/export-key")["key"])
        except BodycamError as exc:
            if live is not None:
                live.close()
            fail("no export key: pass --key-file with the key from `bodycam audit export-key`"
                 f" ({exc})")
    try:
        verdict = guarded(lambda: audit.verify_export(Path(path), key))
        if not verdict.ok:
            where = f" (row {verdict.first_bad_id})" if verdict.first_bad_id else ""
            fail(f"{path}: export NOT intact{where}: {verdict.reason}")
        manifest = audit.read_manifest(Path(path))
        if live is not None and manifest.get("kind") == "audit":
            found = guarded(lambda: live.post("/api/v1/audit/check-live",
                                              {"manifest": manifest}))
            if found.get("problem"):
                fail(f"{path}: export NOT intact: {found['problem']}")
    finally:
        if live is not None:
            live.close()
    out.print(f"{path}: intact, {verdict.count} rows match the signed manifest")


@audit_app.command("export-key")
def audit_export_key() -> None:
    """Print the key that verifies export manifests: the Ed25519 public key of the server's
    signing key (give it to whoever checks exports offline; it cannot sign one)."""
    res = client_call(lambda c: c.get("/api/v1/audit/export-key"))
    out.print(str(res["key"]))
