"""The `bodycam` command: a thin shell over the library (settings in, library calls, output)."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar

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


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False, soft_wrap=True)
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
    """Each service's state, URLs, worker counts and queue depths."""
    from bodycam.stack import Stack

    st = Stack(settings()).status()
    if as_json:
        emit_json(st)
        return
    for key, value in st.items():
        out.print(f"{key:16} {value}", highlight=False)


@app.command()
def migrate() -> None:
    """Apply database migrations (production: run once before starting workers)."""
    from bodycam.db import migrate as run

    ctx = context()
    applied = guarded(lambda: run(ctx.services.admin_database_url))
    err.print(f"applied {len(applied)} migrations" if applied else "schema is up to date")


@app.command()
def api(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the HTTP API (S3 event notifications, health)."""
    import uvicorn

    uvicorn.run("bodycam.api.app:app", host=host, port=port, log_level="warning")


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
    from bodycam.ingest import Custody, ingest_file, parse_recorded_at

    if not case or not case.strip():
        fail("missing --case: every video must be bound to a case number")
    s = settings()
    custody = guarded(lambda: Custody(case_id=case.strip(), officer=officer or "",
                                      device=device or "", uploader=s.user,
                                      recorded_at=parse_recorded_at(recorded_at)))
    ctx = context()
    results = []
    failures = 0
    for name in files:
        try:
            res = ingest_file(ctx, name, custody)
        except BodycamError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            failures += 1
            continue
        results.append(res)
        if not as_json:
            dup = " (already ingested in this case)" if res.duplicate else ""
            err.print(f"{name}: video {res.video_id} sha256 {res.sha256[:16]}… {res.status}{dup}")
    final = {r.video_id: r.status for r in results}
    if wait and results:
        final = _wait_for(ctx, [r.video_id for r in results],
                          {r.video_id: r.filename for r in results}, quiet=as_json)
    if as_json:
        emit_json([{**r.as_json(), "status": final.get(r.video_id, r.status)} for r in results])
    if failures:
        raise typer.Exit(1)


def _wait_for(ctx: Any, video_ids: list[str], names: dict[str, str], quiet: bool
              ) -> dict[str, str]:
    """Poll job state until every video ends; rich progress bars per file on stderr."""
    from bodycam import jobs

    final: dict[str, str] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[stage]}"),
                  TimeElapsedColumn(), console=err, disable=quiet) as bars:
        tasks = {v: bars.add_task(names[v], total=1.0, stage="queued") for v in video_ids}
        while len(final) < len(video_ids):
            with ctx.db() as conn:
                rows = {j.video_id: j for j in jobs.list_jobs(conn) if j.video_id in tasks}
            for vid, job in rows.items():
                bars.update(tasks[vid], completed=job.progress, stage=job.stage)
                if job.status in TERMINAL:
                    final[vid] = job.status
            time.sleep(0.5)
    return final


@app.command("jobs")
def jobs_cmd(
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Videos with status, stage, progress, attempts and error."""
    from bodycam import jobs

    ctx = context()
    with ctx.db() as conn:
        rows = jobs.list_jobs(conn, status_filter)
    if as_json:
        emit_json([r.as_json() for r in rows])
        return
    for r in rows:
        out.print(f"{r.video_id}  {r.status:11} {r.stage:10} {r.progress * 100:5.1f}%  "
                  f"attempts {r.attempts}  {r.filename}  {r.error or ''}", highlight=False)


@app.command()
def retry(video_id: str) -> None:
    """Queue a failed or quarantined video again."""
    from bodycam import jobs
    from bodycam.queue import PROCESS_UNIT

    ctx = context()
    with ctx.db() as conn:
        if conn.execute("SELECT 1 FROM videos WHERE id::text = %s", (video_id,)).fetchone() is None:
            fail(f"no video {video_id}")
        units = jobs.retry_video(conn, video_id)
    for idx in units:
        ctx.send(PROCESS_UNIT, video_id, idx)
    err.print(f"video {video_id}: {len(units)} units queued")


@app.command()
def tracks(
    video_id: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """A video's face tracks: time range, detections, quality, thumbnail."""
    from bodycam.evidence import list_tracks

    ctx = context()
    with ctx.db() as conn:
        rows = guarded(lambda: list_tracks(conn, video_id))
    if as_json:
        emit_json([r.as_json() for r in rows])
        return
    for r in rows:
        out.print(f"{r.track_id}  {r.start_s:8.2f}-{r.end_s:8.2f}s  {r.n_detections:3} det  "
                  f"quality {r.quality:.2f}  {r.thumbnail}", highlight=False)


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
    from bodycam import matching, policy, subjects

    ctx = context()
    if not case:
        fail("missing --case: a subject belongs to a case")
    if not reason:
        fail("missing --reason: say why this person is enrolled")
    with ctx.db() as conn:
        guarded(lambda: policy.require_identify(conn, "enrolment"))
    sid, notes = guarded(lambda: subjects.enroll(ctx, name, photo, case, reason,
                                                 ctx.settings.user, _date(expires, "--expires"),
                                                 face))
    with ctx.db() as conn:
        made = matching.match_subject(conn, ctx.settings, sid)
    for n in notes:
        err.print(f"note: {n}", highlight=False)
    if as_json:
        emit_json({"subject_id": sid, "pending_matches": made})
    else:
        out.print(f"subject {sid} enrolled; {made} pending matches to review")


@subjects_app.command("list")
def subjects_list(
    case: Annotated[str | None, typer.Option("--case")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Active subjects."""
    from bodycam import subjects

    ctx = context()
    with ctx.db() as conn:
        rows = subjects.list_subjects(conn, case)
    if as_json:
        emit_json([s.as_json() for s in rows])
        return
    for s in rows:
        out.print(f"{s.subject_id}  case {s.case_id}  {s.name}  ({s.n_faces} photos) "
                  f"by {s.created_by}: {s.reason}", highlight=False)


@subjects_app.command("remove")
def subjects_remove(subject_id: str) -> None:
    """Take a subject off the watchlist (their face templates are deleted)."""
    from bodycam import subjects

    ctx = context()
    with ctx.db() as conn:
        guarded(lambda: subjects.remove_subject(conn, subject_id, ctx.settings.user))
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
    from bodycam import search as s

    if not case or not case.strip():
        fail("missing --case: every search is bound to a case")
    if not purpose or not purpose.strip():
        fail("missing --purpose: every search records why it was made")
    if sum(x is not None for x in (photo, subject, track)) != 1:
        fail("give exactly one of --photo, --subject or --track")
    ctx = context()
    filters = s.Filters(video, _date(date_from, "--from"), _date(date_to, "--to"))

    def run() -> s.SearchResult:
        if photo is not None:
            q = s.query_from_photo(ctx.settings, photo, face)
        else:
            with ctx.db() as conn:
                q = (s.query_from_subject(conn, ctx.settings, subject) if subject is not None
                     else s.query_from_track(conn, str(track)))
        return s.search(ctx, q, case, purpose, ctx.settings.user, threshold, limit, filters)

    result = guarded(run)
    if result.note:
        err.print(f"note: {result.note}", highlight=False)
    if as_json:
        emit_json(result.as_json())
        return
    out.print(f"{len(result.results)} appearances (threshold {result.threshold}, model "
              f"{result.model}); leads for human review, not identifications", highlight=False)
    for a in result.results:
        out.print(f"{a.similarity:.3f}  {a.filename}  {a.start_s:7.2f}-{a.end_s:7.2f}s  "
                  f"video {a.video_id}  sha256 {a.sha256[:12]}…", highlight=False)


@app.command("matches")
def matches_cmd(
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    case: Annotated[str | None, typer.Option("--case")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Watchlist matches (leads) and their review state."""
    from bodycam import matching

    ctx = context()
    with ctx.db() as conn:
        rows = matching.list_matches(conn, status_filter, case)
    if as_json:
        emit_json([m.as_json() for m in rows])
        return
    for m in rows:
        out.print(f"{m.match_id}  {m.status:9} {m.similarity:.3f}  {m.subject_name}  video "
                  f"{m.video_id} {m.start_s:.1f}-{m.end_s:.1f}s  reviewers {list(m.reviewers)}",
                  highlight=False)


@app.command()
def review(
    match_id: str,
    confirm: Annotated[bool, typer.Option("--confirm")] = False,
    reject: Annotated[bool, typer.Option("--reject")] = False,
    note: Annotated[str | None, typer.Option("--note", help="why (recorded)")] = None,
) -> None:
    """Confirm or reject a match after looking at it; the reviewer is recorded."""
    from bodycam import matching

    if confirm == reject:
        fail("give exactly one of --confirm or --reject")
    ctx = context()
    with ctx.db() as conn:
        status = guarded(lambda: matching.review(conn, match_id, ctx.settings.user, confirm,
                                                 note or ""))
    out.print(f"match {match_id}: {status}")


@app.command("persons")
def persons_cmd(
    case: Annotated[str, typer.Option("--case")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Unknown persons in a case: tracks of the same face grouped across videos."""
    from bodycam import matching

    ctx = context()
    with ctx.db() as conn:
        rows = guarded(lambda: matching.persons(conn, ctx.settings, case))
    if as_json:
        emit_json([p.as_json() for p in rows])
        return
    for p in rows:
        spans = ", ".join(f"{v[:8]} {s:.1f}-{e:.1f}s" for v, s, e in p.appearances)
        out.print(f"{p.person_id}  {len(p.track_ids)} tracks: {spans}", highlight=False)


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
