"""Trust boundary: secrets stay with the stack; accounts change only through audited functions."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from bodycam import accounts, audit
from bodycam.services import home_admin_url
from bodycam.stack import Stack, _OwnerOnlyWatch
from tests.conftest import StackHandle
from tests.test_operations import _as_nobody, own_stack

# A stack of this module's own: the last test changes accounts behind the application's back,
# which leaves `audit verify` failing for good (the journal is append-only).
CASE = "TB-1"
OTHER = "TB-2"


@pytest.fixture(scope="module")
def tb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """A real embedded stack in its own BODYCAM_HOME, started under a permissive umask."""
    home = tmp_path_factory.mktemp("tb-home")
    home.chmod(0o755)  # `up` must tighten it whoever made it
    # Whatever the umask (children inherit it), the home's files must end up 0600.
    yield from own_stack(home, {"BODYCAM_GPU_WORKERS": "1"}, umask=0)


def _secrets(tb: StackHandle) -> dict[str, str]:
    """Every secret value the stack generated, by name (the workers' as `worker.NAME`)."""
    out: dict[str, str] = {}
    for name in ("server.json", "admin.json", "worker.json"):
        prefix = "worker." if name == "worker.json" else ""
        for k, v in json.loads((tb.home / "secrets" / name).read_text()).items():
            out[prefix + k] = str(v)
    out["operator_token"] = (tb.home / "operator.token").read_text().strip()
    return out


def _app_conn(tb: StackHandle) -> psycopg.Connection[tuple[object, ...]]:
    """A connection as the application's role: the database URL the server and workers use."""
    return psycopg.connect(tb.ctx.services.database_url, autocommit=True)


def _journal(tb: StackHandle, since: int = 0) -> list[dict[str, object]]:
    with psycopg.connect(home_admin_url(tb.home)) as conn:
        cur = conn.execute("SELECT c.id, c.actor, c.action, c.details, c.audit_id, a.action"
                           " FROM account_changes c LEFT JOIN audit_log a ON a.id = c.audit_id"
                           " WHERE c.id > %s ORDER BY c.id", (since,))
        return [{"id": r[0], "actor": r[1], "action": r[2], "details": r[3], "audit_id": r[4],
                 "audit_action": r[5]} for r in cur.fetchall()]


def _last_change(tb: StackHandle) -> int:
    rows = _journal(tb)
    return int(rows[-1]["id"]) if rows else 0  # type: ignore[call-overload]


# --- who holds which secret ------------------------------------------------------------------

def test_the_workers_key_seals_only_the_rows_workers_write() -> None:
    key, digest = "k" * 32, "d" * 64
    by_worker = audit.seal(audit.worker_key(key), digest)
    assert audit.sealed_by(key, digest, "system:worker", "processing.done", by_worker)
    assert audit.sealed_by(key, digest, "operator", "login", audit.seal(key, digest))
    for actor, action in (("operator", "login"), ("system:worker", "user.create"),
                          ("system:accounts", "user.create"), ("System:worker", "processing.done"),
                          ("system:worker\u202e", "processing.done"), ("system:fixity", "search")):
        assert not audit.sealed_by(key, digest, actor, action, by_worker), (actor, action)



def test_each_secret_lives_in_one_file_and_the_audit_key_never_beside_the_superuser_url(
        tb: StackHandle) -> None:
    home = tb.home
    admin = json.loads((home / "secrets" / "admin.json").read_text())
    server = json.loads((home / "secrets" / "server.json").read_text())
    assert set(admin) == {"admin_database_url", "pg_superuser_password"}
    assert "audit_key" in server and "admin_database_url" not in server
    assert json.loads((home / "client.json").read_text()) == {
        "url": json.loads((home / "stack.json").read_text())["api_url"],
        "socket": "run/api.sock"}
    secrets = _secrets(tb)
    for public in ("stack.json", "client.json"):
        text = (home / public).read_text()
        leaked = [k for k, v in secrets.items() if len(v) >= 8 and v in text]
        assert not leaked, f"{public} holds {leaked}"
    # `status --json` prints URLs without their passwords.
    status = tb.cli.run("status", "--json")
    leaked = [k for k, v in secrets.items() if len(v) >= 8 and v in status.stdout]
    assert status.returncode == 0 and not leaked, leaked
    # The superuser URL is not one the library's resolution ever hands out.
    assert tb.ctx.services.database_url != secrets["admin_database_url"]
    assert secrets["admin_database_url"] not in repr(tb.ctx.services)


def test_the_home_is_0700_and_its_files_0600_though_up_ran_under_umask_0(
        tb: StackHandle) -> None:
    loose = []
    for root, dirs, files in os.walk(tb.home):
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            if path.is_symlink():
                continue
            want = 0o700 if path.is_dir() else 0o600
            if st.st_mode & 0o077 or (path.parent.name == "secrets" and
                                      st.st_mode & 0o777 != want):
                loose.append(f"{oct(st.st_mode & 0o777)} {path}")
    assert tb.home.stat().st_mode & 0o777 == 0o700
    assert (tb.home / "secrets").stat().st_mode & 0o777 == 0o700
    assert not loose, "\n".join(loose[:20])
    # Saving the state again under a permissive umask keeps every file 0600.
    stack = Stack(tb.ctx.settings)
    old = os.umask(0)
    try:
        stack._save(stack.state())
    finally:
        os.umask(old)
    for name in ("stack.json", "client.json", "secrets/server.json", "secrets/admin.json"):
        assert (tb.home / name).stat().st_mode & 0o777 == 0o600, name


def test_a_file_a_service_chmods_0644_in_a_watched_directory_is_made_owner_only_at_once(
        tmp_path: Path) -> None:
    """The mechanism behind SeaweedFS' .vif files (it chmods them 0644 whatever the umask)."""
    watch = _OwnerOnlyWatch(tmp_path)
    assert watch.fd >= 0, "inotify unavailable"
    try:
        path = tmp_path / "bucket_1.vif"
        for mode in (0o644, 0o664, 0o604):
            path.write_text("{}")
            path.chmod(mode)
            ready, _, _ = select.select([watch.fd], [], [], 5)
            assert ready, "no inotify event"
            watch.handle()
            assert path.stat().st_mode & 0o777 == mode & 0o700, oct(mode)
        (tmp_path / "sub").mkdir(mode=0o755)
        select.select([watch.fd], [], [], 5)
        watch.handle()
        assert (tmp_path / "sub").stat().st_mode & 0o777 == 0o700
    finally:
        os.close(watch.fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="mount namespaces as root (the root stack's path)")
def test_directories_under_tmp_stay_reachable_under_the_private_tmp_and_nothing_is_opened(
        tmp_path: Path) -> None:
    """Postgres (as its own account) and SeaweedFS run under a private /tmp: a checkout or a
    home under /tmp, as in a clone made in `mktemp -d`, must stay reachable there, bound at
    its own path or at a new one, without any directory above it being opened to others."""
    shut = tmp_path / "clone"  # a 0700 directory, as mktemp -d makes
    (shut / "pkg").mkdir(parents=True)
    (shut / "pkg" / "bin").write_text("binary")
    shut.chmod(0o700)
    probe = (
        "import json, os, sys\n"
        "from bodycam.stack import _private_tmp\n"
        "src = sys.argv[1]\n"
        "_private_tmp(0o755, {src: src, '/tmp/pginstall/pkg': src + '/pkg'})\n"
        "print(json.dumps({'kept': open(src + '/pkg/bin').read(),\n"
        "                  'bound': open('/tmp/pginstall/pkg/bin').read(),\n"
        "   'modes': [os.stat(p).st_mode & 0o777 for p in ('/tmp', '/tmp/pginstall')],\n"
        "                  'tmp': sorted(os.listdir('/tmp'))}))\n")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable,
                          "-c", probe, str(shut)], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout)
    assert seen["kept"] == seen["bound"] == "binary", seen
    assert seen["modes"] == [0o755, 0o755], seen
    # The private /tmp shows only the first parts of the kept paths.
    assert set(seen["tmp"]) == {tmp_path.parts[2], "pginstall"}, seen
    assert shut.stat().st_mode & 0o777 == 0o700  # nothing above was opened
    assert not Path("/tmp/pginstall").exists()  # the host's /tmp is untouched


