"""GPU worker benchmark (issue 14): the pipeline's own stages on one clip, on an explicit device.

Measures, on `--device cuda` (or the CPU fallback of the same code):

- decode: PyAV through the pipeline's ChunkDecoder, on the CPU or on the GPU's decoder (NVDEC,
  `--decode-device cuda`; frames copied back to the host); every frame decoded, as H.264
  requires, scene cuts on a small copy, only the sampled frames converted to RGB;
- detect: the pipeline's MtcnnDetector (our batched MtcnnCascade) on those sampled frames,
  `batch_size` frames per call, the networks on the chosen device;
- embed: FacenetEmbedder on every face found (fp16 on CUDA, fp32 on CPU), one call per
  detection batch (the faces of its frames), as the pipeline calls it; with random weights
  unless FaceNet's weights are configured (BODYCAM_PIPELINE__FACENET_WEIGHTS): speed does
  not depend on the weights' values;
- end to end: `analyze_chunk`, the pipeline itself, on the clip as separate work units,
  1 or more at a time in one process sharing the device (as a GPU worker with several chunks
  in hand would), reported as seconds of video per second of wall time (x real time).

Each stage's host CPU is reported too, and from it the most x real time the host's cores
allow were the device never the limit: on the first GPU run the host, not the GPU, was what
stopped more worker processes from helping.

Each stage alone is timed in one thread and reported as frames/s and as the x real time it
could sustain by itself. The device, its name and the embedder's dtype are recorded with
every report. Run on a GPU machine with `sh infra/bench-gpu.sh` (see BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bodycam.benchmarks_md import replace_section
from bodycam.config import PipelineSettings, Settings
from bodycam.domain import FaceDetection, MediaInfo, SampledFrame
from bodycam.errors import ModelUnavailableError
from bodycam.media.probe import probe
from bodycam.pipeline.analyze import analyze_chunk
from bodycam.pipeline.faces import FacenetEmbedder, MtcnnDetector, Registry, torch_device
from bodycam.pipeline.frames import ChunkDecoder

MD_START = "<!-- gpu-bench:start -->"
MD_END = "<!-- gpu-bench:end -->"
REPO = Path(__file__).resolve().parent.parent
TARGET_X_REAL_TIME = 150.0  # per GPU on 1080p30 (issue 14)


def _sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer read after it counts it."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _repeat(fn: Callable[[], Any], device: str, min_s: float
            ) -> tuple[float, float, int, Any]:
    """Run fn until at least min_s seconds have passed (at least once).

    Returns (seconds per round, host CPU seconds per round, rounds, the last round's
    result). The CPU is this process's, every thread of it (torch's and OpenCV's pools,
    FFmpeg's decoding threads): what the stage costs the host's cores."""
    rounds, total, cpu, result = 0, 0.0, 0.0, None
    while rounds == 0 or total < min_s:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        _sync(device)
        total += time.perf_counter() - t0
        cpu += time.process_time() - c0
        rounds += 1
    return total / rounds, cpu / rounds, rounds, result


def device_name(device: str) -> str:
    """The GPU's name from torch, or the CPU's model name."""
    if device == "cuda":
        import torch

        return str(torch.cuda.get_device_name(0))
    from bodycam.bench import machine_facts

    return f"{machine_facts()['CPU']} ({os.cpu_count()} cores)"


def make_models(cfg: PipelineSettings) -> tuple[MtcnnDetector, FacenetEmbedder, str]:
    """The pipeline's detector and FaceNet embedder on cfg.device, loaded (not warmed up).

    FaceNet with the configured vggface2 file when there is one, else with random weights.
    Returns them with a note on the embedder's weights."""
    detector = Registry.detector(cfg)
    assert isinstance(detector, MtcnnDetector)
    if cfg.facenet_weights is not None:
        emb = Registry.embedder(cfg)
        assert isinstance(emb, FacenetEmbedder)
        embedder, weights = emb, f"vggface2 weights (SHA-256 {emb.weights_sha256[:12]}...)"
    else:
        embedder = FacenetEmbedder.untrained(cfg)
        weights = ("random weights (no vggface2 file configured: it cannot travel to a GPU "
                   "machine that downloads nothing); speed does not depend on the weights' "
                   "values, the vectors identify nobody")
    detector.load()
    embedder.load()
    return detector, embedder, weights


