"""Running one work unit for a worker: claim, heartbeat, analyse, store results once."""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import kombu.exceptions
import psycopg

from bodycam import fixity, jobs
from bodycam.context import Context
from bodycam.db import Conn
from bodycam.domain import MediaInfo
from bodycam.errors import (
    InvalidMediaError,
    LeaseLostError,
    PermanentError,
    TransientError,
    host_error,
)
from bodycam.media.files import sha256_file
from bodycam.pipeline.analyze import ChunkResult, analyze_chunk
from bodycam.pipeline.faces import FaceDetector, FaceEmbedder, Registry
from bodycam.pipeline.orientation import Turned, notice
from bodycam.queue import FINALIZE_VIDEO
from bodycam.storage import THUMBNAILS

log = logging.getLogger(__name__)
TRACK_NS = uuid.UUID("6f1d2a57-3c55-4d7e-9a43-0b5c1f0e2d11")


def _libc_malloc_trim() -> Any:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def release_free_heap() -> bool:
    """Give the heap's free pages back to the operating system; False where it cannot.

    glibc keeps the memory a task freed (frame buffers and detector activations of tens of
    MB each, above its adaptive mmap threshold) in its arenas. Measured here, a process that
    had analysed six 12-s clips held 1.83 GB resident, and 0.94 GB after malloc_trim(0). A
    worker lives for many videos and kept that much for good: in the test suite its peak
    crossed the hostile-media bound of 2 GiB. The worker calls this after every task.
    """
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def worker_name() -> str:
    """host:pid, recorded as a lease owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class VideoRow:
    """What a worker needs to know about a video."""

    video_id: str
    sha256: str
    object_key: str
    filename: str
    info: MediaInfo


def load_video(conn: Conn, video_id: str) -> VideoRow:
    """Read a video's storage key and probe results."""
    r = conn.execute(
        "SELECT id::text AS id, sha256, object_key, original_filename, media FROM videos"
        " WHERE id = %s", (video_id,)).fetchone()
    if r is None:
        raise PermanentError(f"video {video_id} does not exist")
    return VideoRow(str(r["id"]), str(r["sha256"]), str(r["object_key"]),
                    str(r["original_filename"]), MediaInfo.from_json(r["media"]))


def local_copy(ctx: Context, video: VideoRow) -> Path:
    """The original in this worker's cache, verified against its SHA-256 (chain of custody):
    linked there by ingest when the worker shares its home (jobs.cache_uploads; hashed as it
    arrived), else downloaded and hashed here.

    The cache is bounded (jobs.cache_max_bytes): after a download the least recently used
    originals are evicted, never one that a running unit (of any worker) is processing.
    """
    from bodycam import cache as originals

    cache = originals.cache_dir(ctx.settings.home_dir)
    path = cache / video.sha256
    if path.exists():
        originals.touch(path)
        return path
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=originals.PART_PREFIX)
    os.close(fd)
    t0 = time.perf_counter()
    try:
        ctx.store.download_to(video.object_key, tmp)
        digest = sha256_file(Path(tmp))
        if digest != video.sha256:
            raise PermanentError(
                f"video {video.video_id}: stored original has SHA-256 {digest}, "
                f"recorded {video.sha256}: the evidence object was altered")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("video %s: original downloaded and verified in %.2f s", video.video_id,
             time.perf_counter() - t0)
    with ctx.db() as conn:
        running = originals.running_originals(conn)
    originals.evict(cache, ctx.settings.jobs.cache_max_bytes, running | {video.sha256})
    return path


