"""One chunk end to end in memory: decode once, cut scenes, sample, detect, embed, track."""

from __future__ import annotations

import io
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bodycam.config import PipelineSettings
from bodycam.domain import FaceDetection, FaceTrack, MediaInfo, SampledFrame, Scene
from bodycam.pipeline.faces import FaceDetector, FaceEmbedder
from bodycam.pipeline.frames import ChunkDecoder, batch_frames
from bodycam.pipeline.orientation import CHECKED, Spread, Turned, turned_faces
from bodycam.pipeline.tracks import Tracker, center_distance, iou, size_ratio


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
    decoded_on: str = "cpu"  # 'cuda' where NVDEC decoded it (decode_device)
    turned: Turned | None = None  # with no track of 2 faces: what a turned picture showed
    damaged: dict[str, float] | None = None  # frames the decoder marked corrupt (ChunkDecoder)


def _thumbnail(frame: SampledFrame, det: FaceDetection, height_px: int) -> np.ndarray:
    """A face crop with a margin, resized to height_px (kept small: frames never leave), cut
    as faces are embedded: from the frame at full size where the detection image was scaled
    down (a 4K face was cut at half its pixels)."""
    image, scale = frame.embedding_view()
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (v * scale for v in det.box_px)
    m = 0.25 * (y2 - y1)
    box = (max(0, int(x1 - m)), max(0, int(y1 - m)), min(w, int(x2 + m)), min(h, int(y2 + m)))
    crop = Image.fromarray(image[box[1]:box[3], box[0]:box[2]])
    ratio = height_px / max(crop.height, 1)
    return np.asarray(crop.resize((max(1, int(crop.width * ratio)), height_px)))


def _jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=88)
    return buf.getvalue()


_Found = tuple[list[SampledFrame], list[list[FaceDetection]]] | BaseException | None
_STOPPED = object()  # what a queue read returns once the pipeline has been told to stop
_POLL_S = 0.2

# Embedding policy (see EmbedPlanner): a track is re-embedded at least every this many samples
# (2 s at the default 5 fps), when a detection's quality beats the best embedded one of its
# track by this factor, whenever its link is not a clear overlap of at least this IoU, and
# whenever its face height changed by more than this factor since the track's last sample.
EMBED_REFRESH_SAMPLES = 10
EMBED_QUALITY_GAIN = 1.15
EMBED_SAFE_IOU = 0.3
EMBED_SAFE_SIZE_RATIO = 1.25


@dataclass
class _TrackState:
    scene_index: int
    last: FaceDetection
    best_embedded_q: float
    since_embedded: int


