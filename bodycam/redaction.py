"""Redaction for release: a per-video plan of every face region in every frame, and renders.

The plan is computed once per video (dense detection: every `detect_every_frames`th frame,
MTCNN with a low threshold and a small minimum face and CenterFace, their boxes merged, tracked
by overlap alone so that no embedding is ever computed for it) and stored; each render
re-reads it without running a model. Between two detections of a track its box is
interpolated, every box is padded, and a track is covered `lead_frames` before its first
detection and `tail_frames` after its last, so a face does not flash through at a cut, an
entry or an exit; one that starts or ends away from the frame's edge is held toward its
scene's start or end (`hold_s`), since a face does not vanish inside the picture.

Masks are irreversible: the box is reduced to a handful of blocks (`blocks` across), so at
most a few dozen colour values of the face survive, then smoothed (`blur`) or shown as blocks
(`pixelate`), or filled (`box`). A light Gaussian blur was not used: a Gaussian-blurred head
at 1080p was still found by CenterFace at 80 px and more.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import itertools
import json
import math
import subprocess
import tempfile
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import av
import numpy as np
from PIL import Image, ImageDraw

from bodycam import text
from bodycam.config import LimitsSettings, PipelineSettings, RedactionSettings
from bodycam.domain import MediaInfo
from bodycam.errors import InvalidInputError, PermanentError
from bodycam.media.source import check_frame, frame_threads, open_video, upright
from bodycam.pipeline.faces import FaceDetector
from bodycam.pipeline.tracks import iou

# /3: the plan's frame size is the size a player shows (a quarter turn swaps the sides; /2
# plans of turned videos clipped boxes to the stored height, and faces below it showed).
# /4: CenterFace also scans a frame wider than its scan width at its own size, and a track
# lost inside the picture is held toward its scene's ends (bb26: small night faces at 1080p
# and the frames before a cut were shown); a video's next redaction makes a new plan.
# /5: with no face embedded, a face that moved too far to overlap its last box keeps its track
# at the next sample (a face running across the picture showed between samples), and a box
# is held at the frame's edge as inside it and carried on along its motion (a face leaving
# slowly, or running out of the picture, showed: bb37).
# /6: a video whose frames come unevenly (a variable frame rate, a pause in its time stamps) is
# planned on a grid at its frames' own finest rate, not their average: frames shared an index,
# were detected a few times a second or not at all, and faces showed in releases (bb43).
# /7: a plan track is split where the stored track it overlaps changes, and a stretch the
# analysis did not tell apart follows none: a keep or a removal showed another person (bb44,
# bb46).
# /8: a piece of a split plan track holds no box toward the piece it continues (its face was
# found there, in that piece): a kept person was hidden up to 1 s before and after each split
# (the kept-tracks benchmark: 21 of 105 boxes shown on facenet_example).
# /9: a hidden track's lead, tail or hold is not drawn where it lies mostly on a kept face
# found in that frame: held boxes of the faces around a kept person hid that person
# (facenet_example: 31 of 105 boxes shown). Not within one detection step of the track's own
# detections, nor for a face moving fast, nor across a gap in the kept face's detections
# (bb51: the first two showed faces on the kept face).
# /10: of a fast face's guesses, only the box carried on along its motion is always drawn;
# its held box is left out over a kept face as any other's (bb52: after a fast crossing it
# hid the kept person for up to 0.84 s, with no one there).
# /11: a kept or removed track is cut where another face took it over (a face moving fast,
# found beside it, ends and its motion lands on the track's next detection): the rest is
# hidden (bb54: a face arriving fast and stopping on the kept face showed for 5 frames).
ALGORITHM = "dense-union-overlap-tracks/11"
Box = tuple[float, float, float, float]
# One detection of a plan track: frame, x1, y1, x2, y2, probability, detector name.
PlanDetection = tuple[int, float, float, float, float, float, str]
Style = Literal["blur", "pixelate", "box"]
Audio = Literal["keep", "strip", "mute-ranges"]
STYLES: tuple[str, ...] = ("blur", "pixelate", "box")
AUDIO: tuple[str, ...] = ("keep", "strip", "mute-ranges")
CONTACT_FRAMES = 12
# The share of a guessed box (a hidden track's lead, tail or hold) on a kept face found in the
# same frame above which it is not drawn (frame_regions).
BEHIND_SHARE = 0.5
# A track whose face moves more than this share of its width a frame has its carried guesses
# drawn whatever lies under them (frame_regions).
STILL_SHARE = 0.25
# How a box of a track's path was come by (track_path): where its face was found (at a
# detection or between two), or guessed: held where it was first (last) found, or carried
# on from there along its motion.
Found = Literal["found", "held", "carried"]
# A decided track's detection is another face's where a moving face that ends between it
# and the track's previous detection is carried by its motion onto it with at least this
# IoU, and by HANDOVER_MARGIN more than the track's own last box or motion (handover).
HANDOVER_IOU = 0.5
HANDOVER_MARGIN = 0.2


class TakenOver(NamedTuple):
    """A stretch of a kept or removed track that another face took over (_handovers)."""

    track: str  # the decided track
    by: str  # the track of the face that took it over
    # Frames its path goes on after its last detection: up to the track's next detection
    # where the decided face is back (its taker then has a track of its own there), else
    # the tail of the track's end.
    tail: int | None


@dataclass(frozen=True)
class PlanTrack:
    """One face followed through a scene: its detections (PlanDetection)."""

    id: str
    scene: int
    detections: tuple[PlanDetection, ...]
    db_track_ids: tuple[str, ...] = ()
    # Whether its first (last) detection continues another piece of one face that
    # split_by_stored split: no box is held toward it (track_boxes).
    joined: tuple[bool, bool] = (False, False)
    # Where this piece is a stretch of a decided track another face took over
    # (decided_plan); never stored.
    taken_over: TakenOver | None = None

    @property
    def first_frame(self) -> int:
        """Frame of the first detection."""
        return self.detections[0][0]

    @property
    def last_frame(self) -> int:
        """Frame of the last detection."""
        return self.detections[-1][0]

    def as_json(self) -> dict[str, Any]:
        """Plain JSON for the stored plan."""
        return {"id": self.id, "scene": self.scene, "db_track_ids": list(self.db_track_ids),
                "joined": list(self.joined),
                "detections": [[d[0], *(round(v, 1) for v in d[1:5]), round(d[5], 4), d[6]]
                               for d in self.detections]}


def box_from_json(v: Sequence[Any]) -> Box:
    """A box read back from stored JSON (four numbers)."""
    x1, y1, x2, y2 = v
    return float(x1), float(y1), float(x2), float(y2)


@dataclass(frozen=True)
class Plan:
    """Every face region of a video: tracks of dense detections and how to cover them."""

    video_id: str
    original_sha256: str
    frame_rate: Fraction
    n_frames: int
    width_px: int
    height_px: int
    duration_s: float
    tracks: tuple[PlanTrack, ...]
    params: dict[str, Any]
    version: int = 0  # given when stored

    def as_json(self) -> dict[str, Any]:
        """Plain JSON for the database."""
        return {"algorithm": ALGORITHM, "video_id": self.video_id,
                "original_sha256": self.original_sha256, "frame_rate": str(self.frame_rate),
                "n_frames": self.n_frames, "width_px": self.width_px,
                "height_px": self.height_px, "duration_s": self.duration_s,
                "params": self.params, "tracks": [t.as_json() for t in self.tracks]}

    @classmethod
    def from_json(cls, data: dict[str, Any], version: int) -> Plan:
        """The stored form back."""
        tracks = tuple(PlanTrack(
            t["id"], int(t["scene"]),
            tuple((int(d[0]), *box_from_json(d[1:5]), float(d[5]), str(d[6]))
                  for d in t["detections"]),
            tuple(t.get("db_track_ids", ())),
            (bool(before), bool(after)))
            for t in data["tracks"] for before, after in [t.get("joined", (False, False))])
        return cls(str(data["video_id"]), str(data["original_sha256"]),
                   Fraction(data["frame_rate"]), int(data["n_frames"]), int(data["width_px"]),
                   int(data["height_px"]), float(data["duration_s"]), tracks,
                   dict(data["params"]), version)

    def track(self, track_id: str) -> PlanTrack | None:
        """A plan track by its id."""
        return next((t for t in self.tracks if t.id == track_id), None)

    def time_s(self, frame: int) -> float:
        """Seconds from the first frame."""
        return round(frame / float(self.frame_rate), 3)

    def low_confidence(self, d: PlanDetection) -> bool:
        """Whether a detection scored under its own detector's low-confidence line (each
        detector has its own scale)."""
        return d[5] < float(self.params["low_confidence"].get(d[6], 1.0))

    def low_confidence_frames(self) -> list[int]:
        """Frames holding a detection under its detector's low-confidence line."""
        return sorted({d[0] for t in self.tracks for d in t.detections if self.low_confidence(d)})


