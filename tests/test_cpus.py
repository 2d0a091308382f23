"""Threads are sized by the CPUs a worker may use (affinity, a cgroup's CPU quota), not by the
machine's count: a container or pod limited to two CPUs of a large host must not run dozens."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from imageio_ffmpeg import get_ffmpeg_exe

from bodycam.cpus import cgroup_quota
from tests.conftest import REPO

CPU_V1 = Path("/sys/fs/cgroup/cpu")
# What a worker sizes: the count, the detector's parallel batches and torch's threads once it
# loads, FFmpeg's frame threads for a 1080p stream.
PROBE = """
import av, torch
from bodycam.config import PipelineSettings
from bodycam.cpus import usable_cpus
from bodycam.media.source import frame_threads
from bodycam.pipeline.faces import MtcnnDetector
detector = MtcnnDetector(PipelineSettings(device="cpu"))
detector.load()
out = av.open("{clip}")
stream = out.streams.video[0]
frame_threads(stream)
print(usable_cpus(), detector.concurrency, torch.get_num_threads(),
      stream.codec_context.thread_count)
"""


def _proc(tmp: Path, cgroup: str, mountinfo: str) -> Path:
    proc = tmp / "proc"
    proc.mkdir(parents=True)
    (proc / "cgroup").write_text(cgroup)
    (proc / "mountinfo").write_text(mountinfo)
    return proc


def test_the_smallest_quota_on_the_path_counts_in_v2_with_a_namespaced_root(tmp_path: Path
                                                                            ) -> None:
    # the pod's cgroup /kubepods/pod is mounted as the root (a cgroup namespace); the worker
    # runs in a child of it
    fs = tmp_path / "fs"
    (fs / "worker").mkdir(parents=True)
    (fs / "cpu.max").write_text("150000 100000\n")  # the pod's limit: 1.5 CPUs
    (fs / "worker" / "cpu.max").write_text("max 100000\n")
    mount = ("30 25 0:26 /other /sys/x rw - cgroup2 cgroup2 rw\n"
             f"31 25 0:27 /kubepods/pod {fs} rw - cgroup2 c rw\n")
    proc = _proc(tmp_path, "0::/kubepods/pod/worker\n", mount)
    assert cgroup_quota(proc) == 1.5
    (fs / "worker" / "cpu.max").write_text("50000 100000\n")
    assert cgroup_quota(proc) == 0.5, "the smallest on the path"
    for f in (fs / "cpu.max", fs / "worker" / "cpu.max"):
        f.write_text("max 100000\n")
    assert cgroup_quota(proc) is None, "no quota anywhere on the path"


def test_v1_reads_the_cpu_hierarchy_and_ignores_others(tmp_path: Path) -> None:
    cpu, acct = tmp_path / "cpu dir", tmp_path / "acct"
    for d in (cpu / "a", acct / "a"):
        d.mkdir(parents=True)
    (cpu / "a" / "cpu.cfs_quota_us").write_text("200000\n")
    (cpu / "a" / "cpu.cfs_period_us").write_text("100000\n")
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (acct / "a" / "cpu.cfs_quota_us").write_text("10000\n")  # not a cpu hierarchy: ignored
    (acct / "a" / "cpu.cfs_period_us").write_text("100000\n")
    escaped = str(cpu).replace(" ", "\\040")
    mount = (f"40 25 0:30 / {escaped} rw - cgroup cgroup rw,cpu,cpuacct\n"
             f"41 25 0:31 / {acct} rw - cgroup cgroup rw,cpuacct\n")
    proc = _proc(tmp_path, "3:cpuacct:/a\n2:cpu,cpuacct:/a\n", mount)
    assert cgroup_quota(proc) == 2.0
    assert cgroup_quota(_proc(tmp_path / "x", "2:cpu,cpuacct:/a\n", "garbage\n")) is None


@pytest.fixture
def limited_cgroup() -> Iterator[Path]:
    """A real cgroup (v1 cpu hierarchy) allowing one CPU; removed afterwards."""
    if os.geteuid() != 0 or not (CPU_V1 / "cpu.cfs_quota_us").exists():
        pytest.skip("needs root and a cgroup v1 cpu hierarchy at /sys/fs/cgroup/cpu")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: a quota of one could not lower the count")
    group = CPU_V1 / f"bodycam-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text("100000")
        (group / "cpu.cfs_quota_us").write_text("100000")
        yield group
    finally:
        group.rmdir()


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    """A short 1080p H.264 clip."""
    out = tmp_path / "hd.mp4"
    subprocess.run([get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=s=1920x1080:r=30", "-t", "0.2", "-pix_fmt", "yuv420p", str(out)],
                   check=True, timeout=60)
    return out


def _sizes(clip: Path, prefix: list[str], group: Path | None = None) -> list[int]:
    code = PROBE.format(clip=clip)
    if group is not None:  # the child joins the cgroup before Python starts
        prefix = ["sh", "-c", f'echo $$ > "{group}/cgroup.procs" && exec "$@"', "sh", *prefix]
    proc = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return [int(x) for x in proc.stdout.split()]


def test_a_worker_in_a_one_cpu_cgroup_runs_one_thread_each(limited_cgroup: Path,
                                                           clip: Path) -> None:
    free = _sizes(clip, [])
    assert free[0] == len(os.sched_getaffinity(0)) >= 2 and free[1] >= 2 and free[3] >= 2, free
    assert _sizes(clip, [], limited_cgroup) == [1, 1, 1, 1]


def test_a_worker_pinned_to_one_cpu_runs_one_thread_each(clip: Path) -> None:
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs taskset and two CPUs")
    assert _sizes(clip, ["taskset", "-c", "0"]) == [1, 1, 1, 1]