class EmbedPlanner:
    """Decides which detections need an embedding for the tracker to link them safely.

    The dlib embedder costs about 100 ms per face on CPU, several times the detector's cost
    per frame, while most samples of a face continue an unambiguous track. A detection is
    embedded when it may start a track (no live track near it), when its link is ambiguous
    (several tracks or several detections compete, or the overlap is low), when its track has
    gone EMBED_REFRESH_SAMPLES samples without one (so a face replaced in place by another
    cannot stay linked long), and when it is notably better than the track's best embedded
    detection (so each track's representative embedding comes from its best faces).
    Otherwise the tracker links it by overlap alone, exactly as it would with the embedding
    (it cannot compete with anything), and the detection row keeps no vector.
    """

    def __init__(self, cfg: PipelineSettings) -> None:
        self.cfg = cfg
        self._tracks: dict[int, _TrackState] = {}

    def _live(self, t_s: float, scene: int) -> dict[int, _TrackState]:
        gap = self.cfg.track_max_gap_s
        self._tracks = {k: st for k, st in self._tracks.items()
                        if st.scene_index == scene and t_s - st.last.t_s <= gap}
        return self._tracks

    def plan(self, dets: Sequence[FaceDetection]) -> list[bool]:
        """Whether each of one frame's detections must be embedded."""
        return self._plan(dets)[0]

    def _plan(self, dets: Sequence[FaceDetection]
              ) -> tuple[list[bool], list[list[tuple[int, float]]]]:
        """`plan`, with each detection's candidate tracks (key, overlap) it was made from."""
        if not dets:
            return [], []
        live = self._live(dets[0].t_s, dets[0].scene_index)
        cands: list[list[tuple[int, float]]] = []
        by_track: dict[int, int] = {}
        for d in dets:
            mine = []
            for k, st in live.items():
                overlap = iou(st.last.box_px, d.box_px)
                if overlap >= self.cfg.track_min_iou or center_distance(
                        st.last.box_px, d.box_px) < 1.5:
                    mine.append((k, overlap))
                    by_track[k] = by_track.get(k, 0) + 1
            cands.append(mine)
        need = []
        for d, mine in zip(dets, cands, strict=True):
            if len(mine) != 1:
                need.append(True)
                continue
            k, overlap = mine[0]
            st = live[k]
            need.append(by_track[k] > 1 or overlap < EMBED_SAFE_IOU
                        or size_ratio(st.last.box_px, d.box_px) > EMBED_SAFE_SIZE_RATIO
                        or st.since_embedded + 1 >= EMBED_REFRESH_SAMPLES
                        or d.quality > EMBED_QUALITY_GAIN * st.best_embedded_q)
        return need, cands

    def forecast(self, frames: Sequence[Sequence[FaceDetection]]) -> list[list[bool]]:
        """What `plan` is expected to ask of each of several consecutive frames, so that their
        vectors can be computed in one call; the planner is left as it was.

        Each frame's links are guessed as the tracker makes them where no vector decides:
        greedily by overlap, one to one, among the candidates `plan` weighs; a detection
        left over starts a track. Where the tracker links otherwise, the guess costs a
        vector computed and not used, or one computed later on its own: never a result.
        """
        saved = self._tracks
        self._tracks = {k: replace(st) for k, st in saved.items()}
        fresh = -1  # guessed new tracks take negative keys: the tracker's are never negative
        out = []
        try:
            for dets in frames:
                need, cands = self._plan(dets)
                out.append(need)
                if not dets:
                    continue
                pairs = sorted(((overlap, k, i) for i, mine in enumerate(cands)
                                for k, overlap in mine), key=lambda p: p[0], reverse=True)
                keys: list[int | None] = [None] * len(dets)
                used: set[int] = set()
                for _overlap, k, i in pairs:
                    if k not in used and keys[i] is None:
                        used.add(k)
                        keys[i] = k
                for i in range(len(dets)):
                    if keys[i] is None:
                        keys[i] = fresh
                        fresh -= 1
                self._record([k for k in keys if k is not None], dets, need)
        finally:
            self._tracks = saved
        return out

    def observe(self, keys: Sequence[int], dets: Sequence[FaceDetection]) -> list[int]:
        """Record the tracker's links; returns indices of new tracks left without a vector."""
        return self._record(keys, dets, [d.embedding is not None for d in dets])

    def _record(self, keys: Sequence[int], dets: Sequence[FaceDetection],
                embedded: Sequence[bool]) -> list[int]:
        missing = []
        for i, (k, d, has) in enumerate(zip(keys, dets, embedded, strict=True)):
            st = self._tracks.get(k)
            if st is None:
                self._tracks[k] = _TrackState(d.scene_index, d, d.quality if has else 0.0,
                                              0 if has else EMBED_REFRESH_SAMPLES)
                if not has:
                    missing.append(i)
                continue
            st.last = d
            if has:
                st.best_embedded_q = max(st.best_embedded_q, d.quality)
                st.since_embedded = 0
            else:
                st.since_embedded += 1
        return missing


def _embed_ahead(embedder: FaceEmbedder, frames: Sequence[SampledFrame],
                 found: Sequence[list[FaceDetection]],
                 planner: EmbedPlanner) -> list[dict[int, np.ndarray]]:
    """The vectors `planner` is expected to ask for over a batch of frames, in one call;
    per frame, by detection index."""
    todo = [(j, w) for j, need in enumerate(planner.forecast(found))
            if (w := [i for i, n in enumerate(need) if n])]
    ready: list[dict[int, np.ndarray]] = [{} for _f in frames]
    if todo:
        views = [frames[j].embedding_view() for j, _w in todo]
        vecs = embedder.embed_frames([(image, [found[j][i] for i in w], scale)
                                      for (j, w), (image, scale) in zip(todo, views,
                                                                          strict=True)])
        for (j, w), v in zip(todo, vecs, strict=True):
            ready[j] = dict(zip(w, v, strict=True))
    return ready


def _embed_some(embedder: FaceEmbedder, frame: SampledFrame, dets: list[FaceDetection],
                which: Sequence[int], ready: dict[int, np.ndarray]) -> None:
    """Replace dets[i] for i in `which` with a copy carrying its embedding: from `ready`
    where it was computed ahead, the others in one call."""
    late = [i for i in which if i not in ready]
    vecs: dict[int, np.ndarray] = {}
    if late:
        image, scale = frame.embedding_view()
        vecs = dict(zip(late, embedder.embed(image, [dets[i] for i in late], scale),
                        strict=True))
    for i in which:
        dets[i] = replace(dets[i], embedding=ready[i] if i in ready else vecs[i])


