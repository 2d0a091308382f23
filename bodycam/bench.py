"""Pipeline benchmark: per-stage seconds and speed against the naive MTCNN-every-frame baseline."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from bodycam.benchmarks_md import replace_section
from bodycam.config import Settings
from bodycam.domain import FaceDetection, MediaInfo, SampledFrame
from bodycam.errors import InvalidInputError
from bodycam.media.probe import probe
from bodycam.pipeline.analyze import analyze_chunk
from bodycam.pipeline.faces import FaceEmbedder, Registry

CLIP_SEED = 1
CLIP_SIZE = "1280x720"
CLIP_FPS = 30
# The baseline is timed on the first BASELINE_S seconds of each clip and scaled per second of
# video: at ~0.5 s per 720p frame it would otherwise take longer than the rest of the bench.
BASELINE_S = 2.0
MARK_START = "<!-- pipeline-bench:start -->"
MARK_END = "<!-- pipeline-bench:end -->"
REPO = Path(__file__).resolve().parent.parent


@dataclass
class ClipFigures:
    """What one clip measured."""

    name: str
    info: MediaInfo
    wall_s: float
    stage_s: dict[str, float]
    frames_decoded: int
    frames_sampled: int
    detections: int
    embedded: int
    tracks: int
    base_video_s: float
    base_stage_s: dict[str, float]
    base_faces: int

    @property
    def x_real_time(self) -> float:
        """Seconds of video processed per second of wall time."""
        return self.info.duration_s / self.wall_s

    @property
    def base_per_video_s(self) -> float:
        """Baseline wall seconds per second of video."""
        return sum(self.base_stage_s.values()) / self.base_video_s

    @property
    def base_total_s(self) -> float:
        """The baseline's wall time scaled to the whole clip."""
        return self.base_per_video_s * self.info.duration_s

    @property
    def ratio(self) -> float:
        """How many times faster the pipeline is than the baseline."""
        return self.base_total_s / self.wall_s


def machine_facts() -> dict[str, str]:
    """CPU model, cores, torch threads and library versions."""
    import torch

    model = platform.processor() or "unknown"
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            model = m.group(1).strip()
    except OSError:
        pass

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "CPU": model,
        "cores": str(os.cpu_count()),
        "torch threads": str(torch.get_num_threads()),
        "GPU": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "python": platform.python_version(),
        "torch": version("torch"),
        "facenet-pytorch": version("facenet-pytorch"),
        "dlib": version("dlib-bin") if version("dlib") == "not installed" else version("dlib"),
        "av (PyAV)": version("av"),
        "opencv": version("opencv-python-headless"),
        "scenedetect": version("scenedetect-headless"),
    }


def synthetic_clip(settings: Settings, testdata: str, clip_s: float, out: Console) -> Path:
    """The benchmark's 720p30 clip, generated once into a cache under BODYCAM_HOME."""
    cache = settings.home_dir / "cache" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"synthetic-seed{CLIP_SEED}-{clip_s:g}s-{CLIP_SIZE}-{CLIP_FPS}fps.mp4"
    if path.exists():
        return path
    tool = Path(testdata).resolve().parent / "tools" / "make_bodycam_clip.py"
    if not tool.exists():
        raise InvalidInputError(f"clip generator not found at {tool}: pass --testdata DIR with "
                                "../tools/make_bodycam_clip.py beside it")
    out.print(f"generating a {clip_s:g} s {CLIP_SIZE} clip (seed {CLIP_SEED}) into {cache} ...")
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    tmp = path.with_suffix(".part.mp4")
    proc = subprocess.run(
        [sys.executable, str(tool), "--out", str(tmp), "--seed", str(CLIP_SEED),
         "--duration", f"{clip_s:g}", "--size", CLIP_SIZE, "--fps", str(CLIP_FPS)],
        env=env, capture_output=True, text=True, timeout=max(600.0, clip_s * 10))
    if proc.returncode != 0:
        raise InvalidInputError(f"clip generation failed: {proc.stderr[-500:]} (is ffmpeg on "
                                "PATH? `make install` links the imageio-ffmpeg binary)")
    tmp.rename(path)
    return path


