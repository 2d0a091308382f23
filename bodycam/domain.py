"""Frozen dataclasses passed between stages; units are in field names (t_s, box_px)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the probe's child process reads MediaInfo without loading numpy
    from collections.abc import Callable

    import numpy as np


@dataclass(frozen=True)
class MediaInfo:
    """What probing a video file found."""

    container: str
    codec: str
    width_px: int
    height_px: int
    duration_s: float
    frame_rate: Fraction
    n_frames: int
    rotation_deg: int
    time_base: Fraction
    start_pts: int
    mirrored: bool = False  # shown mirrored left to right, after rotation_deg (display matrix)
    # A stored pixel's width over its height (the sample aspect ratio): anamorphic footage
    # (DV, HDV, DVD) stores a wide picture in narrow pixels. 1 for square pixels, and for
    # videos probed before 2026-12-06 (analysed as stored).
    pixel_aspect: Fraction = Fraction(1)

    @property
    def square_size(self) -> tuple[int, int]:
        """(width, height) of the stored frame in square pixels, before any turn: a side is
        stretched by the pixel aspect ratio as a player stretches it (never shrunk)."""
        w, h = self.width_px, self.height_px
        if self.pixel_aspect > 1:
            w = round(w * self.pixel_aspect)
        elif self.pixel_aspect < 1:
            h = round(h / self.pixel_aspect)
        return w, h

    @property
    def first_frame_s(self) -> float:
        """The first frame's time in the file's own timeline (a player's clock: times in
        Bodycam count from the first frame, and a video stream can start after its sound)."""
        return _pts_s(self.start_pts, self.time_base)

    @property
    def shown_size(self) -> tuple[int, int]:
        """(width, height) of a frame as a player shows it: in square pixels, and a quarter
        turn swaps the sides (the analysis and redaction work on frames so shown, and boxes
        are in these pixels)."""
        w, h = self.square_size
        return (h, w) if self.rotation_deg % 180 == 90 else (w, h)

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> MediaInfo:
        """The inverse of as_json."""
        return cls(
            container=m["container"], codec=m["codec"], width_px=m["width_px"],
            height_px=m["height_px"], duration_s=m["duration_s"],
            frame_rate=Fraction(m["frame_rate"]), n_frames=m["n_frames"],
            rotation_deg=m["rotation_deg"], time_base=Fraction(m["time_base"]),
            start_pts=m["start_pts"], mirrored=bool(m.get("mirrored", False)),
            pixel_aspect=Fraction(m.get("pixel_aspect", "1")))

    def as_json(self) -> dict[str, object]:
        """Plain JSON for the database."""
        return {
            "container": self.container,
            "codec": self.codec,
            "width_px": self.width_px,
            "height_px": self.height_px,
            "duration_s": self.duration_s,
            "frame_rate": str(self.frame_rate),
            "n_frames": self.n_frames,
            "rotation_deg": self.rotation_deg,
            "time_base": str(self.time_base),
            "start_pts": self.start_pts,
            "mirrored": self.mirrored,
            "pixel_aspect": str(self.pixel_aspect),
        }


# A video's first frame in the file's own timeline (`media.start_pts` x `media.time_base`),
# selected beside each row that a player seeks in: times are seconds from the first frame,
# and a player's are the file's (a video stream that starts at 1 s, after its sound, or an
# MPEG-TS clock, opened every lead that much early in the web app: bb20).
FIRST_FRAME_COLUMNS = "v.media->>'start_pts' AS start_pts, v.media->>'time_base' AS time_base"


def first_frame_s(row: dict[str, Any]) -> float:
    """The first frame's time in its file from a row with FIRST_FRAME_COLUMNS (0 for a
    video not probed), as `MediaInfo.first_frame_s` gives it."""
    if row.get("start_pts") is None or row.get("time_base") is None:
        return 0.0
    return _pts_s(int(row["start_pts"]), Fraction(str(row["time_base"])))


def _pts_s(pts: int, time_base: Fraction) -> float:
    return round(float(pts * time_base), 6)


@dataclass(frozen=True)
class Scene:
    """A shot between two cuts: [start, end) in seconds, frames and PTS."""

    index: int
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    start_pts: int
    end_pts: int


@dataclass(frozen=True)
class SampledFrame:
    """A decoded frame chosen by the sampling plan; the image never leaves its worker."""

    frame_index: int
    pts: int
    t_s: float
    scene_index: int
    image: np.ndarray = field(repr=False, compare=False)  # RGB uint8, H x W x 3
    scale: float = 1.0  # image pixels per original (display) pixel
    # Where `image` was scaled down for detection: the frame at full size, made on demand
    # for the faces' crops (`embedding_view`; a 55-px face of 4K footage was embedded from
    # 27 px and no photo matched it: bb20).
    full: Callable[[], np.ndarray] | None = field(default=None, repr=False, compare=False)

    def embedding_view(self) -> tuple[np.ndarray, float]:
        """The image faces are cut from for embedding, and its scale: full size where there
        is one."""
        return (self.full(), 1.0) if self.full is not None else (self.image, self.scale)


@dataclass(frozen=True)
class FaceDetection:
    """One face found in one sampled frame, in original display pixels."""

    frame_index: int
    t_s: float
    scene_index: int
    box_px: tuple[float, float, float, float]  # x1, y1, x2, y2
    probability: float
    landmarks_px: tuple[tuple[float, float], ...]
    sharpness: float
    embedding: np.ndarray | None = field(default=None, repr=False, compare=False)
    detector: str = "mtcnn"  # the model that found it (a redaction plan merges several)

    @property
    def height_px(self) -> float:
        """Face box height."""
        return self.box_px[3] - self.box_px[1]

    @property
    def quality(self) -> float:
        """Size, sharpness and detector confidence in one number (higher is better)."""
        size = min(1.0, self.height_px / 160.0)
        sharp = min(1.0, self.sharpness / 200.0)
        return float(self.probability * (0.6 * size + 0.4 * sharp))


@dataclass(frozen=True)
class FaceTrack:
    """Detections of one face linked through one scene."""

    scene_index: int
    detections: tuple[FaceDetection, ...]

    @property
    def start_s(self) -> float:
        """First detection time."""
        return self.detections[0].t_s

    @property
    def end_s(self) -> float:
        """Last detection time."""
        return self.detections[-1].t_s

    @property
    def best(self) -> FaceDetection:
        """The detection of highest quality: the thumbnail source."""
        return max(self.detections, key=lambda d: d.quality)

    @property
    def quality(self) -> float:
        """The best detection's quality."""
        return self.best.quality

    def representative_embedding(self) -> np.ndarray | None:
        """Quality-weighted mean of the detection embeddings, re-normalised to unit length."""
        import numpy as np

        vecs = [(d.embedding, d.quality) for d in self.detections if d.embedding is not None]
        if not vecs:
            return None
        weights = np.array([max(q, 1e-3) for _, q in vecs], dtype=np.float64)
        stacked = np.stack([v for v, _ in vecs]).astype(np.float64)
        mean = np.average(stacked, axis=0, weights=weights)
        norm = float(np.linalg.norm(mean))
        return (mean / norm).astype(np.float32) if norm > 0 else None
