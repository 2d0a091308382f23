"""Scene cuts with PySceneDetect on a downscaled copy of each decoded frame."""

from __future__ import annotations

import math
from fractions import Fraction

import av
import cv2
import numpy as np
from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode
from scenedetect.common import Timecode
from scenedetect.detector import SceneDetector

from bodycam.config import PipelineSettings


class SceneCutter:
    """Feeds frames to a PySceneDetect detector; returns cut PTS relative to the first frame.

    scenedetect's timecode types stay inside this class: callers see integer PTS only.
    """

    def __init__(self, cfg: PipelineSettings, fps: Fraction, time_base: Fraction,
                 width_px: int, height_px: int) -> None:
        self.fps = fps
        self.time_base = time_base
        min_len = max(1, round(cfg.scene_min_len_s * float(fps)))
        self.detector: SceneDetector
        if cfg.scene_detector == "adaptive":
            self.detector = AdaptiveDetector(adaptive_threshold=cfg.scene_threshold,
                                             min_scene_len=min_len)
            self.lag_frames = self.detector.event_buffer_length + 1
        else:
            self.detector = ContentDetector(threshold=cfg.scene_threshold * 9,
                                            min_scene_len=min_len)
            self.lag_frames = self.detector.event_buffer_length + min_len + 1
        self.width = max(16, cfg.scene_width_px // 2 * 2)
        self.height = max(16, math.ceil(height_px * self.width / width_px / 2) * 2)
        self._last: FrameTimecode | None = None

    def _tc(self, pts_rel: int) -> FrameTimecode:
        return FrameTimecode(Timecode(pts=pts_rel, time_base=self.time_base), fps=self.fps)

    def process(self, pts_rel: int, frame: av.VideoFrame) -> list[int]:
        """Analyse one frame (in presentation order); returns cut PTS found so far."""
        small = small_bgr(frame, self.width, self.height)
        self._last = self._tc(pts_rel)
        return [int(c.pts) for c in self.detector.process_frame(self._last, small)]

    def finish(self) -> list[int]:
        """Cuts the detector held back until the end."""
        if self._last is None:
            return []
        return [int(c.pts) for c in self.detector.post_process(self._last)]


# 8-bit 4:2:0 planar, the layout of nearly all camera H.264: scaled plane by plane.
_I420 = frozenset({"yuv420p", "yuvj420p"})


def small_bgr(frame: av.VideoFrame, width: int, height: int) -> np.ndarray:
    """A small BGR copy of a frame for the scene detector, which sees every decoded frame.

    swscale took about 2 ms a 720p frame for this, more than decoding it: each of the Y, U
    and V planes is now area-averaged to the small size in place (about 0.8 ms) and only the
    small picture converted to BGR. Other pixel formats keep swscale.
    """
    if (frame.format.name not in _I420 or width % 2 or height % 2
            or any(pl.line_size < pl.width or pl.buffer_size != pl.line_size * pl.height
                   for pl in frame.planes)):
        return frame.to_ndarray(format="bgr24", width=width, height=height,
                                interpolation="FAST_BILINEAR")
    i420 = np.empty((height * 3 // 2, width), np.uint8)
    flat = i420.reshape(-1)
    cw, ch = width // 2, height // 2
    sizes = ((width, height), (cw, ch), (cw, ch))
    start = 0
    for plane, (w, h) in zip(frame.planes, sizes, strict=True):
        pixels = np.frombuffer(memoryview(plane), np.uint8).reshape(plane.height, plane.line_size)
        dst = flat[start:start + w * h].reshape(h, w)
        cv2.resize(pixels[:, :plane.width], (w, h), dst=dst, interpolation=cv2.INTER_AREA)
        start += w * h
    bgr: np.ndarray = cv2.cvtColor(i420, cv2.COLOR_YUV2BGR_I420)
    return bgr