def test_up_moves_the_secrets_of_a_home_made_by_the_previous_version_out_of_stack_json(
        tb: StackHandle) -> None:
    stack = Stack(tb.ctx.settings)
    state = stack.state(admin=True)
    assert "admin_database_url" not in stack.state()  # only `up` asks for it

    worker_keys = ("worker_database_url", "pg_worker_password")

    def make_legacy() -> None:
        # An earlier version's layout: every secret in stack.json, no secrets/ or client.json,
        # no workers' role (the workers used the server's).
        legacy = {**{k: v for k, v in state.items() if k not in worker_keys},
                  "app_services": {k: state.get(k) for k in
                                   ("database_url", "s3_endpoint_url", "redis_url")}}
        (tb.home / "stack.json").write_text(json.dumps(legacy))
        for name in ("secrets/server.json", "secrets/admin.json", "secrets/worker.json",
                     "client.json"):
            (tb.home / name).unlink()
        (tb.home / "secrets").rmdir()

    make_legacy()
    # Until `up` runs, the old home still resolves (the CLI keeps working).
    assert tb.cli.run("users", "list", "--json").returncode == 0
    # A save without the superuser's secrets in hand (as `down` does) moves them, not loses them.
    stack._save(stack.state())
    assert json.loads((tb.home / "secrets" / "admin.json").read_text()) == {
        k: state[k] for k in ("admin_database_url", "pg_superuser_password")}
    assert "admin_database_url" not in (tb.home / "stack.json").read_text()
    make_legacy()
    up = tb.cli.run("up", timeout=300)
    assert up.returncode == 0, up.stderr
    public = json.loads((tb.home / "stack.json").read_text())
    assert not {"admin_database_url", "pg_superuser_password", "database_url", "audit_key",
                "s3_secret_key", "redis_url", "redis_password"} & set(public)
    ignored = {"app_services": None, "processes": None} | dict.fromkeys(worker_keys)
    assert Stack(tb.ctx.settings).state(admin=True) | ignored == state | ignored
    assert (tb.home / "secrets").stat().st_mode & 0o777 == 0o700
    # The app processes started with the old layout were restarted into the new one, the
    # workers with a role of their own.
    for name, pid in _app_pids(tb).items():
        seen = Path(f"/proc/{pid}/root") / str(tb.home).lstrip("/") / "secrets"
        own = "server.json" if name == "api" else "worker.json"
        assert sorted(p.name for p in seen.iterdir()) == [own], name
    assert "bodycam_worker:" in json.loads(
        (tb.home / "secrets" / "worker.json").read_text())["database_url"]
    assert tb.cli.run("users", "list", "--json").returncode == 0
    assert tb.cli.run("audit", "verify").returncode == 0