def bridged(cfg: PipelineSettings, info: MediaInfo) -> PipelineSettings:
    """The settings for this video: a track bridges at least 2.5 of its sampling intervals.
    A video of under a frame a second (time-lapse, a low-rate mode) had every face 2 s from
    the next, past `track_max_gap_s`: each was a one-detection track dropped as noise, and
    the video was done with no face at all (bb43)."""
    step = 1 / max(1e-6, min(cfg.sample_fps, float(info.frame_rate)))
    if cfg.track_max_gap_s >= 2.5 * step:
        return cfg
    return cfg.model_copy(update={"track_max_gap_s": 2.5 * step})


def analyze_chunk(
    path: Path,
    info: MediaInfo,
    start_s: float,
    end_s: float,
    cfg: PipelineSettings,
    detector: FaceDetector,
    embedder: FaceEmbedder | None,
    progress: Callable[[float], None] = lambda _f: None,
    look_turned: int = CHECKED,
) -> ChunkResult:
    """Run the pipeline over [start_s, end_s) of a video file.

    The stages overlap, handing over through bounded queues (maxsize 2: a slow stage blocks
    the one before it, nothing is dropped): a thread decodes and cuts scenes, the detector
    runs `detector.concurrency` batches at a time (torch releases the GIL), and a thread
    embeds and tracks (results reach the tracker in frame order). Only the detections the
    tracker needs are embedded (EmbedPlanner); every track keeps a representative embedding.
    Those a detection batch is expected to need are embedded in one call before it is
    tracked (EmbedPlanner.forecast), a detection the forecast missed on its own; vectors
    computed and not asked for are dropped, so the results are those of one call per face.
    With embedder None (redact-only policy) faces are detected and tracked by overlap alone
    and no embedding is computed.

    Where no track holds two faces, `look_turned` of the sampled frames, spread over the
    chunk, are looked at turned (orientation.turned_faces): a camera worn sideways.

    `stage_s` reports each stage's busy seconds (time blocked on a queue excluded): the
    stages overlap, so they add up to more than the wall time.
    """
    cfg = bridged(cfg, info)
    # Progress follows detection, not decoding: the decoder runs ahead by up to two batches.
    # Without an embedder (a redaction plan, redact-only) no face is cut at full size, so no
    # sampled frame pins its decoded picture: an 8K plan took a worker to 5.5 GB (bb48).
    decoder = ChunkDecoder(path, info, start_s, end_s, cfg, keep_full=embedder is not None)
    batch_size = batch_frames(cfg, info, decoder.keep_full)
    span = max(end_s - start_s, 1e-6)
    batches: queue.Queue[list[SampledFrame] | BaseException | None] = queue.Queue(maxsize=2)
    found_q: queue.Queue[_Found] = queue.Queue(maxsize=2)
    timing = {"decode": 0.0, "detect": 0.0, "embed": 0.0, "track": 0.0}
    stop = threading.Event()

    # Every hand-over polls `stop`, both ways: once any stage fails (or the lease is lost)
    # no put and no get blocks for ever, even though the end-of-work sentinel of a stage
    # that gave up is never delivered. A worker hung on a queue would keep renewing its
    # lease while doing nothing (GUIDE: pitfalls).
    def put(q: queue.Queue[Any], item: Any) -> float:
        """Blocking put that gives up once `stop` is set; returns seconds waited."""
        t0 = time.perf_counter()
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL_S)
                break
            except queue.Full:
                continue
        return time.perf_counter() - t0

    def take(q: queue.Queue[Any]) -> Any:
        """Blocking get that returns _STOPPED once `stop` is set and nothing is queued."""
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if stop.is_set():
                    return _STOPPED

    def produce() -> None:
        batch: list[SampledFrame] = []
        t0 = time.perf_counter()
        waited = 0.0
        try:
            for frame in decoder:
                if stop.is_set():
                    return
                batch.append(frame)
                if len(batch) >= batch_size:
                    waited += put(batches, batch)
                    batch = []
            if batch:
                waited += put(batches, batch)
            put(batches, None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised there
            put(batches, exc)
        finally:
            timing["decode"] = time.perf_counter() - t0 - waited

    tracker = Tracker(cfg, motion=embedder is None)
    planner = EmbedPlanner(cfg)
    best: dict[int, tuple[float, np.ndarray]] = {}
    detections: list[tuple[int, FaceDetection]] = []
    errors: list[BaseException] = []

    def link() -> None:
        try:
            while not stop.is_set():
                got = take(found_q)
                if got is None or got is _STOPPED:
                    return
                if isinstance(got, BaseException):
                    raise got
                frames, found = got[0], [list(f) for f in got[1]]
                ready: list[dict[int, np.ndarray]] = [{} for _f in frames]
                if embedder is not None:
                    t0 = time.perf_counter()
                    ready = _embed_ahead(embedder, frames, found, planner)
                    timing["embed"] += time.perf_counter() - t0
                for frame, dets, pre in zip(frames, found, ready, strict=True):
                    if embedder is not None and dets:
                        t0 = time.perf_counter()
                        need = planner.plan(dets)
                        _embed_some(embedder, frame, dets,
                                    [i for i, n in enumerate(need) if n], pre)
                        timing["embed"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    keys = tracker.update(dets)
                    if embedder is not None and dets:
                        missing = planner.observe(keys, dets)
                        if missing:  # not expected: the plan foresaw every new track
                            t1 = time.perf_counter()
                            _embed_some(embedder, frame, dets, missing, {})
                            timing["embed"] += time.perf_counter() - t1
                    for key, det in zip(keys, dets, strict=True):
                        detections.append((key, det))
                        if key not in best or det.quality > best[key][0]:
                            best[key] = (det.quality, _thumbnail(frame, det, cfg.thumbnail_px))
                    timing["track"] += time.perf_counter() - t0
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            errors.append(exc)
            stop.set()

    producer = threading.Thread(target=produce, name="decode", daemon=True)
    linker = threading.Thread(target=link, name="embed-track", daemon=True)
    producer.start()
    linker.start()
    sampled = 0
    spread = Spread(look_turned)  # frames to look at turned, should none show a face
    timing_lock = threading.Lock()

    def detect(frames: list[SampledFrame]) -> list[list[FaceDetection]]:
        t0 = time.perf_counter()
        found = detector.detect(frames)
        with timing_lock:
            timing["detect"] += time.perf_counter() - t0
        return found

    def hand_over(done: tuple[list[SampledFrame], Future[list[list[FaceDetection]]]]) -> None:
        frames, fut = done
        put(found_q, (frames, fut.result()))
        progress(min(0.99, (frames[-1].t_s - start_s) / span))

    # Detection batches run `detector.concurrency` at a time; results go to the linker in
    # frame order, which tracking needs.
    in_flight: deque[tuple[list[SampledFrame], Future[list[list[FaceDetection]]]]] = deque()
    pool = ThreadPoolExecutor(max_workers=detector.concurrency, thread_name_prefix="detect")
    try:
        while not errors:
            item = take(batches)
            if item is None or item is _STOPPED:
                break
            if isinstance(item, BaseException):
                raise item
            sampled += len(item)
            for f in item:
                spread.offer(f)
            in_flight.append((item, pool.submit(detect, item)))
            while len(in_flight) >= detector.concurrency and not errors:
                hand_over(in_flight.popleft())
        while in_flight and not errors:
            hand_over(in_flight.popleft())
    except BaseException:
        stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        put(found_q, None)
        linker.join()
    if errors:
        stop.set()
        raise errors[0]
    if stop.is_set():  # not expected: a stage gave up without saying why
        raise RuntimeError("the pipeline stopped before the end of the chunk")
    producer.join()
    finished = tracker.finish()
    kept = {k for k, _t in finished}
    # The tracker holds the detections as first linked; a vector added after linking (a
    # new track the plan did not foresee) lives in our list, so tracks are rebuilt from it.
    per_key: dict[int, list[FaceDetection]] = {}
    for k, d in detections:
        if k in kept:
            per_key.setdefault(k, []).append(d)
    half = 0.5 / cfg.sample_fps
    scenes = {s.index: s for s in decoder.scenes}
    tracks = []
    for key, trk in finished:
        trk = FaceTrack(trk.scene_index, tuple(per_key[key]))
        scene = scenes[trk.scene_index]
        tracks.append(TrackResult(
            key=key, track=trk,
            start_s=max(scene.start_s, trk.start_s - half),
            end_s=min(scene.end_s, trk.end_s + half),
            thumbnail_jpeg=_jpeg(best[key][1]),
        ))
    turned = None
    if not any(len(t.track.detections) >= 2 for t in tracks):  # a stray one is no face seen
        t0 = time.perf_counter()
        turned = turned_faces(detector, spread.kept)
        timing["detect"] += time.perf_counter() - t0
    return ChunkResult(
        scenes=decoder.scenes, tracks=tracks,
        detections=[(k if k in kept else None, d) for k, d in detections],
        frames_decoded=decoder.frames_decoded, frames_sampled=sampled, stage_s=timing,
        decoded_on=decoder.decoded_on, turned=turned, damaged=decoder.damaged,
    )