# -- computing the plan -------------------------------------------------------------------

def plan_grid(path: Path, info: MediaInfo, limits: LimitsSettings) -> MediaInfo:
    """The video as its plan indexes it: frame `i` is the time `i / frame_rate` from the first.

    The analysis numbers frames on a grid at their average rate, so that chunks seeking into
    the video agree. A plan must cover every frame: where frames come unevenly (a variable
    frame rate; a camera that paused, with a gap in its time stamps) the average rate put up
    to 20 frames on one index and detected a burst a few times a second (bb43). Such a video
    is planned on a grid at its frames' finest rate (the 2nd percentile of the steps between
    their time stamps, at most `limits.max_fps`), read from the packets alone; an even one
    keeps its own rate, and so its plan."""
    with open_video(path, limits, path.name) as media:
        pts = np.unique(np.fromiter(
            (p.pts for p in media.container.demux(media.stream)
             if p.pts is not None and p.size), dtype=np.int64))
    steps = np.diff(pts) * float(info.time_base)
    steps = steps[steps >= 1 / limits.max_fps]
    if steps.size < 2:
        return info
    rate = Fraction(1 / float(np.percentile(steps, 2))).limit_denominator(1001)
    if rate <= info.frame_rate * Fraction(105, 100):
        return info
    rate = min(rate, Fraction(limits.max_fps))
    last = round(float((int(pts[-1]) - info.start_pts) * info.time_base) * float(rate))
    return dataclasses.replace(info, frame_rate=rate, n_frames=max(info.n_frames, last + 1))


def on_grid(frame: int, analysed: MediaInfo, planned: MediaInfo) -> int:
    """A frame of the analysis (the stored detections) on the plan's grid."""
    if analysed.frame_rate == planned.frame_rate:
        return frame
    return round(frame * float(planned.frame_rate / analysed.frame_rate))


def dense_pipeline(cfg: PipelineSettings, red: RedactionSettings, info: MediaInfo
                   ) -> PipelineSettings:
    """The pipeline settings for redaction: denser, smaller, more sensitive, no noise filter."""
    fps = float(info.frame_rate) or 30.0
    return cfg.model_copy(update={
        "sample_fps": min(60.0, fps / red.detect_every_frames),
        "min_face_px": red.min_face_px, "detector_threshold": red.detector_threshold,
        "track_min_detections": 1, "min_scene_samples": 1, "scan_every": 1})


def compute_plan(path: Path, info: MediaInfo, video_id: str, sha256: str,
                 cfg: PipelineSettings, red: RedactionSettings, detector: FaceDetector,
                 stored: Sequence[tuple[str, int, Box, bool]] = (),
                 progress: Callable[[float], None] = lambda _f: None) -> Plan:
    """Detect faces densely over the whole video and link them into tracks (no embedding).

    `stored` are the search analysis's detections (track id, frame, box, whether the face
    was embedded there): each plan track records the stored track it overlaps, so a kept
    `bodycam tracks` id keeps its face (split_by_stored).
    Turned faces (a camera worn sideways, no rotation in its file), which the analysis
    misses, are found by the plan's denser, more sensitive detectors (test_redaction), so no
    frame is looked at turned (`look_turned` 0).
    """
    from bodycam.pipeline.analyze import analyze_chunk

    result = analyze_chunk(path, info, 0.0, info.duration_s, cfg, detector, None, progress,
                           look_turned=0)
    by_key: dict[int, list[PlanDetection]] = {}
    scene_of: dict[int, int] = {}
    loose = 0
    for key, det in result.detections:
        if key is None:  # not expected with track_min_detections 1; covered all the same
            loose += 1
            key = -loose
        by_key.setdefault(key, []).append((det.frame_index, *det.box_px, det.probability,
                                           det.detector))
        scene_of[key] = det.scene_index
    stored_at: dict[int, list[tuple[str, Box, bool]]] = {}
    for tid, frame, box, checked in stored:
        stored_at.setdefault(frame, []).append((tid, box, checked))
    reach = _stored_reach(stored)
    pieces = [(scene_of[key], run, tid, (i > 0, i < len(runs) - 1)) for key in by_key
              for runs in [split_by_stored(sorted(by_key[key]), stored_at, reach)]
              for i, (run, tid) in enumerate(runs)]
    pieces.sort(key=lambda p: (p[1][0][0], p[1][0][1:5]))
    tracks = [PlanTrack(f"P{n}", scene, tuple(run), (tid,) if tid else (), joined)
              for n, (scene, run, tid, joined) in enumerate(pieces, 1)]
    params = {"detect_every_frames": red.detect_every_frames, "min_face_px": red.min_face_px,
              "detector": {"name": detector.name, "version": detector.version,
                           "threshold": red.detector_threshold,
                           "centerface_threshold": red.centerface_threshold,
                           "centerface_width_px": red.centerface_width_px,
                           "centerface_full_size": red.centerface_full_size},
              "pad": red.pad, "lead_frames": red.lead_frames, "tail_frames": red.tail_frames,
              "hold_frames": round(red.hold_s * float(info.frame_rate or 30)),
              "low_confidence": {"mtcnn": red.low_confidence,
                                 "centerface": red.centerface_low_confidence},
              "frames_decoded": result.frames_decoded,
              "frames_detected": result.frames_sampled,
              "scenes": [[s.start_frame, s.end_frame] for s in result.scenes]}
    width, height = info.shown_size
    return Plan(video_id, sha256, info.frame_rate, info.n_frames, width, height,
                info.duration_s, tuple(tracks), params)