def test_another_os_user_holding_only_url_and_token_finds_no_secret_in_the_home(
        tb: StackHandle) -> None:
    # The old bypass: a process with the CLI's environment resolves every secret from the home
    # (Context.load()). As another account of the machine, nothing in the home can be read.
    home = tb.home
    probe = (
        "import json, os, sys\n"
        f"home = {str(home)!r}\n"
        "found = []\n"
        "for rel in ('', 'secrets'):\n"
        "    try: found.append(('list', rel, os.listdir(os.path.join(home, rel))))\n"
        "    except PermissionError: pass\n"
        "for rel in ('stack.json', 'client.json', 'operator.token', 'secrets/server.json',\n"
        "            'secrets/admin.json', 'run/redis.conf', 'run/s3-identities.json'):\n"
        "    try: found.append(('read', rel, open(os.path.join(home, rel)).read()))\n"
        "    except PermissionError: pass\n"
        "print(json.dumps(found))\n")
    tried = _as_nobody(probe)
    assert tried.returncode == 0, tried.stderr
    assert json.loads(tried.stdout) == []
    # The same probe as the owner does find them: the probe itself can fail.
    mine = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True)
    assert len(json.loads(mine.stdout)) >= 7


def _app_pids(tb: StackHandle) -> dict[str, int]:
    """The server's, scheduler's and workers' pids, once each has left `app-exec` (`up` does
    not wait for that) and runs its own program."""
    procs = json.loads((tb.home / "stack.json").read_text())["processes"]
    pids = {p["name"]: int(p["pid"]) for p in procs
            if p["name"] in ("api", "beat") or p["name"].startswith("worker-")}
    deadline = time.monotonic() + 60
    while any("app-exec" in psutil.Process(pid).cmdline() for pid in pids.values()):
        assert time.monotonic() < deadline, "an app process never left app-exec"
        time.sleep(0.2)
    return pids


