"""The one-command demo: stack up, then as a client of its server: upload the sample clips,
follow the jobs, print the tracks, enrol a subject, ask where they appear, and write one
redacted clip with its report."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table

from bodycam.client import Client, sha256_of
from bodycam.config import Settings
from bodycam.errors import InvalidInputError
from bodycam.stack import Stack

TERMINAL = ("done", "failed", "quarantined")


def run_demo(settings: Settings, testdata: str, case: str, out: Console) -> None:
    """Run the whole flow on the clips in TESTDATA/video and print the results."""
    videos = sorted(Path(testdata, "video").glob("*.mp4"))
    if not videos:
        raise InvalidInputError(f"no .mp4 clips in {testdata}/video (set BODYCAM_TESTDATA)")
    out.print(f"1. Starting the embedded stack in {settings.home_dir}")
    Stack(settings).up(progress=lambda m: out.print(f"   {m}"))
    # From here on the demo is a client of the server it just started, with the same URL
    # and token as the CLI (the bootstrap operator unless BODYCAM_USER/BODYCAM_TOKEN say).
    client = Client.connect()
    try:
        me = client.get("/api/v1/auth/me")
        out.print(f"2. Uploading {len(videos)} clips to {client.target.url} as "
                  f"{me['user']} into case {case} (embedder: {settings.pipeline.embedder})")
        results = [_upload(client, v, case) for v in videos]
        for r in results:
            dup = " (duplicate: already ingested)" if r["duplicate"] else ""
            out.print(f"   {r['filename']}: video {r['video_id']} sha256 "
                      f"{r['sha256'][:16]}…{dup}")
        out.print("3. Processing (scenes, sampled frames, MTCNN, embeddings, tracks)")
        t0 = time.monotonic()
        pending = {r["video_id"] for r in results}
        while pending:
            for vid in sorted(pending):
                job = client.get(f"/api/v1/videos/{quote(vid, safe='')}")
                if job["status"] in TERMINAL:
                    out.print(f"   {job['filename']}: {job['status']} after "
                              f"{time.monotonic() - t0:.1f}s"
                              + (f" ({job['error']})" if job["error"] else ""))
                    pending.discard(vid)
            time.sleep(0.5)
        out.print("4. Face tracks found")
        for r in results:
            rows = client.pages(f"/api/v1/videos/{quote(r['video_id'], safe='')}/tracks")
            table = Table(title=f"{r['filename']} ({len(rows)} tracks)")
            for col in ("track", "start s", "end s", "detections", "quality"):
                table.add_column(col)
            for t in rows:
                table.add_row(t["track_id"][:8], f"{t['start_s']:.2f}", f"{t['end_s']:.2f}",
                              str(t["n_detections"]), f"{t['quality']:.2f}")
            out.print(table)
        _demo_search(client, testdata, case, out)
        sizes = {v.name: v.stat().st_size for v in videos}
        _demo_redact(client, settings, results, sizes, out)
        out.print(f"Web app: {client.target.url}/ (sign in as {me['user']}; the "
                  f"bootstrap operator's token is in {settings.home_dir}/operator.token)")
        out.print(f"Stack still running: `bodycam status`, `bodycam jobs`, `bodycam down` "
                  f"(BODYCAM_HOME={settings.home_dir}).")
    finally:
        client.close()


def _upload(client: Client, path: Path, case: str) -> dict[str, Any]:
    with path.open("rb") as f:
        digest, _size = sha256_of(f)
        f.seek(0)
        return dict(client.upload("/api/v1/videos", f, digest, case=case,
                                  officer="demo-officer", device="demo-cam-01",
                                  filename=path.name))


def _demo_search(client: Client, testdata: str, case: str, out: Console) -> None:
    """Enrol p06 from an enrolment photo (never shown in the clips) and ask where they appear."""
    photo = Path(testdata, "faces", "identities", "p06", "01.png")
    if not photo.exists():
        return
    out.print("5. Where does this person appear? (enrolment photo p06/01, "
              "search bound to the case with a recorded purpose)")
    name = "p06 (demo)"
    known = [s for s in client.pages("/api/v1/subjects", case=case) if s["name"] == name]
    sid = known[0]["subject_id"] if known else client.multipart(
        "/api/v1/subjects", {"name": name, "case": case, "reason": "demo enrolment"},
        [str(photo)])["subject_id"]
    result = client.multipart("/api/v1/search", {
        "case": case, "purpose": "demo: show where the enrolled person appears",
        "subject": sid}, [])
    table = Table(title=f"leads for human review (threshold {result['threshold']}, "
                        f"model {result['model']})")
    for col in ("similarity", "video", "from s", "to s", "tracks"):
        table.add_column(col)
    for a in result["results"]:
        table.add_row(f"{a['similarity']:.3f}", a["filename"], f"{a['start_s']:.2f}",
                      f"{a['end_s']:.2f}", str(len(a["track_ids"])))
    out.print(table)


def _demo_redact(client: Client, settings: Settings, results: list[dict[str, Any]],
                 sizes: dict[str, int], out: Console) -> None:
    """Redact the smallest clip (every face hidden) and print where it and its report are."""
    from bodycam.cli.redaction import redact_to

    done = [r for r in results
            if client.get(f"/api/v1/videos/{quote(r['video_id'], safe='')}")["status"] == "done"]
    if not done:
        return
    pick = min(done, key=lambda r: sizes.get(r["filename"], 0))
    dest = settings.home_dir / "redacted" / f"{pick['video_id']}.mp4"
    dest.parent.mkdir(parents=True, exist_ok=True)
    out.print(f"6. Redaction for release of {pick['filename']} (every face hidden;"
              " the plan is computed once, then re-rendered without models)")
    t0 = time.monotonic()
    made, files = redact_to(client, pick["video_id"], {}, dest)
    report = made["report"]
    out.print(f"   {len(report['redacted_regions'])} regions hidden in {report['frames']} "
              f"frames, {len(report['low_confidence_frames'])} low-confidence frames to check, "
              f"{time.monotonic() - t0:.1f}s")
    out.print(f"   derivative {made['derivative_id']} sha256 {made['sha256'][:16]}… "
              f"(original {made['original_sha256'][:16]}…)")
    out.print(f"   redacted clip: {dest}")
    out.print(f"   report: {files['report']}, {files['pdf']}, {files['sheet']}")
