"""Several hosts: shared services on one network namespace, workers on others, one host lost.

A "services" namespace runs the embedded stack (`bodycam up` with BODYCAM_BIND_HOST on its
private address: Postgres, SeaweedFS S3, Redis, the API and the scheduler, no worker). Two
"worker host" namespaces, each with a hostname of its own, run the Celery workers that `up`
would run (`bodycam.stack.worker_argv`), configured by the BODYCAM_* settings a compose or
Kubernetes worker gets, and reach the services only over veth links to a bridge. The test
itself sits on the bridge as an operator's machine would. A fourth namespace, "lost", holds a
plain database client that is cut off while Postgres answers it. Needs root and `ip netns`;
skipped otherwise. Run alone with `make hosts` or `pytest -m hosts`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bodycam.services import home_admin_url
from bodycam.stack import worker_argv
from tests.conftest import HAMILTON, STACK_ENV, Cli

pytestmark = pytest.mark.hosts

WORKER_HOSTS = ("host1", "host2")
# Each work unit is a 5-s chunk, so a 9-s clip is two units and a host holds work most of
# the time; services-only namespace (no worker there).
SERVICES_ENV = {**STACK_ENV, "BODYCAM_JOBS__CHUNK_S": "5", "BODYCAM_GPU_WORKERS": "0",
                "BODYCAM_CPU_WORKERS": "0"}
N_VIDEOS = 6
FINISH_LIMIT_S = 300.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check,
                          timeout=30)


def _netns_usable() -> str | None:
    """Why the test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (ip netns, veth links, a bridge)"
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        return "needs iproute2 (`ip`) and util-linux (`unshare`)"
    probe = f"bcprobe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    made = _ip("link", "add", probe, "type", "bridge", check=False)
    if made.returncode != 0:
        return f"`ip link add ... type bridge` failed: {made.stderr.strip()}"
    _ip("link", "del", probe, check=False)
    return None


@dataclass
class Net:
    """A bridge in the test's namespace and namespaces linked to it by veth pairs."""

    tag: str
    prefix: str  # "10.77.N."
    bridge: str = ""
    namespaces: dict[str, str] = field(default_factory=dict)  # role -> netns name
    links: dict[str, str] = field(default_factory=dict)  # role -> our end of its veth
    addresses: dict[str, str] = field(default_factory=dict)

    def create(self, roles: dict[str, int]) -> None:
        """The bridge (address .254, the test's own) and one namespace per role."""
        self.bridge = f"bc{self.tag}br"
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.prefix}254/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (role, octet) in enumerate(roles.items()):
            ns, link = f"bc{self.tag}-{role}", f"bc{self.tag}v{i}"
            _ip("netns", "add", ns)
            self.namespaces[role] = ns
            _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", ns)
            self.links[role] = link
            _ip("link", "set", link, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.prefix}{octet}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            self.addresses[role] = f"{self.prefix}{octet}"

    def pids(self, role: str) -> list[int]:
        """Every process in a role's namespace."""
        out = _ip("netns", "pids", self.namespaces[role], check=False).stdout
        return [int(p) for p in out.split()]

    def kill(self, role: str) -> int:
        """SIGKILL every process in a role's namespace until none is left; returns how many."""
        killed: set[int] = set()
        deadline = time.monotonic() + 20
        while (pids := self.pids(role)) and time.monotonic() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)
        return len(killed)

    def destroy(self) -> None:
        """Kill what is left, delete the veth pairs, the namespaces and the bridge.

        A socket of a killed process keeps its namespace alive while it retransmits its FIN
        to a peer already gone, so the links are deleted by name rather than left to go with
        their namespaces."""
        for role in list(self.namespaces):
            self.kill(role)
            _ip("link", "del", self.links.pop(role), check=False)
            _ip("netns", "del", self.namespaces.pop(role), check=False)
        if self.bridge:
            _ip("link", "del", self.bridge, check=False)


