"""Recognition on footage the project never saw: the evaluation harness of issue 12.

Run `python -m bodycam.evaluate 7000-7029 --out eval.json [--benchmarks BENCHMARKS.md]`
(also `bodycam eval ...` and `make eval`). For every seed it generates a synthetic body-cam
clip with ../shared/tools/make_bodycam_clip.py and conditions drawn from the seed (720p or
1080p, 1-4 people, head tilt, night scenes, fisheye lens, encoder quality), brings up a
temporary embedded stack (or uses the one it is given), enrols every identity from its photo
01, ingests the clips through the real CLI, waits until they are processed, and then runs the
real searches for every identity that appears: by photo, by subject, and by one of its tracks.

Scoring is of time, against the generator's per-frame truth boxes:

* recall: seconds of truth appearance of faces 40 px or taller covered by the returned ranges;
* precision: share of the returned seconds when the person is visible (at any size; a
  returned range may overhang the truth by `--tolerance-s`, the pipeline's half sample
  interval), and the count of returned ranges that never touch the person ("false ranges");

for each search path, overall and per condition (day, night, tilt, fisheye, small faces of
40-80 px, large faces, plain footage; profile when the truth records yaw: the generator does
not), each with a Wilson 95% interval. The interval counts 0.2-s units (the pipeline's
sampling interval); units inside one appearance are correlated, so it is narrower than an
interval over independent trials would be: read it as a floor on the uncertainty.

A plain reference runs on the same clips in the same run: MTCNN (facenet-pytorch defaults) on
640-px-wide frames at 5 fps, the project's dlib embedder per detection, the nearest enrolled
identity when within dlib's distance 0.6 (on raw descriptors; cosine 0.92 on the unit vectors
the wrapper returns, docs/thresholds.md), no tracking; each detection stands for its sample
interval. It is scored the same way.

A track search runs once for each clip a person appears in, from their longest track there
that holds no other identity (none: the search counts as returning nothing), and is scored
over every clip of the case like the others.

Tracks are checked too: each stored detection is matched to the truth box of its frame (IoU
>= 0.3); a track mixes identities when two identities each own at least two of its
detections; coverage is the share of truth time (faces >= 40 px) inside tracks of that
identity.

Tuning seeds are 5000-5999 and test seeds 7000-7999; a run is labelled with its split, and a
run labelled "test" refuses tuning seeds. Only test-split figures belong in BENCHMARKS.md.

`--conditions harsh` draws beyond the harness's own range, to see how the pipeline (and the
reference beside it) degrade rather than to calibrate: 3-6 people, tilt 20-40 degrees, night
in half or all of the scenes, fisheye 0.35-0.5, crf 28-32, 25, 30 or 60 frames a second. Such
a run writes neither the recognition section nor the calibration (`make eval-harsh`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bodycam.benchmarks_md import replace_section
from bodycam.db import Pool, uids

Intervals = list[tuple[float, float]]

TUNING_SEEDS = range(5000, 6000)
TEST_SEEDS = range(7000, 8000)
MIN_FACE_PX = 40.0
SMALL_FACE_PX = 80.0  # faces of 40 to 80 px are "small"
UNIT_S = 0.2  # the pipeline's sampling interval: the unit of the Wilson intervals
PATHS = ("photo", "subject", "track", "reference")
CONDITIONS = ("all", "day", "night", "tilt", "fisheye", "plain", "small", "large", "profile")
REFERENCE_COSINE = 0.92  # dlib's 0.6 on raw descriptors (length ~1.5), docs/thresholds.md
REFERENCE_WIDTH = 640
FULL_RUN_CLIPS = 30
REFERENCE_FPS = 5.0
IOU_MATCH = 0.3
CASE_PREFIX = "EVAL"
ACTOR = "evaluator"
MD_START = "<!-- recognition-eval:start -->"
MD_END = "<!-- recognition-eval:end -->"
CALIB_START = "<!-- calibration-by-condition:start -->"
CALIB_END = "<!-- calibration-by-condition:end -->"
EXTERNAL = ("BODYCAM_DATABASE_URL", "BODYCAM_S3_ENDPOINT_URL", "BODYCAM_REDIS_URL",
            "BODYCAM_API_URL", "BODYCAM_URL")


# --- time arithmetic -------------------------------------------------------------------------

def union(iv: Iterable[tuple[float, float]]) -> Intervals:
    """Sorted, disjoint intervals covering the same time; empty ones are dropped."""
    out: list[list[float]] = []
    for s, e in sorted((float(s), float(e)) for s, e in iv if e > s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def measure(iv: Intervals) -> float:
    """Total length of disjoint intervals."""
    return sum(e - s for s, e in iv)


def intersect(a: Intervals, b: Intervals) -> Intervals:
    """Intersection of two unions (each sorted and disjoint)."""
    out: Intervals = []
    i = j = 0
    while i < len(a) and j < len(b):
        s, e = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if e > s:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def subtract(a: Intervals, b: Intervals) -> Intervals:
    """The parts of union a outside union b."""
    out: Intervals = []
    for s, e in a:
        cur = s
        for bs, be in b:
            if be <= cur or bs >= e:
                continue
            if bs > cur:
                out.append((cur, bs))
            cur = max(cur, be)
            if cur >= e:
                break
        if cur < e:
            out.append((cur, e))
    return out


def dilate(iv: Intervals, by: float) -> Intervals:
    """Each interval widened by `by` seconds on both sides (then merged)."""
    return union((s - by, e + by) for s, e in iv)


def frames_to_intervals(frames: Iterable[int], fps: float) -> Intervals:
    """The time a set of frames shows: frame f covers [f/fps, (f+1)/fps)."""
    return union((f / fps, (f + 1) / fps) for f in frames)


def wilson(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class Tally:
    """Time sums of one search path (and condition): what recall and precision come from."""

    truth_s: float = 0.0  # truth appearance time (faces >= 40 px)
    covered_s: float = 0.0  # of it, inside returned ranges
    returned_s: float = 0.0  # returned time (where precision is measured)
    wrong_s: float = 0.0  # of it, when the person is not visible
    false_ranges: int = 0  # returned ranges that never touch the person
    ranges: int = 0

    def add(self, other: Tally) -> None:
        for k, v in asdict(other).items():
            setattr(self, k, getattr(self, k) + v)

    def figures(self) -> dict[str, Any]:
        """Recall and precision with Wilson intervals (None where nothing was measured)."""
        units = (round(self.covered_s / UNIT_S), round(self.truth_s / UNIT_S))
        right = self.returned_s - self.wrong_s
        p_units = (round(right / UNIT_S), round(self.returned_s / UNIT_S))
        return {
            "recall": round(self.covered_s / self.truth_s, 4) if self.truth_s > 0 else None,
            "recall_ci95": [round(x, 4) for x in wilson(*units)] if units[1] else None,
            "precision": round(right / self.returned_s, 4) if self.returned_s > 0 else None,
            "precision_ci95": [round(x, 4) for x in wilson(*p_units)] if p_units[1] else None,
            "truth_s": round(self.truth_s, 2), "covered_s": round(self.covered_s, 2),
            "returned_s": round(self.returned_s, 2), "wrong_s": round(self.wrong_s, 2),
            "false_ranges": self.false_ranges, "ranges": self.ranges,
        }


def score_ranges(returned: Intervals, truth: Intervals, visible: Intervals,
                 mask: Intervals | None, tolerance_s: float) -> Tally:
    """Score returned ranges of one person in one video.

    `truth`: when the person shows a face of 40 px or more (recall is of this time);
    `visible`: when the person is visible at any size (returned time outside it, widened by
    `tolerance_s`, is wrong); `mask`: the time a condition holds, where precision is
    measured (None: not measurable for this condition, e.g. face size).
    """
    ret = union(returned)
    t = Tally(truth_s=measure(truth), covered_s=measure(intersect(union(truth), ret)))
    if mask is None:
        return t
    near = dilate(union(visible), tolerance_s)
    pieces = intersect(ret, union(mask))
    t.returned_s = measure(pieces)
    t.wrong_s = measure(subtract(pieces, near))
    t.ranges = len(pieces)
    t.false_ranges = sum(1 for p in pieces if not intersect([p], near))
    return t


def score_checked(returned: Intervals, right: Intervals, truth: Intervals,
                  mask: Intervals | None) -> Tally:
    """Face-checked scoring: `returned` is the time of every returned track (or detection),
    `right` the part of it whose faces are the person's (matched to their truth boxes). Recall
    is of truth time inside `right`; precision is the share of returned time that is right; a
    false range is a returned piece with no right time in it."""
    ret, ok = union(returned), union(right)
    t = Tally(truth_s=measure(truth), covered_s=measure(intersect(union(truth), ok)))
    if mask is None:
        return t
    pieces = intersect(ret, union(mask))
    t.returned_s = measure(pieces)
    t.wrong_s = measure(subtract(pieces, ok))
    t.ranges = len(pieces)
    t.false_ranges = sum(1 for q in pieces if not intersect([q], ok))
    return t


# --- clips and their conditions --------------------------------------------------------------

@dataclass(frozen=True)
class ClipSpec:
    """The generator's settings for one seed."""

    seed: int
    clip_s: float
    size: str
    max_people: int
    tilt: float
    night_prob: float
    fisheye: float
    crf: int
    fps: int = 30

    def args(self) -> list[str]:
        """make_bodycam_clip.py arguments (without --out)."""
        return ["--seed", str(self.seed), "--duration", f"{self.clip_s:g}", "--size", self.size,
                "--fps", str(self.fps), "--crf", str(self.crf), "--max-people",
                str(self.max_people), "--tilt", f"{self.tilt:g}", "--night-prob",
                f"{self.night_prob:g}", "--fisheye", f"{self.fisheye:g}", "--boxes"]

    def key(self, tool_sha: str) -> str:
        """Cache key: the settings and the generator's own bytes."""
        text = json.dumps([self.args(), tool_sha])
        return f"eval-{self.seed}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def draw_conditions(seed: int, clip_s: float) -> ClipSpec:
    """The clip conditions a seed stands for (deterministic, independent of the run)."""
    rng = random.Random(f"bodycam-eval-{seed}")
    return ClipSpec(
        seed=seed, clip_s=clip_s,
        size=rng.choice(["1280x720", "1920x1080"]),
        max_people=rng.randint(1, 4),
        tilt=rng.choice([0.0, 0.0, 10.0, 20.0]),
        night_prob=rng.choice([0.0, 0.0, 0.5, 1.0]),
        fisheye=rng.choice([0.0, 0.0, 0.2, 0.35]),
        crf=rng.choice([20, 23, 26, 28]),
    )