def _stored_reach(stored: Sequence[tuple[str, int, Box, bool]]) -> int:
    """Frames from a stored detection that its track's face still holds: the analysis's
    usual step between a track's sampled frames (it samples sparser than the plan), and the
    one frame either side a plan detection is matched over."""
    frames: dict[str, set[int]] = {}
    for tid, frame, _box, _checked in stored:
        frames.setdefault(tid, set()).add(frame)
    steps = [b - a for fs in frames.values() for a, b in itertools.pairwise(sorted(fs))]
    return (int(np.median(steps)) if steps else 1) + 1


def split_by_stored(dets: Sequence[PlanDetection],
                    stored_at: dict[int, list[tuple[str, Box, bool]]], reach: int
                    ) -> list[tuple[list[PlanDetection], str | None]]:
    """A plan track (detections in frame order) in runs that each follow one stored track.

    The plan links faces by overlap alone: one person who takes another's place with no
    frame between them (a cut that keeps the background, a dissolve) is one plan track, and
    a keep or a removal of the first person's track showed the second, named by no one
    (bb44). The analysis that made the stored tracks compared the faces and split them
    there: each plan detection takes the stored track it overlaps (IoU >= 0.3, a frame
    either side); one between two detections of the same stored track takes it too; one
    within `reach` frames of a stored track's first or last detection, with no other
    stored track on that side, takes it; any other (between two stored tracks, or far
    from any) follows none, and a run that follows none is hidden unless kept by its own
    plan id.

    The analysis compares a face already tracked only now and then (every
    EMBED_REFRESH_SAMPLES samples): a stored track goes on over the next person's face
    until the next comparison, up to 2 s (bb46). So where a run gives way to another stored
    track, its detections after its last compared face follow none either."""
    label: list[str | None] = []
    checked: list[bool] = []
    for d in dets:
        best, best_iou, seen_face = None, 0.3, False
        for f in (d[0] - 1, d[0], d[0] + 1):
            for tid, box, compared in stored_at.get(f, ()):
                if (o := iou(box, d[1:5])) >= best_iou:
                    best, best_iou, seen_face = tid, o, compared
        label.append(best)
        checked.append(seen_face)
    seen = [i for i, t in enumerate(label) if t is not None]
    if not seen:
        return [(list(dets), None)]
    resolved: list[str | None] = []
    k = 0  # seen[k] is the next labelled detection at or after i
    for i, d in enumerate(dets):
        while k < len(seen) and seen[k] < i:
            k += 1
        before = seen[k - 1] if k > 0 else None
        after = seen[k] if k < len(seen) else None
        if after == i:
            resolved.append(label[i])
        elif before is not None and after is not None:
            resolved.append(label[before] if label[before] == label[after] else None)
        elif before is not None:
            resolved.append(label[before] if d[0] - dets[before][0] <= reach else None)
        else:
            assert after is not None
            resolved.append(label[after] if dets[after][0] - d[0] <= reach else None)
    # A run's stretch after its last compared face, where another stored track follows.
    spans = [(idx[0], idx[-1], who) for who, group in
             itertools.groupby(range(len(dets)), key=lambda i: resolved[i])
             for idx in [list(group)]]
    for n, (first, last, who) in enumerate(spans):
        follower = next((w for _f, _l, w in spans[n + 1:] if w is not None), None)
        if who is None or follower in (None, who):
            continue
        upto = max((i for i in range(first, last + 1) if label[i] == who and checked[i]),
                   default=first - 1)
        resolved[upto + 1:last + 1] = [None] * (last - upto)
    runs = [([d for d, _w in group], who) for who, group in
            itertools.groupby(zip(dets, resolved, strict=True), key=lambda p: p[1])]
    return runs


# -- choices --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Decision:
    """Why something is hidden or shown, on what legal basis, decided by whom."""

    reason: str
    legal_basis: str
    decided_by: str

    def as_json(self) -> dict[str, str]:
        """Plain JSON for the report."""
        return {"reason": self.reason, "legal_basis": self.legal_basis,
                "decided_by": self.decided_by}


@dataclass(frozen=True)
class ManualRegion:
    """A box hidden over a time range (a missed face, a document, a screen, a plate)."""

    box_px: Box
    start_s: float
    end_s: float
    decision: Decision


