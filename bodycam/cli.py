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
              f"{st['workers']} workers")  # type: ignore[index]


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


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


if __name__ == "__main__":
    main()