def _free_prefix() -> str:
    """A 10.77.N.0/24 no interface or route of this machine uses."""
    used = _ip("-4", "-o", "addr").stdout + " " + _ip("-4", "route").stdout.replace("\n", " ")
    for n in [os.getpid() % 250, *range(250)]:
        if f" 10.77.{n}." not in used:
            return f"10.77.{n}."
    raise RuntimeError("no free 10.77.N.0/24")


@dataclass
class Cluster:
    """The running layout: services, worker hosts, and what the test uses to watch them."""

    net: Net
    home: Path
    cli: Cli
    worker_env: dict[str, str]
    started: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)

    @contextmanager
    def db(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A superuser connection to the services' database, over the bridge."""
        with psycopg.connect(home_admin_url(self.home), row_factory=dict_row,
                             autocommit=True, connect_timeout=10) as conn:
            yield conn

    def start_workers(self, role: str) -> None:
        """A GPU-queue and a CPU-queue worker on a worker host, its hostname set to its role
        (so lease owners read `host1:PID`), in that host's network namespace."""
        logs = self.home.parent / "host-logs"
        logs.mkdir(exist_ok=True)
        (self.home.parent / role).mkdir(mode=0o700, exist_ok=True)  # its cache of originals
        procs = []
        for queue in ("gpu", "cpu"):
            name = f"worker-{queue}-1"
            argv = ["ip", "netns", "exec", self.net.namespaces[role], "unshare", "--uts", "--",
                    "sh", "-c", f'hostname {role} && exec "$@"', "sh",
                    *worker_argv(queue, name)]
            with open(logs / f"{role}-{name}.log", "ab") as out:
                procs.append(subprocess.Popen(
                    argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env={**self.worker_env, "BODYCAM_HOME": str(self.home.parent / role)},
                    cwd=Path(__file__).resolve().parent.parent, start_new_session=True))
        self.started[role] = procs

    def wait_workers_ready(self, timeout_s: float = 180) -> None:
        """Until every worker host's workers answer a Celery ping (models load lazily)."""
        from celery import Celery

        app = Celery(broker=self.worker_env["BODYCAM_REDIS_URL"])
        want = {f"worker-{q}-1@{role}" for role in self.started for q in ("gpu", "cpu")}
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            for role, procs in self.started.items():
                for p in procs:
                    assert p.poll() is None, f"a worker on {role} exited ({p.returncode})"
            replies = app.control.ping(timeout=2) or []
            seen = {name for r in replies for name in r}
            if want <= seen:
                return
            time.sleep(1)
        raise AssertionError(f"workers {sorted(want - seen)} did not answer")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Services in one namespace, two worker hosts in others, all on one bridge."""
    why = _netns_usable()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("hosts")
    home = root / "services"
    net = Net(tag=str(os.getpid() % 100000), prefix=_free_prefix())
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("BODYCAM_") or k in ("BODYCAM_TESTDATA",)}
    base.update({"BODYCAM_PIPELINE__EMBEDDER": STACK_ENV["BODYCAM_PIPELINE__EMBEDDER"],
                 "NO_PROXY": "*"})
    env = {**base, **SERVICES_ENV, "BODYCAM_HOME": str(home)}
    # The CLI reaches the server at its private address over plain http: a trusted network.
    cli = Cli({**env, "BODYCAM_INSECURE_HTTP": "1"})
    try:
        net.create({"services": 1, **{h: 11 + i for i, h in enumerate(WORKER_HOSTS)},
                    "lost": 21})
        services_ip = net.addresses["services"]
        up = subprocess.run(["ip", "netns", "exec", net.namespaces["services"], sys.executable,
                             "-m", "bodycam", "up"], env={**env, "BODYCAM_BIND_HOST": services_ip},
                            capture_output=True, text=True, timeout=300,
                            stdin=subprocess.DEVNULL)
        assert up.returncode == 0, f"bodycam up failed:\n{up.stderr[-3000:]}"
        state = json.loads((home / "stack.json").read_text())
        secrets = json.loads((home / "secrets" / "worker.json").read_text())
        # What a compose or Kubernetes worker is given: the services' addresses and the
        # workers' secrets (their database role, their sealing key: never the audit key).
        worker_env = {**base, **{k: v for k, v in STACK_ENV.items() if "WORKERS" not in k},
                      "BODYCAM_DATABASE_URL": secrets["database_url"],
                      "BODYCAM_REDIS_URL": secrets["redis_url"],
                      "BODYCAM_S3_ENDPOINT_URL": state["s3_endpoint_url"],
                      "BODYCAM_S3_ACCESS_KEY": secrets["s3_access_key"],
                      "BODYCAM_S3_SECRET_KEY": secrets["s3_secret_key"],
                      "BODYCAM_AUDIT_KEY": secrets["audit_key"],
                      "BODYCAM_API_URL": state["api_url"]}
        for url in (worker_env["BODYCAM_DATABASE_URL"], worker_env["BODYCAM_REDIS_URL"],
                    worker_env["BODYCAM_S3_ENDPOINT_URL"], worker_env["BODYCAM_API_URL"]):
            assert f"@{services_ip}:" in url or f"//{services_ip}:" in url, "not on the link"
        c = Cluster(net=net, home=home, cli=cli, worker_env=worker_env)
        for role in WORKER_HOSTS:
            c.start_workers(role)
        c.wait_workers_ready()
        yield c
    finally:
        for role in WORKER_HOSTS:  # workers first, while the services still answer them
            if role in net.namespaces:
                net.kill(role)
        cli.run("down", timeout=120)
        net.destroy()


def _units(c: Cluster, video_ids: list[str]) -> list[dict[str, Any]]:
    with c.db() as conn:
        return conn.execute(
            "SELECT video_id::text AS video_id, idx, state, attempts, lease_owner, progress"
            " FROM work_units WHERE video_id = ANY(%s) ORDER BY video_id, idx",
            (video_ids,)).fetchall()


def _tracks(c: Cluster, video_id: str) -> list[tuple[object, ...]]:
    with c.db() as conn:
        rows = conn.execute(
            "SELECT chunk_idx, scene_idx, round(start_s::numeric, 3) AS s,"
            " round(end_s::numeric, 3) AS e, n_detections FROM tracks WHERE video_id = %s"
            " ORDER BY 1, 2, 3, 4, 5", (video_id,)).fetchall()
    return [tuple(r.values()) for r in rows]


def _diagnosis(c: Cluster, video_ids: list[str]) -> str:
    """What a stalled run looks like: units, the database's sessions and waits, worker logs."""
    lines = [json.dumps(u, default=str) for u in _units(c, video_ids)]
    with c.db() as conn:
        lines += [json.dumps(r, default=str) for r in conn.execute(
            "SELECT pid, client_addr::text AS client, state, wait_event_type, wait_event,"
            " round(extract(epoch FROM now() - xact_start)) AS xact_s,"
            " pg_blocking_pids(pid) AS blocked_by, left(query, 100) AS query"
            " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()]
    for log in sorted((c.home.parent / "host-logs").glob("*.log")):
        tail = log.read_bytes()[-3000:].decode(errors="replace")
        lines += [f"--- {log.name}", tail]
    return "\n".join(lines)


def test_a_worker_host_killed_mid_run_loses_nothing_and_duplicates_nothing(
        cluster: Cluster) -> None:
    c = cluster
    victim, survivor = WORKER_HOSTS
    videos = []
    t_start = time.monotonic()
    for i in range(N_VIDEOS):
        [res] = c.cli.json("ingest", str(HAMILTON), "--case", f"HOSTS-{i}", "--officer", "O",
                           "--device", "D")  # type: ignore[misc]
        videos.append(str(res["video_id"]))

    # Lose the victim host once it has finished a unit and while it holds another, as in a
    # power cut: its link goes down first (the services get no FIN or RST from it; a message
    # Redis hands to its dead connection is lost), then every process of the host dies
    # (SIGKILL). A unit with recorded progress is preferred; progress reaches the database
    # only with each heartbeat (2 s), and a 5-s chunk of this clip can end before its first
    # one, so once the victim has been done with a unit for 3 s any unit it holds will do.
    # The unit seen held can end between the last look and the link going down; the units
    # held are read again once the link is down (the victim can change nothing after that),
    # and if it then holds none the link comes back up (a blip TCP rides out) and the moment
    # is picked again.
    held_keys: set[tuple[str, int]] = set()
    finished_by_victim: set[tuple[str, int]] = set()
    units: list[dict[str, Any]] = []
    first_done_at = None
    deadline = time.monotonic() + 240
    while not held_keys:
        assert time.monotonic() < deadline, f"the victim host never held a unit: {units}"
        units = _units(c, videos)
        ours = [u for u in units if str(u["lease_owner"]).startswith(f"{victim}:")]
        finished_by_victim = {(u["video_id"], u["idx"]) for u in ours if u["state"] == "done"}
        if finished_by_victim and first_done_at is None:
            first_done_at = time.monotonic()
        least = 0.0 if first_done_at and time.monotonic() - first_done_at > 3 else 0.05
        held = [u for u in ours if u["state"] == "running" and least <= float(u["progress"]) < 1]
        if not (held and finished_by_victim):
            time.sleep(0.2)
            continue
        _ip("link", "set", c.net.links[victim], "down")
        units = _units(c, videos)
        held_keys = {(u["video_id"], u["idx"]) for u in units if u["state"] == "running"
                     and str(u["lease_owner"]).startswith(f"{victim}:")}
        finished_by_victim = {(u["video_id"], u["idx"]) for u in units if u["state"] == "done"
                              and str(u["lease_owner"]).startswith(f"{victim}:")}
        if not held_keys:
            _ip("link", "set", c.net.links[victim], "up")
    t_kill = time.monotonic()
    killed = c.net.kill(victim)
    assert killed >= 2 and not c.net.pids(victim)

    recovered_s = None
    while True:
        units = _units(c, videos)
        if recovered_s is None and all(u["state"] == "done" for u in units
                                       if (u["video_id"], u["idx"]) in held_keys):
            recovered_s = time.monotonic() - t_kill
        with c.db() as conn:
            statuses = {str(r["id"]): str(r["status"]) for r in conn.execute(
                "SELECT id::text AS id, status FROM videos WHERE id = ANY(%s)",
                (videos,)).fetchall()}
        if all(s in ("done", "failed", "quarantined") for s in statuses.values()):
            break
        if time.monotonic() - t_kill >= FINISH_LIMIT_S:
            raise AssertionError(f"not finished: {statuses}\n{_diagnosis(c, videos)}")
        time.sleep(0.5)
    finished_s = time.monotonic() - t_kill

    # Nothing lost: every video done, every unit done, the lost host's units redone by the
    # survivor (a new attempt under its name).
    assert set(statuses.values()) == {"done"}, statuses
    units = _units(c, videos)
    assert len(units) == 2 * N_VIDEOS and all(u["state"] == "done" for u in units)
    for u in units:
        if (u["video_id"], u["idx"]) in held_keys:
            assert str(u["lease_owner"]).startswith(f"{survivor}:"), u
            assert u["attempts"] >= 2, u
        elif (u["video_id"], u["idx"]) in finished_by_victim:  # kept, not redone
            assert str(u["lease_owner"]).startswith(f"{victim}:") and u["attempts"] == 1, u

    # Nothing duplicated: no detection or scene row twice; each video (the same file) has the
    # same tracks, the redone ones included; one processing.done custody row per video.
    with c.db() as conn:
        dup_detections = conn.execute(
            "SELECT count(*) AS n FROM (SELECT 1 FROM detections WHERE video_id = ANY(%s)"
            " GROUP BY video_id, chunk_idx, frame_index, box_px HAVING count(*) > 1) x",
            (videos,)).fetchone()["n"]
        dup_scenes = conn.execute(
            "SELECT count(*) AS n FROM (SELECT 1 FROM scenes WHERE video_id = ANY(%s)"
            " GROUP BY video_id, chunk_idx, scene_idx HAVING count(*) > 1) x",
            (videos,)).fetchone()["n"]
        done_rows = conn.execute(
            "SELECT details->>'video_id' AS v, count(*) AS n FROM audit_log"
            " WHERE action = 'processing.done' AND details->>'video_id' = ANY(%s)"
            " GROUP BY 1", (videos,)).fetchall()
        detections = conn.execute(
            "SELECT video_id::text AS v, count(*) AS n FROM detections"
            " WHERE video_id = ANY(%s) GROUP BY 1", (videos,)).fetchall()
    assert dup_detections == 0 and dup_scenes == 0
    reference = _tracks(c, videos[0])
    assert reference, "the clip has faces: tracks expected"
    for vid in videos[1:]:
        assert _tracks(c, vid) == reference, vid
    assert {r["v"]: r["n"] for r in done_rows} == dict.fromkeys(videos, 1)
    assert len({r["n"] for r in detections}) == 1 and len(detections) == N_VIDEOS
    verdict = c.cli.run("audit", "verify")
    assert verdict.returncode == 0 and "intact" in verdict.stdout, verdict.stderr

    # The survivor's workers still answer; the figures go to RELIABILITY.md.
    c.started.pop(victim)
    c.wait_workers_ready(timeout_s=30)
    done_by = {role: sum(str(u["lease_owner"]).startswith(f"{role}:") for u in units)
               for role in WORKER_HOSTS}
    print(json.dumps({"videos": N_VIDEOS, "units": len(units), "held_by_victim": len(held_keys),
                      "units_done_by": done_by, "processes_killed": killed,
                      "killed_after_s": round(t_kill - t_start, 1),
                      "recovered_s": round(recovered_s or -1, 1),
                      "finished_after_kill_s": round(finished_s, 1),
                      "total_s": round(time.monotonic() - t_start, 1)}))


def test_a_host_lost_while_the_database_answers_it_releases_its_locks(cluster: Cluster) -> None:
    """A client host lost while Postgres was still working on its statement: the reply goes
    out to a dead link and is never acknowledged. TCP keepalive never probes a connection with
    data in flight, so without a limit on unacknowledged data the backend, idle in its
    transaction, keeps its locks for Linux's retransmission limit (about 15 min), and every
    worker that needs them (a unit's row, the audit chain's lock) waits that long."""
    c = cluster
    lock = 7_717_717
    script = ("import sys, psycopg\n"
              "conn = psycopg.connect(sys.argv[1])\n"
              "conn.execute('SELECT pg_advisory_xact_lock(%s)', (int(sys.argv[2]),))\n"
              "conn.execute('SELECT pg_sleep(3) -- held by the lost host')\n"
              "conn.execute('SELECT pg_sleep(600)')\n")
    out = c.home.parent / "host-logs" / "lost.log"
    out.parent.mkdir(exist_ok=True)
    with open(out, "ab") as log:
        subprocess.Popen(["ip", "netns", "exec", c.net.namespaces["lost"], sys.executable, "-c",
                          script, c.worker_env["BODYCAM_DATABASE_URL"], str(lock)],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env=c.worker_env, start_new_session=True)
    backend = None
    deadline = time.monotonic() + 60
    while backend is None:
        assert time.monotonic() < deadline, out.read_text()
        with c.db() as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE state = 'active'"
                " AND query LIKE '%%held by the lost host' AND pid <> pg_backend_pid()"
            ).fetchone()
        backend = row and int(row["pid"])
        time.sleep(0.1)
    _ip("link", "set", c.net.links["lost"], "down")  # before its reply: it is never acked
    assert c.net.kill("lost") >= 1
    t_lost = time.monotonic()
    while True:
        with c.db() as conn:
            alive = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s",
                                 (backend,)).fetchone()
            if alive is None:
                got = conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (lock,)).fetchone()
                assert got is not None and got["got"]
                break
        assert time.monotonic() - t_lost < 90, "the lost host's backend still holds its lock"
        time.sleep(1)
    print(json.dumps({"lost_backend_gone_after_s": round(time.monotonic() - t_lost, 1)}))