def draw_harsh(seed: int, clip_s: float) -> ClipSpec:
    """Harsher conditions than draw_conditions' for a seed: more people, stronger tilt and lens,
    more night, heavier compression, other frame rates."""
    rng = random.Random(f"bodycam-harsh-{seed}")
    return ClipSpec(
        seed=seed, clip_s=clip_s,
        size=rng.choice(["1280x720", "1920x1080"]),
        max_people=rng.randint(3, 6),
        tilt=rng.choice([20.0, 30.0, 40.0]),
        night_prob=rng.choice([0.5, 1.0]),
        fisheye=rng.choice([0.35, 0.5]),
        crf=rng.choice([28, 30, 32]),
        fps=rng.choice([25, 30, 30, 60]),
    )


DRAWS = {"drawn": draw_conditions, "harsh": draw_harsh}


def parse_seeds(text: Iterable[str]) -> list[int]:
    """Seeds from arguments such as `7000-7003 7010,7012`."""
    seeds: list[int] = []
    for arg in text:
        for part in arg.split(","):
            if not part.strip():
                continue
            lo, _, hi = part.partition("-")
            a = int(lo)
            b = int(hi) if hi else a
            if b < a:
                raise ValueError(f"seed range {part}: the end is before the start")
            seeds += range(a, b + 1)
    return sorted(set(seeds))