class Heartbeat(threading.Thread):
    """Renews a lease while its work makes progress; remembers if the lease was lost.

    Work whose progress has not moved for jobs.stall_s is taken as hung: the beat stops
    renewing, so the lease runs out and the reaper gives the work to another worker, instead
    of a stuck worker holding it for ever while its heartbeat says it is alive. `renew` takes
    a connection, the progress and the stage, and raises LeaseLostError once the lease is
    another's (a work unit's, or a redaction job's).
    """

    def __init__(self, ctx: Context, label: str,
                 renew: Callable[[Conn, float, str], None]) -> None:
        super().__init__(name="lease-heartbeat", daemon=True)
        self.ctx, self.label, self._renew = ctx, label, renew
        self._progress = 0.0
        self._moved_at = time.monotonic()
        self.stage = "decoding"
        self.lost = False
        self._stop_event = threading.Event()

    @property
    def progress(self) -> float:
        """The fraction of the work done."""
        return self._progress

    @progress.setter
    def progress(self, fraction: float) -> None:
        self._progress = fraction
        self._moved_at = time.monotonic()

    def run(self) -> None:
        cfg = self.ctx.settings.jobs
        while not self._stop_event.wait(cfg.heartbeat_s):
            if time.monotonic() - self._moved_at > cfg.stall_s:
                log.error("%s: no progress for %.0f s; lease left to expire", self.label,
                          cfg.stall_s)
                self.lost = True
                return
            try:
                with self.ctx.db() as conn:
                    self._renew(conn, self._progress, self.stage)
            except LeaseLostError:
                self.lost = True
                return
            except Exception:  # noqa: BLE001 - a missed beat is retried on the next tick
                log.warning("%s: lease heartbeat failed", self.label)

    def stop(self) -> None:
        self._stop_event.set()


def failure_kind(exc: BaseException) -> jobs.Failure:
    """Whether an attempt failed on its input, on a service, or otherwise.

    Services raise TransientError where Bodycam wraps them (storage, queue, connections,
    model processes); a database connection lost mid-statement (a backend killed, a restart)
    and the broker's own errors surface as their libraries' types.
    """
    if isinstance(exc, PermanentError):
        return jobs.Failure.PERMANENT
    if isinstance(exc, TransientError | psycopg.OperationalError | psycopg.InterfaceError
                  | kombu.exceptions.OperationalError | ConnectionError | TimeoutError):
        return jobs.Failure.SERVICE
    # The worker's host out of disk, descriptors or memory: a full scratch disk on one host
    # quarantined every video it took, three attempts each within seconds. FFmpeg's own
    # errors (several of PyAV's error classes are OSErrors too) are about the file it reads.
    if host_error(exc) and not isinstance(exc, av.FFmpegError):
        return jobs.Failure.SERVICE
    return jobs.Failure.ERROR


def embedder_for(ctx: Context) -> FaceEmbedder | None:
    """The configured embedder, or None where policy forbids computing embeddings."""
    from bodycam import policy

    with ctx.db() as conn:
        if not policy.embeddings_allowed(conn):
            return None
    return Registry.embedder(ctx.settings.pipeline)


