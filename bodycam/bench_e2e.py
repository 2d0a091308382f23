"""End-to-end speed on clips the project never saw (issue 14, part 1).

Run `python -m bodycam.bench_e2e [9000-9001] [--clip-s 45] [--benchmarks BENCHMARKS.md]`
(also `make bench-e2e`). For each seed it generates two clips with
../shared/tools/make_bodycam_clip.py: a 720p30 clip with conditions drawn from the seed as the
evaluation harness draws them, and a 1080p30 clip with head tilt, night scenes, a fisheye lens
and up to four people. A fresh embedded stack (the one `bodycam up` starts, as configured) is
brought up in a temporary home; one short clip is processed first so that the workers' models
are loaded, as on a stack that has been running. Then each clip is ingested alone through the
real CLI, and its time is measured from the command's start to the moment the video is `done`
in Postgres: hashing, storage, queueing, every unit, finalize. Each video's stage timestamps
split that into ingest (command start to the row's `ingested`), waiting for a worker, and
processing (first claim to `done`).

The plain reference pipeline of the evaluation harness (facenet-pytorch's MTCNN on 640-px-wide
frames at 5 fps, dlib per detection, no tracking) is timed on the same clip in the same run,
after the stack is idle, so every figure has its baseline measured beside it.

Seeds 9000-9999 are the speed seeds: neither tuning (5000-5999) nor test (7000-7999) seeds.
"""

from __future__ import annotations

import argparse
import json
import random
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bodycam.bench import machine_facts
from bodycam.benchmarks_md import replace_section
from bodycam.evaluate import (
    REFERENCE_COSINE,
    ClipSpec,
    ClipTruth,
    Harness,
    add_clip_arguments,
    draw_conditions,
    generate,
    generator,
    log,
    parse_seeds,
    reference_ranges,
    temporary_stack,
)

SPEED_SEEDS = range(9000, 10000)
CASE_PREFIX = "SPEED"
ACTOR = "speed-bench"
MARK_START = "<!-- e2e-bench:start -->"
MARK_END = "<!-- e2e-bench:end -->"
POLL_S = 0.2


def specs_for(seed: int, clip_s: float) -> list[ClipSpec]:
    """The two clips of a seed: 720p30 as the harness draws it, and a harsh 1080p30."""
    if seed not in SPEED_SEEDS:
        raise ValueError(f"seed {seed} is not a speed seed ({SPEED_SEEDS.start}-"
                         f"{SPEED_SEEDS.stop - 1})")
    rng = random.Random(f"bodycam-speed-{seed}")
    plain = replace(draw_conditions(seed, clip_s), size="1280x720")
    harsh = ClipSpec(seed=seed, clip_s=clip_s, size="1920x1080", max_people=4,
                     tilt=rng.choice([10.0, 20.0]), night_prob=0.5,
                     fisheye=rng.choice([0.2, 0.35]), crf=rng.choice([23, 26, 28]))
    return [plain, harsh]


@dataclass(frozen=True)
class ClipRun:
    """One clip's end-to-end figures and its reference time."""

    name: str
    spec: ClipSpec
    duration_s: float
    ingest_s: float  # command start -> the video row exists (upload, hashing, storage)
    queued_s: float  # the row exists -> first unit claimed
    processing_s: float  # first unit claimed -> done (units, finalize)
    units: int
    tracks: int
    reference_s: float

    @property
    def total_s(self) -> float:
        """The ingest command's start to `done`."""
        return self.ingest_s + self.queued_s + self.processing_s

    @property
    def x_real_time(self) -> float:
        return self.duration_s / self.total_s

    @property
    def reference_x(self) -> float:
        return self.duration_s / self.reference_s

    def as_json(self) -> dict[str, Any]:
        return {"clip": self.name, "seed": self.spec.seed, "size": self.spec.size,
                "max_people": self.spec.max_people, "tilt": self.spec.tilt,
                "night_prob": self.spec.night_prob, "fisheye": self.spec.fisheye,
                "crf": self.spec.crf, "duration_s": round(self.duration_s, 2),
                "total_s": round(self.total_s, 2), "ingest_s": round(self.ingest_s, 2),
                "queued_s": round(self.queued_s, 2),
                "processing_s": round(self.processing_s, 2), "units": self.units,
                "tracks": self.tracks, "x_real_time": round(self.x_real_time, 2),
                "reference_s": round(self.reference_s, 2),
                "reference_x_real_time": round(self.reference_x, 2)}


