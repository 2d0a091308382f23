"""The `bodycam` command: a thin shell over the library (settings in, library calls, output)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import quote

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bodycam.config import Settings, get_settings
from bodycam.errors import BodycamError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Bodycam: batch body-camera footage in, auditable face evidence out.")
err = Console(stderr=True)
out = Console()
T = TypeVar("T")
TERMINAL = ("done", "failed", "quarantined")


def error_line(message: str) -> None:
    """Print `error: message` as one line: control characters and terminal escapes in the
    message are shown escaped and rich markup in it (e.g. from a file name) is not applied."""
    from rich.text import Text

    from bodycam.media.files import printable

    err.print(Text.assemble(("error:", "red"), " ", printable(str(message))),
              markup=False, highlight=False, soft_wrap=True, crop=False)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    error_line(message)
    raise typer.Exit(code)


def settings() -> Settings:
    """Settings, or a clear error naming the bad variable."""
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = "BODYCAM_" + "__".join(str(p).upper() for p in first["loc"])
        fail(f"invalid setting {where}: {first['msg']}")


def guarded(fn: Callable[[], T]) -> T:
    """Run fn, turning Bodycam's typed errors into one-line messages and exit code 1."""
    try:
        return fn()
    except BodycamError as exc:
        fail(str(exc))


def context() -> Any:
    """The resolved runtime context."""
    from bodycam.context import Context

    return guarded(lambda: Context.load(settings()))


def emit_json(data: object) -> None:
    """JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


# --- the stack ------------------------------------------------------------------------------

@app.command()
def up() -> None:
    """Start the embedded stack (Postgres+pgvector, S3, Redis, workers, API) on loopback."""
    from bodycam.stack import Stack

    stack = Stack(settings())
    guarded(lambda: stack.up(progress=lambda m: err.print(f"  {m}")))
    st = stack.status()
    if not st["ok"]:
        fail(f"stack in {st['home']} is not fully up: {st['services']}, "
             f"{st['workers']} workers: see its logs/")
    err.print(f"stack up in {st['home']}: database, S3, broker, "
              f"{st['workers']} workers")


@app.command()
def down() -> None:
    """Stop what `bodycam up` started in this BODYCAM_HOME (external services are untouched)."""
    from bodycam.stack import Stack

    stopped = Stack(settings()).down(progress=lambda m: err.print(f"  {m}"))
    err.print(f"stopped {len(stopped)} processes" if stopped else "nothing was running")


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False
           ) -> None:
    """Each service's state, URLs, worker counts and queue depths; exit 1 unless all are up."""
    from bodycam.stack import Stack

    st = Stack(settings()).status()
    if as_json:
        emit_json(st)
    else:
        for key, value in st.items():
            out.print(f"{key:16} {value}", highlight=False)
    if not st["ok"]:
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply database migrations (production: run once before starting workers)."""
    from bodycam.db import migrate as run
    from bodycam.services import admin_database_url

    ctx = context()
    applied = guarded(lambda: run(admin_database_url(ctx.settings)))
    err.print(f"applied {len(applied)} migrations" if applied else "schema is up to date")


@app.command("events-token")
def events_token_cmd() -> None:
    """Print the bearer token the S3 notifier must send to POST /s3/events (admin)."""
    res = client_call(lambda c: c.get("/api/v1/events-token"))
    sys.stdout.write(str(res["token"]) + "\n")


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the HTTP API (every action, S3 event notifications, health)."""
    import uvicorn

    uvicorn.run("bodycam.api.app:app", host=host, port=port, log_level="warning")


# --- the session with the server --------------------------------------------------------------

def client_call(fn: Callable[[Any], T], url: str | None = None) -> T:
    """Run fn with a client of the resolved server; typed errors become one line, exit 1."""
    from bodycam.client import Client

    c = guarded(lambda: Client.connect(url))
    try:
        return guarded(lambda: fn(c))
    finally:
        c.close()