def test_server_and_workers_cannot_obtain_the_superuser_url(tb: StackHandle) -> None:
    secrets = _secrets(tb)
    admin_secrets = (secrets["admin_database_url"], secrets["pg_superuser_password"])
    pids = _app_pids(tb)
    assert {"api", "beat", "worker-cpu-1", "worker-gpu-1"} <= set(pids)
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        env = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        assert not any(s in env for s in admin_secrets), name
        # (A worker on this kernel can read the server's environment: it holds no secret.)
        assert secrets["audit_key"] not in env and secrets["database_url"] not in env, name
        # Its view of the home's secrets, read-only: the server's file for the server, the
        # workers' for the workers and the scheduler (no audit key, no server database role).
        seen = Path(f"/proc/{pid}/root") / str(tb.home).lstrip("/") / "secrets"
        own = "server.json" if name == "api" else "worker.json"
        assert sorted(p.name for p in seen.iterdir()) == [own], name
        if own == "worker.json":
            text = (seen / own).read_text()
            assert secrets["audit_key"] not in text and secrets["database_url"] not in text
            assert secrets["worker.audit_key"] == audit.worker_key(secrets["audit_key"])
        capbnd = int(next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text()
                          .splitlines() if line.startswith("CapBnd:")), 16)
        assert not capbnd & (1 << 21) and not capbnd & (1 << 19), f"{name}: {capbnd:x}"
        assert proc.is_running()
    # Try to break it the way a compromised worker would: from inside the same confinement,
    # read the file, unmount the view, remount it writable, go through another process's root,
    # read the server's secrets.
    redis_pid = json.loads((tb.home / "stack.json").read_text())["processes"]
    [redis_pid] = [p["pid"] for p in redis_pid if p["name"] == "redis"]
    admin = tb.home / "secrets" / "admin.json"
    # A server-kind process that has not made itself undumpable (as the server is at its
    # first instant, which a worker that killed it could catch as `up` restarted it).
    starting = subprocess.Popen(
        [sys.executable, "-m", "bodycam.stack", "app-exec", str(tb.home), "server.json", "--",
         str(shutil.which("sleep")), "120"], cwd=tb.home, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    deadline = time.monotonic() + 30
    while psutil.Process(starting.pid).cmdline()[:1] != [shutil.which("sleep")]:
        assert time.monotonic() < deadline, "app-exec never ran the command"
        time.sleep(0.1)
    home = str(tb.home)
    attack = (
        "import ctypes, json, os, subprocess\n"
        "out = {}\n"
        f"admin = {str(admin)!r}\n"
        f"secrets = {str(admin.parent)!r}\n"
        "def attempt(name, fn):\n"
        "    try: out[name] = fn()\n"
        "    except Exception as exc: out[name] = 'refused: ' + type(exc).__name__\n"
        "attempt('read', lambda: open(admin).read())\n"
        "attempt('own', lambda: 'worker.json' in os.listdir(secrets) and 'visible')\n"
        "attempt('server', lambda: open(secrets + '/server.json').read())\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def umount():\n"
        "    if libc.umount2(secrets.encode(), 2) != 0:\n"
        "        raise OSError(ctypes.get_errno(), 'umount')\n"
        "    return open(admin).read()\n"
        "attempt('umount', umount)\n"
        "attempt('via_proc', lambda: open("
        f"'/proc/{redis_pid}/root' + admin).read())\n"
        "attempt('write', lambda: open(secrets + '/x', 'w').write('x'))\n"
        # Root's DAC_OVERRIDE wrote a `trust` line into pg_hba.conf and became the superuser.
        f"pgdata = {str(tb.home / 'pgdata')!r}\n"
        "attempt('pg_hba', lambda: open(pgdata + '/pg_hba.conf', 'a').write('# x'))\n"
        "attempt('pg_list', lambda: os.listdir(pgdata) and 'listed')\n"
        f"attempt('redis_dir', lambda: os.listdir({str(tb.home / 'redis')!r}) and 'listed')\n"
        # A worker read server.json through the server's /proc/PID/root (same account, same
        # capabilities), and took the operator's token from the home to make itself an admin.
        f"attempt('via_api', lambda: open('/proc/{pids['api']}/root' + secrets"
        " + '/server.json').read())\n"
        f"attempt('api_mem', lambda: open('/proc/{pids['api']}/mem', 'rb') and 'opened')\n"
        f"attempt('operator_token', lambda: open({str(tb.home / 'operator.token')!r}).read())\n"
        f"attempt('server_starting', lambda: open('/proc/{starting.pid}/root' + secrets"
        " + '/server.json').read())\n"
        # The files and the socket the operator's CLI trusts (a worker pointed client.json at
        # a listener of its own and took the operator's token); the cache stays writable.
        f"attempt('client_json', lambda: open({home!r} + '/client.json', 'a').write(' '))\n"
        f"attempt('stack_json', lambda: open({home!r} + '/stack.json', 'a').write(' '))\n"
        f"attempt('run_dir', lambda: open({home!r} + '/run/api.sock.x', 'w').write('x'))\n"
        f"attempt('home_dir', lambda: open({home!r} + '/client.json.x', 'w').write('x'))\n"
        f"attempt('cache', lambda: open({home!r} + '/cache/.probe', 'w').write('x') and 'ok')\n"
        "print(json.dumps(out))\n")
    got = subprocess.run(
        [sys.executable, "-m", "bodycam.stack", "app-exec", str(tb.home), "worker.json", "--",
         sys.executable, "-c", attack], capture_output=True, text=True, timeout=60,
        cwd=tb.home, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    starting.kill()
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert result["cache"] == "ok", result["cache"]
    (tb.home / "cache" / ".probe").unlink()
    assert result["own"] == "visible"
    assert result["operator_token"] == "", "an empty file in an app process's view"
    for name in ("read", "server", "umount", "via_proc", "write", "pg_hba", "via_api",
                 "api_mem", "server_starting", "client_json", "stack_json", "run_dir",
                 "home_dir"):
        assert str(result[name]).startswith("refused"), (name, result[name])
    assert result["pg_list"] == [] and result["redis_dir"] == [], "hidden: empty"
    assert "pg_hba.conf" in os.listdir(tb.home / "pgdata"), "there outside the confinement"
    # Outside the confinement the file is there: the attempts above were real.
    assert "admin_database_url" in admin.read_text()


def test_the_stacks_database_clients_never_send_a_password_in_clear(tb: StackHandle) -> None:
    """Another account listening on Postgres's port after a crash asked the server and the
    workers for a cleartext password, and got the application role's."""
    secrets = _secrets(tb)
    with socket.socket() as fake:
        fake.bind(("127.0.0.1", 0))
        fake.listen(4)
        got: list[bytes] = []

        def serve() -> None:
            conn, _ = fake.accept()
            with conn:
                while True:  # "no" to TLS and GSS encryption requests, then the startup
                    m = conn.recv(65536)
                    if len(m) == 8 and struct.unpack(">I", m[4:])[0] in (80877103, 80877104):
                        conn.sendall(b"N")
                        continue
                    break
                conn.sendall(b"R" + struct.pack(">II", 8, 3))  # AuthenticationCleartextPassword
                conn.settimeout(5)
                try:
                    got.append(conn.recv(65536))
                except OSError:
                    got.append(b"")

        for name in ("database_url", "admin_database_url"):
            got.clear()
            server = threading.Thread(target=serve)
            server.start()
            url = secrets[name].replace(
                secrets[name].split("@", 1)[1].split("/", 1)[0],
                f"127.0.0.1:{fake.getsockname()[1]}")
            with pytest.raises(psycopg.OperationalError, match="cleartext"):
                psycopg.connect(url, connect_timeout=5).close()
            server.join(10)
            assert not any(secrets["pg_app_password"].encode() in g
                           or secrets["pg_superuser_password"].encode() in g for g in got)
            assert not any(g.startswith(b"p") for g in got), "no password message was sent"


# --- accounts change only through the audited functions --------------------------------------

def test_the_broker_password_reconfigures_nothing_and_jobs_still_run(
        tb: StackHandle, tmp_path: Path) -> None:
    """Whoever holds the Redis password (every worker host does) could `CONFIG SET dir` +
    `SAVE` a file anywhere as the stack's OS account (root), `MODULE LOAD` code, or make the
    broker a replica of their own server. Those commands must not exist for any client,
    whatever their case, while Celery's own traffic still carries a job to the end."""
    import redis

    from tests.conftest import HAMILTON

    r = redis.Redis.from_url(_secrets(tb)["redis_url"], socket_timeout=10)
    assert r.ping()
    attempts = [("CONFIG", "GET", "dir"), ("config", "set", "dir", str(tmp_path)),
                ("Config", "Set", "dbfilename", "proof"), ("SAVE",), ("BGSAVE",),
                ("BGREWRITEAOF",), ("MODULE", "LOAD", str(tmp_path / "x.so")),
                ("module", "list"), ("DEBUG", "SLEEP", "0"), ("debug", "segfault"),
                ("REPLICAOF", "127.0.0.1", "9"), ("SLAVEOF", "127.0.0.1", "9"), ("SYNC",),
                ("PSYNC", "?", "-1"), ("MIGRATE", "127.0.0.1", "9", "k", "0", "1000"),
                ("ACL", "SETUSER", "eve", "on", ">pw", "+@all"), ("ACL", "LIST"),
                ("MONITOR",), ("SHUTDOWN", "NOSAVE")]
    for cmd in attempts:
        with pytest.raises(redis.ResponseError, match="unknown command"):
            r.execute_command(*cmd)
    assert r.ping(), "the broker is still up"
    assert list(tmp_path.iterdir()) == [], "nothing written where a client asked"
    assert "rename-command CONFIG" in (tb.home / "run" / "redis.conf").read_text()
    [res] = tb.cli.json("ingest", str(HAMILTON), "--case", CASE, "--officer", "O",
                        "--device", "D")  # type: ignore[misc]
    assert tb.wait_status(str(res["video_id"]))["status"] == "done"


def test_the_app_role_is_refused_every_direct_write_to_accounts_and_the_journal(
        tb: StackHandle) -> None:
    tb.cli.run("users", "add", "tb-inv", "--role", "investigator", check=True)
    before = _last_change(tb)
    attempts = [
        "INSERT INTO users (name, roles, created_by) VALUES ('mallory', '{admin}', 'mallory')",
        "UPDATE users SET roles = '{admin}' WHERE name = 'tb-inv'",
        "UPDATE users SET disabled_at = now() WHERE name = 'operator'",
        "DELETE FROM users WHERE name = 'tb-inv'",
        f"INSERT INTO case_assignments (user_name, case_id, assigned_by)"
        f" VALUES ('tb-inv', '{OTHER}', 'tb-inv')",
        "DELETE FROM case_assignments",
        "TRUNCATE case_assignments",
        "UPDATE api_tokens SET expires_at = now() + interval '100 years'",
        "INSERT INTO api_tokens (user_name, sha256, kind, expires_at, created_by) VALUES"
        " ('tb-inv', repeat('a', 64), 'account', now() + interval '1 day', 'x')",
        "INSERT INTO account_changes (actor, action, details) VALUES ('x', 'y', '{}')",
        "DELETE FROM account_changes",
    ]
    for statement in attempts:
        with _app_conn(tb) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    # The functions refuse a call that no audit row of this transaction backs: none, an old
    # row of the right action, or a row of another action.
    with psycopg.connect(home_admin_url(tb.home)) as su:
        old = su.execute("SELECT max(id) FROM audit_log WHERE action = 'user.create'"
                         ).fetchone()
        assert old is not None and old[0] is not None
    calls = [("SELECT bodycam_user_set_roles(NULL, 'tb-inv', '{admin}')", ()),
             ("SELECT bodycam_user_set_roles(%s, 'tb-inv', '{admin}')", (old[0],)),
             ("SELECT bodycam_user_create(%s, 'mallory', '{admin}', 'x')", (old[0] + 10**6,)),
             ("SELECT bodycam_case_assign(%s, 'tb-inv', %s, 'x')", (old[0], OTHER))]
    for call, args in calls:
        with _app_conn(tb) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege,
                                                  match="account change refused"):
            conn.execute(call, args)
    # An audit row of another action does not back a role change (the transaction fails).
    with pytest.raises(psycopg.errors.InsufficientPrivilege), tb.ctx.db() as conn:
        row = audit.append(conn, tb.ctx.audit_key, "tb-test", "case.assign",
                           {"user": "tb-inv", "case": OTHER})
        conn.execute("SELECT bodycam_user_set_roles(%s, 'tb-inv', '{admin}')", (row.id,))
    # Nothing changed and nothing was journalled.
    users = {u["name"]: u for u in json.loads(tb.cli.run("users", "list", "--json",
                                                         check=True).stdout)}
    assert "mallory" not in users and users["tb-inv"]["roles"] == ["investigator"]
    assert users["tb-inv"]["cases"] == [] and not users["operator"]["disabled"]
    assert _last_change(tb) == before
    verified = tb.cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _worker_conn(tb: StackHandle) -> psycopg.Connection[tuple[object, ...]]:
    """A connection as the workers' role: the database URL a worker host is given."""
    url = json.loads((tb.home / "secrets" / "worker.json").read_text())["database_url"]
    return psycopg.connect(url, autocommit=True)


def test_a_worker_host_can_touch_no_account_and_no_decision_of_the_servers(
        tb: StackHandle) -> None:
    """What a worker host taken over holds (its database role, its sealing key) makes no
    account or token, reads none, and changes no policy, threshold, review or search."""
    with _app_conn(tb) as conn:
        conn.execute("SELECT 1 FROM api_tokens LIMIT 1")  # the server's role reads them
    refused = [
        "SELECT name, roles FROM users", "SELECT sha256 FROM api_tokens",
        "SELECT * FROM case_assignments", "SELECT * FROM account_changes",
        "SELECT bodycam_user_create(1, 'mallory', '{admin}', 'x')",
        "SELECT bodycam_token_issue(1, gen_random_uuid(), 'operator', repeat('a', 64),"
        " 'account', now() + interval '1 day', 'x')",
        "SELECT bodycam_case_assign(1, 'operator', 'X', 'x')",
        "INSERT INTO policy (profile, reviewers_required, retention_days, enrolment_approval,"
        " reviewers_explicit, changed_by, reason) VALUES ('standard', 1, 30, false, false,"
        " 'mallory', 'x')",
        "UPDATE policy SET reviewers_required = 1",
        "INSERT INTO thresholds (model, default_threshold, floor, changed_by, reason)"
        " VALUES ('dlib-resnet', 0.1, 0.1, 'mallory', 'x')",
        "INSERT INTO reviews (match_id, reviewer, decision, note, review_round)"
        " SELECT id, 'mallory', 'confirmed', 'x', 1 FROM matches LIMIT 1",
        "UPDATE searches SET purpose = 'x'", "DELETE FROM searches",
        "UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log",
        # A hold, a watchlist entry or its faces, a decision: found changed by a worker role.
        "DELETE FROM held_cases", f"INSERT INTO held_cases (case_id, held_by, reason)"
        f" VALUES ('{OTHER}', 'mallory', 'x')",
        "INSERT INTO subjects (case_id, name, reason, created_by) VALUES ('X', 'n', 'r', 'm')",
        "UPDATE subjects SET name = 'x', created_by = 'mallory'",
        "INSERT INTO subject_faces (subject_id) SELECT id FROM subjects LIMIT 1",
        # An enrolment photo's record is the server's (migration 021).
        "INSERT INTO subject_photos (subject_id) SELECT id FROM subjects LIMIT 1",
        "DELETE FROM subject_photos", "UPDATE subject_photos SET photo_key = 'x'",
        "UPDATE matches SET subject_id = subject_id, similarity = 1",
        "ALTER ROLE bodycam_worker SUPERUSER", "DELETE FROM videos",
        # A redaction job is the server's to ask for and to record (migration 020).
        "INSERT INTO redaction_jobs (id, video_id, case_id, kind, requested_by) SELECT"
        " gen_random_uuid(), id, case_id, 'render', 'mallory' FROM videos LIMIT 1",
        "UPDATE redaction_jobs SET requested_by = 'mallory', request = '{}'",
        "UPDATE redaction_jobs SET derivative_id = gen_random_uuid()",
        "DELETE FROM redaction_jobs",
    ]
    for statement in refused:
        with _worker_conn(tb) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    # The log's order and its high-water mark, which the role must write: a mark a million
    # rows ahead stopped every audited action; a row past the end left a gap for good.
    with psycopg.connect(home_admin_url(tb.home)) as su:
        last = su.execute("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()
        assert last is not None
        subject = su.execute("INSERT INTO subjects (case_id, name, reason, created_by)"
                             " VALUES (%s, 'tb-entry', 'x', 'tb') RETURNING id",
                             (CASE,)).fetchone()
        track = su.execute("SELECT id, video_id FROM tracks LIMIT 1").fetchone()
        assert subject is not None and track is not None
    broken = [("UPDATE audit_head SET last_id = last_id + 1000000", ()),
              ("INSERT INTO audit_log (id, at, actor, action, details, prev_hash, hash, seal)"
               " VALUES (%s, now(), 'system:worker', 'processing.done', '{}', %s, 'h', 's')",
               (int(last[0]) + 1000, last[1])),
              ("INSERT INTO audit_log (id, at, actor, action, details, prev_hash, hash, seal)"
               " VALUES (%s, now(), 'system:worker', 'processing.done', '{}', 'x', 'h', 's')",
               (int(last[0]) + 1,)),
              ("INSERT INTO matches (subject_id, track_id, video_id, case_id, similarity,"
               " threshold, model, status) VALUES (%s, %s, %s, %s, 0.9, 0.5, 'm', 'confirmed')",
               (subject[0], track[0], track[1], CASE))]
    for statement, args in broken:
        with _worker_conn(tb) as conn, pytest.raises(psycopg.errors.RaiseException):
            conn.execute(statement, args)
    with _worker_conn(tb) as conn:  # a lead it makes is pending; it can end it, not decide it
        [match] = conn.execute(
            "INSERT INTO matches (subject_id, track_id, video_id, case_id, similarity,"
            " threshold, model) VALUES (%s, %s, %s, %s, 0.9, 0.5, 'm') RETURNING id",
            (subject[0], track[0], track[1], CASE)).fetchone() or (None,)
        for decided in ("confirmed", "rejected"):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute("UPDATE matches SET status = %s WHERE id = %s", (decided, match))
        # Nor a decision's time, nor a reopening no supervisor made (it put a deleted
        # rejection back in the queue as reopened by a colleague).
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute("UPDATE matches SET decided_at = now() WHERE id = %s", (match,))
        with pytest.raises(psycopg.errors.RaiseException):
            conn.execute(
                "INSERT INTO matches (subject_id, track_id, video_id, case_id, similarity,"
                " threshold, model, review_round, reopened_by, reopen_reason, reopened_from)"
                " VALUES (%s, %s, %s, %s, 0.9, 0.5, 'm', 1, 'bob', 'x', 'rejected')",
                (subject[0], track[0], track[1], CASE))
        conn.execute("UPDATE matches SET status = 'withdrawn', decided_at = now()"
                     " WHERE id = %s", (match,))
        # Nor does it delete an ended lead, or the track that carries one (with its reviews).
        for statement, arg in (("DELETE FROM matches WHERE id = %s", match),
                               ("DELETE FROM tracks WHERE id = %s", track[0])):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(statement, (arg,))
        conn.execute("UPDATE subjects SET removed_at = now(), removed_by = 'system:retention'"
                     " WHERE id = %s", (subject[0],))
    # A job it computes it ends computed or failed, never done or refused, and one ended it
    # does not reopen (a done render's record is the server's, sealed).
    with psycopg.connect(home_admin_url(tb.home)) as su:
        for state in ("queued", "done"):
            su.execute("INSERT INTO redaction_jobs (id, video_id, case_id, kind, requested_by,"
                       " state) VALUES (gen_random_uuid(), %s, %s, 'plan', 'tb', %s)"
                       " ON CONFLICT DO NOTHING", (track[1], CASE, state))
    with _worker_conn(tb) as conn:
        for statement in ("UPDATE redaction_jobs SET state = 'done' WHERE state = 'queued'",
                          "UPDATE redaction_jobs SET state = 'refused' WHERE state = 'queued'",
                          "UPDATE redaction_jobs SET state = 'queued' WHERE state = 'done'"):
            with pytest.raises(psycopg.errors.RaiseException):
                conn.execute(statement)
        conn.execute("UPDATE redaction_jobs SET state = 'running', lease_owner = 'w'"
                     " WHERE state = 'queued' AND requested_by = 'tb'")
    with _worker_conn(tb) as conn:  # what it needs, it has
        assert conn.execute("SELECT count(*) FROM videos").fetchone() is not None
        assert conn.execute("SELECT count(*) FROM policy").fetchone() is not None
    # The workers sealed their rows with their own key, not the audit key, and they verify.
    key = json.loads((tb.home / "secrets" / "server.json").read_text())["audit_key"]
    with psycopg.connect(home_admin_url(tb.home)) as su:
        rows = su.execute("SELECT hash, seal FROM audit_log WHERE actor = 'system:worker'"
                          " AND action = 'processing.done'").fetchall()
    assert rows, "a video was processed earlier in this module"
    for digest, sealed in rows:
        assert sealed == audit.seal(audit.worker_key(key), str(digest))
        assert sealed != audit.seal(key, str(digest))
    # What a deployment gives its worker hosts in place of the audit key (infra/DEPLOY.md).
    given = json.loads((tb.home / "secrets" / "worker.json").read_text())["audit_key"]
    assert tb.cli.run("worker-key", check=True).stdout.strip() == given != key
    verified = tb.cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_audited_functions_change_accounts_and_leave_journal_and_audit_rows(
        tb: StackHandle) -> None:
    before = _last_change(tb)
    token = tb.cli.run("users", "add", "tb-clerk", "--role", "clerk", check=True).stdout.strip()
    tb.cli.run("users", "assign", "tb-clerk", "--case", CASE, check=True)
    with tb.ctx.db() as conn:
        accounts.set_roles(conn, tb.ctx.audit_key, "tb-clerk", ["clerk", "investigator"],
                           "tb-test")
    env = {"BODYCAM_USER": "tb-clerk", "BODYCAM_TOKEN": token}
    assert tb.cli.run("jobs", "--json", extra_env=env).returncode == 0
    tb.cli.run("users", "disable", "tb-clerk", check=True)
    assert tb.cli.run("jobs", "--json", extra_env=env).returncode != 0
    # A disabled account is given no case (bb56: it was, though the web app offers none).
    refused = tb.cli.run("users", "assign", "tb-clerk", "--case", CASE + "-2")
    assert refused.returncode != 0 and "tb-clerk is disabled" in refused.stderr, refused.stderr
    changes = _journal(tb, before)
    got = [(c["action"], c["audit_action"]) for c in changes]
    assert got == [("users.insert", "user.create"), ("api_tokens.insert", "user.create"),
                   ("case_assignments.insert", "case.assign"),
                   ("users.update", "user.roles"),
                   ("users.update", "user.disable"), ("api_tokens.update", "user.disable")]
    assert all(c["details"]["user"] == "tb-clerk" for c in changes)  # type: ignore[index]
    assert [c["actor"] for c in changes] == ["operator"] * 3 + ["tb-test"] + ["operator"] * 2
    assert changes[3]["details"]["roles"] == ["clerk", "investigator"]  # type: ignore[index]
    assert changes[-1]["details"]["revoked"] is True  # type: ignore[index]
    # No token or hash reaches the journal.
    assert token not in json.dumps([c["details"] for c in changes])
    assert accounts.token_hash(token) not in json.dumps([c["details"] for c in changes])
    verified = tb.cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_bad_account_input_is_refused_with_one_line_and_leaves_no_row(tb: StackHandle) -> None:
    before = _last_change(tb)
    for args in (["users", "add", "tb-bad", "--role", "sheriff"],
                 ["users", "add", "--role", "clerk", "--", "-rf"],  # an option's look (bb53)
                 ["users", "assign", "nobody-here", "--case", CASE],
                 ["users", "disable", "nobody-here"]):
        proc = tb.cli.run(*args)
        assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "Traceback" not in proc.stderr
    assert _last_change(tb) == before


def test_a_change_made_as_superuser_behind_the_apps_back_makes_audit_verify_fail(
        tb: StackHandle) -> None:
    tb.cli.run("users", "add", "tb-sneak", "--role", "clerk", check=True)
    assert tb.cli.run("audit", "verify").returncode == 0
    with psycopg.connect(home_admin_url(tb.home), autocommit=True) as su:
        su.execute("UPDATE users SET roles = '{admin,clerk}' WHERE name = 'tb-sneak'")
        su.execute("INSERT INTO case_assignments (user_name, case_id, assigned_by)"
                   " VALUES ('tb-sneak', %s, 'tb-sneak')", (OTHER,))
        # Pointing the journal at an existing audit row does not help either: it is not a
        # row of this transaction.
        su.execute("SELECT set_config('bodycam.audit_id', (SELECT max(id) FROM audit_log)::text,"
                   " false)")
        su.execute("UPDATE users SET disabled_at = now() WHERE name = 'tb-sneak'")
    sneaked = [c for c in _journal(tb) if c["audit_id"] is None]
    assert [c["action"] for c in sneaked] == ["users.update", "case_assignments.insert",
                                             "users.update"]
    assert {c["actor"] for c in sneaked} == {"db:postgres"}
    proc = tb.cli.run("audit", "verify")
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, text
    assert "3 account change(s) with no audit row" in text and "tb-sneak" in text
    assert "first bad row" not in text, text  # no row is bad: it said "first bad row None"


def test_a_row_a_worker_host_seals_in_a_persons_name_makes_audit_verify_fail(
        tb: StackHandle) -> None:
    """The workers' key seals the rows workers write only (their actors, their actions): one
    naming a person (a login, a search) or another action (an account made under a system
    actor verified until the action was checked too) fails verification, naming the workers'
    key. (Last: the log is append-only, so it stays failed.)"""
    wkey = json.loads((tb.home / "secrets" / "worker.json").read_text())["audit_key"]
    with _worker_conn(tb) as conn:
        conn.autocommit = False
        conn.row_factory = psycopg.rows.dict_row  # type: ignore[assignment]
        row = audit.append(conn, wkey, "system:worker", "user.create",  # type: ignore[arg-type]
                           {"user": "mallory", "roles": ["admin"]})
        conn.commit()
    proc = tb.cli.run("audit", "verify")
    text = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 1, text
    assert f"first bad row {row.id}" in text and "the workers' key" in text, text
