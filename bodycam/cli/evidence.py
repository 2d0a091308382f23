"""Evidence commands through the server: ingest, jobs, retry, tracks."""

from __future__ import annotations

import time
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from bodycam.cli.base import (
    TERMINAL,
    JsonFlag,
    app,
    client_call,
    emit_json,
    err,
    error_line,
    fail,
    guarded,
    out,
)
from bodycam.errors import BodycamError


@app.command()
def ingest(
    files: Annotated[list[str], typer.Argument(help="recorded video files (no streams or URLs)")],
    case: Annotated[str | None, typer.Option("--case", help="case number (required)")] = None,
    officer: Annotated[str | None, typer.Option(help="officer who recorded (required)")] = None,
    device: Annotated[str | None, typer.Option(help="camera device id (required)")] = None,
    recorded_at: Annotated[str | None, typer.Option(help="ISO 8601 recording time")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="show progress until processed; exit 1 if a video ends failed")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Store videos with chain of custody (SHA-256, who, what, when) and queue processing."""
    from bodycam.client import Client
    from bodycam.timeparse import parse_recorded_at

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
        return dict(client.upload(
            "/api/v1/videos", f, digest, **params, filename=safe_name(Path(name).name),
            say=lambda text: err.print(f"{safe_name(name)}: {text}", markup=False,
                                       highlight=False)))


def _ingest(client: Any, files: list[str], case: str, officer: str | None,
            device: str | None, recorded_at: str | None, wait: bool, as_json: bool) -> None:
    from bodycam.media.files import printable, safe_name

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
                      f"{res['sha256'][:16]}… {res['status']}{dup}")
    final: dict[str, dict[str, Any]] = {}
    if wait and results:
        final = guarded(lambda: _wait_for(
            client, [r["video_id"] for r in results],
            {r["video_id"]: str(r["filename"]) for r in results}, quiet=as_json))
        for r in results:
            job = final[r["video_id"]]
            if job["status"] != "done":  # failed or quarantined: said, and the exit says so
                failures += 1           # (a script saw success: bb43)
                if not as_json:
                    error_line(f"{safe_name(str(r['filename']))}: video {r['video_id']} "
                               f"{job['status']}: {job.get('error') or 'no reason recorded'}")
            notice = job.get("notice")
            if notice and not as_json:
                err.print(f"{safe_name(str(r['filename']))}: note: {printable(str(notice))}")
    if as_json:
        emit_json([{**r, **{k: final[r["video_id"]][k] for k in ("status", "notice")
                            if r["video_id"] in final}} for r in results])
    if failures:
        raise typer.Exit(1)


def _wait_for(client: Any, video_ids: list[str], names: dict[str, str], quiet: bool
              ) -> dict[str, dict[str, Any]]:
    """Poll each video's job row on the server until every one ends, and return the last;
    rich progress bars per file on stderr. Labels are server text: printable, never read as
    markup. A server that stops answering meanwhile is waited out (client.Outage)."""
    from bodycam.client import Outage
    from bodycam.media.files import printable

    final: dict[str, dict[str, Any]] = {}
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                  TextColumn("{task.fields[stage]}", markup=False),
                  TimeElapsedColumn(), console=err, disable=quiet) as bars:
        outage = Outage(lambda text: bars.console.print(text, markup=False, highlight=False))
        tasks = {v: bars.add_task(printable(names[v]), total=1.0, stage="queued")
                 for v in video_ids}
        while len(final) < len(video_ids):
            for vid in video_ids:
                if vid in final:
                    continue
                job = outage.poll(client, f"/api/v1/videos/{quote(vid, safe='')}")
                if job is None:
                    break
                bars.update(tasks[vid], completed=job["progress"],
                            stage=printable(str(job["stage"])))
                if job["status"] in TERMINAL:
                    final[vid] = job
            time.sleep(0.5)
    return final


@app.command("jobs")
def jobs_cmd(
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Videos with status, stage, progress, attempts and error."""
    from bodycam.media.files import printable

    rows = client_call(lambda c: c.pages("/api/v1/jobs", status=status_filter))
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        out.print(f"{r['video_id']}  {r['status']:11} {r['stage']:10} "
                  f"{r['progress'] * 100:5.1f}%  attempts {r['attempts']}  {r['filename']}  "
                  f"{r['error'] or ''}")
        if r.get("notice"):
            out.print(f"  note: {printable(str(r['notice']))}")


@app.command()
def retry(video_id: str) -> None:
    """Queue a failed or quarantined video again."""
    res = client_call(lambda c: c.post(f"/api/v1/videos/{quote(video_id, safe='')}/retry"))
    err.print(f"video {video_id}: {res['units_queued']} units queued")


@app.command()
def tracks(
    video_id: str,
    as_json: JsonFlag = False,
) -> None:
    """A video's face tracks: time range, detections, quality, thumbnail."""
    rows = client_call(lambda c: c.pages(f"/api/v1/videos/{quote(video_id, safe='')}/tracks"))
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        out.print(f"{r['track_id']}  {r['start_s']:8.2f}-{r['end_s']:8.2f}s  "
                  f"{r['n_detections']:3} det  quality {r['quality']:.2f}  {r['thumbnail']}")