@app.command()
def login(
    url: Annotated[str | None, typer.Option("--url", help="server (default: BODYCAM_URL)")] = None,
    user: Annotated[str | None, typer.Option("--user", help="account name")] = None,
) -> None:
    """Log in with your account token (BODYCAM_TOKEN, else prompted); the session is stored
    0600 in your config dir."""
    import getpass
    import os

    from bodycam.client import Client, Target, resolve, write_credentials

    name = user or os.environ.get("BODYCAM_USER") or getpass.getuser()
    token = os.environ.get("BODYCAM_TOKEN")
    if not token:
        token = (getpass.getpass(f"token for {name}: ") if sys.stdin.isatty()
                 else sys.stdin.readline()).strip()
    if not token:
        fail("no token: set BODYCAM_TOKEN or type the account's token")
    target = guarded(lambda: resolve(url))
    c = Client(Target(target.url, None, None))
    try:
        session = guarded(lambda: c.post("/api/v1/auth/login", {"user": name, "token": token}))
    finally:
        c.close()
    path = write_credentials({"url": target.url, "user": session["user"],
                              "token": session["token"], "expires_at": session["expires_at"]})
    err.print(f"logged in to {target.url} as {session['user']} "
              f"({', '.join(session.get('roles', []))}); session until {session['expires_at']}"
              f" stored in {path}", markup=False, highlight=False, soft_wrap=True)


@app.command()
def logout() -> None:
    """Revoke the stored session on the server and delete it here."""
    from bodycam.client import Client, Target, delete_credentials, read_credentials

    creds = read_credentials()
    if not creds or not creds.get("token"):
        fail("not logged in")
    c = Client(Target(str(creds["url"]), str(creds["token"]), None))
    try:
        c.post("/api/v1/auth/logout")
    except BodycamError as exc:
        from bodycam.client import UnauthenticatedError

        if not isinstance(exc, UnauthenticatedError):  # an expired session is gone anyway
            delete_credentials()
            fail(f"{exc} (the local session was deleted)")
    finally:
        c.close()
    delete_credentials()
    err.print(f"logged out of {creds['url']}")


