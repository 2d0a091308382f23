"""The one-command demo: stack up, ingest the sample clips, wait, print tracks."""

from __future__ import annotations

import os
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bodycam import jobs
from bodycam.config import Settings
from bodycam.context import Context
from bodycam.errors import InvalidInputError
from bodycam.evidence import list_tracks
from bodycam.ingest import Custody, ingest_file
from bodycam.search import search
from bodycam.stack import Stack
from bodycam.subjects import enroll

TERMINAL = ("done", "failed", "quarantined")


def run_demo(settings: Settings, testdata: str, case: str, out: Console) -> None:
    """Run the whole flow on the clips in TESTDATA/video and print the results."""
    videos = sorted(Path(testdata, "video").glob("*.mp4"))
    if not videos:
        raise InvalidInputError(f"no .mp4 clips in {testdata}/video (set BODYCAM_TESTDATA)")
    out.print(f"[bold]1. Starting the embedded stack[/bold] in {settings.home_dir}")
    Stack(settings).up(progress=lambda m: out.print(f"   {m}"))
    ctx = Context.load(settings)
    # The demo acts on the stack it just started, as its bootstrap operator unless an
    # account was named with a token.
    named = settings.token or os.environ.get("BODYCAM_USER") not in (None, "", "operator")
    actor = settings.user if named else "operator"
    out.print(f"[bold]2. Ingesting {len(videos)} clips[/bold] into case {case} "
              f"(embedder: {settings.pipeline.embedder})")
    custody = Custody(case_id=case, officer="demo-officer", device="demo-cam-01",
                      uploader=actor)
    results = [ingest_file(ctx, str(v), custody) for v in videos]
    for r in results:
        dup = " (duplicate: already ingested)" if r.duplicate else ""
        out.print(f"   {r.filename}: video {r.video_id} sha256 {r.sha256[:16]}…{dup}")
    out.print("[bold]3. Processing[/bold] (scenes, sampled frames, MTCNN, embeddings, tracks)")
    t0 = time.monotonic()
    pending = {r.video_id for r in results}
    while pending:
        with ctx.db() as conn:
            rows = {j.video_id: j for j in jobs.list_jobs(conn) if j.video_id in pending}
        for vid, job in rows.items():
            if job.status in TERMINAL:
                out.print(f"   {job.filename}: {job.status} after {time.monotonic() - t0:.1f}s"
                          + (f" ({job.error})" if job.error else ""))
                pending.discard(vid)
        time.sleep(0.5)
    out.print("[bold]4. Face tracks found[/bold]")
    for r in results:
        with ctx.db() as conn:
            rows_t = list_tracks(conn, r.video_id)
        table = Table(title=f"{r.filename} ({len(rows_t)} tracks)")
        for col in ("track", "start s", "end s", "detections", "quality"):
            table.add_column(col)
        for t in rows_t:
            table.add_row(t.track_id[:8], f"{t.start_s:.2f}", f"{t.end_s:.2f}",
                          str(t.n_detections), f"{t.quality:.2f}")
        out.print(table)
    _demo_search(ctx, testdata, case, actor, out)
    out.print(f"Stack still running: `bodycam status`, `bodycam jobs`, `bodycam down` "
              f"(BODYCAM_HOME={settings.home_dir}).")


def _demo_search(ctx: Context, testdata: str, case: str, actor: str, out: Console) -> None:
    """Enrol p06 from an enrolment photo (never shown in the clips) and ask where they appear."""
    from bodycam.search import Probe

    photo = Path(testdata, "faces", "identities", "p06", "01.png")
    if not photo.exists():
        return
    out.print("[bold]5. Where does this person appear?[/bold] (enrolment photo p06/01, "
              "search bound to the case with a recorded purpose)")
    with ctx.db() as conn:
        row = conn.execute("SELECT id::text AS id FROM subjects WHERE case_id = %s AND name = %s"
                           " AND removed_at IS NULL", (case, "p06 (demo)")).fetchone()
    sid = str(row["id"]) if row else enroll(ctx, "p06 (demo)", [str(photo)], case,
                                            "demo enrolment", actor)[0]
    result = search(ctx, Probe(subject_id=sid), case,
                    "demo: show where the enrolled person appears", actor)
    table = Table(title=f"leads for human review (threshold {result.threshold}, "
                        f"model {result.model})")
    for col in ("similarity", "video", "from s", "to s", "tracks"):
        table.add_column(col)
    for a in result.results:
        table.add_row(f"{a.similarity:.3f}", a.filename, f"{a.start_s:.2f}", f"{a.end_s:.2f}",
                      str(len(a.track_ids)))
    out.print(table)
