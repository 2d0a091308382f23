"""Fault injection while a corpus of generated clips is processed (`python -m bodycam.faults`).

Starts an embedded stack of its own in a temporary home (loopback only; it signals only the
processes that stack started, and the Postgres backends of its own application role), processes
every clip once without faults for reference, then processes the corpus again in other cases
while it injects faults one at a time into work in flight:

- kill-worker: SIGKILL of the worker holding a running unit, then `bodycam up` restarts it as a
  process supervisor (systemd, compose `restart:`) would;
- stop-past-lease: SIGSTOP of that worker for longer than its lease, then SIGCONT;
- term-worker: SIGTERM (warm shutdown) of that worker, then `bodycam up`;
- kill-pg-backend: pg_terminate_backend of every connection of the application role;
- restart-redis / restart-s3 / restart-postgres: SIGKILL of Redis / SeaweedFS / the Postgres
  postmaster, then `bodycam up`;
- pause-postgres / pause-redis / pause-s3: SIGSTOP of that service's whole process group (a
  paused VM or container) for longer than a lease, then SIGCONT; nothing is restarted.

A fault's recovery time runs from the fault until every unit that was running when it struck
is done. The run passes when every video ends `done` without a manual retry, each video's tracks
equal those of its fault-free run, no row is duplicated, no unit is left running, every worker
is alive and the audit log verifies. Prints a JSON report; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bodycam.db import APP_ROLE, WORKER_ROLE
from bodycam.evaluate import generator

KINDS = ("kill-worker", "stop-past-lease", "term-worker", "kill-pg-backend", "restart-redis",
         "restart-s3", "restart-postgres", "pause-postgres", "pause-redis", "pause-s3")
# Short leases make recovery observable in minutes; the heartbeat keeps a 5x margin.
STACK_ENV = {
    "BODYCAM_PIPELINE__EMBEDDER": "dlib-resnet",
    "BODYCAM_JOBS__LEASE_S": "12",
    "BODYCAM_JOBS__HEARTBEAT_S": "2",
    "BODYCAM_JOBS__REAP_INTERVAL_S": "1",
    "BODYCAM_JOBS__RECONCILE_INTERVAL_S": "5",
    "BODYCAM_JOBS__CHUNK_S": "20",
    "BODYCAM_GPU_WORKERS": "2",
    "BODYCAM_CPU_WORKERS": "1",
}
EXTERNAL = ("BODYCAM_DATABASE_URL", "BODYCAM_S3_ENDPOINT_URL", "BODYCAM_REDIS_URL",
            "BODYCAM_API_URL")
RECOVERY_LIMIT_S = 300.0


@dataclass
class Fault:
    """One injected fault and how long the stack took to get over it."""

    kind: str
    target: str
    at_s: float
    recovery_s: float | None = None
    units: list[str] = field(default_factory=list)


class FaultRun:
    """A private embedded stack, a corpus of clips, and the faults injected into its work."""

    def __init__(self, home: Path, testdata: Path, seed: int,
                 pause_s: float | None = None) -> None:
        self.home = home
        # How long a paused process stays stopped: past a lease by default.
        self.pause_s = pause_s or float(STACK_ENV["BODYCAM_JOBS__LEASE_S"]) + 4
        self.testdata = testdata
        self.rng = random.Random(seed)
        self.seed = seed
        env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
        env.update(STACK_ENV)
        env["BODYCAM_HOME"] = str(home)
        bin_dir = str(Path(sys.executable).parent)
        env["PATH"] = f"{bin_dir}:{env.get('PATH', '')}"
        self.env = env
        self.t0 = time.monotonic()
        self.hit: set[str] = set()
        self.clips: list[Path] = []
        self.videos: dict[str, Path] = {}  # video id -> its clip, for the faulted rounds
        self.rounds = 0

    # --- the stack ---------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 600, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        """Run `bodycam ARGS` against this run's stack."""
        proc = subprocess.run([sys.executable, "-m", "bodycam", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise RuntimeError(f"bodycam {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def state(self) -> dict[str, Any]:
        """The stack's recorded non-secret state (ports, URLs without passwords, processes)."""
        loaded: dict[str, Any] = json.loads((self.home / "stack.json").read_text())
        return loaded

    def pid(self, name: str) -> int:
        """The pid of a process the stack started, by its name."""
        for p in self.state()["processes"]:
            if p["name"] == name:
                return int(p["pid"])
        raise KeyError(name)

    @contextmanager
    def db(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A superuser connection to this run's database (read-mostly checks)."""
        from bodycam.services import home_admin_url

        with psycopg.connect(home_admin_url(self.home), row_factory=dict_row,
                             autocommit=True, connect_timeout=10) as conn:
            yield conn

    def up(self) -> None:
        """Start what is missing, as a supervisor would after a process died."""
        self.cli("up", timeout=300)

    def down(self) -> None:
        """Stop every process of this run's stack."""
        self.cli("down", timeout=120, check=False)

    # --- work ------------------------------------------------------------------------------
    def make_corpus(self, n: int, duration_s: float, out: Path) -> list[Path]:
        """n seeded clips (720p, up to 3 people, tilted heads) with the shared generator."""
        tool = generator(self.testdata)
        clips = []
        for i in range(n):
            path = out / f"clip{i}.mp4"
            subprocess.run(
                [sys.executable, str(tool), "--out", str(path), "--seed",
                 str(self.seed * 100 + i), "--duration", str(duration_s), "--size", "1280x720",
                 "--max-people", "3", "--tilt", "15"],
                check=True, capture_output=True, timeout=600, env=self.env)
            clips.append(path)
        return clips

    def ingest(self, clip: Path, case: str) -> str:
        """Ingest a clip into a case; returns the video id."""
        out = self.cli("ingest", str(clip), "--case", case, "--officer", "O1", "--device", "D1",
                       "--json")
        return str(json.loads(out.stdout)[0]["video_id"])

    def statuses(self, video_ids: list[str]) -> dict[str, str]:
        """Each video's status."""
        with self.db() as conn:
            rows = conn.execute("SELECT id::text AS id, status FROM videos WHERE id = ANY(%s)",
                                (video_ids,)).fetchall()
        return {str(r["id"]): str(r["status"]) for r in rows}

    def wait_done(self, video_ids: list[str], timeout_s: float) -> dict[str, str]:
        """Wait until every video ends; returns the statuses."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.statuses(video_ids)
            if all(s in ("done", "failed", "quarantined") for s in st.values()) or \
                    time.monotonic() > deadline:
                return st
            time.sleep(1)

    def running_units(self) -> list[dict[str, Any]]:
        """Units in flight with some progress (a fault then lands mid-work)."""
        with self.db() as conn:
            return conn.execute(
                "SELECT video_id::text AS video_id, idx, lease_owner, progress FROM work_units"
                " WHERE state = 'running' AND lease_until > now() ORDER BY progress").fetchall()

    def unit_states(self, units: list[str]) -> dict[str, str]:
        """States of units named video_id/idx."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT video_id::text || '/' || idx AS u, state FROM work_units"
                " WHERE video_id::text || '/' || idx = ANY(%s)", (units,)).fetchall()
        return {str(r["u"]): str(r["state"]) for r in rows}

    # --- faults ----------------------------------------------------------------------------
    def _worker_of(self, owner: str) -> tuple[str, int]:
        pid = int(owner.rsplit(":", 1)[1])
        for p in self.state()["processes"]:
            if int(p["pid"]) == pid:
                return str(p["name"]), pid
        raise LookupError(f"lease owner {owner} is not a process of this stack")

    def inject(self, kind: str, unit: dict[str, Any]) -> str:
        """Inject one fault aimed at the worker running `unit`; returns what was hit."""
        name, pid = self._worker_of(str(unit["lease_owner"]))
        if kind == "kill-worker":
            os.kill(pid, signal.SIGKILL)
            _wait_dead(pid)
            self.up()
            return name
        if kind == "stop-past-lease":
            os.kill(pid, signal.SIGSTOP)
            time.sleep(self.pause_s)
            os.kill(pid, signal.SIGCONT)
            return name
        if kind == "term-worker":
            os.kill(pid, signal.SIGTERM)
            _wait_dead(pid, timeout_s=RECOVERY_LIMIT_S)
            self.up()
            return name
        if kind == "kill-pg-backend":
            # The app holds a connection per transaction: terminate every backend of its roles
            # (the server's and the workers') for a few seconds, so heartbeats, claims and
            # result commits are cut mid-way.
            killed = 0
            with self.db() as conn:
                end = time.monotonic() + 3
                while time.monotonic() < end:
                    n = conn.execute(
                        "SELECT count(pg_terminate_backend(pid)) AS n FROM pg_stat_activity"
                        " WHERE usename = ANY(%s) AND pid <> pg_backend_pid()",
                        ([APP_ROLE, WORKER_ROLE],)).fetchone()
                    killed += int(n["n"]) if n else 0
                    time.sleep(0.02)
            return f"{killed} app backends"
        if kind in ("restart-redis", "restart-s3", "restart-postgres"):
            svc = kind.split("-", 1)[1]
            target = self.pid(svc)
            os.kill(target, signal.SIGKILL)
            _wait_dead(target)
            time.sleep(1)
            self.up()
            return svc
        if kind in ("pause-postgres", "pause-redis", "pause-s3"):
            svc = kind.split("-", 1)[1]
            group = os.getpgid(self.pid(svc))  # the service and every process it forked
            os.killpg(group, signal.SIGSTOP)
            try:
                time.sleep(self.pause_s)
            finally:
                os.killpg(group, signal.SIGCONT)
            return svc
        raise ValueError(f"unknown fault kind {kind}")

    def feed(self) -> None:
        """Keep work in flight: a new round of the corpus when the last one is nearly done."""
        waiting = [v for v, s in self.statuses(list(self.videos)).items() if s != "done"]
        if len(waiting) < 2:
            self.rounds += 1
            for c in self.clips:
                self.videos[self.ingest(c, f"FAULT-{self.rounds}")] = c

    def fault_once(self, kind: str) -> Fault:
        """Wait for work in flight, inject `kind`, wait until that work is done again."""
        deadline = time.monotonic() + RECOVERY_LIMIT_S
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("no unit in flight to aim a fault at")
            self.feed()
            units = self.running_units()
            live = {f"{socket.gethostname()}:{p['pid']}" for p in self.state()["processes"]
                    if Path(f"/proc/{p['pid']}").exists()}
            # A unit still leased by a worker that is gone (restarted) is not a target.
            units = [u for u in units if u["lease_owner"] in live]
            fresh = [u for u in units if f"{u['video_id']}/{u['idx']}" not in self.hit]
            pick = [u for u in (fresh or units) if float(u["progress"]) > 0.05]
            if not pick:
                time.sleep(0.2)
                continue
            unit = self.rng.choice(pick)
            in_flight = [f"{u['video_id']}/{u['idx']}" for u in units]
            t = time.monotonic()
            fault = Fault(kind, "", round(t - self.t0, 1), units=in_flight)
            try:
                fault.target = self.inject(kind, unit)
            except (LookupError, ProcessLookupError):  # its worker ended meanwhile: aim again
                continue
            self.hit.update(in_flight)
            break
        while time.monotonic() - t < RECOVERY_LIMIT_S:
            states = self.unit_states(in_flight)
            if all(s == "done" for s in states.values()):
                fault.recovery_s = round(time.monotonic() - t, 1)
                break
            if any(s in ("failed", "quarantined") for s in states.values()):
                break
            time.sleep(0.5)
        return fault

    # --- checks ----------------------------------------------------------------------------
    def tracks_of(self, video_id: str) -> list[tuple[object, ...]]:
        """A video's tracks as comparable tuples (times to the millisecond)."""
        with self.db() as conn:
            rows = conn.execute(
                "SELECT chunk_idx, scene_idx, round(start_s::numeric, 3) AS s,"
                " round(end_s::numeric, 3) AS e, n_detections FROM tracks WHERE video_id = %s"
                " ORDER BY 1, 2, 3, 4, 5", (video_id,)).fetchall()
        return [tuple(r.values()) for r in rows]

    def duplicates(self) -> int:
        """Detections or scenes written twice for the same frame or scene."""
        with self.db() as conn:
            d = conn.execute(
                "SELECT count(*) AS n FROM (SELECT 1 FROM detections GROUP BY video_id,"
                " chunk_idx, frame_index, box_px HAVING count(*) > 1) x").fetchone()
            s = conn.execute(
                "SELECT count(*) AS n FROM (SELECT 1 FROM scenes GROUP BY video_id, chunk_idx,"
                " scene_idx HAVING count(*) > 1) x").fetchone()
        return int(d["n"] if d else 0) + int(s["n"] if s else 0)

    def leftovers(self) -> int:
        """Units still leased or running."""
        with self.db() as conn:
            r = conn.execute(
                "SELECT count(*) AS n FROM work_units WHERE state = 'running'").fetchone()
        return int(r["n"] if r else 0)

    def workers_alive(self) -> bool:
        """Every worker the stack started is alive and answers a ping."""
        status = json.loads(self.cli("status", "--json").stdout)
        want = {"gpu": int(STACK_ENV["BODYCAM_GPU_WORKERS"]),
                "cpu": int(STACK_ENV["BODYCAM_CPU_WORKERS"])}
        return bool(status.get("workers") == want)


def _wait_dead(pid: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):  # the stack's processes are not ours
            os.waitpid(pid, os.WNOHANG)
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return
        time.sleep(0.1)
    raise TimeoutError(f"process {pid} did not end within {timeout_s:.0f} s")


def _p95(times: list[float]) -> float | None:
    return round(times[min(len(times) - 1, int(0.95 * len(times)))], 1) if times else None


def summarise(faults: list[Fault]) -> dict[str, dict[str, float | int | None]]:
    """p50/p95/max recovery seconds per fault kind."""
    out: dict[str, dict[str, float | int | None]] = {}
    for kind in KINDS:
        times = sorted(f.recovery_s for f in faults if f.kind == kind and f.recovery_s is not None)
        n = sum(1 for f in faults if f.kind == kind)
        if not n:
            continue
        out[kind] = {
            "faults": n, "recovered": len(times),
            "p50_s": round(statistics.median(times), 1) if times else None,
            "p95_s": _p95(times),
            "max_s": max(times) if times else None,
        }
    return out


def run(n_faults: int, n_clips: int, duration_s: float, seed: int, testdata: Path,
        kinds: tuple[str, ...] = KINDS, keep: bool = False,
        pause_s: float | None = None) -> dict[str, Any]:
    """The whole run; returns the report (its `ok` says whether every check passed)."""
    tmp = Path(tempfile.mkdtemp(prefix="bodycam-faults-"))
    home = tmp / "home"
    fr = FaultRun(home, testdata, seed, pause_s)
    report: dict[str, Any] = {"seed": seed, "clips": n_clips, "clip_s": duration_s,
                              "pause_s": fr.pause_s}
    try:
        fr.up()
        clips = fr.make_corpus(n_clips, duration_s, tmp)
        base = [fr.ingest(c, "BASE") for c in clips]
        st = fr.wait_done(base, 60 * n_clips + 300)
        if set(st.values()) != {"done"}:
            raise RuntimeError(f"the fault-free run did not finish: {st}")
        reference = {c: fr.tracks_of(v) for c, v in zip(clips, base, strict=True)}
        report["reference_tracks"] = sum(len(t) for t in reference.values())
        fr.clips = clips
        videos = fr.videos
        faults: list[Fault] = []
        t_start = time.monotonic()
        while len(faults) < n_faults:
            faults.append(fr.fault_once(kinds[len(faults) % len(kinds)]))
            print(json.dumps(asdict(faults[-1])), file=sys.stderr, flush=True)
        final = fr.wait_done(list(videos), 60 * len(videos) + 300)
        mismatched = [v for v, c in videos.items()
                      if final.get(v) == "done" and fr.tracks_of(v) != reference[c]]
        verify = fr.cli("audit", "verify", check=False)
        report.update({
            "faults": len(faults),
            "fault_s": round(time.monotonic() - t_start, 1),
            "videos": len(videos),
            "done": sum(1 for s in final.values() if s == "done"),
            "not_done": {v: s for v, s in final.items() if s != "done"},
            "tracks_differ": mismatched,
            "duplicate_rows": fr.duplicates(),
            "units_left_running": fr.leftovers(),
            "workers_alive": fr.workers_alive(),
            "audit_verifies": verify.returncode == 0,
            "unrecovered": [asdict(f) for f in faults if f.recovery_s is None],
            "recovery": summarise(faults),
        })
        report["ok"] = (report["reference_tracks"] > 0 and not report["not_done"]
                        and not mismatched
                        and report["duplicate_rows"] == 0 and report["units_left_running"] == 0
                        and report["workers_alive"] and report["audit_verifies"]
                        and not report["unrecovered"])
        return report
    finally:
        fr.down()
        if not keep:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)


def main() -> None:
    """Command line: run the faults and print (and optionally write) the JSON report."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults", type=int, default=len(KINDS))
    ap.add_argument("--clips", type=int, default=3)
    ap.add_argument("--clip-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--testdata", type=Path,
                    default=Path(os.environ.get("BODYCAM_TESTDATA", "../shared/testdata")))
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma list, in turn")
    ap.add_argument("--pause-s", type=float, default=None,
                    help="how long SIGSTOP lasts (stop-past-lease, pause-*); default lease + 4 s")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--keep", action="store_true", help="keep the stack's home for a look")
    args = ap.parse_args()
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if unknown := set(kinds) - set(KINDS):
        ap.error(f"unknown fault kinds {sorted(unknown)}: choose from {', '.join(KINDS)}")
    generator(args.testdata)  # one line, before a stack starts, when the generator is missing
    report = run(args.faults, args.clips, args.clip_s, args.seed, args.testdata.resolve(),
                 kinds=kinds, keep=args.keep, pause_s=args.pause_s)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    sys.exit(0 if report.get("ok") else 1)


if __name__ == "__main__":
    main()
