"""One decode per chunk shared by scene detection and frame sampling.

Why PyAV (FFmpeg's own libraries) instead of ffmpeg CLI pipes: scene detection must see every
frame while sampling needs only about 5 per second at full resolution. Decoding once in-process
lets each frame be scaled small for the scene detector and only the sampled ones be converted to
RGB, with exact PTS for variable frame rate, and without copying every raw frame through a pipe.
H.264 must be decoded in full either way (GUIDE: decode touches every frame).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from bodycam.config import LimitsSettings, PipelineSettings, get_settings
from bodycam.domain import MediaInfo, SampledFrame, Scene
from bodycam.media.source import check_frame, frame_bytes, frame_threads, open_video, upright
from bodycam.pipeline.scenes import SceneCutter


def plan_samples(times_s: Sequence[float], sample_fps: float, min_samples: int) -> list[int]:
    """Which frames of one scene to sample, as indices into `times_s` (seconds, ascending).

    A regular grid at sample_fps anchored on the scene's first frame (PTS-based, so variable
    frame rate is honoured); a scene too short to give min_samples grid frames gets that many
    frames evenly spaced instead (or all of them).
    """
    if not times_s:
        return []
    grid = _grid(times_s, sample_fps)
    if len(grid) >= min_samples:
        return grid
    n = min(min_samples, len(times_s))
    return sorted({round(k * (len(times_s) - 1) / max(n - 1, 1)) for k in range(n)})


def _grid(times_s: Sequence[float], sample_fps: float) -> list[int]:
    """The frames on a regular grid at sample_fps anchored on the first (see plan_samples)."""
    t0 = times_s[0]
    step = 1.0 / sample_fps
    grid: list[int] = []
    next_t = 0.0
    for i, t in enumerate(times_s):
        if t - t0 >= next_t - 1e-6:
            grid.append(i)
            next_t = (int((t - t0) / step + 1e-6) + 1) * step
    return grid


def thin(held: list[_Pending], sample_fps: float) -> list[_Pending]:
    """Every second frame of a young scene's held frames, its grid frames all kept.

    The grid over what is kept is the grid over them all (each grid frame is the first at or
    after its time, and every frame before it is earlier), so a scene that grows old samples
    the same frames; only a scene too short for a grid picks its few among fewer.
    """
    keep = set(_grid([h.t_s for h in held], sample_fps))
    return [h for i, h in enumerate(held) if i in keep or i % 2 == 0]


# Decoded frames a young scene may hold (the frames of its first min_scene_samples /
# sample_fps seconds, before its samples can be planned): 1,000 frames a second of 1080p, or
# 60 of 8K, held 2-3 GiB in a worker.
HOLD_BYTES = 256 * 2**20
# Decoded frames a batch of sampled frames may pin for the faces' crops at full size (up to
# six batches are in flight: being built, queued, detected, tracked). Eight 8K frames a batch
# took a worker from 1.1 to 5.5 GB (bb48); 1080p and 4K batches are not cut by it.
BATCH_BYTES = 256 * 2**20
# What HOLD_BYTES and BATCH_BYTES count a decoded frame as: 8-bit 4:4:4 (3 bytes a pixel), so
# deeper or fuller formats fit too.
COUNTED_AS = av.VideoFormat("rgb24")


@dataclass
class _Pending:
    index: int
    pts: int
    t_s: float
    frame: av.VideoFrame = field(repr=False)


def batch_frames(cfg: PipelineSettings, info: MediaInfo, keep_full: bool) -> int:
    """Frames a detection batch: cfg.batch_size, fewer where frames that keep their decoded
    picture would pin more than BATCH_BYTES."""
    if not keep_full:
        return cfg.batch_size
    return max(1, min(cfg.batch_size, BATCH_BYTES // frame_bytes(COUNTED_AS, info.width_px,
                                                                   info.height_px)))


@dataclass
class ChunkDecoder:
    """Decode [start_s, end_s) of a video once; yield sampled frames; collect scene cuts.

    Times are seconds from the video's first frame. Chunk edges act as cuts: tracks never
    cross a chunk, so chunks can be processed by different workers in parallel.
    """

    path: Path
    info: MediaInfo
    start_s: float
    end_s: float
    cfg: PipelineSettings
    limits: LimitsSettings | None = None  # None: the configured limits
    # Whether a sampled frame scaled down for detection keeps its decoded frame, for the
    # faces' crops at full size (`SampledFrame.full`): only an analysis that embeds needs it.
    keep_full: bool = True
    scenes: list[Scene] = field(default_factory=list)
    frames_decoded: int = 0
    decoded_on: str = "cpu"  # 'cuda' once NVDEC decodes it (decode_device, where usable)
    # Frames the decoder marked corrupt (damaged data it filled in): how many, from, to (s).
    damaged: dict[str, float] | None = None

    def __iter__(self) -> Iterator[SampledFrame]:
        return self._run()

    def _run(self) -> Iterator[SampledFrame]:
        info, cfg = self.info, self.cfg
        tb = info.time_base
        fps = info.frame_rate
        cutter = SceneCutter(cfg, fps, tb, info.width_px, info.height_px)
        lag = cutter.lag_frames
        young_s = cfg.min_scene_samples / cfg.sample_fps
        hold_max = max(cfg.min_scene_samples + 1,
                       HOLD_BYTES // frame_bytes(COUNTED_AS, info.width_px, info.height_px))
        # Frames are analysed in square pixels (as a player shows anamorphic footage: faces
        # squeezed to three quarters of their width were tracked, but no photo matched them)
        # and at most max_frame_side_px on their longer side.
        square_w, square_h = info.square_size
        scale = min(1.0, cfg.max_frame_side_px / max(square_w, square_h))
        det_w = max(2, round(square_w * scale / 2) * 2)
        det_h = max(2, round(square_h * scale / 2) * 2)
        resize = scale < 1.0 or (square_w, square_h) != (info.width_px, info.height_px)
        full_size = ((square_w, square_h)
                     if (square_w, square_h) != (info.width_px, info.height_px) else None)

        window: list[_Pending] = []  # decoded, not yet settled against late cut reports
        held: list[_Pending] = []  # settled frames of a young scene
        scene_start: _Pending | None = None
        next_grid = 0.0
        old = False
        cut_pts: set[int] = set()

        def rgb(p: _Pending) -> SampledFrame:
            # NV12, the GPU decoder's layout, is first made planar (a lossless copy): swscale
            # converts NV12 to RGB along another path, up to 30 levels away from the RGB of the
            # planar frame the CPU decoder gives for the same pixels.
            frame = p.frame.reformat(format="yuv420p") if p.frame.format.name == "nv12" \
                else p.frame
            img = _to_rgb(frame, info, (det_w, det_h) if resize else None)
            # The full size is converted at most once, and only for a frame whose faces are
            # embedded (some are embedded ahead of their batch, the rest with it).
            full = (functools.cache(functools.partial(_to_rgb, frame, info, full_size))
                    if scale < 1.0 and self.keep_full else None)
            return SampledFrame(p.index, p.pts, p.t_s, len(self.scenes), img, scale, full)

        def close_scene(end: _Pending | None) -> Iterator[SampledFrame]:
            nonlocal held, scene_start, old
            if scene_start is None:
                return
            if not old:
                times = [h.t_s for h in held]
                for i in plan_samples(times, cfg.sample_fps, cfg.min_scene_samples):
                    yield rgb(held[i])
            last_t = end.t_s if end else min(self.end_s, info.duration_s)
            self.scenes.append(Scene(
                index=len(self.scenes), start_s=scene_start.t_s, end_s=last_t,
                start_frame=scene_start.index,
                end_frame=end.index if end else _frame_at(last_t, fps),
                start_pts=scene_start.pts,
                end_pts=end.pts if end else info.start_pts + int(last_t / tb),
            ))
            held, scene_start, old = [], None, False

        def settle(p: _Pending) -> Iterator[SampledFrame]:
            nonlocal scene_start, next_grid, old, held
            if scene_start is not None and p.pts in cut_pts:
                yield from close_scene(p)
            if scene_start is None:
                scene_start, next_grid = p, 0.0
            rel = p.t_s - scene_start.t_s
            on_grid = rel >= next_grid - 1e-6
            if on_grid:
                next_grid = (int(rel * cfg.sample_fps + 1e-6) + 1) / cfg.sample_fps
            if old:
                if on_grid:
                    yield rgb(p)
                return
            held.append(p)
            if len(held) > hold_max:
                held = thin(held, cfg.sample_fps)
            if rel >= young_s:  # the scene is long enough: the grid plan holds, emit it
                times = [h.t_s for h in held]
                for i in plan_samples(times, cfg.sample_fps, cfg.min_scene_samples):
                    yield rgb(held[i])
                held, old = [], True

        for p in self._decode():
            self.frames_decoded += 1
            for c in cutter.process(p.pts - info.start_pts, p.frame):
                cut_pts.add(c + info.start_pts)
            window.append(p)
            while len(window) > lag:
                yield from settle(window.pop(0))
        for c in cutter.finish():
            cut_pts.add(c + info.start_pts)
        for p in window:
            yield from settle(p)
        yield from close_scene(None)

    def _damaged_at(self, t_s: float) -> None:
        d = self.damaged
        self.damaged = ({"frames": 1, "from_s": round(t_s, 3), "to_s": round(t_s, 3)}
                        if d is None else {"frames": d["frames"] + 1, "from_s": d["from_s"],
                                           "to_s": round(t_s, 3)})

    def _decode(self) -> Iterator[_Pending]:
        """Decode the chunk through the shared opener; every frame's size is checked.

        The frame size must stay the one validated at ingest: a stream that grows mid-way is
        refused here (FFmpeg itself refuses pictures over `max_pixels` before allocating
        them), permanently, with the time of the change.
        """
        info = self.info
        tb, fps = info.time_base, info.frame_rate
        limits = self.limits if self.limits is not None else get_settings().limits
        label = self.path.name
        expected = (info.width_px, info.height_px)
        hw = self.cfg.decode_device if self.cfg.decode_device != "cpu" else None
        with open_video(self.path, limits, label, hw_device=hw) as media:
            container, stream = media.container, media.stream
            self.decoded_on = media.decoded_on
            try:
                if media.decoded_on == "cpu":  # frame threads; NVDEC has its own engines
                    frame_threads(stream)
                frames = (self._from_start_s(container, stream) if self.start_s > 0 else
                          container.decode(stream))
                for frame in frames:
                    check_frame(frame, expected, limits, label)
                    if frame.pts is None:
                        continue
                    t_s = float((frame.pts - info.start_pts) * tb)
                    if t_s < self.start_s - 1e-6:
                        continue
                    if t_s >= self.end_s - 1e-6 and self.end_s < info.duration_s - 1e-6:
                        break
                    if frame.is_corrupt:
                        self._damaged_at(t_s)
                    yield _Pending(_frame_at(t_s, fps), frame.pts, t_s, frame)
            except av.FFmpegError as exc:
                start = info.start_pts + int(self.start_s / tb) if self.start_s > 0 else None
                raise media.refusal(exc, "decoding failed", start) from None


    def _from_start_s(self, container: av.container.InputContainer, stream: av.VideoStream
                      ) -> Iterator[av.VideoFrame]:
        """Frames decoded from a keyframe at or before start_s. A seek lands there in MP4 or
        Matroska; in MPEG-TS it landed up to a group of pictures after its target, and a
        chunk's first 1.8 s were never analysed. So a landing after the target is sought
        again from earlier, the file's start last."""
        tb = self.info.time_base
        target = self.info.start_pts + int(self.start_s / tb)
        for back_s in SEEK_BACK_S:
            container.seek(target - int(back_s / tb), stream=stream, backward=True,
                           any_frame=False)
            frames = container.decode(stream)
            first = next(frames, None)
            if first is None:
                continue
            if first.pts is None or first.pts <= target or back_s == SEEK_BACK_S[-1]:
                yield first
                yield from frames
                return


# How far before a chunk's start a seek is tried again (seconds), the last one past any
# file's start (a day: the limit on a video's length is hours).
SEEK_BACK_S = (0.0, 2.0, 10.0, 60.0, 86400.0)


def _to_rgb(frame: av.VideoFrame, info: MediaInfo, size: tuple[int, int] | None) -> np.ndarray:
    """A decoded frame as upright RGB, scaled to `size` (width, height) or, with None, at
    its stored size: the sampled frame's image (`size` the detection size) and its full
    size in square pixels (`SampledFrame.full`)."""
    # Unscaled, swscale's plain conversion (the same pixels at a third of the cost).
    img: np.ndarray = (frame.to_ndarray(format="rgb24", width=size[0], height=size[1],
                                        interpolation="BILINEAR") if size is not None
                       else frame.to_ndarray(format="rgb24"))
    # One orientation for the whole video (the first frame's, probed at ingest): a frame
    # that turned mid-way would change the picture's size under the tracks.
    return upright(img, info.rotation_deg // 90, info.mirrored)


def _frame_at(t_s: float, fps: Fraction) -> int:
    return round(t_s * float(fps))
