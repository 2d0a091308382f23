"""One chunk end to end in memory: decode once, cut scenes, sample, detect, embed, track."""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from bodycam.config import PipelineSettings
from bodycam.domain import FaceDetection, FaceTrack, MediaInfo, SampledFrame, Scene
from bodycam.pipeline.faces import FaceDetector, FaceEmbedder
from bodycam.pipeline.frames import ChunkDecoder
from bodycam.pipeline.tracks import Tracker


@dataclass(frozen=True)
class TrackResult:
    """A finished track with its estimated visible span and thumbnail (JPEG bytes)."""

    key: int
    track: FaceTrack
    start_s: float
    end_s: float
    thumbnail_jpeg: bytes = field(repr=False)


@dataclass
class ChunkResult:
    """Everything one work unit produces."""

    scenes: list[Scene]
    tracks: list[TrackResult]
    detections: list[tuple[int | None, FaceDetection]]  # (track key or None, detection)
    frames_decoded: int = 0
    frames_sampled: int = 0
    stage_s: dict[str, float] = field(default_factory=dict)


def _thumbnail(frame: SampledFrame, det: FaceDetection, height_px: int) -> np.ndarray:
    """A face crop with a margin, resized to height_px (kept small: frames never leave)."""
    h, w = frame.image.shape[:2]
    x1, y1, x2, y2 = (v * frame.scale for v in det.box_px)
    m = 0.25 * (y2 - y1)
    box = (max(0, int(x1 - m)), max(0, int(y1 - m)), min(w, int(x2 + m)), min(h, int(y2 + m)))
    crop = Image.fromarray(frame.image[box[1]:box[3], box[0]:box[2]])
    ratio = height_px / max(crop.height, 1)
    return np.asarray(crop.resize((max(1, int(crop.width * ratio)), height_px)))


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


def analyze_chunk(
    path: Path,
    info: MediaInfo,
    start_s: float,
    end_s: float,
    cfg: PipelineSettings,
    detector: FaceDetector,
    embedder: FaceEmbedder | None,
    progress: Callable[[float], None] = lambda _f: None,
) -> ChunkResult:
    """Run the pipeline over [start_s, end_s) of a video file.

    Decoding runs in a thread beside detection (both release the GIL), handing over batches
    of sampled frames through a bounded queue. With embedder None (redact-only policy) faces
    are detected and tracked by overlap alone and no embedding is computed.
    """
    decoder = ChunkDecoder(path, info, start_s, end_s, cfg, progress=progress)
    batches: queue.Queue[list[SampledFrame] | BaseException | None] = queue.Queue(maxsize=2)
    timing = {"decode": 0.0, "detect": 0.0, "embed": 0.0, "track": 0.0}

    def produce() -> None:
        batch: list[SampledFrame] = []
        t0 = time.perf_counter()
        try:
            for frame in decoder:
                batch.append(frame)
                if len(batch) >= cfg.batch_size:
                    batches.put(batch)
                    batch = []
            if batch:
                batches.put(batch)
            batches.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            batches.put(exc)
        finally:
            timing["decode"] = time.perf_counter() - t0

    producer = threading.Thread(target=produce, name="decode", daemon=True)
    producer.start()
    tracker = Tracker(cfg)
    best: dict[int, tuple[float, np.ndarray]] = {}
    detections: list[tuple[int, FaceDetection]] = []
    sampled = 0
    while True:
        item = batches.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        sampled += len(item)
        t0 = time.perf_counter()
        found = detector.detect(item)
        timing["detect"] += time.perf_counter() - t0
        for frame, dets in zip(item, found, strict=True):
            if embedder is not None and dets:
                t0 = time.perf_counter()
                vecs = embedder.embed(frame.image, dets, frame.scale)
                dets = [replace(d, embedding=v) for d, v in zip(dets, vecs, strict=True)]
                timing["embed"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            keys = tracker.update(dets)
            for key, det in zip(keys, dets, strict=True):
                detections.append((key, det))
                if key not in best or det.quality > best[key][0]:
                    best[key] = (det.quality, _thumbnail(frame, det, cfg.thumbnail_px))
            timing["track"] += time.perf_counter() - t0
    producer.join()
    finished = tracker.finish()
    kept = {k for k, _t in finished}
    half = 0.5 / cfg.sample_fps
    scenes = {s.index: s for s in decoder.scenes}
    tracks = []
    for key, trk in finished:
        scene = scenes[trk.scene_index]
        tracks.append(TrackResult(
            key=key, track=trk,
            start_s=max(scene.start_s, trk.start_s - half),
            end_s=min(scene.end_s, trk.end_s + half),
            thumbnail_jpeg=_jpeg(best[key][1]),
        ))
    return ChunkResult(
        scenes=decoder.scenes, tracks=tracks,
        detections=[(k if k in kept else None, d) for k, d in detections],
        frames_decoded=decoder.frames_decoded, frames_sampled=sampled, stage_s=timing,
    )