def run_unit(ctx: Context, video_id: str, idx: int, owner: str | None = None) -> str:
    """Process one work unit; returns what happened ('done', 'skipped', 'retry', 'failed')."""
    owner = owner or worker_name()
    with ctx.db() as conn:
        lease = jobs.claim(conn, video_id, idx, owner, ctx.settings.jobs.lease_s)
    if lease is None:
        log.info("video %s unit %d: not claimable (done or leased): skipped", video_id, idx)
        return "skipped"
    beat = Heartbeat(ctx, f"video {video_id} unit {idx}",
                     lambda conn, progress, stage: jobs.heartbeat(
                         conn, lease, ctx.settings.jobs.lease_s, progress, stage))
    beat.start()
    try:
        t0 = time.perf_counter()
        with ctx.db() as conn:
            video = load_video(conn, video_id)
        path = local_copy(ctx, video)
        t_copy = time.perf_counter()
        cfg = ctx.settings.pipeline
        embedder = embedder_for(ctx)
        detector = Registry.detector(cfg)

        def progress(fraction: float) -> None:
            beat.progress = fraction
            beat.stage = "faces"
            if beat.lost:
                raise LeaseLostError(f"video {video_id} unit {idx}: lease lost")

        try:
            result = analyze_chunk(path, video.info, lease.start_s, lease.end_s, cfg,
                                   detector, embedder, progress)
        except InvalidMediaError as exc:
            raise InvalidMediaError(video.filename, exc.reason) from None
        t_analyzed = time.perf_counter()
        last = store_results(ctx, lease, video, result, embedder,
                             computed_on(result, detector, embedder))
        log.info("video %s unit %d: original %.2f s, analysis %.2f s (%d frames decoded, %d "
                 "sampled, %d tracks; busy s: %s), results stored %.2f s", video_id, idx,
                 t_copy - t0, t_analyzed - t_copy, result.frames_decoded, result.frames_sampled,
                 len(result.tracks),
                 " ".join(f"{k} {v:.2f}" for k, v in result.stage_s.items()),
                 time.perf_counter() - t_analyzed)
    except LeaseLostError:
        log.warning("video %s unit %d: lease lost; results discarded", video_id, idx)
        return "skipped"
    except Exception as exc:  # noqa: BLE001 - every failure releases the unit
        kind = failure_kind(exc)
        error = str(exc) if kind is jobs.Failure.PERMANENT else f"{type(exc).__name__}: {exc}"
        try:
            with ctx.db() as conn:
                state = jobs.fail(conn, ctx.audit_key, lease, error, kind, ctx.settings.jobs)
        except Exception:
            log.exception("video %s unit %d: could not record its failure; the lease will "
                          "expire and the unit be re-queued", video_id, idx)
            return "retry"
        log.warning("video %s unit %d attempt %d failed (%s, %s): unit %s", video_id, idx,
                    lease.attempt, kind.value, type(exc).__name__, state)
        return {"pending": "retry", "lost": "skipped"}.get(state, "failed")
    finally:
        beat.stop()
    if last:
        ctx.send(FINALIZE_VIDEO, video_id)
    return "done"


def computed_on(result: ChunkResult, detector: FaceDetector,
                embedder: FaceEmbedder | None) -> str:
    """What computed a unit's results, recorded with them: the decoder, and each model's
    device and precision (a GPU worker's FaceNet vectors are fp16 ones)."""
    embedded = (f"embed {embedder.name} on {embedder.compute}" if embedder is not None
                else jobs.NO_EMBEDDING)
    return f"decode {result.decoded_on}; detect {detector.name} on {detector.compute}; {embedded}"