def _wait_done(h: Harness, video_id: str, timeout_s: float = 3600) -> dict[str, Any]:
    """The video row once it ends; raises SystemExit if it ends other than `done`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with h.ctx.db() as conn:
            row = conn.execute(
                "SELECT status, duration_s, extract(epoch FROM ingested_at) AS ingested,"
                " (SELECT count(*) FROM work_units WHERE video_id = v.id) AS units,"
                " (SELECT count(*) FROM tracks WHERE video_id = v.id) AS tracks,"
                " stage_times FROM videos v WHERE id = %s", (video_id,)).fetchone()
        if row and row["status"] in ("done", "failed", "quarantined"):
            if row["status"] != "done":
                raise SystemExit(f"video {video_id} ended {row['status']}")
            return dict(row)
        time.sleep(POLL_S)
    raise SystemExit(f"video {video_id} not done within {timeout_s:.0f} s")


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def run_clip(h: Harness, path: Path, case: str) -> tuple[dict[str, Any], float, float]:
    """Ingest one clip alone and wait for it: (its video row, start and end epochs)."""
    t0 = time.time()
    [res] = h.cli("ingest", str(path), "--case", case, "--officer", "bench", "--device", "bench")
    row = _wait_done(h, str(res["video_id"]))
    return row, t0, _epoch(row["stage_times"]["done"])


def bench(h: Harness, seeds: list[int], clip_s: float, cache: Path, testdata: Path,
          warmup: Path) -> dict[str, Any]:
    """Generate, process and time every clip, then time the reference on each."""
    from facenet_pytorch import MTCNN

    from bodycam import subjects
    from bodycam.pipeline.faces import Registry
    from bodycam.search import case_gallery

    tool = generator(testdata)
    made = []
    for seed in seeds:
        for spec in specs_for(seed, clip_s):
            log(f"clip {seed} {spec.size}: up to {spec.max_people} people, tilt {spec.tilt:g},"
                f" night {spec.night_prob:g}, fisheye {spec.fisheye:g}, crf {spec.crf}")
            made.append((spec, *generate(spec, cache, tool)))
    case = f"{CASE_PREFIX}-{uuid.uuid4().hex[:8]}"
    log("warm-up clip (not timed)")
    run_clip(h, warmup, case)
    timed = []
    for spec, path, truth in made:
        row, t0, t_done = run_clip(h, path, case)
        claimed = _epoch(row["stage_times"]["processing"])
        timed.append((spec, path, truth, row, t0, t_done, claimed))
        log(f"{spec.seed} {spec.size}: {t_done - t0:.1f} s for {float(row['duration_s']):.1f} s")
    photos: dict[str, str] = {}
    for _, _, truth in made:
        photos.update(truth["enroll"])
    sids = {ident: subjects.enroll(h.ctx, ident, [str(testdata / p)], case, "speed benchmark",
                                   ACTOR)[0] for ident, p in sorted(photos.items())}
    with h.ctx.db() as conn:
        gallery = case_gallery(conn, case, h.ctx.settings.pipeline.embedder)
    named = {ident: gallery[sid] for ident, sid in sids.items() if sid in gallery}
    embedder = Registry.embedder(h.ctx.settings.pipeline)
    mtcnn = MTCNN(keep_all=True)
    runs = []
    for spec, path, truth, row, t0, t_done, claimed in timed:
        t_ref = time.perf_counter()
        reference_ranges(path, ClipTruth.from_json(spec, truth), named, embedder, mtcnn,
                         REFERENCE_COSINE)
        ref_s = time.perf_counter() - t_ref
        ingested = float(row["ingested"])
        run = ClipRun(path.name, spec, float(row["duration_s"]), ingested - t0, claimed - ingested,
                      t_done - claimed, int(row["units"]), int(row["tracks"]), ref_s)
        log(f"{spec.seed} {spec.size}: reference {ref_s:.1f} s")
        runs.append(run)
    return {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "clip_s": clip_s, "seeds": seeds, "model": h.ctx.settings.pipeline.embedder,
            "chunk_s": h.ctx.settings.jobs.chunk_s, "machine": machine_facts(),
            "clips": [r.as_json() for r in runs]}


def render_section(rep: dict[str, Any]) -> str:
    """The e2e-bench section of BENCHMARKS.md."""
    facts = rep["machine"]
    lines = [
        MARK_START, "## End to end on unseen clips (`make bench-e2e`)", "",
        f"Measured {rep['measured_at']} with `python -m bodycam.bench_e2e`; speed seeds "
        f"{', '.join(map(str, rep['seeds']))}, {rep['clip_s']:g}-s clips, embedder "
        f"`{rep['model']}`, chunk {rep['chunk_s']:g} s, the embedded stack's workers as "
        f"`bodycam up` starts them. Machine: {facts.get('CPU', '?')}, "
        f"{facts.get('cores', '?')} cores, GPU {facts.get('GPU', 'none')}. Each clip ingested "
        "alone through the CLI after one warm-up clip; total = the ingest command's start to "
        "`done` in Postgres. The reference (MTCNN on 640-px frames at 5 fps, dlib per "
        "detection, no tracking) timed on the same clip in the same run.", "",
        "| clip | video s | total s | x real time | ingest s | queued s | processing s "
        "| units | tracks | reference s | reference x real time |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rep["clips"]:
        people = "1 person" if c["max_people"] == 1 else f"{c['max_people']} people"
        cond = (f"seed {c['seed']} {c['size']}, up to {people}, tilt "
                f"{c['tilt']:g}, night {c['night_prob']:g}, fisheye {c['fisheye']:g}, "
                f"crf {c['crf']}")
        lines.append(
            f"| {cond} | {c['duration_s']:.1f} | {c['total_s']:.1f} | {c['x_real_time']:.2f} "
            f"| {c['ingest_s']:.1f} | {c['queued_s']:.1f} | {c['processing_s']:.1f} "
            f"| {c['units']} | {c['tracks']} | {c['reference_s']:.1f} "
            f"| {c['reference_x_real_time']:.2f} |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run on a temporary stack, write the report (and the section)."""
    p = argparse.ArgumentParser(prog="python -m bodycam.bench_e2e",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("seeds", nargs="*", default=["9000-9001"],
                   help="speed seeds or ranges (9000-9999), two clips each; default 9000-9001")
    add_clip_arguments(p, 45.0, ".bodycam/speed-clips", "e2e-bench.json")
    args = p.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        for s in seeds:
            specs_for(s, args.clip_s)
    except ValueError as exc:
        p.error(str(exc))
    testdata = args.testdata.resolve()
    warmup = testdata / "video" / "short_hamilton_clip.mp4"
    if not warmup.exists():
        p.error(f"{warmup} not found: pass --testdata with the shared test data")

    with temporary_stack(log) as h:
        rep = bench(h, seeds, args.clip_s, args.cache.resolve(), testdata, warmup)
    args.out.write_text(json.dumps(rep, indent=1))
    log(f"wrote {args.out}")
    section = render_section(rep)
    print(section)
    if args.benchmarks:
        replace_section(args.benchmarks, section, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