def split_of(seeds: list[int], label: str | None = None) -> str:
    """'test' or 'tuning' for a set of seeds; refuses a mix, a seed of neither range, and a
    'test' label on tuning seeds (or the other way round)."""
    if not seeds:
        raise ValueError("no seeds given")
    outside = [s for s in seeds if s not in TUNING_SEEDS and s not in TEST_SEEDS]
    if outside:
        raise ValueError(f"seeds {outside} are in neither split: tuning seeds are"
                         f" {TUNING_SEEDS.start}-{TUNING_SEEDS.stop - 1}, test seeds"
                         f" {TEST_SEEDS.start}-{TEST_SEEDS.stop - 1}")
    kinds = {"test" if s in TEST_SEEDS else "tuning" for s in seeds}
    if len(kinds) > 1:
        raise ValueError("tuning and test seeds in one run: measure them apart")
    split = kinds.pop()
    if label is not None and label != split:
        raise ValueError(f"--split {label} but the seeds are {split} seeds"
                         + (": a test run takes seeds 7000-7999 only" if label == "test" else ""))
    return split


def generator(testdata: Path) -> Path:
    """The clip generator beside the test data."""
    tool = testdata.resolve().parent / "tools" / "make_bodycam_clip.py"
    if not tool.exists():
        raise SystemExit(f"clip generator not found at {tool}: set BODYCAM_TESTDATA")
    return tool


def generate_all(specs: list[ClipSpec], cache: Path, testdata: Path, log: Any = print
                 ) -> list[tuple[Path, dict[str, Any]]]:
    """The clips of these specs and their truths, from the cache or generated into it."""
    tool = generator(testdata)
    made = []
    for spec in specs:
        log(f"clip {spec.seed}: {spec.size} at {spec.fps} fps, up to {spec.max_people} people,"
            f" tilt {spec.tilt:g}, night {spec.night_prob:g}, fisheye {spec.fisheye:g},"
            f" crf {spec.crf}")
        made.append(generate(spec, cache, tool))
    return made


def ingest_all(h: Harness, specs: list[ClipSpec], made: list[tuple[Path, dict[str, Any]]],
               case: str) -> dict[str, ClipTruth]:
    """Ingest generated clips into a case and wait for them; their truths by video id
    (SystemExit when one does not end done)."""
    res = h.cli("ingest", *(str(p) for p, _ in made), "--case", case, "--officer", "eval",
                "--device", "eval", "--wait")
    by_name = {r["filename"]: r for r in res}
    clips: dict[str, ClipTruth] = {}
    for (path, truth), spec in zip(made, specs, strict=True):
        r = by_name[path.name]
        if r["status"] != "done":
            raise SystemExit(f"clip {spec.seed} ended {r['status']}: see `bodycam jobs`")
        clips[r["video_id"]] = ClipTruth.from_json(spec, truth)
    return clips


def generate(spec: ClipSpec, cache: Path, tool: Path) -> tuple[Path, dict[str, Any]]:
    """The clip of a spec and its truth, from the cache or generated into it."""
    cache.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(tool.read_bytes()).hexdigest()
    path = cache / f"{spec.key(sha)}.mp4"
    truth_file = path.with_suffix(".json")
    if not (path.exists() and truth_file.exists()):
        tmp = cache / f".part-{uuid.uuid4().hex}.mp4"
        env = dict(os.environ)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
        proc = subprocess.run([sys.executable, str(tool), "--out", str(tmp), *spec.args()],
                              env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"clip generation for seed {spec.seed} failed: {proc.stderr[-800:]}")
        tmp.with_suffix(".json").replace(truth_file)
        tmp.replace(path)
    return path, json.loads(truth_file.read_text())


@dataclass
class ClipTruth:
    """What the generator says one clip shows, reduced to time per identity and condition."""

    spec: ClipSpec
    duration: float
    fps: float
    night: Intervals
    big: dict[str, dict[int, float]]  # identity -> frame -> face height (>= 40 px)
    visible: dict[str, Intervals]  # identity -> time visible at any size
    boxes: dict[int, list[tuple[str, tuple[float, float, float, float]]]] = field(repr=False)
    has_yaw: bool = False

    @classmethod
    def from_json(cls, spec: ClipSpec, truth: dict[str, Any]) -> ClipTruth:
        fps = float(truth["fps"])
        big: dict[str, dict[int, float]] = defaultdict(dict)
        frames: dict[str, list[int]] = defaultdict(list)
        boxes: dict[int, list[tuple[str, tuple[float, float, float, float]]]] = defaultdict(list)
        has_yaw = False
        for row in truth.get("boxes", []):
            frame, ident, x1, y1, x2, y2 = row[:6]
            has_yaw = has_yaw or len(row) > 6
            frames[ident].append(int(frame))
            boxes[int(frame)].append((ident, (x1, y1, x2, y2)))
            if y2 - y1 >= MIN_FACE_PX:
                big[ident][int(frame)] = float(y2 - y1)
        if "boxes" not in truth:
            raise SystemExit("the truth has no per-frame boxes: generate with --boxes")
        night = union((s["start"], s["end"]) for s in truth["scenes"] if s.get("night"))
        return cls(spec, float(truth["duration"]), fps, night, dict(big),
                   {i: frames_to_intervals(f, fps) for i, f in frames.items()}, dict(boxes),
                   has_yaw)

    def truth_by_condition(self, ident: str) -> dict[str, Intervals]:
        """Truth time (faces >= 40 px) of one identity in each condition."""
        frames = self.big.get(ident, {})
        every = frames_to_intervals(frames, self.fps)
        out = {c: intersect(every, m) for c, m in self.masks().items() if m is not None}
        out["small"] = frames_to_intervals((f for f, h in frames.items() if h < SMALL_FACE_PX),
                                           self.fps)
        out["large"] = frames_to_intervals((f for f, h in frames.items() if h >= SMALL_FACE_PX),
                                           self.fps)
        out["profile"] = []  # the generator records no head yaw
        return out

    def masks(self) -> dict[str, Intervals | None]:
        """When each condition holds in this clip (None: not a time condition)."""
        whole = [(0.0, self.duration)]
        day = subtract(whole, self.night)
        return {"all": whole, "day": day, "night": self.night,
                "tilt": whole if self.spec.tilt > 0 else [],
                "fisheye": whole if self.spec.fisheye > 0 else [],
                "plain": day if self.spec.tilt == 0 and self.spec.fisheye == 0 else [],
                "small": None, "large": None, "profile": None}

    def identities(self) -> list[str]:
        """Identities with truth time of faces 40 px or taller."""
        return sorted(i for i, f in self.big.items() if f)