@app.command()
def whoami(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The account the CLI acts as, its roles and cases."""
    me = client_call(lambda c: c.get("/api/v1/auth/me"))
    if as_json:
        emit_json(me)
        return
    cases = "all" if me.get("cases") is None else (", ".join(me["cases"]) or "-")
    out.print(f"{me['user']}  roles: {', '.join(me['roles'])}  cases: {cases}  "
              f"session until {me.get('expires_at') or '-'}", highlight=False)


# --- evidence -------------------------------------------------------------------------------

@app.command()
def ingest(
    files: Annotated[list[str], typer.Argument(help="recorded video files (no streams or URLs)")],
    case: Annotated[str | None, typer.Option("--case", help="case number (required)")] = None,
    officer: Annotated[str | None, typer.Option(help="officer who recorded")] = None,
    device: Annotated[str | None, typer.Option(help="camera device id")] = None,
    recorded_at: Annotated[str | None, typer.Option(help="ISO 8601 recording time")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="show progress until processed")] = False,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Store videos with chain of custody (SHA-256, who, what, when) and queue processing."""
    from bodycam.client import Client
    from bodycam.ingest import parse_recorded_at

    if not case or not case.strip():
        fail("missing --case: every video must be bound to a case number")
    guarded(lambda: parse_recorded_at(recorded_at))
    client = guarded(lambda: Client.connect())
    try:
        _ingest(client, files, case.strip(), officer, device, recorded_at, wait, as_json)
    finally:
        client.close()


def _upload_one(client: Any, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Refuse what is not a local regular file, hash it in one pass, stream it up."""
    import os
    from pathlib import Path

    from bodycam.client import sha256_of
    from bodycam.errors import InvalidMediaError
    from bodycam.media.files import _why_os, check_is_batch_file, safe_name

    path = check_is_batch_file(name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise InvalidMediaError(safe_name(name), _why_os(exc)) from None
    with os.fdopen(fd, "rb") as f:
        digest, size = sha256_of(f)
        if size == 0:  # needs no server: the same line the server's probe gives
            raise InvalidMediaError(safe_name(name), "empty file (0 bytes)")
        return dict(client.upload("/api/v1/videos", f, digest, **params,
                                  filename=safe_name(Path(name).name)))


def _ingest(client: Any, files: list[str], case: str, officer: str | None,
            device: str | None, recorded_at: str | None, wait: bool, as_json: bool) -> None:
    from bodycam.media.files import safe_name

    params = {"case": case, "officer": officer, "device": device, "recorded_at": recorded_at}
    results: list[dict[str, Any]] = []
    failures = 0
    for name in files:
        try:
            res = _upload_one(client, name, params)
        except BodycamError as exc:
            error_line(str(exc))
            failures += 1
            continue
        results.append(res)
        if not as_json:
            dup = " (already ingested in this case)" if res["duplicate"] else ""
            err.print(f"{safe_name(name)}: video {res['video_id']} sha256 "
                      f"{res['sha256'][:16]}… {res['status']}{dup}",
                      markup=False, highlight=False, soft_wrap=True)
    final = {r["video_id"]: r["status"] for r in results}
    if wait and results:
        from rich.markup import escape

        final = guarded(lambda: _wait_for(  # bar labels are rich markup
            client, [r["video_id"] for r in results],
            {r["video_id"]: escape(r["filename"]) for r in results}, quiet=as_json))
    if as_json:
        emit_json([{**r, "status": final.get(r["video_id"], r["status"])} for r in results])
    if failures:
        raise typer.Exit(1)


def _wait_for(client: Any, video_ids: list[str], names: dict[str, str], quiet: bool
              ) -> dict[str, str]:
    """Poll each video's job row on the server until every one ends; rich progress bars
    per file on stderr."""
    final: dict[str, str] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stage]}"),
                  TimeElapsedColumn(), console=err, disable=quiet) as bars:
        tasks = {v: bars.add_task(names[v], total=1.0, stage="queued") for v in video_ids}
        while len(final) < len(video_ids):
            for vid in video_ids:
                if vid in final:
                    continue
                job = client.get(f"/api/v1/videos/{vid}")
                bars.update(tasks[vid], completed=job["progress"], stage=job["stage"])
                if job["status"] in TERMINAL:
                    final[vid] = job["status"]
            time.sleep(0.5)
    return final


@app.command("jobs")
def jobs_cmd(
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Videos with status, stage, progress, attempts and error."""
    rows = client_call(lambda c: c.pages("/api/v1/jobs", status=status_filter))
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        out.print(f"{r['video_id']}  {r['status']:11} {r['stage']:10} "
                  f"{r['progress'] * 100:5.1f}%  attempts {r['attempts']}  {r['filename']}  "
                  f"{r['error'] or ''}", highlight=False)


@app.command()
def retry(video_id: str) -> None:
    """Queue a failed or quarantined video again."""
    res = client_call(lambda c: c.post(f"/api/v1/videos/{quote(video_id, safe='')}/retry"))
    err.print(f"video {video_id}: {res['units_queued']} units queued")


@app.command()
def tracks(
    video_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A video's face tracks: time range, detections, quality, thumbnail."""
    rows = client_call(lambda c: c.pages(f"/api/v1/videos/{quote(video_id, safe='')}/tracks"))
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        out.print(f"{r['track_id']}  {r['start_s']:8.2f}-{r['end_s']:8.2f}s  "
                  f"{r['n_detections']:3} det  quality {r['quality']:.2f}  {r['thumbnail']}",
                  highlight=False)


@app.command()
def demo(
    testdata: Annotated[str, typer.Option(help="folder with video/ (the shared test data)")],
    case: str = "DEMO-1",
) -> None:
    """Start the stack, ingest the sample clips, process them and print what was found."""
    from bodycam.demo import run_demo

    guarded(lambda: run_demo(settings(), testdata, case, out))


@app.command()
def bench(
    testdata: Annotated[str, typer.Option(help="the shared test data folder")],
    clip_s: Annotated[float, typer.Option(help="length of the synthetic 720p30 clip")] = 120.0,
) -> None:
    """Measure the face pipeline per stage against the naive baseline; write BENCHMARKS figures."""
    from bodycam.bench import run_pipeline_bench

    guarded(lambda: run_pipeline_bench(settings(), testdata, clip_s, out))


subjects_app = typer.Typer(no_args_is_help=True, help="The watchlist: enrol, list, remove.")
app.add_typer(subjects_app, name="subjects")


def _date(text: str | None, flag: str) -> Any:
    from datetime import datetime

    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        fail(f"{flag} {text!r} is not an ISO 8601 date (e.g. 2026-03-14)")


@subjects_app.command("enroll")
def subjects_enroll(
    name: Annotated[str, typer.Option("--name", help="the person's name")],
    photo: Annotated[list[str], typer.Option("--photo", help="a photo of the face (repeatable)")],
    case: Annotated[str | None, typer.Option("--case")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="why they are enrolled")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="ISO date it lapses")] = None,
    face: Annotated[int | None, typer.Option("--face", help="face index, largest first")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Enrol a subject for a case; their photos are checked for one usable face."""
    from pathlib import Path

    if not case:
        fail("missing --case: a subject belongs to a case")
    if not reason:
        fail("missing --reason: say why this person is enrolled")
    _date(expires, "--expires")
    for p in photo:  # the server's line for an unreadable photo, without a round trip
        if not Path(p).is_file():
            fail(f"{Path(p).name}: cannot read the file")
    fields = {"name": name, "case": case, "reason": reason, "expires": expires, "face": face}
    res = client_call(lambda c: c.multipart("/api/v1/subjects", fields, photo))
    for n in res.get("notes", []):
        err.print(f"note: {n}", highlight=False)
    if as_json:
        emit_json({"subject_id": res["subject_id"], "pending_matches": res["pending_matches"]})
    else:
        out.print(f"subject {res['subject_id']} enrolled; {res['pending_matches']} pending "
                  "matches to review")


@subjects_app.command("list")
def subjects_list(
    case: Annotated[str | None, typer.Option("--case")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Active subjects."""
    rows = client_call(lambda c: c.pages("/api/v1/subjects", case=case))
    if as_json:
        emit_json(rows)
        return
    for s in rows:
        out.print(f"{s['subject_id']}  case {s['case']}  {s['name']}  ({s['faces']} photos) "
                  f"by {s['created_by']}: {s['reason']}", highlight=False)


@subjects_app.command("remove")
def subjects_remove(subject_id: str) -> None:
    """Take a subject off the watchlist (their face templates are deleted)."""
    client_call(lambda c: c.delete(f"/api/v1/subjects/{quote(subject_id, safe='')}"))
    err.print(f"subject {subject_id} removed")


@app.command("search")
def search_cmd(
    photo: Annotated[str | None, typer.Option("--photo", help="probe photo")] = None,
    subject: Annotated[str | None, typer.Option("--subject", help="enrolled subject id")] = None,
    track: Annotated[str | None, typer.Option("--track", help="start from a stored track")] = None,
    case: Annotated[str | None, typer.Option("--case", help="case the search is for")] = None,
    purpose: Annotated[str | None, typer.Option("--purpose", help="why (recorded)")] = None,
    threshold: Annotated[float | None, typer.Option(help="stricter than the default")] = None,
    limit: Annotated[int | None, typer.Option(help="most appearances returned")] = None,
    video: Annotated[str | None, typer.Option("--video", help="only this video")] = None,
    date_from: Annotated[str | None, typer.Option("--from", help="recorded on/after")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="recorded on/before")] = None,
    face: Annotated[int | None, typer.Option("--face", help="face index in --photo")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Where does this person appear? Ranked leads with similarity, threshold and model."""
    from pathlib import Path

    from bodycam import search as s

    if not case or not case.strip():
        fail("missing --case: every search is bound to a case")
    if not purpose or not purpose.strip():
        fail("missing --purpose: every search records why it was made")
    guarded(lambda: s.Probe(photo, face, subject, track))
    if photo is not None and not Path(photo).is_file():
        fail(f"{photo}: no such file")
    _date(date_from, "--from")
    _date(date_to, "--to")
    fields = {"case": case, "purpose": purpose, "subject": subject, "track": track,
              "threshold": threshold, "limit": limit, "video": video, "from": date_from,
              "to": date_to, "face": face}
    result = client_call(lambda c: c.multipart("/api/v1/search", fields,
                                               [photo] if photo else []))
    note = result.pop("note", None)
    if note:
        err.print(f"note: {note}", highlight=False)
    if as_json:
        emit_json(result)
        return
    out.print(f"{len(result['results'])} appearances (threshold {result['threshold']}, model "
              f"{result['model']}); leads for human review, not identifications",
              highlight=False)
    for a in result["results"]:
        out.print(f"{a['similarity']:.3f}  {a['filename']}  {a['start_s']:7.2f}-"
                  f"{a['end_s']:7.2f}s  video {a['video_id']}  sha256 {a['sha256'][:12]}…",
                  highlight=False)


matches_app = typer.Typer(help="Watchlist matches (leads): list and export.")
app.add_typer(matches_app, name="matches")


@matches_app.callback(invoke_without_command=True)
def matches_cmd(
    tctx: typer.Context,
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    case: Annotated[str | None, typer.Option("--case")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Watchlist matches (leads) and their review state."""
    if tctx.invoked_subcommand is not None:
        return
    rows = client_call(lambda c: c.pages("/api/v1/matches", status=status_filter, case=case))
    if as_json:
        emit_json(rows)
        return
    for m in rows:
        out.print(f"{m['match_id']}  {m['status']:9} {m['similarity']:.3f}  {m['subject']}  "
                  f"video {m['video_id']} {m['start_s']:.1f}-{m['end_s']:.1f}s  reviewers "
                  f"{list(m['reviewers'])}", highlight=False)


@app.command()
def review(
    match_id: str,
    confirm: Annotated[bool, typer.Option("--confirm")] = False,
    reject: Annotated[bool, typer.Option("--reject")] = False,
    note: Annotated[str | None, typer.Option("--note", help="why (recorded)")] = None,
) -> None:
    """Confirm or reject a match after looking at it; the reviewer is recorded."""
    if confirm == reject:
        fail("give exactly one of --confirm or --reject")
    body = {"decision": "confirm" if confirm else "reject", "note": note or ""}
    res = client_call(lambda c: c.post(f"/api/v1/matches/{quote(match_id, safe='')}/review",
                                       body))
    out.print(f"match {match_id}: {res['status']}")


@app.command("persons")
def persons_cmd(
    case: Annotated[str, typer.Option("--case")],
    purpose: Annotated[str | None, typer.Option("--purpose", help="why (recorded)")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Unknown persons in a case: tracks of the same face grouped across videos (audited,
    with the purpose)."""
    rows = client_call(lambda c: c.pages("/api/v1/persons", case=case, purpose=purpose))
    if as_json:
        emit_json(rows)
        return
    for p in rows:
        spans = ", ".join(f"{a['video_id'][:8]} {a['start_s']:.1f}-{a['end_s']:.1f}s"
                          for a in p["appearances"])
        out.print(f"{p['person_id']}  {len(p['track_ids'])} tracks: {spans}", highlight=False)


@subjects_app.command("approve")
def subjects_approve(subject_id: str) -> None:
    """Approve an enrolment (supervisor; where the policy requires approval)."""
    res = client_call(lambda c: c.post(f"/api/v1/subjects/{quote(subject_id, safe='')}/approve"))
    out.print(f"subject {subject_id} approved; {res['pending_matches']} pending matches to "
              "review")


@matches_app.command("export")
def matches_export(
    output: Annotated[str, typer.Option("-o", "--output", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    case: Annotated[str | None, typer.Option("--case")] = None,
) -> None:
    """Export matches and reviews with a manifest (rows, SHA-256, audit chain head)."""
    m = _export("/api/v1/exports/matches", output, fmt,
                {"format": fmt, "status": status_filter, "case": case})
    err.print(f"wrote {m['rows']} matches to {output} (sha256 {m['sha256']}); "
              f"manifest {output}.manifest.json")


def _export(route: str, output: str, fmt: str, body: dict[str, Any]) -> dict[str, Any]:
    """Have the server write an export, then fetch the file and its signed manifest beside
    `output`; the manifest."""
    from pathlib import Path

    from bodycam.audit import manifest_path

    if fmt not in ("jsonl", "csv"):
        fail(f"--format {fmt}: choose jsonl or csv")
    dest = Path(output)

    def run(c: Any) -> dict[str, Any]:
        made = c.post(route, {k: v for k, v in body.items() if v is not None})
        eid = quote(str(made["export_id"]), safe="")
        c.download(f"/api/v1/exports/{eid}", dest)
        c.download(f"/api/v1/exports/{eid}/manifest", manifest_path(dest))
        return dict(made["manifest"])

    return client_call(run)


audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the whole chain; exit 0 with the row count only when it is intact."""
    verdict = client_call(lambda c: c.post("/api/v1/audit/verify"))
    if not verdict["ok"]:
        fail(f"audit log NOT intact: first bad row {verdict['first_bad_id']}: "
             f"{verdict['reason']}")
    out.print(f"audit log intact: {verdict['count']} rows")


@audit_app.command("export")
def audit_export(
    output: Annotated[str, typer.Option("-o", "--output", help="file to write")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    date_from: Annotated[str | None, typer.Option("--from")] = None,
    date_to: Annotated[str | None, typer.Option("--to")] = None,
) -> None:
    """Export the audit log with a manifest (rows, SHA-256, chain head)."""
    _date(date_from, "--from")
    _date(date_to, "--to")
    m = _export("/api/v1/exports/audit", output, fmt,
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
    """Print the key that verifies export manifests (give it to whoever checks exports
    offline; it is derived from, and does not reveal, the audit key)."""
    res = client_call(lambda c: c.get("/api/v1/audit/export-key"))
    sys.stdout.write(str(res["key"]) + "\n")


users_app = typer.Typer(no_args_is_help=True, help="Accounts and roles (admin).")
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    name: str,
    role: Annotated[list[str], typer.Option("--role", help="clerk, investigator, supervisor, "
                                                           "auditor or admin (repeatable)")],
) -> None:
    """Create an account; its API token is printed once and only its hash is stored."""
    res = client_call(lambda c: c.post("/api/v1/users", {"name": name, "roles": role}))
    err.print(f"user {name} created with roles {', '.join(sorted(set(role)))}; "
              "token (shown once, store it safely):")
    sys.stdout.write(str(res["token"]) + "\n")


@users_app.command("list")
def users_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Accounts, roles, state and assigned cases."""
    rows = client_call(lambda c: c.pages("/api/v1/users"))
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        state = "disabled" if r["disabled"] else "active"
        out.print(f"{r['name']:16} {state:8} {', '.join(r['roles'])}  cases: "
                  f"{', '.join(r['cases']) or '-'}", highlight=False)


@users_app.command("disable")
def users_disable(name: str) -> None:
    """Disable an account (the bootstrap `operator` too, once named accounts exist)."""
    client_call(lambda c: c.post(f"/api/v1/users/{quote(name, safe='')}/disable"))
    err.print(f"user {name} disabled")


@users_app.command("assign")
def users_assign(name: str, case: Annotated[str, typer.Option("--case")]) -> None:
    """Assign a case to an account (investigators see only their cases)."""
    client_call(lambda c: c.post(f"/api/v1/users/{quote(name, safe='')}/cases",
                                 {"case": case}))
    err.print(f"{name} assigned to case {case}")


cases_app = typer.Typer(no_args_is_help=True, help="Legal holds on cases.")
app.add_typer(cases_app, name="cases")


@cases_app.command("hold")
def cases_hold(case: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Put a case on legal hold: its biometric data is kept past the retention period."""
    client_call(lambda c: c.post(f"/api/v1/cases/{quote(case, safe='')}/hold",
                                 {"reason": reason}))
    err.print(f"case {case} on hold")


@cases_app.command("release")
def cases_release(case: str, reason: Annotated[str, typer.Option("--reason")]) -> None:
    """Lift a legal hold."""
    client_call(lambda c: c.post(f"/api/v1/cases/{quote(case, safe='')}/release",
                                 {"reason": reason}))
    err.print(f"case {case} released")


policy_app = typer.Typer(no_args_is_help=True, help="Policy profiles (admin).")
app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The policy in force."""
    current = client_call(lambda c: c.get("/api/v1/policy"))
    if as_json:
        emit_json(current)
    else:
        out.print(current)


@policy_app.command("set")
def policy_set(
    reason: Annotated[str, typer.Option("--reason", help="why (recorded)")],
    profile: Annotated[str | None, typer.Option(help="identify, identify-eu or redact-only")
                       ] = None,
    reviewers: Annotated[int | None, typer.Option(help="confirmations needed per match")] = None,
    retention_days: Annotated[int | None, typer.Option(help="bystander data kept, days")] = None,
) -> None:
    """Change the policy profile or its parameters (admin, with a recorded reason)."""
    body = {"reason": reason, "profile": profile, "reviewers": reviewers,
            "retention_days": retention_days}
    new = client_call(lambda c: c.put("/api/v1/policy", body))
    out.print(f"policy now {new}")


thresholds_app = typer.Typer(no_args_is_help=True, help="Match thresholds (supervisor).")
app.add_typer(thresholds_app, name="thresholds")


@thresholds_app.command("set")
def thresholds_set(
    model: Annotated[str, typer.Option("--model")],
    default: Annotated[float, typer.Option("--default")],
    floor: Annotated[float, typer.Option("--floor")],
    reason: Annotated[str, typer.Option("--reason")],
) -> None:
    """Record a supervisor-approved change of a model's default threshold and floor."""
    client_call(lambda c: c.put(f"/api/v1/thresholds/{quote(model, safe='')}",
                                {"default": default, "floor": floor, "reason": reason}))
    out.print(f"{model}: default {default}, floor {floor}")


@app.command()
def purge(dry_run: Annotated[bool, typer.Option("--dry-run")] = False) -> None:
    """Remove expired bystander embeddings and crops (originals are never touched)."""
    plan = client_call(lambda c: c.post("/api/v1/purge", {"dry_run": dry_run}))
    verb = "would purge" if dry_run else "purged"
    out.print(f"{verb} {plan['tracks']} tracks, {plan['detections']} detection embeddings, "
              f"{plan['thumbnails']} thumbnails (older than {plan['retention_days']} days)")


@app.command()
def fixity(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Re-hash every stored original and derivative against its recorded SHA-256 now; each
    mismatch is audited. Exit 1 when any object changed or is missing."""
    report = client_call(lambda c: c.post("/api/v1/fixity"))
    if as_json:
        emit_json(report)
    else:
        for m in report["mismatched"]:
            found = m["actual_sha256"] or "missing"
            out.print(f"MISMATCH {m['kind']} {m['key']} (video {m['video_id']}): recorded "
                      f"{m['expected_sha256']}, stored {found}", highlight=False, soft_wrap=True)
        out.print(f"fixity {'ok' if report['ok'] else 'FAILED'}: {report['originals']} "
                  f"originals, {report['derivatives']} derivatives, "
                  f"{len(report['mismatched'])} mismatches", highlight=False, soft_wrap=True)
    if not report["ok"]:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