def warm_up(detector: MtcnnDetector, embedder: FacenetEmbedder, info: MediaInfo,
            cfg: PipelineSettings) -> None:
    """First calls allocate memory and pick kernels: keep them out of the timings."""
    scale = min(1.0, cfg.max_frame_side_px / max(info.width_px, info.height_px))
    h, w = round(info.height_px * scale / 2) * 2, round(info.width_px * scale / 2) * 2
    rng = np.random.default_rng(0)
    frames = [SampledFrame(i, i, 0.0, 0, rng.integers(0, 255, (h, w, 3), np.uint8), scale)
              for i in range(cfg.batch_size)]
    detector.detect(frames[:1])
    detector.detect(frames)
    face = FaceDetection(0, 0.0, 0, (10.0, 10.0, 110.0, 130.0), 0.99, (), 0.0)
    for n in (1, 4, 16, 32):
        embedder.embed(frames[0].image, [face] * n, scale)


def measure_stages(path: Path, info: MediaInfo, cfg: PipelineSettings, detector: MtcnnDetector,
                   embedder: FacenetEmbedder, device: str, min_s: float) -> dict[str, Any]:
    """Each stage alone, one thread, over the whole clip; each repeated for at least min_s."""
    video_s = info.duration_s

    def decode() -> tuple[list[SampledFrame], int, str]:
        dec = ChunkDecoder(path, info, 0.0, info.duration_s, cfg)
        return list(dec), dec.frames_decoded, dec.decoded_on

    dec_s, dec_cpu, dec_rounds, (frames, decoded, decoded_on) = _repeat(decode, device, min_s)

    def detect() -> list[list[FaceDetection]]:
        out: list[list[FaceDetection]] = []
        for i in range(0, len(frames), cfg.batch_size):
            out += detector.detect(frames[i:i + cfg.batch_size])
        return out

    det_s, det_cpu, det_rounds, found = _repeat(detect, device, min_s)
    with_faces = [(f, d) for f, d in zip(frames, found, strict=True) if d]
    n_faces = sum(len(d) for _f, d in with_faces)

    def embed() -> int:
        n = 0
        for i in range(0, len(frames), cfg.batch_size):
            part = [(f.image, d, f.scale) for f, d in zip(frames[i:i + cfg.batch_size],
                                                          found[i:i + cfg.batch_size],
                                                          strict=True) if d]
            if part:
                n += sum(len(v) for v in embedder.embed_frames(part))
        return n

    emb_s, emb_cpu, emb_rounds, _ = _repeat(embed, device, min_s)

    def rate(n: float, s: float) -> float:
        return n / s if s > 0 else 0.0

    return {
        "decode": {"decoded_on": decoded_on, "frames": decoded, "sampled": len(frames),
                   "seconds": dec_s, "cpu_s": dec_cpu,
                   "rounds": dec_rounds, "frames_per_s": rate(decoded, dec_s),
                   "x_real_time": rate(video_s, dec_s)},
        "detect": {"frames": len(frames), "faces": n_faces, "frames_with_faces": len(with_faces),
                   "seconds": det_s, "cpu_s": det_cpu, "rounds": det_rounds,
                   "frames_per_s": rate(len(frames), det_s),
                   "x_real_time": rate(video_s, det_s)},
        "embed": {"faces": n_faces, "frames": len(with_faces), "seconds": emb_s,
                  "cpu_s": emb_cpu, "rounds": emb_rounds, "faces_per_s": rate(n_faces, emb_s),
                  "frames_per_s": rate(len(with_faces), emb_s),
                  "x_real_time": rate(video_s, emb_s)},
    }


def host_ceiling(stages: dict[str, Any], video_s: float, cores: int) -> float:
    """The most x real time the host's cores allow at the stages' CPU cost (each stage's
    host CPU seconds per second of video, summed), were the device never the limit: where a
    GPU worker's host stops scaling however many processes share the GPU."""
    cpu = sum(stages[k].get("cpu_s", 0.0) for k in ("decode", "detect", "embed"))
    return cores * video_s / cpu if cpu > 0 else 0.0


