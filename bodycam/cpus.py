"""How many CPUs this process may use: the number its threads are sized by.

`os.cpu_count()` counts the machine's CPUs. A worker pinned to two of them (taskset, a cpuset)
or given a CPU limit (a container's `--cpus`, a Kubernetes pod's `limits.cpu`: a quota of the
cgroup) runs on far fewer, and threads sized by the machine then queue for the quota: a worker
limited to two CPUs on a 64-CPU host would run 32 torch threads and up to 42 FFmpeg frame
threads. So the count is the CPUs the process may run on, bounded by the smallest CPU quota of
its cgroup or of any cgroup above it (cgroup v2's `cpu.max`, v1's `cpu.cfs_quota_us`), rounded
up.
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path


@cache
def usable_cpus() -> int:
    """CPUs this process may use (at least 1); read once per process."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_quota(Path("/proc/self"))
    if quota is not None:
        n = min(n, math.ceil(quota))
    return max(1, n)


def cgroup_quota(proc: Path) -> float | None:
    """The smallest CPU quota (in CPUs, quota over period) on the process's cgroup path in any
    mounted cgroup hierarchy that controls CPU time; None when nothing limits it or nothing
    can be read."""
    try:
        groups = (proc / "cgroup").read_text().splitlines()
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    found: list[float] = []
    for line in mounts:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point, fstype = fields[3], _unescape(fields[4]), tail[0]
        if fstype == "cgroup2":
            path = _cgroup_path(groups, None)
        elif fstype == "cgroup" and "cpu" in tail[2].split(","):
            path = _cgroup_path(groups, "cpu")
        else:
            continue
        if path is None or not (path == root or path.startswith(root.rstrip("/") + "/")):
            continue
        top = Path(point)
        here = top / path[len(root):].lstrip("/")
        while True:
            limit = _limit(here, fstype == "cgroup2")
            if limit is not None:
                found.append(limit)
            if here == top or top not in here.parents:
                break
            here = here.parent
    return min(found) if found else None


def _cgroup_path(groups: list[str], controller: str | None) -> str | None:
    """The process's path in cgroup v2 (controller None) or in the v1 hierarchy that holds
    `controller`, from its /proc/PID/cgroup lines (`ID:CONTROLLERS:PATH`)."""
    for line in groups:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, ctrl, path = parts
        if controller is None and hier == "0" and ctrl == "":
            return path
        if controller is not None and controller in ctrl.split(","):
            return path
    return None


def _limit(folder: Path, v2: bool) -> float | None:
    """The quota of one cgroup folder in CPUs; None when unlimited or unreadable."""
    try:
        if v2:  # "QUOTA PERIOD", QUOTA "max" when unlimited
            quota, period = [*(folder / "cpu.max").read_text().split(), "", ""][:2]
        else:  # a quota of -1 when unlimited
            quota = (folder / "cpu.cfs_quota_us").read_text().strip()
            period = (folder / "cpu.cfs_period_us").read_text().strip()
        q, p = int(quota), int(period)
    except (OSError, ValueError):
        return None
    return q / p if q > 0 and p > 0 else None


def _unescape(field: str) -> str:
    """A mountinfo path field: spaces, tabs, newlines and backslashes come octal-escaped."""
    for code, ch in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, ch)
    return field