def score_search(tallies: dict[str, Tally], returned: dict[str, Intervals],
                 clips: dict[str, ClipTruth], ident: str, tolerance_s: float,
                 checked: tuple[dict[str, Tally], dict[str, Intervals],
                                dict[str, Intervals]] | None = None) -> None:
    """Add one search's returned ranges (by video id) for `ident` to the per-condition
    tallies, over every clip of the case (a range in a clip without the person is wrong).

    `checked`: (tallies, returned track time, the part of it that is the person's faces) for
    the face-checked figures."""
    for vid, clip in clips.items():
        truth = clip.truth_by_condition(ident)
        masks = clip.masks()
        got = returned.get(vid, [])
        for cond in CONDITIONS:
            tallies[cond].add(score_ranges(got, truth[cond], clip.visible.get(ident, []),
                                           masks[cond], tolerance_s))
            if checked is not None:
                ct, spans, right = checked
                ct[cond].add(score_checked(spans.get(vid, []), right.get(vid, []),
                                           truth[cond], masks[cond]))


# --- the stack -------------------------------------------------------------------------------

@dataclass
class Harness:
    """How the harness reaches a running stack: the CLI's environment and a library context."""

    env: dict[str, str]
    ctx: Any  # bodycam.context.Context

    def cli(self, *args: str, timeout: float = 3600) -> Any:
        proc = subprocess.run([sys.executable, "-m", "bodycam", *args, "--json"], env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise SystemExit(f"bodycam {args[0]} failed ({proc.returncode}): {proc.stderr[-800:]}")
        return json.loads(proc.stdout)


@contextmanager
def temporary_stack(log: Any) -> Iterator[Harness]:
    """A fresh embedded stack in a temporary BODYCAM_HOME (as `make hostile` does), removed
    afterwards."""
    from bodycam.config import reload_settings
    from bodycam.context import Context

    home = tempfile.mkdtemp(prefix="bodycam-eval.")
    for key in EXTERNAL:
        os.environ.pop(key, None)
    os.environ["BODYCAM_HOME"] = home
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    log(f"stack up in {home}")
    up = subprocess.run([sys.executable, "-m", "bodycam", "up"], env=env, capture_output=True,
                        text=True, timeout=600, stdin=subprocess.DEVNULL)
    pool = None
    try:
        if up.returncode != 0:
            raise SystemExit(f"bodycam up failed: {up.stderr[-1500:]}")
        ctx = Context.load(reload_settings())
        # The harness polls the stack it times: a kept connection costs a query a poll, not
        # a login and a new backend (7 ms of the harness's CPU and more of Postgres'), CPU
        # the timed workers would lose on a small machine.
        ctx.pool = pool = Pool(ctx.services.database_url, 2)
        yield Harness(env, ctx)
    finally:
        if pool is not None:
            pool.close()
        subprocess.run([sys.executable, "-m", "bodycam", "down"], env=env, capture_output=True,
                       timeout=300, stdin=subprocess.DEVNULL)
        shutil.rmtree(home, ignore_errors=True)


# --- tracks ----------------------------------------------------------------------------------

def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def track_identities(conn: Any, clips: dict[str, ClipTruth]
                     ) -> dict[str, dict[str, Any]]:
    """Per stored track of the clips: video, time, and truth identities of its detections.

    A track's identity is the person most of its detections show; on a tie, the one it shows
    first (its detections are read in time order, so the choice is the same in every run)."""
    rows = conn.execute(
        "SELECT t.id::text AS tid, t.video_id::text AS vid, t.start_s, t.end_s,"
        " d.frame_index, d.box_px, d.t_s FROM tracks t JOIN detections d ON d.track_id = t.id"
        " WHERE t.video_id = ANY(%s) AND t.embedding IS NOT NULL"
        " ORDER BY t.start_s, t.end_s, t.id, d.t_s",
        (uids(clips),)).fetchall()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        tr = out.setdefault(r["tid"], {"video_id": r["vid"], "start_s": float(r["start_s"]),
                                       "end_s": float(r["end_s"]), "ids": Counter(),
                                       "heights": [], "times": []})
        box = tuple(float(v) for v in r["box_px"])
        tr["heights"].append(box[3] - box[1])
        tr["times"].append(float(r["t_s"]))
        best, who = IOU_MATCH, None
        for ident, tb in clips[r["vid"]].boxes.get(int(r["frame_index"]), []):
            iou = _iou(box, tb)
            if iou >= best:
                best, who = iou, ident
        tr["ids"][who] += 1
    for tr in out.values():
        named = [(i, n) for i, n in tr["ids"].most_common() if i is not None]
        tr["identity"] = named[0][0] if named else None
        tr["n"] = sum(tr["ids"].values())
        tr["mixed"] = sum(1 for _, n in named if n >= 2) >= 2
    return out


def probe_track(tracks: dict[str, dict[str, Any]], video_id: str, ident: str) -> str | None:
    """The track a track search for `ident` in a video starts from: of that person's tracks
    there that are not mixed, the one with most of their detections, and on a tie the one
    that starts first. (Track ids are random UUIDs: a tie broken by id picked another probe,
    and so other figures, from run to run.)"""
    mine = [(t["ids"][ident], -t["start_s"], tid) for tid, t in tracks.items()
            if t["video_id"] == video_id and t["identity"] == ident and not t["mixed"]]
    return max(mine)[2] if mine else None


def track_report(tracks: dict[str, dict[str, Any]], clips: dict[str, ClipTruth]
                 ) -> dict[str, Any]:
    """Purity of tracks and how much of the truth time they cover."""
    n_det = sum(t["n"] for t in tracks.values())
    majority = sum(t["ids"][t["identity"]] for t in tracks.values() if t["identity"])
    unmatched = sum(t["ids"][None] for t in tracks.values())
    truth_s = covered_s = 0.0
    for vid, clip in clips.items():
        for ident in clip.identities():
            truth = frames_to_intervals(clip.big[ident], clip.fps)
            mine = union((t["start_s"], t["end_s"]) for t in tracks.values()
                         if t["video_id"] == vid and t["identity"] == ident)
            truth_s += measure(truth)
            covered_s += measure(intersect(truth, mine))
    return {
        "tracks": len(tracks), "detections": n_det,
        "mixed_tracks": sum(1 for t in tracks.values() if t["mixed"]),
        "purity": round(majority / max(1, n_det - unmatched), 4),
        "detections_without_truth_face": unmatched,
        "coverage": round(covered_s / truth_s, 4) if truth_s else None,
        "coverage_ci95": [round(x, 4) for x in wilson(round(covered_s / UNIT_S),
                                                      round(truth_s / UNIT_S))],
        "truth_s": round(truth_s, 2), "covered_s": round(covered_s, 2),
    }


# --- calibration -----------------------------------------------------------------------------

CALIBRATION_CONDITIONS = ("all", "day", "night", "frontal", "tilted", "small", "large")


def track_conditions(track: dict[str, Any], clip: ClipTruth, median_px: float) -> set[str]:
    """The calibration conditions a track falls in: day or night (most of its detections),
    frontal or tilted (the clip's head tilt), small or large (its median face height)."""
    night = sum(1 for t in track["times"] if any(a <= t <= b for a, b in clip.night))
    small = median_px < SMALL_FACE_PX
    return {"all", "night" if 2 * night > len(track["times"]) else "day",
            "tilted" if clip.spec.tilt > 0 else "frontal", "small" if small else "large"}


def calibration(tracks: dict[str, dict[str, Any]], vectors: dict[str, np.ndarray],
                clips: dict[str, ClipTruth], gallery: dict[str, np.ndarray],
                threshold: float) -> dict[str, Any]:
    """False-match and false-non-match rates at `threshold`, per condition, over pairs of a
    single-identity track (its stored vector) and an enrolled identity (its best photo):
    genuine when the track is that identity, impostor otherwise. A track of someone not
    enrolled gives impostor pairs only."""
    rows: dict[str, dict[str, int]] = {c: {"genuine": 0, "false_non_match": 0, "impostor": 0,
                                           "false_match": 0} for c in CALIBRATION_CONDITIONS}
    pairs: list[dict[str, Any]] = []  # per track: its best genuine and impostor scores
    for tid, t in tracks.items():
        vec = vectors.get(tid)
        if vec is None or t["identity"] is None or t["mixed"]:
            continue
        median_px = float(np.median(t["heights"]))
        conds = track_conditions(t, clips[t["video_id"]], median_px)
        pair: dict[str, Any] = {"track_id": tid, "conditions": sorted(conds - {"all"}),
                                "median_face_px": round(median_px, 1),
                                "genuine": None, "impostor_max": None}
        pairs.append(pair)
        for ident, photos in gallery.items():
            sim = float(np.max(photos @ vec))
            kind = "genuine" if ident == t["identity"] else "impostor_max"
            if pair[kind] is None or sim > pair[kind]:
                pair[kind] = round(sim, 4)
            for c in conds:
                if ident == t["identity"]:
                    rows[c]["genuine"] += 1
                    rows[c]["false_non_match"] += sim < threshold
                else:
                    rows[c]["impostor"] += 1
                    rows[c]["false_match"] += sim >= threshold
    out: dict[str, Any] = {"threshold": threshold, "conditions": {}, "pairs": pairs}
    for c, r in rows.items():
        out["conditions"][c] = {
            **r,
            "fnmr": r["false_non_match"] / r["genuine"] if r["genuine"] else None,
            "fnmr_ci95": [round(x, 4) for x in wilson(r["false_non_match"], r["genuine"])],
            "fmr": r["false_match"] / r["impostor"] if r["impostor"] else None,
            "fmr_ci95": [round(x, 4) for x in wilson(r["false_match"], r["impostor"])]}
    return out


# --- the reference ---------------------------------------------------------------------------

def reference_ranges(path: Path, clip: ClipTruth, gallery: dict[str, np.ndarray], embedder: Any,
                     mtcnn: Any, cosine: float) -> tuple[dict[str, Intervals],
                                                         dict[str, Intervals]]:
    """The plain per-detection reference on one clip: identity -> returned time, and
    identity -> the part of it whose detection is that person's face (truth box IoU)."""
    import av
    from PIL import Image

    from bodycam.domain import FaceDetection

    names = list(gallery)
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    right: dict[str, list[tuple[float, float]]] = defaultdict(list)
    half = 0.5 / REFERENCE_FPS
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        rate = float(stream.average_rate or 30)
        step = max(1, round(rate / REFERENCE_FPS))
        for i, frame in enumerate(container.decode(stream)):
            if i % step:
                continue
            t_s = i / rate
            img = frame.to_ndarray(format="rgb24")
            h, w = img.shape[:2]
            scale = REFERENCE_WIDTH / w
            small = np.asarray(Image.fromarray(img).resize(
                (REFERENCE_WIDTH, round(h * scale)), Image.Resampling.BILINEAR))
            boxes, _probs = mtcnn.detect(small)
            if boxes is None:
                continue
            dets = [FaceDetection(i, t_s, 0, (float(b[0]) / scale, float(b[1]) / scale,
                                              float(b[2]) / scale, float(b[3]) / scale),
                                  1.0, (), 0.0) for b in boxes]
            vecs = embedder.embed(small, dets, scale)
            for d, v in zip(dets, vecs, strict=True):
                scores = [float(np.max(gallery[n] @ v)) for n in names]
                j = int(np.argmax(scores))
                if scores[j] >= cosine:
                    out[names[j]].append((t_s - half, t_s + half))
                    if any(who == names[j] and _iou(d.box_px, tb) >= IOU_MATCH
                           for who, tb in clip.boxes.get(i, [])):
                        right[names[j]].append((t_s - half, t_s + half))
    return ({k: union(v) for k, v in out.items()}, {k: union(v) for k, v in right.items()})


# --- the run ---------------------------------------------------------------------------------

def evaluate(h: Harness, seeds: list[int], split: str, clip_s: float, cache: Path,
             testdata: Path, tolerance_s: float = 0.1, reference: bool = True,
             log: Any = print, strangers: int = 0, conditions: str = "drawn"
             ) -> dict[str, Any]:
    """Generate, ingest, search and score; returns the report.

    With `strangers`, that many of the identities shown in the clips (drawn from the seeds)
    are not enrolled: they are still searched for by photo, and every range a subject search
    (or the reference) returns on them is wrong, as with people off the watchlist.
    """
    from bodycam import search, subjects
    from bodycam.errors import BodycamError
    from bodycam.pipeline.faces import Registry

    t_start = time.perf_counter()
    specs = [DRAWS[conditions](s, clip_s) for s in seeds]
    made = generate_all(specs, cache, testdata, log)
    case = f"{CASE_PREFIX}-{split}-{uuid.uuid4().hex[:8]}"
    enroll_photos: dict[str, str] = {}
    for _, truth in made:
        enroll_photos.update(truth["enroll"])
    shown = sorted({i for spec, (_, truth) in zip(specs, made, strict=True)
                    for i in ClipTruth.from_json(spec, truth).identities()})
    off_list = sorted(random.Random(f"strangers-{seeds}").sample(shown, min(strangers,
                                                                            len(shown))))
    sids: dict[str, str] = {}
    refused: dict[str, str] = {}
    for ident, photo in sorted(enroll_photos.items()):
        if ident in off_list:
            continue
        try:
            sids[ident] = subjects.enroll(h.ctx, ident, [str(testdata / photo)], case,
                                          "evaluation", ACTOR)[0]
        except BodycamError as exc:  # a refused photo is a finding of the run, not a crash
            refused[ident] = f"{type(exc).__name__}: {exc}"
    log(f"case {case}: {len(sids)} identities enrolled, {len(refused)} refused")

    log(f"ingesting {len(made)} clips")
    t_ingest = time.perf_counter()
    clips = ingest_all(h, specs, made, case)
    ingest_s = time.perf_counter() - t_ingest
    log(f"processed in {ingest_s:.0f} s")
    seed_of = {vid: c.spec.seed for vid, c in clips.items()}

    present = sorted({i for c in clips.values() for i in c.identities()})
    paths = [p for p in PATHS if reference or p != "reference"]
    tallies = {p: {c: Tally() for c in CONDITIONS} for p in paths}
    checked = {p: {c: Tally() for c in CONDITIONS} for p in paths}
    per_clip = {p: {s: Tally() for s in seeds} for p in paths}
    thresholds: dict[str, float] = {}

    def record(path: str, ident: str, returned: dict[str, Intervals],
               spans: dict[str, Intervals], right: dict[str, Intervals]) -> None:
        score_search(tallies[path], returned, clips, ident, tolerance_s,
                     (checked[path], spans, right))
        for vid, clip in clips.items():
            one: dict[str, Tally] = {c: Tally() for c in CONDITIONS}
            score_search(one, {vid: returned.get(vid, [])}, {vid: clip}, ident, tolerance_s)
            per_clip[path][clip.spec.seed].add(one["all"])

    model = h.ctx.settings.pipeline.embedder
    with h.ctx.db() as conn:
        tracks = track_identities(conn, clips)
        vectors = {str(r["tid"]): np.asarray(r["embedding"].to_numpy(), np.float32)
                   for r in conn.execute(
                       "SELECT id::text AS tid, embedding FROM tracks WHERE video_id = ANY(%s)"
                       " AND embedding IS NOT NULL", (uids(clips),)).fetchall()}
        enrolled = search.case_gallery(conn, case, model)
    named_gallery = {ident: enrolled[sid] for ident, sid in sids.items() if sid in enrolled}
    calib = calibration(tracks, vectors, clips, named_gallery,
                        h.ctx.settings.search.default_threshold[model])

    def scored(path: str, ident: str, result: Any) -> None:
        """The appearance ranges of a result; its tracks' time, and the part of it that is
        tracks of the person (face-checked)."""
        got: dict[str, list[tuple[float, float]]] = defaultdict(list)
        spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
        right: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for a in result.results:
            got[a.video_id].append((a.start_s, a.end_s))
            for tid in a.track_ids:
                t = tracks.get(tid)
                if t is None:
                    continue
                spans[a.video_id].append((t["start_s"], t["end_s"]))
                if t["identity"] == ident:
                    right[a.video_id].append((t["start_s"], t["end_s"]))
        thresholds[path] = result.threshold
        record(path, ident, {v: union(r) for v, r in got.items()},
               {v: union(r) for v, r in spans.items()}, {v: union(r) for v, r in right.items()})
    searches = 0
    for ident in present:
        photo = str(testdata / enroll_photos[ident])
        r = search.search(h.ctx, search.Probe(photo=photo), case, "evaluation", ACTOR,
                          limit=1000)
        scored("photo", ident, r)
        searches += 1
        if ident in sids:
            r = search.search(h.ctx, search.Probe(subject_id=sids[ident]), case, "evaluation",
                              ACTOR, limit=1000)
            scored("subject", ident, r)
            searches += 1
        for vid, clip in clips.items():
            if ident not in clip.identities():
                continue
            probe = probe_track(tracks, vid, ident)
            if probe is None:  # no track of this person to search with: all of them is missed
                record("track", ident, {}, {}, {})
                continue
            r = search.search(h.ctx, search.Probe(track_id=probe), case, "evaluation",
                              ACTOR, limit=1000)
            scored("track", ident, r)
            searches += 1
    log(f"{searches} searches for {len(present)} identities")

    ref_s = 0.0
    if reference:
        from facenet_pytorch import MTCNN

        from bodycam.search import case_gallery

        t_ref = time.perf_counter()
        with h.ctx.db() as conn:
            gallery = case_gallery(conn, case, h.ctx.settings.pipeline.embedder)
        ident_of = {sid: ident for ident, sid in sids.items()}
        named = {ident_of[s]: v for s, v in gallery.items() if s in ident_of}
        embedder = Registry.embedder(h.ctx.settings.pipeline)
        mtcnn = MTCNN(keep_all=True)
        path_of = dict(zip(clips, (p for p, _ in made), strict=True))  # in ingest's order
        got_ref = {vid: reference_ranges(path_of[vid], clips[vid], named, embedder, mtcnn,
                                         REFERENCE_COSINE) for vid in clips}
        thresholds["reference"] = REFERENCE_COSINE
        for ident in (i for i in present if i in sids):  # as subject searches: enrolled
            ret = {vid: got.get(ident, []) for vid, (got, _) in got_ref.items()}
            record("reference", ident, ret, ret,
                   {vid: ok.get(ident, []) for vid, (_, ok) in got_ref.items()})
        ref_s = time.perf_counter() - t_ref
        log(f"reference in {ref_s:.0f} s")

    return {
        "split": split, "conditions": conditions, "seeds": seeds, "clip_s": clip_s,
        "case": case,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": h.ctx.settings.pipeline.embedder,
        "thresholds": thresholds, "tolerance_s": tolerance_s,
        "min_face_px": MIN_FACE_PX, "small_face_px": [MIN_FACE_PX, SMALL_FACE_PX],
        "clips": [{**asdict(c.spec), "video_id": vid, "status": "done",
                   "identities": c.identities(), "night_s": round(measure(c.night), 2),
                   "truth_s": round(sum(measure(frames_to_intervals(f, c.fps))
                                        for f in c.big.values()), 2),
                   "has_yaw": c.has_yaw}
                  for vid, c in clips.items()],
        "enrolled": len(sids), "enrol_refused": refused, "identities_present": present,
        "not_enrolled": off_list,
        "paths": {p: {c: t.figures() for c, t in tallies[p].items()} for p in paths},
        "face_checked": {p: {c: t.figures() for c, t in checked[p].items()} for p in paths},
        "per_clip": {p: {str(s): t.figures() for s, t in per_clip[p].items()} for p in paths},
        "tracks": track_report(tracks, clips),
        "calibration": calib,
        "seconds": {"total": round(time.perf_counter() - t_start, 1),
                    "ingest_and_processing": round(ingest_s, 1), "reference": round(ref_s, 1)},
        "video_seeds": {vid: s for vid, s in seed_of.items()},
    }


# --- BENCHMARKS.md ---------------------------------------------------------------------------

def seed_text(seeds: list[int]) -> str:
    """Seeds as compact ranges: 7000-7003, 7010."""
    parts: list[str] = []
    for s in sorted(seeds):
        if parts and parts[-1].split("-")[-1] == str(s - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{s}"
        else:
            parts.append(str(s))
    return ", ".join(parts)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(ci: list[float] | None) -> str:
    return "" if ci is None else f" ({ci[0]:.3f}-{ci[1]:.3f})"


def render_section(rep: dict[str, Any]) -> str:
    """The recognition-eval section of BENCHMARKS.md, markers included."""
    thr = rep["thresholds"]
    harsh = ", **harsh conditions**" if rep.get("conditions") == "harsh" else ""
    lines = [
        MD_START, "## Recognition on unseen footage (`make eval`)", "",
        f"Measured {rep['measured_at']} with `python -m bodycam.evaluate`; **{rep['split']} split**"
        f" (seeds {seed_text(rep['seeds'])}, {len(rep['seeds'])} clips of"
        f" {rep['clip_s']:g} s{harsh}), embedder `{rep['model']}`; {rep['enrolled']} identities"
        f" enrolled from their photo 01"
        + (f", {len(rep['not_enrolled'])} shown but not enrolled" if rep.get("not_enrolled")
           else "") + ". Thresholds (cosine): "
        + ", ".join(f"{k} {v:g}" for k, v in sorted(thr.items()))
        + (" (reference: dlib's 0.6 on raw descriptors)" if "reference" in thr else "")
        + ". Recall is of the time faces of"
        f" {rep['min_face_px']:g} px or more are shown; precision of the returned time (the"
        " person visible at any size, with"
        f" {rep['tolerance_s']:g} s of tolerance at range ends). Brackets: Wilson 95% over 0.2-s"
        " units (correlated within an appearance: a lower bound on the uncertainty)."
        " Photo and subject searches run once per person over the whole case; a track search"
        " once per clip a person appears in (from their longest single-identity track), so its"
        " truth time counts a person once per such clip.",
        "",
    ]
    if len(rep["seeds"]) < FULL_RUN_CLIPS:
        lines += [f"**A small run:** issue 12 asks for at least {FULL_RUN_CLIPS} test clips"
                  f" (`make eval`); these figures come from {len(rep['seeds'])}.", ""]
    lines += [
        "| path | recall | precision | false ranges / ranges | truth s | returned s |",
        "|---|---|---|---|---:|---:|",
    ]
    for p, by in rep["paths"].items():
        a = by["all"]
        lines.append(f"| {p} | {_pct(a['recall'])}{_ci(a['recall_ci95'])} |"
                     f" {_pct(a['precision'])}{_ci(a['precision_ci95'])} |"
                     f" {a['false_ranges']} / {a['ranges']} | {a['truth_s']:.1f} |"
                     f" {a['returned_s']:.1f} |")
    lines += ["", "Face-checked (a returned track, or reference detection, counts only when its"
              " faces are the person's, matched to the truth boxes; returned time is the"
              " tracks' own time):", "",
              "| path | recall | precision | false ranges / ranges | returned s |",
              "|---|---|---|---|---:|"]
    for p, by in rep.get("face_checked", {}).items():
        a = by["all"]
        lines.append(f"| {p} | {_pct(a['recall'])}{_ci(a['recall_ci95'])} |"
                     f" {_pct(a['precision'])}{_ci(a['precision_ci95'])} |"
                     f" {a['false_ranges']} / {a['ranges']} | {a['returned_s']:.1f} |")
    lines += ["", "By condition (recall / precision; size conditions have no precision: a wrong"
              " lead has no truth face size):", "",
              "| condition | truth s | " + " | ".join(rep["paths"]) + " |",
              "|---|---:|" + "---|" * len(rep["paths"])]
    for c in CONDITIONS:
        first = next(iter(rep["paths"].values()))[c]
        cells = [f"{_pct(by[c]['recall'])} / {_pct(by[c]['precision'])}"
                 for by in rep["paths"].values()]
        lines.append(f"| {c} | {first['truth_s']:.1f} | " + " | ".join(cells) + " |")
    lines += ["", *calibration_lines(rep)]
    tr = rep["tracks"]
    lines += ["", f"Tracks: {tr['tracks']} tracks, {tr['mixed_tracks']} mixing two identities;"
              f" detection purity {tr['purity']:.3f}; tracks cover {_pct(tr['coverage'])}"
              f"{_ci(tr['coverage_ci95'])} of the truth time.", "",
              "Per clip (recall / precision of each path):", "",
              "| seed | size | max people | tilt | night | fisheye | crf | "
              + " | ".join(rep["paths"]) + " |",
              "|---|---|---:|---:|---:|---:|---:|" + "---|" * len(rep["paths"])]
    for c in rep["clips"]:
        pc = rep["per_clip"]
        s = str(c["seed"])
        cells = [f"{_pct(pc[p][s]['recall'])} / {_pct(pc[p][s]['precision'])}"
                 for p in rep["paths"]]
        lines.append(f"| {s} | {c['size']} | {c['max_people']} | {c['tilt']:g} |"
                     f" {c['night_prob']:g} | {c['fisheye']:g} | {c['crf']} | "
                     + " | ".join(cells) + " |")
    lines += ["", MD_END]
    return "\n".join(lines)


def calibration_lines(rep: dict[str, Any]) -> list[str]:
    """The per-condition false-match / false-non-match table of a report."""
    cal = rep.get("calibration")
    if not cal:
        return []
    lines = [f"Calibration by condition at the default threshold ({cal['threshold']:g}, cosine):"
             " pairs of a single-identity track (its stored vector) and an enrolled identity"
             " (its photo); genuine when the track is that person. FNMR: genuine pairs under the"
             " threshold; FMR: impostor pairs at or above it. Day or night by most of a track's"
             " detections, tilted when the clip's heads tilt, small when its median face is"
             f" under {SMALL_FACE_PX:g} px. Brackets: Wilson 95%.", "",
             "| condition | genuine pairs | FNMR | impostor pairs | FMR |",
             "|---|---:|---|---:|---|"]
    for c, r in cal["conditions"].items():
        lines.append(f"| {c} | {r['genuine']} | {_pct(r['fnmr'])}{_ci(r['fnmr_ci95'])} |"
                     f" {r['impostor']} | {_pct(r['fmr'])}{_ci(r['fmr_ci95'])} |")
    return lines


def calibration_section(rep: dict[str, Any]) -> str:
    """The section of docs/thresholds.md with the same table, and where it was measured."""
    return "\n".join([
        CALIB_START, "## False match and false non-match by condition (`bodycam eval`)", "",
        f"Measured {rep['measured_at']} by `python -m bodycam.evaluate` on the {rep['split']}"
        f" split (seeds {seed_text(rep['seeds'])}, {len(rep['seeds'])} generated clips of"
        f" {rep['clip_s']:g} s), embedder `{rep['model']}`; written by its `--thresholds`"
        " option.", "", *calibration_lines(rep), "", CALIB_END])


def write_section(path: Path, section: str) -> None:
    """Replace (or append) only the recognition-eval section of BENCHMARKS.md."""
    replace_section(path, section, MD_START, MD_END)


# --- entry point -----------------------------------------------------------------------------

def add_clip_arguments(p: argparse.ArgumentParser, clip_s: float, cache: str, out: str) -> None:
    """The options every run over generated clips takes (`make eval`, `make bench-e2e`)."""
    p.add_argument("--clip-s", type=float, default=clip_s, help="seconds per clip")
    p.add_argument("--cache", type=Path, default=Path(cache),
                   help="generated clips, keyed by seed and settings")
    p.add_argument("--testdata", type=Path,
                   default=Path(os.environ.get("BODYCAM_TESTDATA", "../shared/testdata")))
    p.add_argument("--out", type=Path, default=Path(out))
    p.add_argument("--benchmarks", type=Path, help="write the section into this BENCHMARKS.md")


def log(msg: str) -> None:
    """A progress line on stderr, with the time of day."""
    print(f"{datetime.now():%H:%M:%S} {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None, prog: str = "python -m bodycam.evaluate") -> int:
    """Parse arguments, run the evaluation on a temporary stack, write the report."""
    p = argparse.ArgumentParser(prog=prog,
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("seeds", nargs="+", help="seeds or ranges: 7000-7029 (test), 5000-5099"
                   " (tuning)")
    p.add_argument("--split", choices=("test", "tuning"),
                   help="the split the seeds must belong to (refused otherwise)")
    add_clip_arguments(p, 20.0, ".bodycam/eval-clips", "eval-report.json")
    p.add_argument("--thresholds", type=Path,
                   help="write the calibration-by-condition section into this docs/thresholds.md")
    p.add_argument("--tolerance-s", type=float, default=0.1,
                   help="a returned range may overhang the truth this much")
    p.add_argument("--no-reference", action="store_true", help="skip the plain reference")
    p.add_argument("--conditions", choices=sorted(DRAWS), default="drawn",
                   help="the harness's own draws, or harsher ones (not for the calibration)")
    p.add_argument("--strangers", type=int, default=0,
                   help="identities shown in the clips but left off the watchlist")
    args = p.parse_args(argv)
    try:
        seeds = parse_seeds(args.seeds)
        split = split_of(seeds, args.split)
    except ValueError as exc:
        p.error(str(exc))
    if (args.benchmarks or args.thresholds) and split != "test":
        p.error("--benchmarks and --thresholds take test-split figures only (seeds 7000-7999)")
    if (args.benchmarks or args.thresholds) and args.conditions != "drawn":
        p.error("--benchmarks and --thresholds take the harness's own conditions only")

    with temporary_stack(log) as h:
        rep = evaluate(h, seeds, split, args.clip_s, args.cache.resolve(),
                       args.testdata.resolve(), args.tolerance_s, not args.no_reference, log,
                       args.strangers, args.conditions)
    args.out.write_text(json.dumps(rep, indent=1))
    log(f"wrote {args.out}")
    print(render_section(rep))
    if args.benchmarks:
        write_section(args.benchmarks, render_section(rep))
    if args.thresholds:
        replace_section(args.thresholds, calibration_section(rep), CALIB_START, CALIB_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
