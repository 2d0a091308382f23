"""Linking detections into face tracks within a scene: box overlap plus embedding similarity."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bodycam.config import PipelineSettings
from bodycam.domain import FaceDetection, FaceTrack

# How far (in face heights) a face may move between two samples and keep its track where
# no face is embedded (Tracker's `motion`).
MOTION_HEIGHTS = 3.0


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2)."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def center_distance(a: tuple[float, float, float, float],
                     b: tuple[float, float, float, float]) -> float:
    """Distance between box centres in units of the larger box height."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    h = max(a[3] - a[1], b[3] - b[1], 1.0)
    return float(np.hypot(ca[0] - cb[0], ca[1] - cb[1]) / h)


def size_ratio(a: tuple[float, float, float, float],
               b: tuple[float, float, float, float]) -> float:
    """How many times taller the larger of two boxes is (1.0: the same height)."""
    ha, hb = max(a[3] - a[1], 1.0), max(b[3] - b[1], 1.0)
    return max(ha, hb) / min(ha, hb)


@dataclass
class _Active:
    key: int
    scene_index: int
    detections: list[FaceDetection] = field(default_factory=list)
    mean: np.ndarray | None = None  # running mean of unit embeddings

    def add(self, det: FaceDetection) -> None:
        self.detections.append(det)
        if det.embedding is not None:
            self.mean = det.embedding.copy() if self.mean is None else self.mean + det.embedding

    def similarity(self, det: FaceDetection) -> float | None:
        if self.mean is None or det.embedding is None:
            return None
        n = float(np.linalg.norm(self.mean))
        return float(np.dot(self.mean, det.embedding) / n) if n > 0 else None


class Tracker:
    """Online tracker: feed each sampled frame's detections in time order.

    A detection joins the active track of the same scene whose last box overlaps it enough
    (or, across a short gap, whose face is very similar and near) and whose face is similar
    enough (PipelineSettings.link_similarity: the gates are on the embedder's own scale) and
    about as large (a face that suddenly doubles in size is another person in the same place,
    typically at a cut the scene detector missed). Assignment is greedy by score and
    one-to-one, so two faces of one frame never share a track. A scene change closes every
    track.

    With `motion` (no face is embedded: redaction plans, the redact-only profile), a face
    that moved too far to overlap its last box joins the track at the next sample if it is
    within MOTION_HEIGHTS of it, ranked below every overlapping link: a face running across
    the picture (90 px a frame) was a row of one-frame tracks, and the frames between the
    samples, where no box is interpolated between two tracks, showed it (bb37).
    """

    def __init__(self, cfg: PipelineSettings, motion: bool = False) -> None:
        self.cfg = cfg
        self._motion_gap_s = 1.5 / cfg.sample_fps if motion else 0.0
        self._join, self._relink = cfg.link_similarity()
        self._active: list[_Active] = []
        self._done: list[_Active] = []
        self._next = 0

    def update(self, detections: Sequence[FaceDetection]) -> list[int]:
        """Link one frame's detections; returns the track key given to each detection."""
        if not detections:
            return []
        t = detections[0].t_s
        scene = detections[0].scene_index
        self._expire(t, scene)
        pairs: list[tuple[float, int, int]] = []
        for ti, trk in enumerate(self._active):
            last = trk.detections[-1]
            for di, det in enumerate(detections):
                score = self._score(trk, last, det)
                if score is not None:
                    pairs.append((score, ti, di))
        pairs.sort(reverse=True)
        keys: list[int | None] = [None] * len(detections)
        used: set[int] = set()
        for _score, ti, di in pairs:
            if ti in used or keys[di] is not None:
                continue
            used.add(ti)
            self._active[ti].add(detections[di])
            keys[di] = self._active[ti].key
        for di, det in enumerate(detections):
            if keys[di] is None:
                trk = _Active(self._next, scene)
                self._next += 1
                trk.add(det)
                self._active.append(trk)
                keys[di] = trk.key
        return [k for k in keys if k is not None]

    def _score(self, trk: _Active, last: FaceDetection, det: FaceDetection) -> float | None:
        cfg = self.cfg
        if det.t_s <= last.t_s:
            return None
        if size_ratio(last.box_px, det.box_px) > cfg.track_max_size_ratio:
            return None
        overlap = iou(last.box_px, det.box_px)
        sim = trk.similarity(det)
        if sim is not None and sim < self._join:
            return None  # a different face, however close the boxes are
        near = center_distance(last.box_px, det.box_px) < 1.5
        if overlap >= cfg.track_min_iou:
            return overlap + (sim if sim is not None else 0.0)
        if sim is not None and sim >= self._relink and near:
            return sim - 0.5  # fast motion or a short occlusion: rank below overlapping links
        if sim is None and det.t_s - last.t_s <= self._motion_gap_s:
            moved = center_distance(last.box_px, det.box_px)
            if moved < MOTION_HEIGHTS:
                return -moved  # below every overlap and every similar face, nearest first
        return None

    def _expire(self, t_s: float, scene: int) -> None:
        keep = []
        for trk in self._active:
            if trk.scene_index != scene or t_s - trk.detections[-1].t_s > self.cfg.track_max_gap_s:
                self._done.append(trk)
            else:
                keep.append(trk)
        self._active = keep

    def finish(self) -> list[tuple[int, FaceTrack]]:
        """Close every track; returns (key, track) for tracks with enough detections."""
        self._done.extend(self._active)
        self._active = []
        out = [(t.key, FaceTrack(t.scene_index, tuple(t.detections))) for t in self._done
               if len(t.detections) >= self.cfg.track_min_detections]
        return sorted(out, key=lambda kt: (kt[1].start_s, kt[0]))


def build_tracks(frames: Sequence[Sequence[FaceDetection]],
                 cfg: PipelineSettings) -> list[FaceTrack]:
    """Tracks from per-frame detections in time order (the pure form of Tracker)."""
    tracker = Tracker(cfg)
    for dets in frames:
        tracker.update(dets)
    return [t for _k, t in tracker.finish()]