@dataclass(frozen=True)
class Choices:
    """What the reviewer decided on the plan. Every track not kept or removed is hidden."""

    keep: dict[str, Decision] = field(default_factory=dict)  # plan track id -> why shown
    remove: dict[str, Decision] = field(default_factory=dict)  # false positives: not hidden
    regions: tuple[ManualRegion, ...] = ()
    style: Style = "blur"
    audio: Audio = "keep"
    mute_ranges: tuple[tuple[float, float], ...] = ()

    def as_json(self) -> dict[str, Any]:
        """Plain JSON, as a render job carries it to a worker (`from_json` reads it back)."""
        return {"keep": {k: d.as_json() for k, d in self.keep.items()},
                "remove": {k: d.as_json() for k, d in self.remove.items()},
                "regions": [{"box_px": list(r.box_px), "start_s": r.start_s, "end_s": r.end_s,
                             "decision": r.decision.as_json()} for r in self.regions],
                "style": self.style, "audio": self.audio,
                "mute_ranges": [list(m) for m in self.mute_ranges]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Choices:
        """The choices `as_json` wrote."""
        def decision(d: dict[str, str]) -> Decision:
            return Decision(d["reason"], d["legal_basis"], d["decided_by"])

        return cls(keep={k: decision(d) for k, d in data["keep"].items()},
                   remove={k: decision(d) for k, d in data["remove"].items()},
                   regions=tuple(ManualRegion(
                       box_from_json(r["box_px"]), float(r["start_s"]), float(r["end_s"]),
                       decision(r["decision"])) for r in data["regions"]),
                   style=data["style"], audio=data["audio"],
                   mute_ranges=tuple((float(a), float(b)) for a, b in data["mute_ranges"]))


def check_basis(red: RedactionSettings, legal_basis: str, reason: str, what: str) -> None:
    """Refuse a choice without a reason or with a legal basis outside the configured list."""
    text.required(reason, f"the reason for {what}", "give one")
    if legal_basis not in red.legal_bases:
        raise InvalidInputError(f"{what}: legal basis {legal_basis[:80]!r} is not in the "
                                f"configured list: {'; '.join(red.legal_bases)}")


# -- expanding the plan to frames ---------------------------------------------------------

def _clamp(box: Box, w: int, h: int) -> tuple[int, int, int, int]:
    """A box in whole pixels, outward, cut to a w x h frame (empty when outside it)."""
    x1, y1, x2, y2 = box
    return (max(0, math.floor(x1)), max(0, math.floor(y1)), min(w, math.ceil(x2)),
            min(h, math.ceil(y2)))


def _empty(box: tuple[int, int, int, int]) -> bool:
    return box[2] <= box[0] or box[3] <= box[1]


def _pad(box: Box, pad: float, w: int, h: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    dx, dy = (x2 - x1) * pad, (y2 - y1) * pad
    return _clamp((x1 - dx, y1 - dy, x2 + dx, y2 + dy), w, h)


def _region_frames(plan: Plan, m: ManualRegion) -> range:
    """The frames a manual region covers, its ends included."""
    fps = float(plan.frame_rate)
    return range(max(0, math.floor(m.start_s * fps)),
                 min(plan.n_frames - 1, math.ceil(m.end_s * fps)) + 1)


def _box(d: PlanDetection) -> Box:
    return d[1], d[2], d[3], d[4]


def track_boxes(plan: Plan, track: PlanTrack) -> Iterator[tuple[int, tuple[int, int, int, int]]]:
    """(frame, padded box) for every frame the track covers, lead and tail included
    (track_path)."""
    pad, w, h = float(plan.params["pad"]), plan.width_px, plan.height_px
    for f, box, _how in track_path(plan, track):
        yield f, _pad(box, pad, w, h)


def track_path(plan: Plan, track: PlanTrack) -> Iterator[tuple[int, Box, Found]]:
    """(frame, box, how it was come by) for every frame the track covers: between its
    detections the box is interpolated (`found`); before its first and after its last it
    is a lead and a tail (`held`). A track's first (last) box is held toward its scene's
    start (end), at most `hold_frames` (plans computed before record none). At the frame's
    edge too: a face half out of the picture is seldom found, and one leaving slowly showed
    in the frames after its last box (bb37). Where the track moved, the held box is also
    carried on along its first (last) step's motion (`carried`): a face running out of the
    picture showed ahead of its last box (bb37). A piece of a split track holds nothing
    toward the piece it continues (`joined`), whose face was found there: only its lead
    (tail) covers it. A stretch another face took over (decided_plan) has no lead, and no
    tail past the decided face's return: that face's own track covers it there, and the
    decided face was found there."""
    p = plan.params
    lead, tail = int(p["lead_frames"]), int(p["tail_frames"])
    if track.taken_over is not None:
        lead = 0
        tail = tail if track.taken_over.tail is None else track.taken_over.tail
    dets = track.detections
    last_frame = max(plan.n_frames, track.last_frame + 1) - 1
    hold = int(p.get("hold_frames", 0))
    scenes = p.get("scenes") or []
    if hold and 0 <= track.scene < len(scenes):
        start, end = (int(v) for v in scenes[track.scene])
        if not track.joined[0]:
            lead = max(lead, min(hold, track.first_frame - start))
        if not track.joined[1]:
            tail = max(tail, min(hold, end - 1 - track.last_frame))
    first_step = _step(dets[0], dets[1]) if len(dets) > 1 else None
    last_step = _step(dets[-2], dets[-1]) if len(dets) > 1 else None
    for f in range(max(0, track.first_frame - lead), track.first_frame):
        yield f, _box(dets[0]), "held"
        if first_step is not None:
            yield f, _moved(_box(dets[0]), first_step, f - track.first_frame), "carried"
    for a, b in itertools.pairwise(dets):
        for f in range(a[0], b[0]):
            yield f, _between(a, b, f), "found"
    for f in range(track.last_frame, min(last_frame, track.last_frame + tail) + 1):
        yield f, _box(dets[-1]), "held" if f > track.last_frame else "found"
        if last_step is not None and f > track.last_frame:
            yield f, _moved(_box(dets[-1]), last_step, f - track.last_frame), "carried"


def _between(a: PlanDetection, b: PlanDetection, f: int) -> Box:
    """The box at frame f between two detections of a track, interpolated."""
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = _box(a), _box(b)
    k = (f - a[0]) / max(1, b[0] - a[0])
    return (ax1 + k * (bx1 - ax1), ay1 + k * (by1 - ay1), ax2 + k * (bx2 - ax2),
            ay2 + k * (by2 - ay2))


def _step(a: PlanDetection, b: PlanDetection) -> tuple[float, float] | None:
    """How far a track's box moved a frame between two of its detections (x, y); None
    where it did not move."""
    n = max(1, b[0] - a[0])
    step = ((b[1] + b[3] - a[1] - a[3]) / 2 / n, (b[2] + b[4] - a[2] - a[4]) / 2 / n)
    return step if step != (0.0, 0.0) else None


def _moved(box: Box, step: tuple[float, float], frames: int) -> Box:
    dx, dy = step[0] * frames, step[1] * frames
    return box[0] + dx, box[1] + dy, box[2] + dx, box[3] + dy


@dataclass(frozen=True)
class Region:
    """One box to mask on one frame, and what it comes from (a track id or `manual-N`)."""

    source: str
    box: tuple[int, int, int, int]


def _kept_faces(plan: Plan, choices: Choices, step: int) -> dict[int, list[Box]]:
    """Per frame, the boxes of the kept tracks' faces where they were found: at each
    detection, and between two detections at most `step` frames apart. Not across a longer
    gap (the face was not found there: a face in front of it may have hidden it), nor in a
    lead, a tail or a hold (guesses)."""
    faces: dict[int, list[Box]] = {}
    for t in plan.tracks:
        if t.id not in choices.keep:
            continue
        dets = t.detections
        for a, b in itertools.pairwise(dets):
            for f in range(a[0], b[0] if b[0] - a[0] <= step else a[0] + 1):
                faces.setdefault(f, []).append(_between(a, b, f))
        faces.setdefault(dets[-1][0], []).append(_box(dets[-1]))
    return faces


def _detect_step(plan: Plan) -> int:
    """Frames from one detected frame to the next: `detect_every_frames`, or the gap seen
    most often between a track's detections where that is wider (a plan's sampling rate is
    capped, so a fast grid is detected more sparsely)."""
    gaps = Counter(b[0] - a[0] for t in plan.tracks
                   for a, b in itertools.pairwise(t.detections))
    seen = gaps.most_common(1)[0][0] if gaps else 1
    return max(1, int(plan.params.get("detect_every_frames", 1)), seen)


def _still(track: PlanTrack) -> bool:
    """Whether the track's face moved less than STILL_SHARE of its width a frame at both
    ends: a face crossing fast in front of a kept face is the one the detectors miss, and
    a guess of it was left out where it showed (bb51: 80 px a frame, a 200-px face)."""
    d = track.detections
    width = max(1.0, min(x[3] - x[1] for x in d))
    steps = [_step(d[0], d[1]), _step(d[-2], d[-1])] if len(d) > 1 else []
    return all(math.hypot(*st) < STILL_SHARE * width for st in steps if st is not None)


def _behind(box: Box, faces: Sequence[Box]) -> bool:
    """Whether most of a guessed face's box (BEHIND_SHARE) lies on a face found there: a
    face hidden behind it shows nothing, and one in front of it would have been found."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    return area > 0 and any(
        max(0.0, min(box[2], f[2]) - max(box[0], f[0]))
        * max(0.0, min(box[3], f[3]) - max(box[1], f[1])) >= BEHIND_SHARE * area
        for f in faces)


def _handovers(plan: Plan, track: PlanTrack) -> list[tuple[int, int, str]]:
    """The stretches of the track's detections that another face took over: (first, end
    (exclusive), that face's track). A stretch starts where a face found beside the track
    at its previous detection, moving, ends and its last box carried on along its motion
    lands on the detection (HANDOVER_IOU), better (HANDOVER_MARGIN) than the track's own
    last box, held or carried, does. The plan links a detection to the box it overlaps most
    in the frame before: a face arriving fast and stopping on the kept face (which it hides)
    was linked to the kept track, and shown (bb54). The stretch ends where the track is
    back on its face's box and the face that took it over is found elsewhere, where its
    motion carried it (a face crossing fast in front); else it runs to the track's end. A
    piece of a split track (`joined`) goes on in its next piece and takes nothing over."""
    ending: dict[int, list[PlanTrack]] = {}
    found: dict[int, list[tuple[int, Box]]] = {}  # frame: (its track's first frame, box)
    for t in plan.tracks:
        if t.id == track.id or t.scene != track.scene:
            continue
        if not t.joined[1] and len(t.detections) > 1:
            ending.setdefault(t.last_frame, []).append(t)
        for d in t.detections:
            found.setdefault(d[0], []).append((t.first_frame, _box(d)))
    dets = track.detections

    def taken(i: int) -> tuple[str, tuple[float, float]] | None:
        prev, d = dets[i - 1], dets[i]
        own = [_box(prev)]
        if i > 1 and (st := _step(dets[i - 2], prev)) is not None:
            own.append(_moved(_box(prev), st, d[0] - prev[0]))
        mine = max(iou(b, _box(d)) for b in own)
        for f in range(prev[0], d[0]):
            for t in ending.get(f, ()):
                last = t.detections[-1]
                if (st := _step(t.detections[-2], last)) is None:
                    continue
                o = iou(_moved(_box(last), st, d[0] - f), _box(d))
                if o >= HANDOVER_IOU and o >= mine + HANDOVER_MARGIN:
                    return t.id, st
        return None

    def back(home: Box, stretch: Sequence[PlanDetection], motion: tuple[float, float],
             d: PlanDetection) -> bool:
        if iou(_box(d), home) < HANDOVER_IOU:
            return False
        # From each detection of the stretch along the taker's motion, and from its last
        # along its own: a stretch's detection may be the decided face half hidden. Only a
        # track begun since the stretch began is the taker found on: a face standing on its
        # line all along ended the stretch at once, the taker still on the kept face (bb57).
        ways = [(x, motion) for x in stretch]
        if len(stretch) > 1 and (st := _step(stretch[-2], stretch[-1])) is not None:
            ways.append((stretch[-1], st))
        return any(iou(_moved(_box(x), st, f - x[0]), box) >= HANDOVER_IOU
                   for x, st in ways for f in range(stretch[-1][0] + 1, d[0] + 1)
                   for began, box in found.get(f, ()) if began >= stretch[0][0])

    out: list[tuple[int, int, str]] = []
    i = 1
    while i < len(dets):
        if (hit := taken(i)) is None:
            i += 1
            continue
        by, motion = hit
        j = i + 1
        while j < len(dets) and not back(_box(dets[i - 1]), dets[i:j], motion, dets[j]):
            j += 1
        out.append((i, j, by))
        i = j + 1
    return out


def decided_plan(plan: Plan, choices: Choices) -> Plan:
    """The plan with each kept or removed track cut where another face took it over
    (_handovers): such a stretch, `<id>/<that face's track>`, is hidden as any track no one
    decided on, for the choice named the face before it; the track's pieces around it keep
    its id and its choice."""
    tracks: list[PlanTrack] = []
    for t in plan.tracks:
        cuts = (_handovers(plan, t) if t.id in choices.keep or t.id in choices.remove
                else [])
        start = 0
        for i, j, by in cuts:
            tracks.append(dataclasses.replace(t, detections=t.detections[start:i],
                                              joined=(t.joined[0] or start > 0, True)))
            back = t.detections[j][0] - t.detections[j - 1][0] - 1 if j < len(t.detections) \
                else None
            tracks.append(PlanTrack(f"{t.id}/{by}", t.scene, t.detections[i:j],
                                    t.db_track_ids, (True, t.joined[1] or back is not None),
                                    TakenOver(t.id, by, back)))
            start = j
        if start < len(t.detections):
            tracks.append(dataclasses.replace(t, detections=t.detections[start:],
                                              joined=(t.joined[0] or start > 0, t.joined[1])))
    return dataclasses.replace(plan, tracks=tuple(tracks))


def frame_regions(plan: Plan, choices: Choices) -> dict[int, list[Region]]:
    """Every box to hide per frame: tracks not kept or removed, then the manual regions.

    A hidden track's guessed box (its lead, tail or hold: its face was not found there)
    that lies mostly on a kept face found in that frame is left out: held boxes of faces
    near a kept person hid that person for up to a second at a time (the kept-tracks
    benchmark: 31 of 105 boxes shown on facenet_example). Where that face is, a face
    behind it is covered by it, and one in front of it would have been found there, on a
    frame the detectors looked at: a guess less than one detection step (`detect_every_
    frames`) from the track's own detections is always drawn, for the face may have come
    or gone on a frame between, and so is the carried guess of a face moving more than
    STILL_SHARE of its width a frame, which the detectors miss (bb51). Such a face's held
    box is left out there as any other: it stands where the face was, not where it went,
    and drawn it hid the kept person for up to 0.84 s after a fast crossing (bb52). A kept
    face counts where it was found (`_kept_faces`), not across a gap in its detections.
    A kept or removed track counts up to where another face took it over (decided_plan).
    """
    return _regions(decided_plan(plan, choices), choices)


def _regions(plan: Plan, choices: Choices) -> dict[int, list[Region]]:
    """frame_regions of a plan decided_plan already cut."""
    out: dict[int, list[Region]] = {}
    pad, w, h = float(plan.params["pad"]), plan.width_px, plan.height_px
    # Frames between two detected frames were not looked at: a face may have come or gone
    # there unseen (bb51: a face appearing on a kept face on such a frame was shown).
    step = _detect_step(plan)
    shown = _kept_faces(plan, choices, step)
    for t in plan.tracks:
        if t.id in choices.keep or t.id in choices.remove:
            continue
        still = _still(t)
        for f, raw, how in track_path(plan, t):
            if ((how == "held" or (how == "carried" and still))
                    and min(abs(f - t.first_frame), abs(f - t.last_frame)) >= step
                    and _behind(raw, shown.get(f, ()))):
                continue
            box = _pad(raw, pad, w, h)
            if not _empty(box):  # none of it inside the frame otherwise
                out.setdefault(f, []).append(Region(t.id, box))
    for i, m in enumerate(choices.regions, 1):
        box = _clamp(m.box_px, plan.width_px, plan.height_px)
        if _empty(box):
            continue  # outside the frame (the request is refused before it gets here)
        for f in _region_frames(plan, m):
            out.setdefault(f, []).append(Region(f"manual-{i}", box))
    return out


# -- masking and rendering ----------------------------------------------------------------

def mask(img: np.ndarray, box: tuple[int, int, int, int], style: Style, blocks: int) -> None:
    """Hide one box of an RGB frame in place, irreversibly."""
    import cv2

    x1, y1, x2, y2 = box
    if x2 - x1 < 2 or y2 - y1 < 2:
        return
    roi = img[y1:y2, x1:x2]
    h, w = roi.shape[:2]
    if style == "box":
        roi[:] = 0
        return
    bw = max(1, min(w, blocks))
    bh = max(1, min(h, round(blocks * h / w)))
    small = cv2.resize(roi, (bw, bh), interpolation=cv2.INTER_AREA)
    if style == "pixelate":
        roi[:] = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        return
    # Smoothed at 8 px per block, then scaled up: the same look as a Gaussian of an eighth of
    # the box on the full-size patch, at a fraction of the cost.
    mid = cv2.resize(small, (bw * 8, bh * 8), interpolation=cv2.INTER_LINEAR)
    mid = cv2.GaussianBlur(mid, (0, 0), sigmaX=4.0, sigmaY=4.0)
    roi[:] = cv2.resize(mid, (w, h), interpolation=cv2.INTER_LINEAR)


@dataclass
class Shown:
    """The frames a render wrote, in order: each one's frame on the plan's grid (its time
    times the plan's frame rate) and its time. With a variable frame rate the two numberings
    differ, and a reviewer stepping to a frame the report named by the grid landed on
    another (bb15): the report names the release's frames."""

    grid: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    def span(self, first: int, last: int) -> tuple[int, int] | None:
        """The release's frames whose grid frame lies in [first, last], or None."""
        lo = bisect.bisect_left(self.grid, first)
        hi = bisect.bisect_right(self.grid, last) - 1
        return (lo, hi) if lo <= hi else None


@dataclass
class RenderResult:
    """What a render wrote: frame count and the contact sheet's frames (masked, small)."""

    n_frames: int
    width_px: int
    height_px: int
    sheet: list[tuple[int, Image.Image]] = field(default_factory=list)
    masked_boxes: int = 0
    shown: Shown = field(default_factory=Shown)


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return str(imageio_ffmpeg.get_ffmpeg_exe())


def sheet_frames(plan: Plan, regions: dict[int, list[Region]], choices: Choices) -> list[int]:
    """Up to CONTACT_FRAMES frames for the contact sheet: the middle of each track or region,
    then evenly spaced frames with something hidden."""
    wanted = [(t.first_frame + t.last_frame) // 2 for t in plan.tracks]
    fps = float(plan.frame_rate)
    wanted += [round((m.start_s + m.end_s) / 2 * fps) for m in choices.regions]
    picked = sorted({min(max(0, f), plan.n_frames - 1) for f in wanted})
    if len(picked) > CONTACT_FRAMES:
        step = len(picked) / CONTACT_FRAMES
        picked = [picked[int(i * step)] for i in range(CONTACT_FRAMES)]
    if not picked:
        picked = [plan.n_frames // 2]
    return picked


def render(src: Path, info: MediaInfo, plan: Plan, choices: Choices, out: Path,
           limits: LimitsSettings, red: RedactionSettings,
           progress: Callable[[float], None] = lambda _f: None) -> RenderResult:
    """Write the redacted MP4: every decoded frame, masked per the plan and the choices.

    Frames go to the ffmpeg binary (x264, yuv420p, faststart) as raw RGB in NUT packets that
    carry each frame's own time, so the frame count, every frame's time (a variable frame rate
    too) and the duration are the original's. A side of odd length gets one black row or
    column (4:2:0 needs even sides); the pixel aspect ratio is kept. Audio is the original's
    (AAC) from the first frame's time on, so sound keeps its place against the picture; it is
    dropped (`strip`) or silenced in `mute_ranges` (seconds from the first frame). Nothing else
    of the original is copied: no metadata, no chapter, no other stream.
    """
    plan = decided_plan(plan, choices)  # cut once: for the regions and the sheet's outlines
    regions = _regions(plan, choices)
    wanted = set(sheet_frames(plan, regions, choices))
    tb, fps = info.time_base, info.frame_rate
    result = RenderResult(0, 0, 0)
    proc: subprocess.Popen[bytes] | None = None
    frames: _FramePipe | None = None
    with tempfile.TemporaryFile() as errors, open_video(src, limits, src.name) as media:
        stream = media.stream
        frame_threads(stream)
        expected = (info.width_px, info.height_px)
        # Frames are masked as they were analysed: in square pixels (info.square_size)
        # where the probe recorded a pixel aspect ratio, and released so. A video probed
        # before it recorded one was analysed as stored: its pixels are released as they
        # are, with their aspect ratio.
        square = info.square_size if info.pixel_aspect != 1 else None
        sar = stream.codec_context.sample_aspect_ratio or Fraction(1)
        if square is not None or not Fraction(1, 10) <= sar <= 10:  # no camera's: square
            sar = Fraction(1)
        if info.rotation_deg % 180 == 90:
            sar = 1 / sar
        # Where the first frame is in the file's own timeline, which the ffmpeg binary counts
        # from the file's start: audio that began a second before the picture was laid a
        # second late against it.
        start = media.container.start_time
        audio_from_s = max(0.0, info.first_frame_s
                           - (start / av.time_base if start is not None else 0.0))
        last = -1
        try:
            for frame in media.container.decode(stream):
                check_frame(frame, expected, limits, src.name)
                pts = frame.pts if frame.pts is not None else info.start_pts
                t_s = float((pts - info.start_pts) * tb)
                idx = round(t_s * float(plan.frame_rate))  # the plan's grid (plan_grid)
                img: np.ndarray = (
                    frame.to_ndarray(format="rgb24") if square is None else
                    frame.to_ndarray(format="rgb24", width=square[0], height=square[1],
                                     interpolation="BICUBIC"))
                # One orientation for the whole video, as the analysis (pipeline.frames).
                img = upright(img, info.rotation_deg // 90, info.mirrored)
                if frames is None:
                    height, width = img.shape[:2]
                    if (width, height) != (plan.width_px, plan.height_px):
                        raise PermanentError(
                            f"{src.name}: the redaction plan is for {plan.width_px}x"
                            f"{plan.height_px} frames and the video shows {width}x{height}")
                    result.height_px, result.width_px = height, width
                    proc = _encoder(src, out, (width, height), sar, audio_from_s, choices,
                                    red.crf, errors, _timescale(tb, info.duration_s))
                    assert proc.stdin is not None
                    frames = _FramePipe(proc.stdin, width, height, tb, fps)
                for r in regions.get(idx, ()):
                    mask(img, r.box, choices.style, red.blocks)
                    result.masked_boxes += 1
                if idx in wanted and idx not in {f for f, _ in result.sheet}:
                    result.sheet.append((idx, _sheet_tile(img, regions.get(idx, []), plan,
                                                          choices, idx, result.n_frames, t_s)))
                result.shown.grid.append(idx)
                result.shown.times.append(t_s)
                last = max(last + 1, pts - info.start_pts)  # times only go forward
                frames.send(img, last)
                result.n_frames += 1
                progress(min(1.0, result.n_frames / max(1, info.n_frames)))
            if frames is not None:
                frames.close()
        except BrokenPipeError:  # the encoder stopped: its exit status says why, below
            pass
        finally:
            if proc is not None:
                if proc.stdin is not None:
                    with contextlib.suppress(BrokenPipeError):
                        proc.stdin.close()
                rc = proc.wait(timeout=600)
                if rc != 0:
                    errors.seek(0)
                    tail = errors.read()[-2000:].decode(errors="replace")
                    raise PermanentError(f"ffmpeg could not write the redacted video: "
                                         f"{_last_line(tail)}")
    if proc is None:
        raise PermanentError(f"{src.name}: no frame could be decoded")
    return result


def _last_line(log: str) -> str:
    """FFmpeg's last complete, non-empty log line, at most 300 characters."""
    lines = [line.strip() for line in log.splitlines()[1:] or log.splitlines() if line.strip()]
    return (lines[-1] if lines else "no message")[:300]


class _FramePipe:
    """Raw RGB frames to the encoder's stdin in NUT packets, each with its time."""

    def __init__(self, sink: IO[bytes], width: int, height: int, time_base: Fraction,
                 rate: Fraction) -> None:
        self._out = av.open(_WriteOnly(sink), mode="w", format="nut")
        self._stream = self._out.add_stream("rawvideo", rate=rate)
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "rgb24"
        self._stream.time_base = time_base
        self._stream.codec_context.time_base = time_base
        self._time_base = time_base

    def send(self, img: np.ndarray, pts: int) -> None:
        """One frame at `pts` (time_base ticks from the first frame); BrokenPipeError once
        the encoder has stopped reading."""
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = pts, self._time_base
        try:
            for packet in self._stream.encode(frame):
                self._out.mux(packet)
        except (av.FFmpegError, OSError) as exc:  # writing to the pipe, not decoding
            raise BrokenPipeError(str(exc)) from exc

    def close(self) -> None:
        """Flush and end the stream (BrokenPipeError as `send`)."""
        try:
            for packet in self._stream.encode(None):
                self._out.mux(packet)
            self._out.close()
        except (av.FFmpegError, OSError) as exc:
            raise BrokenPipeError(str(exc)) from exc


class _WriteOnly:
    """A pipe as PyAV's output: write only (a pipe cannot seek, and PyAV would try)."""

    def __init__(self, sink: IO[bytes]) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        return self._sink.write(data)


def written_size(width: int, height: int) -> tuple[int, int]:
    """The release's size for a picture of this size: a side of odd length gets one black
    row or column at the bottom or right (4:2:0 needs even sides)."""
    return width + width % 2, height + height % 2


def _timescale(time_base: Fraction, duration_s: float) -> int:
    """The release's video timescale (ticks a second): the original's, so every frame keeps
    its time to the tick, unless a step as long as the video would not fit a 32-bit sample
    duration, then milliseconds. FFmpeg's own choice (8 times the original's) overflowed on a
    10-hour pause in the time stamps, and such a video could never be released (bb43)."""
    den = time_base.denominator if time_base.numerator == 1 else 0
    return den if den > 0 and duration_s * den < 2**31 - 1 else 1000


def _encoder(src: Path, out: Path, size: tuple[int, int], sar: Fraction, audio_from_s: float,
             choices: Choices, crf: int, errors: Any, timescale: int = 0
             ) -> subprocess.Popen[bytes]:
    """The ffmpeg binary reading NUT frames on stdin (and, for audio, the original); with a
    `timescale`, the video track's (_timescale)."""
    cmd = [_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "nut", "-i", "-"]
    if choices.audio == "strip":
        cmd += ["-map", "0:v:0", "-an"]
    else:
        if audio_from_s > 0:
            cmd += ["-ss", f"{audio_from_s:.6f}"]
        cmd += ["-i", str(src), "-map", "0:v:0", "-map", "1:a:0?", "-c:a", "aac", "-b:a", "128k"]
        if choices.audio == "mute-ranges" and choices.mute_ranges:
            # Per sample, not per audio frame: a frame's switch (1,024 samples, 23 ms at
            # 44.1 kHz and 128 ms at 8 kHz) left the start of each range audible.
            spans = "+".join(f"between(t,{a:.4f},{b:.4f})" for a, b in choices.mute_ranges)
            cmd += ["-af", f"aeval='val(ch)*not({spans})':c=same"]
    # Nothing of the original's but its masked picture and its sound: its chapters (with
    # their titles and a text track) and the audio stream's title, handler and language were
    # copied by default.
    cmd += ["-map_metadata", "-1", "-map_metadata:s:a", "-1", "-map_chapters", "-1",
            "-fps_mode", "passthrough", "-enc_time_base:v", "demux",
            "-vf", "pad={}:{},setsar={}/{}".format(*written_size(*size), sar.numerator,
                                                   sar.denominator),
            "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf), "-pix_fmt", "yuv420p",
            *(["-video_track_timescale", str(timescale)] if timescale else []),
            "-movflags", "+faststart", "-f", "mp4", str(out)]
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=errors)


def _sheet_tile(img: np.ndarray, regions: list[Region], plan: Plan, choices: Choices,
                idx: int, number: int, t_s: float) -> Image.Image:
    """A small copy of a masked frame with its regions outlined: red hidden, blue manual,
    green kept."""
    tile = Image.fromarray(img)
    draw = ImageDraw.Draw(tile)
    width = max(2, tile.width // 320)
    for r in regions:
        colour = (40, 90, 255) if r.source.startswith("manual") else (255, 40, 40)
        draw.rectangle(r.box, outline=colour, width=width)
        draw.text((r.box[0] + 3, r.box[1] + 3), r.source, fill=colour)
    for t in plan.tracks:
        if t.id not in choices.keep:
            continue
        for f, box in track_boxes(plan, t):
            if f == idx and not _empty(box):  # carried out of the picture (bb57)
                draw.rectangle(box, outline=(40, 220, 40), width=width)
                draw.text((box[0] + 3, box[1] + 3), f"{t.id} kept", fill=(40, 220, 40))
    tile.thumbnail((360, 360))
    draw = ImageDraw.Draw(tile)
    draw.rectangle((0, 0, 150, 14), fill=(0, 0, 0))
    draw.text((3, 2), f"frame {number}  {t_s:.2f} s", fill=(255, 255, 255))
    return tile


# -- the report -----------------------------------------------------------------------------

def _span(plan: Plan, frames: Sequence[int], shown: Shown | None) -> dict[str, Any]:
    a, b = min(frames), max(frames)
    if shown is not None and (found := shown.span(a, b)) is not None:
        lo, hi = found
        return {"frames": [lo, hi],
                "time_s": [round(shown.times[lo], 3), round(shown.times[hi], 3)]}
    return {"frames": [a, b], "time_s": [plan.time_s(a), plan.time_s(b)]}


def build_report(plan: Plan, choices: Choices, auto: Decision, head: dict[str, Any],
                 shown: Shown | None = None) -> dict[str, Any]:
    """The release report: every redacted region, the kept and removed tracks, the frames a
    person should look at, and the custody head (ids, hashes, settings, reviewer). Frames
    and times are the release's (`shown`, what the render wrote), else the plan's grid."""
    redacted, kept, removed = [], [], []
    plan = decided_plan(plan, choices)
    for t in plan.tracks:
        frames = [f for f, _b in track_boxes(plan, t)]
        row = {"track": t.id, "db_track_ids": list(t.db_track_ids),
               **_span(plan, frames, shown), "detections": len(t.detections)}
        if t.taken_over is not None:
            row["taken_over"] = {"from_track": t.taken_over.track,
                                 "by_track": t.taken_over.by}
        if t.id in choices.keep:
            kept.append({**row, **choices.keep[t.id].as_json()})
        elif t.id in choices.remove:
            removed.append({**row, **choices.remove[t.id].as_json()})
        else:
            redacted.append({"kind": "face", **row, **auto.as_json()})
    for i, m in enumerate(choices.regions, 1):
        covered = _region_frames(plan, m)
        redacted.append({"kind": "manual", "track": f"manual-{i}",
                         "box_px": [round(v, 1) for v in m.box_px],
                         **_span(plan, [covered.start, covered.stop - 1], shown),
                         **m.decision.as_json()})
    low = [(f, plan.time_s(f)) for f in plan.low_confidence_frames()]
    if shown is not None:  # the release's frames on those grid frames, the first of each
        low = [(n, round(shown.times[n], 3)) for f, _t in low
               if (found := shown.span(f, f)) is not None for n in found[:1]]
    w, h = plan.width_px, plan.height_px
    ww, wh = written_size(w, h)
    return {**head, "plan_version": plan.version, "algorithm": ALGORITHM,
            "frames": len(shown.grid) if shown is not None else plan.n_frames,
            "duration_s": plan.duration_s,
            # The boxes' pixels, and the release's: a side of odd length gets one black row
            # or column at the bottom or right (4:2:0 needs even sides), so a 641x361
            # picture came out 642x362 and nothing said why (bb35).
            "picture": {"width_px": w, "height_px": h, "written_width_px": ww,
                        "written_height_px": wh},
            "redacted_regions": redacted, "kept_tracks": kept, "removed_false_positives": removed,
            "low_confidence_frames": [f for f, _t in low],
            "low_confidence_times_s": [t for _f, t in low],
            "audio": {"mode": choices.audio, "muted_s": [list(r) for r in choices.mute_ranges]}}


def contact_sheet(tiles: Sequence[tuple[int, Image.Image]]) -> bytes:
    """The sheet's frames in a grid of four columns, as JPEG bytes."""
    tiles = sorted(tiles, key=lambda t: t[0])
    if not tiles:
        tiles = [(0, Image.new("RGB", (360, 200), (40, 40, 40)))]
    cw = max(t.width for _f, t in tiles)
    ch = max(t.height for _f, t in tiles)
    cols = min(4, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    sheet = Image.new("RGB", (cols * (cw + 6) + 6, rows * (ch + 6) + 6), (255, 255, 255))
    for i, (_f, t) in enumerate(tiles):
        sheet.paste(t, (6 + (i % cols) * (cw + 6), 6 + (i // cols) * (ch + 6)))
    buf = io.BytesIO()
    sheet.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _picture_line(picture: dict[str, int] | None) -> list[str]:
    """The picture's size in the boxes' pixels and, where it differs, the release's."""
    if not picture:  # a report written before it recorded the picture
        return []
    w, h = picture["width_px"], picture["height_px"]
    ww, wh = picture["written_width_px"], picture["written_height_px"]
    added = [what for what, n in (("a black column at the right", ww - w),
                                  ("a black row at the bottom", wh - h)) if n]
    return [f"Picture {w}x{h} px (the boxes' pixels)"
            + (f"; written {ww}x{wh} with {' and '.join(added)} (4:2:0 needs even sides)"
               if added else "")]


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as plain lines (for the PDF)."""
    lines = ["Bodycam redaction report", "",
             f"Derivative {report.get('derivative_id')}  video {report.get('video_id')}"
             f"  case {report.get('case')}",
             f"Original SHA-256   {report.get('original_sha256')}",
             f"Derivative SHA-256 {report.get('sha256')}",
             f"Plan version {report['plan_version']} ({report['algorithm']}), "
             f"{report['frames']} frames, {report['duration_s']:.2f} s",
             *_picture_line(report.get("picture")),
             f"Reviewer {report.get('reviewer')}  at {report.get('created_at')}",
             f"Settings: {json.dumps(report.get('settings', {}), sort_keys=True)}", "",
             f"Redacted regions ({len(report['redacted_regions'])}):"]
    # Who decided and on what basis come before the reason, which is free text: a long
    # reason cut at the margin hid them, and a padded one could fake them (bb19).
    def decided(r: dict[str, Any], times: bool = True) -> str:
        span = f"  {r['time_s'][0]:.2f}-{r['time_s'][1]:.2f} s" if times else ""
        taken = r.get("taken_over")
        why = (f"  ({taken['from_track']} was decided on; its boxes from here follow the face"
               f" of {taken['by_track']}, which came onto it: hidden)" if taken else "")
        return (f"  {r['track']:>9}  frames {r['frames'][0]}-{r['frames'][1]}{span}"
                f"  by {r['decided_by']} [{r['legal_basis']}]{why}: {r['reason']}")

    lines += [decided(r) for r in report["redacted_regions"]]
    lines += ["", f"Kept (shown) tracks ({len(report['kept_tracks'])}):"]
    lines += [decided(r) for r in report["kept_tracks"]]
    lines += ["", f"Removed false positives ({len(report['removed_false_positives'])}):"]
    lines += [decided(r, times=False) for r in report["removed_false_positives"]]
    low = report["low_confidence_frames"]
    lines += ["", f"Low-confidence frames for a person to check ({len(low)}):"]
    for i in range(0, len(low), 16):
        lines.append("  " + " ".join(str(f) for f in low[i:i + 16]))
    lines += ["", f"Audio: {report['audio']['mode']} {report['audio']['muted_s'] or ''}"]
    return lines


def _pdf_text(s: str) -> str:
    s = s.encode("latin-1", "replace").decode("latin-1")
    return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


PDF_COLUMNS = 108


def pdf_report(lines: Sequence[str], jpeg: bytes) -> bytes:
    """A minimal PDF (1.4): the report's lines in Courier on A4 pages, then the contact sheet
    on a page of its own. No PDF library is a dependency; this writes the objects directly."""
    # Courier at 8 pt is 4.8 pt a character: 108 fit the page's 523 pt. A longer line is
    # wrapped, never cut (the cut lost who decided and the settings' end: bb19).
    lines = [part for line in lines
             for part in (textwrap.wrap(line, PDF_COLUMNS, subsequent_indent=" " * 14,
                                        drop_whitespace=False) or [""])]
    per_page = 64
    pages_text = [lines[i:i + per_page] for i in range(0, max(1, len(lines)), per_page)]
    img = Image.open(io.BytesIO(jpeg))
    iw, ih = img.size
    objs: list[bytes] = []

    def add(body: bytes) -> int:
        objs.append(body)
        return len(objs)

    catalog = add(b"")  # filled in below
    pages = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier /Encoding /WinAnsiEncoding >>")
    image = add(b"<< /Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB"
                b" /BitsPerComponent 8 /Filter /DCTDecode /Length %d >>\nstream\n"
                % (iw, ih, len(jpeg)) + jpeg + b"\nendstream")
    kids = []
    for chunk in pages_text:
        ops = ["BT /F1 8 Tf 10 TL 36 806 Td"]
        ops += [f"({_pdf_text(line)}) Tj T*" for line in chunk]
        ops.append("ET")
        data = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream")
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] /Resources"
                        b" << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
                        % (pages, font, content)))
    scale = min(523 / iw, 770 / ih)
    dw, dh = iw * scale, ih * scale
    draw = f"q {dw:.2f} 0 0 {dh:.2f} 36 {806 - dh:.2f} cm /Im1 Do Q".encode()
    content = add(b"<< /Length %d >>\nstream\n" % len(draw) + draw + b"\nendstream")
    kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 595 842] /Resources"
                    b" << /XObject << /Im1 %d 0 R >> >> /Contents %d 0 R >>"
                    % (pages, image, content)))
    objs[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages
    objs[pages - 1] = (b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids)
                       + b"] /Count %d >>" % len(kids))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
              % (len(objs) + 1, catalog, xref))
    return out.getvalue()
