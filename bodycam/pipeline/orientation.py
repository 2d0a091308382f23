"""Footage turned with nothing in its file to say so.

A camera worn sideways or upside down records its picture turned, and a file with no display
rotation gives no hint of it: the analysis saw no face, and the video was `done` with 0 tracks
and nothing said (bb35), as if no one had been there. A unit with no face track looks again
at a few of its sampled frames turned a quarter either way and a half, and says which turn
showed faces; the video's notice tells the reader. Nothing is changed on its own: the
evidence is analysed as its file shows it, and a copy with its rotation set is a video of its
own (its own hash and custody).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from bodycam.domain import SampledFrame
from bodycam.pipeline.faces import FaceDetector

# np.rot90's turns (counter-clockwise) and the display rotation that shows the file so
# (FFmpeg's -display_rotation: degrees counter-clockwise); a half turn last, as the rarest.
TURNS = ((1, 90), (3, 270), (2, 180))
CHECKED = 4  # frames of a unit looked at turned (each costs one whole scan per turn)


@dataclass(frozen=True)
class Turned:
    """What turning a unit's frames showed: with the display rotation `deg`, faces were in
    `frames` of the `of` frames looked at."""

    deg: int
    frames: int
    of: int

    def as_json(self) -> dict[str, int]:
        return {"deg": self.deg, "frames": self.frames, "of": self.of}


class Spread:
    """At most `limit` of the sampled frames offered, spread evenly over them all: every
    stride-th is kept, and when too many are, every other one goes and the stride doubles.
    A frame is kept with its detection image only (the full-size frame it can make holds a
    decoded picture)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.stride, self.seen = limit, 1, 0
        self.kept: list[SampledFrame] = []

    def offer(self, frame: SampledFrame) -> None:
        if self.limit and self.seen % self.stride == 0:
            self.kept.append(replace(frame, full=None))
            if len(self.kept) > self.limit:
                self.kept = self.kept[::2]
                self.stride *= 2
        self.seen += 1


def turned_faces(detector: FaceDetector, frames: list[SampledFrame]) -> Turned | None:
    """The turn under which faces were found in at least two of `frames` (in all of them
    when fewer), the one with faces in the most; None when no turn shows any. Every view is
    scanned whole (a scene of its own at time 0)."""
    if not frames:
        return None
    need = min(2, len(frames))
    best: Turned | None = None
    for k, deg in TURNS:
        views = [replace(f, image=np.ascontiguousarray(np.rot90(f.image, k)), scene_index=i,
                         t_s=0.0, frame_index=i) for i, f in enumerate(frames)]
        n = sum(1 for found in detector.detect(views) if found)
        if n >= need and (best is None or n > best.frames):
            best = Turned(deg, n, len(frames))
    return best


HOW = {90: "a quarter turn counter-clockwise", 270: "a quarter turn clockwise",
       180: "a half turn"}


def notice(turned: list[Turned]) -> str | None:
    """What a video's reader is told when none of its units found a face and some showed
    faces turned (`turned`: those units' findings)."""
    by_deg: dict[int, list[Turned]] = {}
    for t in turned:
        by_deg.setdefault(t.deg, []).append(t)
    if not by_deg:
        return None
    deg, found = max(by_deg.items(), key=lambda kv: (sum(t.frames for t in kv[1]), -kv[0]))
    frames, of = sum(t.frames for t in found), sum(t.of for t in found)
    return (f"no face was found in the picture as the file shows it, but faces were in {frames}"
            f" of {of} frames looked at with {HOW[deg]}: the camera may have recorded turned,"
            f" with no rotation in its file. A copy with its rotation set (ffmpeg"
            f" -display_rotation {deg} -i IN -c copy OUT.mp4) can be ingested as a video of"
            f" its own")