def measure_end_to_end(path: Path, info: MediaInfo, cfg: PipelineSettings,
                       detector: MtcnnDetector, embedder: FacenetEmbedder, device: str,
                       chunks: int, seconds: float, budget_s: float) -> dict[str, Any]:
    """analyze_chunk over the clip as ceil(seconds / duration) work units, `chunks` at a time.

    No unit starts after budget_s seconds: the figure is then over the units that ran."""
    units = max(1, math.ceil(seconds / info.duration_s - 1e-9))
    lock = threading.Lock()
    todo = [units]
    results: list[Any] = []
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    deadline = t0 + budget_s

    def worker() -> None:
        while True:
            with lock:
                if todo[0] <= 0 or (results and time.perf_counter() > deadline):
                    return
                todo[0] -= 1
            res = analyze_chunk(path, info, 0.0, info.duration_s, cfg, detector, embedder)
            with lock:
                results.append(res)

    with ThreadPoolExecutor(max_workers=chunks, thread_name_prefix="chunk") as pool:
        for fut in [pool.submit(worker) for _ in range(chunks)]:
            fut.result()
    _sync(device)
    wall = time.perf_counter() - t0
    out: dict[str, Any] = {"processes": 1, "chunks": chunks, "wall_s": wall,
                           **_summary(results, info), "cpu_s": time.process_time() - c0}
    out["x_real_time"] = out["video_s"] / wall if wall > 0 else 0.0
    return out


def _process_worker(video: str, cfg_json: str, units: Any, deadline: Any, ready: Any,
                    start: Any, results: Any) -> None:
    """One worker process (as one `--pool solo` GPU worker): its own models, units one at a time.

    Runs in a spawned process (CUDA cannot be forked): loads and warms up, says it is ready,
    waits for the start, then takes units from the shared counter until none are left or the
    deadline has passed; puts one summary (plain numbers) on `results`.
    """
    try:
        cfg = PipelineSettings.model_validate_json(cfg_json)
        path = Path(video)
        info = probe(path, Settings().limits)
        detector, embedder, _w = make_models(cfg)
        warm_up(detector, embedder, info, cfg)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        ready.put(f"{type(exc).__name__}: {exc}")
        return
    ready.put("")
    start.wait()
    c0 = time.process_time()
    done: list[Any] = []
    while True:
        with units.get_lock():
            if units.value <= 0 or (done and time.time() > deadline.value):
                break
            units.value -= 1
        done.append(analyze_chunk(path, info, 0.0, info.duration_s, cfg, detector, embedder))
    _sync(cfg.device)
    results.put({**_summary(done, info), "cpu_s": time.process_time() - c0})


def _summary(results: Sequence[Any], info: MediaInfo) -> dict[str, Any]:
    """Plain counts over finished ChunkResults."""
    stage_s: dict[str, float] = {}
    for r in results:
        for k, v in r.stage_s.items():
            stage_s[k] = stage_s.get(k, 0.0) + v
    return {
        "units": len(results), "video_s": len(results) * info.duration_s,
        "frames_decoded": sum(r.frames_decoded for r in results),
        "frames_sampled": sum(r.frames_sampled for r in results),
        "detections": sum(len(r.detections) for r in results),
        "embedded": sum(1 for r in results for _k, d in r.detections if d.embedding is not None),
        "tracks": sum(len(r.tracks) for r in results),
        "stage_busy_s": stage_s,
    }