def store_results(ctx: Context, lease: jobs.Lease, video: VideoRow, result: ChunkResult,
                  embedder: FaceEmbedder | None, computed: str) -> bool:
    """Write a unit's results in one transaction that replaces any earlier attempt's rows,
    with what computed them (`computed`, on the unit).

    Returns True when this was the video's last unit. Raises LeaseLostError (nothing is
    written) if the lease was lost meanwhile.
    """
    prefix = f"{THUMBNAILS}{video.video_id}/{lease.idx}/"
    thumbs = {}
    for tr in result.tracks:
        key = f"{prefix}{tr.key}.jpg"
        ctx.store.put_bytes(key, tr.thumbnail_jpeg, "image/jpeg")
        thumbs[tr.key] = key
    model = embedder.name if embedder else None
    version = embedder.version if embedder else None
    weights = embedder.weights_sha256 if embedder else None
    with ctx.db() as conn:
        vid, chunk = video.video_id, lease.idx
        for table in ("detections", "tracks", "scenes"):
            conn.execute(f"DELETE FROM {table} WHERE video_id = %s AND chunk_idx = %s",
                         (vid, chunk))
        for s in result.scenes:
            conn.execute(
                "INSERT INTO scenes (video_id, chunk_idx, scene_idx, start_s, end_s,"
                " start_frame, end_frame, start_pts, end_pts)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (vid, chunk, s.index, s.start_s, s.end_s, s.start_frame, s.end_frame,
                 s.start_pts, s.end_pts))
        track_ids: dict[int, uuid.UUID] = {}
        for tr in result.tracks:
            fixity.record(conn, thumbs[tr.key], tr.thumbnail_jpeg)  # for later re-hashing
            tid = uuid.uuid5(TRACK_NS, f"{vid}/{chunk}/{tr.key}")
            track_ids[tr.key] = tid
            conn.execute(
                "INSERT INTO tracks (id, video_id, chunk_idx, scene_idx, start_s, end_s,"
                " n_detections, quality, thumbnail_key, model, model_version, weights_sha256,"
                " embedding) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (tid, vid, chunk, tr.track.scene_index, tr.start_s, tr.end_s,
                 len(tr.track.detections), tr.track.quality, thumbs[tr.key], model, version,
                 weights, tr.track.representative_embedding()))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO detections (video_id, chunk_idx, track_id, scene_idx, frame_index,"
                " t_s, box_px, landmarks_px, probability, sharpness, quality, model,"
                " model_version, weights_sha256, embedding)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(vid, chunk, track_ids.get(k) if k is not None else None, d.scene_index,
                  d.frame_index, d.t_s, list(d.box_px),
                  [c for pt in d.landmarks_px for c in pt], d.probability, d.sharpness,
                  d.quality, model if d.embedding is not None else None,
                  version if d.embedding is not None else None,
                  weights if d.embedding is not None else None, d.embedding)
                 for k, d in result.detections])
        return jobs.complete(conn, lease, computed,
                             result.turned.as_json() if result.turned else None,
                             result.damaged)


def damaged_notice(units: list[dict[str, float]]) -> tuple[int, str] | None:
    """The frames the decoder marked corrupt in a video's units (ChunkDecoder.damaged), and
    what its reader is told: a video whose damage hid its only face was `done` with 0 faces,
    nothing said (bb43). None where no frame was damaged."""
    if not units:
        return None
    frames = int(sum(u["frames"] for u in units))
    start, end = min(u["from_s"] for u in units), max(u["to_s"] for u in units)
    return frames, (f"{frames} frame{'s' if frames != 1 else ''} between {start:.2f} s and"
                    f" {end:.2f} s hold damaged data the decoder filled in: faces there may"
                    " be missed or wrong; the original's bytes are as received (check the"
                    " copy it came from)")


def finalize_video(ctx: Context, video_id: str) -> None:
    """Video-level work once every unit is done; idempotent."""
    from bodycam.matching import match_video

    t0 = time.perf_counter()
    with ctx.db() as conn:
        made = match_video(conn, ctx.settings, ctx.audit_key, video_id)
        n = conn.execute("SELECT count(*) AS n FROM tracks WHERE video_id = %s",
                         (video_id,)).fetchone()
        tracks = int(n["n"]) if n else 0
        turned = [] if tracks else [
            Turned(**r["t"]) for r in conn.execute(
                "SELECT turned AS t FROM work_units WHERE video_id = %s"
                " AND turned IS NOT NULL ORDER BY idx", (video_id,))]
        said = notice(turned)
        damage = damaged_notice([r["d"] for r in conn.execute(
            "SELECT damaged AS d FROM work_units WHERE video_id = %s AND damaged IS NOT NULL"
            " ORDER BY idx", (video_id,))])
        jobs.finish_video(conn, ctx.audit_key, video_id,
                          {"tracks": tracks, "new_matches": made,
                           **({"turned": [t.as_json() for t in turned]} if said else {}),
                           **({"damaged_frames": damage[0]} if damage else {})},
                          " ".join(x for x in (damage[1] if damage else None, said) if x)
                          or None)
    log.info("video %s done; %d new pending matches; finalized in %.2f s", video_id, made,
             time.perf_counter() - t0)