def naive_baseline(path: Path, seconds: float, embedder: FaceEmbedder,
                   torch_threads: int) -> tuple[float, dict[str, float], int]:
    """facenet-pytorch's README recipe on the first `seconds` of a clip.

    Every frame decoded to full-resolution RGB, MTCNN(keep_all=True) with default settings
    on every frame, every face embedded with the same embedder. It runs with torch's default
    thread count (`torch_threads`, read before our detector changed it). Returns (video
    seconds covered, seconds per stage, faces found).
    """
    import torch
    from facenet_pytorch import MTCNN

    ours = torch.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        return _naive_loop(path, seconds, embedder, MTCNN(keep_all=True))
    finally:
        torch.set_num_threads(ours)


def _naive_loop(path: Path, seconds: float, embedder: FaceEmbedder,
                mtcnn: Any) -> tuple[float, dict[str, float], int]:
    import av

    stage = {"decode": 0.0, "detect": 0.0, "embed": 0.0}
    faces = 0
    t_last = 0.0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        t0 = time.perf_counter()
        first_pts: int | None = None
        tb = stream.time_base or Fraction(1, 90000)
        for frame in container.decode(stream):
            if frame.pts is None:
                continue
            first_pts = frame.pts if first_pts is None else first_pts
            t_s = float((frame.pts - first_pts) * tb)
            if t_s >= seconds:
                break
            img = frame.to_ndarray(format="rgb24")
            stage["decode"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            boxes, probs = mtcnn.detect(img)
            stage["detect"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            if boxes is not None:
                dets = [FaceDetection(0, t_s, 0, (float(b[0]), float(b[1]), float(b[2]),
                                                  float(b[3])), float(p), (), 0.0)
                        for b, p in zip(boxes, probs, strict=True)]
                embedder.embed(img, dets, 1.0)
                faces += len(dets)
            stage["embed"] += time.perf_counter() - t0
            t_last = t_s
            t0 = time.perf_counter()
    rate = stream.average_rate
    frame_s = 1.0 / float(rate) if rate else 1.0 / CLIP_FPS
    return t_last + frame_s, stage, faces


def bench_clip(settings: Settings, path: Path, out: Console,
               torch_threads: int) -> ClipFigures:
    """Our pipeline on one whole clip, then the baseline on its first BASELINE_S seconds
    (with torch's default `torch_threads`)."""
    cfg = settings.pipeline
    info = probe(path, settings.limits)
    detector = Registry.detector(cfg)
    embedder = Registry.embedder(cfg)
    detector.load()
    embedder.load()
    # Warm-up outside the timings: first calls allocate and pick kernels.
    blank = np.zeros((info.height_px, info.width_px, 3), np.uint8)
    detector.detect([SampledFrame(0, 0, 0.0, 0, blank, 1.0)])
    out.print(f"{path.name}: {info.width_px}x{info.height_px} {float(info.frame_rate):.2f} fps "
              f"{info.duration_s:.1f} s: running the pipeline ...")
    t0 = time.perf_counter()
    result = analyze_chunk(path, info, 0.0, info.duration_s, cfg, detector, embedder)
    wall = time.perf_counter() - t0
    out.print(f"   ... {wall:.1f} s; now the naive baseline on the first {BASELINE_S:g} s ...")
    base_s, base_stage, base_faces = naive_baseline(path, min(BASELINE_S, info.duration_s),
                                                    embedder, torch_threads)
    return ClipFigures(
        name=path.name, info=info, wall_s=wall, stage_s=dict(result.stage_s),
        frames_decoded=result.frames_decoded, frames_sampled=result.frames_sampled,
        detections=len(result.detections),
        embedded=sum(1 for _k, d in result.detections if d.embedding is not None),
        tracks=len(result.tracks), base_video_s=base_s, base_stage_s=base_stage,
        base_faces=base_faces,
    )


def _markdown(facts: dict[str, str], figs: list[ClipFigures], embedder: str,
              settings: Settings) -> str:
    cfg = settings.pipeline
    lines = [
        MARK_START,
        "## Face pipeline (`make bench`)",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} with `bodycam bench`; embedder "
        f"`{embedder}`, pipeline defaults otherwise (sample_fps {cfg.sample_fps:g}, "
        f"min_face_px {cfg.min_face_px}, batch_size {cfg.batch_size}). The machine may be "
        "shared: compare figures from one run only.",
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + ".",
        "",
        "| clip | video s | wall s | x real time | decode+scenes s | detect s | embed s "
        "| track s | sampled / decoded frames | detections (embedded) | tracks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        st = f.stage_s
        lines.append(
            f"| {f.name} ({f.info.width_px}x{f.info.height_px}) | {f.info.duration_s:.1f} "
            f"| {f.wall_s:.1f} | {f.x_real_time:.2f} | {st.get('decode', 0):.1f} "
            f"| {st.get('detect', 0):.1f} | {st.get('embed', 0):.1f} | {st.get('track', 0):.2f} "
            f"| {f.frames_sampled} / {f.frames_decoded} | {f.detections} ({f.embedded}) "
            f"| {f.tracks} |")
    lines += [
        "",
        "Stage seconds are each stage's busy time (detection: summed over the batches it runs "
        "in parallel); the stages run in parallel, so they add up to more than the wall time.",
        "",
        f"Naive baseline (facenet-pytorch README: decode every frame, `MTCNN(keep_all=True)` "
        f"on every full-resolution frame, embed every face with `{embedder}`), timed on the "
        f"first {BASELINE_S:g} s of each clip and scaled per second of video:",
        "",
        "| clip | timed video s | decode s | detect s | embed s | faces | baseline s per video s "
        "| baseline whole clip s (est.) | pipeline speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for f in figs:
        b = f.base_stage_s
        lines.append(
            f"| {f.name} | {f.base_video_s:.2f} | {b['decode']:.1f} | {b['detect']:.1f} "
            f"| {b['embed']:.1f} | {f.base_faces} | {f.base_per_video_s:.1f} "
            f"| {f.base_total_s:.0f} | {f.ratio:.1f}x |")
    lines += ["", MARK_END]
    return "\n".join(lines)


def write_benchmarks(section: str, path: Path) -> None:
    """Replace (or append) only the pipeline section of BENCHMARKS.md."""
    replace_section(path, section, MARK_START, MARK_END)


def run_pipeline_bench(settings: Settings, testdata: str, clip_s: float, out: Console) -> None:
    """Benchmark the pipeline on a synthetic 720p30 clip and TESTDATA/video/facenet_example.mp4.

    Prints machine facts, per-stage seconds, speed as a multiple of real time and the
    speed-up over the naive baseline, and writes the same figures into BENCHMARKS.md at the
    repository root (between the pipeline-bench markers). Raises InvalidInputError when the
    test data or the clip generator is missing.
    """
    example = Path(testdata, "video", "facenet_example.mp4")
    if not example.exists():
        raise InvalidInputError(f"{example} not found: pass --testdata with the shared test data")
    facts = machine_facts()
    default_threads = int(facts["torch threads"])
    facts_table = Table(title="Machine")
    facts_table.add_column("fact")
    facts_table.add_column("value")
    for k, v in facts.items():
        facts_table.add_row(k, v)
    out.print(facts_table)
    clip = synthetic_clip(settings, testdata, clip_s, out)
    figs = [bench_clip(settings, p, out, default_threads) for p in (clip, example)]
    import torch

    detector = Registry.detector(settings.pipeline)
    facts["torch threads"] = (f"{default_threads} by default; the pipeline's detector runs"
                              f" {detector.concurrency} batches at a time with"
                              f" {torch.get_num_threads()} each")
    table = Table(title=f"Face pipeline (embedder {settings.pipeline.embedder})")
    for col in ("clip", "video s", "wall s", "x real time", "decode s", "detect s", "embed s",
                "track s", "embedded/dets", "tracks", "baseline s (est.)", "speed-up"):
        table.add_column(col)
    for f in figs:
        st = f.stage_s
        table.add_row(f.name, f"{f.info.duration_s:.1f}", f"{f.wall_s:.1f}",
                      f"{f.x_real_time:.2f}", f"{st['decode']:.1f}", f"{st['detect']:.1f}",
                      f"{st['embed']:.1f}", f"{st['track']:.2f}", f"{f.embedded}/{f.detections}",
                      str(f.tracks), f"{f.base_total_s:.0f}", f"{f.ratio:.1f}x")
    out.print(table)
    out.print(f"baseline timed on the first {BASELINE_S:g} s of each clip, scaled per second of "
              "video (decode every frame + MTCNN(keep_all=True) + embed every face)")
    section = _markdown(facts, figs, settings.pipeline.embedder, settings)
    target = REPO / "BENCHMARKS.md"
    write_benchmarks(section, target)
    out.print(f"wrote {target}")