def measure_processes(path: Path, info: MediaInfo, cfg: PipelineSettings, processes: int,
                      seconds: float, budget_s: float) -> dict[str, Any]:
    """analyze_chunk over the clip as work units in `processes` worker processes sharing the
    device, each one unit at a time (the deployment: several `--pool solo` GPU workers on one
    host). Timed from a common start once every process has loaded its models."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    units = ctx.Value("i", max(1, math.ceil(seconds / info.duration_s - 1e-9)))
    deadline = ctx.Value("d", 0.0)
    ready, results = ctx.Queue(), ctx.Queue()
    start = ctx.Event()
    procs = [ctx.Process(target=_process_worker, daemon=True,
                         args=(str(path), cfg.model_dump_json(), units, deadline, ready, start,
                               results)) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        errors = [e for e in (ready.get(timeout=180) for _ in procs) if e]
        if errors:
            raise RuntimeError(f"a worker process failed to start: {errors[0]}")
        t0 = time.perf_counter()
        deadline.value = time.time() + budget_s
        start.set()
        parts = [results.get(timeout=budget_s + 900) for _ in procs]
        wall = time.perf_counter() - t0
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    out: dict[str, Any] = {"processes": processes, "chunks": 1, "wall_s": wall}
    for k in ("units", "video_s", "frames_decoded", "frames_sampled", "detections", "embedded",
              "tracks", "cpu_s"):
        out[k] = sum(part[k] for part in parts)
    out["stage_busy_s"] = {k: sum(part["stage_busy_s"].get(k, 0.0) for part in parts)
                           for k in ("decode", "detect", "embed", "track")}
    out["x_real_time"] = out["video_s"] / wall if wall > 0 else 0.0
    return out


def run_bench(video: Path, device: str, seconds: float, chunks: Sequence[int],
              batch_size: int | None = None, processes: Sequence[int] = (),
              decode_device: str | None = None,
              min_stage_s: float = 2.0,
              budget_s: float = 120.0, settings: Settings | None = None,
              log: Callable[[str], None] = print,
              save: Callable[[dict[str, Any]], None] = lambda _r: None) -> dict[str, Any]:
    """The whole benchmark on one clip; returns the report (plain JSON types).

    device: 'auto', 'cpu' or 'cuda' ('cuda' without a GPU raises ModelUnavailableError).
    decode_device: 'cpu' or 'cuda' (NVDEC where usable, else the CPU; the report says which
    decoded); None: the configured one.
    seconds: video seconds through the end-to-end pipeline per `chunks` or `processes` setting.
    chunks: work units at a time in this process (threads), one end-to-end run each.
    processes: worker processes (each one unit at a time), one end-to-end run each.
    save: called with the report so far after the stages and after each end-to-end run, so
    that a run cut short by a time limit still leaves its figures.
    """
    import torch

    settings = settings or Settings()
    load_before = round(os.getloadavg()[0], 2)
    chosen = torch_device(device)
    update: dict[str, Any] = {"device": chosen, "embedder": "facenet-vggface2"}
    if batch_size:
        update["batch_size"] = batch_size
    if decode_device:
        update["decode_device"] = decode_device
    cfg = settings.pipeline.model_copy(update=update)
    info = probe(video, settings.limits)
    name = device_name(chosen)
    log(f"device {chosen} ({name}); {video.name}: "
        f"{info.width_px}x{info.height_px} {float(info.frame_rate):.2f} fps "
        f"{info.duration_s:.1f} s")
    t0 = time.perf_counter()
    detector, embedder, weights = make_models(cfg)
    warm_up(detector, embedder, info, cfg)
    log(f"models loaded and warmed up in {time.perf_counter() - t0:.1f} s; stages alone ...")
    stages = measure_stages(video, info, cfg, detector, embedder, chosen, min_stage_s)
    log(f"  decoding on {stages['decode']['decoded_on']}")
    for k, v in stages.items():
        log(f"  {k}: {v.get('frames_per_s', 0):.1f} frames/s, {v['x_real_time']:.1f}x real time, "
            f"host CPU {v['cpu_s']:.2f} s")
    ceiling = host_ceiling(stages, info.duration_s, os.cpu_count() or 1)
    log(f"  the host's {os.cpu_count()} cores allow at most {ceiling:.1f}x real time")
    e2e: list[dict[str, Any]] = []
    report = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": chosen, "device_name": name,
        "torch": torch.__version__, "cuda": torch.version.cuda if chosen == "cuda" else None,
        "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg_before": load_before,
        "video": {"name": video.name, "width_px": info.width_px, "height_px": info.height_px,
                  "fps": float(info.frame_rate), "duration_s": info.duration_s},
        "decode_device": stages["decode"]["decoded_on"],
        "config": {"sample_fps": cfg.sample_fps, "batch_size": cfg.batch_size,
                   "max_frame_side_px": cfg.max_frame_side_px, "min_face_px": cfg.min_face_px,
                   "min_stage_s": min_stage_s, "budget_s": budget_s},
        "detector": {"name": detector.name, "version": detector.version},
        "embedder": {"name": embedder.name, "version": embedder.version,
                     "dtype": embedder.dtype, "weights": weights},
        "stages": stages, "host_ceiling_x_real_time": ceiling,
        "end_to_end": e2e, "best_x_real_time": 0.0,
        "target_x_real_time": TARGET_X_REAL_TIME,
    }
    save(report)
    for n in chunks:
        log(f"end to end, {n} work unit(s) at a time, {seconds:g} s of video ...")
        e2e.append(measure_end_to_end(video, info, cfg, detector, embedder, chosen, n,
                                      seconds, budget_s))
        report["best_x_real_time"] = max(r["x_real_time"] for r in e2e)
        log(f"  {e2e[-1]['x_real_time']:.1f}x real time ({e2e[-1]['video_s']:.0f} s of video "
            f"in {e2e[-1]['wall_s']:.1f} s)")
        save(report)
    for n in processes:
        log(f"end to end, {n} worker processes, one unit at a time each, {seconds:g} s of "
            "video ...")
        e2e.append(measure_processes(video, info, cfg, n, seconds, budget_s))
        report["best_x_real_time"] = max(r["x_real_time"] for r in e2e)
        log(f"  {e2e[-1]['x_real_time']:.1f}x real time ({e2e[-1]['video_s']:.0f} s of video "
            f"in {e2e[-1]['wall_s']:.1f} s)")
        save(report)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The gpu-bench section of BENCHMARKS.md, markers included."""
    v, st, cfg = report["video"], report["stages"], report["config"]
    decoder = ("NVDEC on the GPU, frames copied to the host"
               if report.get("decode_device") == "cuda" else "PyAV on the host CPU")
    lines = [
        MD_START,
        "## GPU worker (`sh infra/bench-gpu.sh`)",
        "",
        f"Measured {report['measured_at']} with `python -m bodycam.bench_gpu` on device "
        f"**{report['device']}** ({report['device_name']}; torch {report['torch']}"
        + (f", CUDA {report['cuda']}" if report.get("cuda") else "") + "). "
        f"Clip `{v['name']}`: {v['width_px']}x{v['height_px']} at {v['fps']:.2f} fps, "
        f"{v['duration_s']:.1f} s. Sample rate {cfg['sample_fps']:g} fps, batch size "
        f"{cfg['batch_size']}, min face {cfg['min_face_px']} px. Embedder "
        f"`{report['embedder']['name']}` in {report['embedder']['dtype']}, "
        f"{report['embedder']['weights']}. {report['cores']} cores, load average "
        f"{report.get('load_avg_before', 'unrecorded')} before the run.",
        "",
        "Reproduce: `make bench-gpu-prepare` on a machine with PyPI (the wheels the GPU "
        "machine lacks and the clip into .gpubench/), then on the GPU machine, from the "
        "repository root with .gpubench/ beside it: `sh infra/bench-gpu.sh` (report into "
        "$OUT, under 8 minutes); bring "
        "gpu-bench.json back and `python -m bodycam.bench_gpu --from-report gpu-bench.json "
        "--benchmarks`.",
        "",
    ]
    if report["device"] != "cuda":
        lines += [
            "**The GPU figures are unmeasured: no GPU was available to this run.** These are "
            "the CPU fallback of the same code.",
            "",
        ]
    lines += [
        f"Each stage alone (one thread, the whole clip, repeated until it ran at least "
        f"{cfg['min_stage_s']:g} s; x real time alone: the clip's seconds over the stage's):",
        "",
        "| stage | work | seconds | host CPU s | frames/s | x real time alone |",
        "|---|---|---:|---:|---:|---:|",
        f"| decode ({decoder}, scene cuts, sampled frames to RGB) | "
        f"{st['decode']['frames']} frames ({st['decode']['sampled']} sampled) | "
        f"{st['decode']['seconds']:.2f} | {_num(st['decode'].get('cpu_s'))} | "
        f"{st['decode']['frames_per_s']:.1f} | {st['decode']['x_real_time']:.1f} |",
        f"| detect (batched MTCNN) | {st['detect']['frames']} sampled frames, "
        f"{st['detect']['faces']} faces | {st['detect']['seconds']:.2f} | "
        f"{_num(st['detect'].get('cpu_s'))} | "
        f"{st['detect']['frames_per_s']:.1f} | {st['detect']['x_real_time']:.1f} |",
        f"| embed (FaceNet, every face) | {st['embed']['faces']} faces in "
        f"{st['embed']['frames']} frames ({st['embed']['faces_per_s']:.1f} faces/s) | "
        f"{st['embed']['seconds']:.2f} | {_num(st['embed'].get('cpu_s'))} | "
        f"{st['embed']['frames_per_s']:.1f} | {st['embed']['x_real_time']:.1f} |",
        "",
    ]
    if report.get("host_ceiling_x_real_time"):
        lines += [
            f"Host CPU: every thread of the process (torch's, OpenCV's and FFmpeg's) over one "
            f"round. At these costs the host's {report['cores']} cores allow at most "
            f"**{report['host_ceiling_x_real_time']:.1f}x real time**, however many worker "
            "processes share the device.",
            "",
        ]
    lines += [
        "End to end (`analyze_chunk`, the pipeline itself; the clip as separate work units, "
        "sharing the device: N at a time in one process (threads), or N worker processes "
        "taking one at a time each, as several `--pool solo` GPU workers on one host would; "
        "host cores busy: the CPU seconds of those processes over the wall time):",
        "",
        "| processes x units at a time | units | video s | wall s | x real time "
        "| host cores busy | detections (embedded) | tracks |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in report["end_to_end"]:
        busy = r["cpu_s"] / r["wall_s"] if "cpu_s" in r and r["wall_s"] > 0 else None
        lines.append(f"| {r.get('processes', 1)} x {r['chunks']} | {r['units']} "
                     f"| {r['video_s']:.0f} | {r['wall_s']:.1f} | {r['x_real_time']:.1f} "
                     f"| {_num(busy, 1)} | {r['detections']} ({r['embedded']}) "
                     f"| {r['tracks']} |")
    lines += [
        "",
        f"Best: **{report['best_x_real_time']:.1f}x real time** on this device; target "
        f"{report['target_x_real_time']:g}x per GPU on 1080p30.",
        "",
        MD_END,
    ]
    return "\n".join(lines)


def _num(value: float | None, digits: int = 2) -> str:
    """A figure for a table, or "n/a" where a report from before it was measured lacks it."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run the benchmark, print the figures, write JSON (and BENCHMARKS.md)."""
    ap = argparse.ArgumentParser(prog="python -m bodycam.bench_gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--video", type=Path, default=None, help="the clip (e.g. 1080p30)")
    ap.add_argument("--seconds", type=float, default=120.0,
                    help="video seconds through the end-to-end run, per --chunks setting")
    ap.add_argument("--chunks", default="1",
                    help="work units at a time in the end-to-end run, comma list, e.g. 1,4,8")
    ap.add_argument("--processes", default="",
                    help="worker processes in further end-to-end runs, comma list, e.g. 2,4")
    ap.add_argument("--decode-device", choices=("cpu", "cuda"), default=None,
                    help="where video is decoded (default: the configured decode_device)")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="frames per detection batch (default: the configured one)")
    ap.add_argument("--min-stage-s", type=float, default=2.0,
                    help="repeat each stage alone until it ran this long")
    ap.add_argument("--budget-s", type=float, default=120.0,
                    help="start no new work unit after this long in one end-to-end run")
    ap.add_argument("--out", type=Path, default=Path("gpu-bench.json"))
    ap.add_argument("--benchmarks", nargs="?", const=REPO / "BENCHMARKS.md", type=Path,
                    default=None, help="write the section into BENCHMARKS.md (or FILE)")
    ap.add_argument("--from-report", type=Path, default=None, metavar="JSON",
                    help="only write the BENCHMARKS.md section of a saved report (e.g. one "
                         "brought back from a GPU machine)")
    args = ap.parse_args(argv)
    if args.from_report is not None:
        section = markdown(json.loads(args.from_report.read_text()))
        target = args.benchmarks or REPO / "BENCHMARKS.md"
        replace_section(target, section, MD_START, MD_END)
        print(f"wrote {target}")
        return 0
    if args.video is None or not args.video.exists():
        print(f"{args.video} not found: `make bench-gpu-prepare` makes the 1080p30 clip",
              file=sys.stderr)
        return 2
    chunks = [int(c) for c in str(args.chunks).split(",") if c.strip()]
    processes = [int(c) for c in str(args.processes).split(",") if c.strip()]
    def save(report: dict[str, Any]) -> None:
        tmp = args.out.with_name(args.out.name + ".part")
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        tmp.replace(args.out)

    try:
        report = run_bench(args.video, args.device, args.seconds, chunks, args.batch_size,
                           processes, args.decode_device, args.min_stage_s, args.budget_s,
                           save=save)
    except ModelUnavailableError as exc:
        print(f"bench-gpu: {exc}", file=sys.stderr)
        return 2
    section = markdown(report)
    print(section)
    print(f"wrote {args.out}")
    if args.benchmarks is not None:
        replace_section(args.benchmarks, section, MD_START, MD_END)
        print(f"wrote {args.benchmarks}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
