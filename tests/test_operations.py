"""Operations of the embedded stack: store exposure, privacy of the home, outages, cache, fixity."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import psutil
import psycopg
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from bodycam import cache, jobs, redaction_jobs
from bodycam.audit import ANCHOR_PREFIX
from bodycam.config import Settings
from bodycam.context import Context
from bodycam.services import home_admin_url
from bodycam.storage import original_key
from tests.conftest import EXTERNAL, HAMILTON, TESTDATA, Cli, StackHandle

P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"

# A stack of this module's own: its tests kill services, flip stored bytes and run the fixity
# job every few seconds, which must not disturb the session's shared stack.
OPS_ENV = {
    "BODYCAM_PIPELINE__EMBEDDER": "dlib-resnet",
    "BODYCAM_JOBS__LEASE_S": "15",
    "BODYCAM_JOBS__HEARTBEAT_S": "2",
    "BODYCAM_JOBS__REAP_INTERVAL_S": "1",
    "BODYCAM_JOBS__RECONCILE_INTERVAL_S": "2",
    "BODYCAM_JOBS__FIXITY_INTERVAL_S": "5",
    "BODYCAM_GPU_WORKERS": "1",
    "BODYCAM_CPU_WORKERS": "1",
}
NOBODY = "nobody"
# Another account runs the system's interpreter: the venv may sit in a directory it cannot open.
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or sys.executable


def _settings(env: dict[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return Settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_setting_joined_to_its_section_by_one_underscore_is_refused() -> None:
    """`BODYCAM_SEARCH_DEFAULT_THRESHOLD` (one underscore) named no setting, and the default
    stood with no word (bb40); its spelling with two is read."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"BODYCAM_PIPELINE_SAMPLE_FPS names no setting.*"
                                              r"BODYCAM_PIPELINE__SAMPLE_FPS"):
        _settings({"BODYCAM_PIPELINE_SAMPLE_FPS": "2"})
    assert _settings({"BODYCAM_PIPELINE__SAMPLE_FPS": "2"}).pipeline.sample_fps == 2
    assert _settings({"BODYCAM_CPU_WORKERS": "2"}).cpu_workers == 2  # no section's name


@pytest.mark.parametrize("command", [("serve", "--port", "0"), ("migrate",), ("status",)])
def test_a_refused_setting_is_one_line_that_repeats_no_value_read(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    """`bodycam serve` (compose's api service) refused a production setting with pydantic's
    traceback, whose input repeated 22 characters of the audit key into the service's log
    (bb50). Every command refuses in one line naming the setting, and no value read."""
    key = "audit-" + secrets.token_hex(16)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "BODYCAM_HOME": str(tmp_path / "home"), "BODYCAM_ENV": "production",
           "BODYCAM_DATABASE_URL": "postgresql://u:dbsecret42@127.0.0.1:1/db",
           "BODYCAM_S3_ENDPOINT_URL": "http://127.0.0.1:1", "BODYCAM_REDIS_URL":
           "redis://127.0.0.1:1/0", "BODYCAM_S3_SECRET_KEY": "short", "BODYCAM_AUDIT_KEY": key}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    proc = Cli(env).run(*command, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "BODYCAM_S3_SECRET_KEY is a placeholder or too short" in lines[0], lines
    assert not any(key[i:i + 6] in proc.stderr + proc.stdout for i in range(len(key) - 5))
    assert "dbsecret42" not in proc.stderr


@pytest.mark.parametrize("command", [("migrate",), ("bootstrap-admin", "first")])
def test_a_local_command_whose_database_does_not_answer_says_so_in_one_line(
        tmp_path: Path, command: tuple[str, ...]) -> None:
    """`bodycam migrate` against a database that refused the connection printed a traceback
    of 60 lines (bb53): one line, as every command's, naming what to check."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path),
           "BODYCAM_HOME": str(tmp_path / "home"),
           "BODYCAM_DATABASE_URL": "postgresql://u:dbsecret42@127.0.0.1:1/db",
           "BODYCAM_S3_ENDPOINT_URL": "http://127.0.0.1:1", "BODYCAM_REDIS_URL":
           "redis://127.0.0.1:1/0", "BODYCAM_AUDIT_KEY": "audit-" + secrets.token_hex(16)}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    proc = Cli(env).run(*command, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0] == ("error: database unreachable: OperationalError: check that it runs"
                        " and BODYCAM_DATABASE_URL, then retry"), lines
    assert "dbsecret42" not in proc.stderr + proc.stdout


def own_stack(home: Path, extra: dict[str, str] | None = None,
              umask: int | None = None) -> Iterator[StackHandle]:
    """A real embedded stack in its own BODYCAM_HOME (the operations settings plus `extra`),
    started under `umask` when given, and stopped after."""
    if not TESTDATA.exists():
        pytest.exit(f"test data not found at {TESTDATA}: set BODYCAM_TESTDATA", returncode=2)
    env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
    env.update(OPS_ENV)
    env.update(extra or {})
    env["BODYCAM_HOME"] = str(home)
    cli = Cli(env)
    old = os.umask(umask) if umask is not None else None  # children inherit it
    try:
        up = cli.run("up", timeout=300)
    finally:
        if old is not None:
            os.umask(old)
    if up.returncode != 0:
        cli.run("down")
        pytest.fail(f"bodycam up failed:\n{up.stderr}")
    try:
        yield StackHandle(home=home, cli=cli, ctx=Context.load(_settings(env)))
    finally:
        cli.run("down", timeout=120)


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """A real embedded stack in its own BODYCAM_HOME for this module."""
    yield from own_stack(tmp_path_factory.mktemp("ops-home"))


def _state(ops: StackHandle) -> dict[str, object]:
    """The stack's state with the server's secrets (service URLs)."""
    loaded: dict[str, object] = json.loads((ops.home / "stack.json").read_text())
    loaded.update(json.loads((ops.home / "secrets" / "server.json").read_text()))
    return loaded


def _pid(ops: StackHandle, name: str) -> int:
    [pid] = [int(p["pid"]) for p in _state(ops)["processes"]  # type: ignore[attr-defined]
             if p["name"] == name]
    return pid


def _status(ops: StackHandle) -> tuple[int, dict[str, object]]:
    proc = ops.cli.run("status", "--json")
    return proc.returncode, json.loads(proc.stdout)


def _ingest(ops: StackHandle, case: str) -> dict[str, object]:
    [res] = ops.cli.json("ingest", str(HAMILTON), "--case", case, "--officer", "O",  # type: ignore[misc]
                         "--device", "D", "--wait")
    return dict(res)


def _weed(ops: StackHandle) -> psutil.Process:
    [weed] = [c for c in psutil.Process(_pid(ops, "s3")).children(recursive=True)
              if c.name() == "weed"]
    return weed


def _admin_s3(ops: StackHandle, secret: str | None = None) -> object:
    s3 = ops.ctx.services.s3
    return boto3.client(
        "s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
        aws_secret_access_key=secret or s3.secret_key, region_name=s3.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    """Run Python code as an unprivileged local account (another user of the machine)."""
    import pwd

    return subprocess.run([SYSTEM_PYTHON, "-c", code], user=NOBODY,
                          group=pwd.getpwnam(NOBODY).pw_gid,
                          capture_output=True, text=True, timeout=60, cwd="/")


def _http(method: str, url: str, body: bytes | None = None) -> int | str:
    """The HTTP status of a request, or the reason no connection was made."""
    req = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        return f"no connection: {exc}"


def _video_status(ops: StackHandle, video_id: str) -> str:
    with ops.ctx.db() as conn:
        return str(conn.execute("SELECT status FROM videos WHERE id = %s",
                                (video_id,)).fetchone()["status"])


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s}s")


# --- the evidence store is reachable only through S3 with keys -------------------------------

def test_seaweedfs_internal_servers_cannot_be_reached_from_the_machine(
        ops: StackHandle) -> None:
    sha = str(_ingest(ops, "OPS-EXPOSE")["sha256"])
    weed = _weed(ops)
    flags = dict(a.lstrip("-").split("=", 1) for a in weed.cmdline()[2:] if "=" in a)
    internal = {k: int(v) for k, v in flags.items() if k.endswith((".port", ".port.grpc"))}
    assert {"master.port", "volume.port", "filer.port", "master.port.grpc",
            "volume.port.grpc", "filer.port.grpc"} <= set(internal)
    bucket = ops.ctx.services.s3.bucket
    okey = original_key(sha)
    # Every request an attacker would make against the internal servers, on every port.
    attempts = [("GET", "/"), ("GET", f"/buckets/{bucket}/?pretty=y"),
                ("GET", f"/buckets/{bucket}/{okey}"), ("GET", "/dir/assign"),
                ("PUT", f"/buckets/{bucket}/{ANCHOR_PREFIX}000000000001.json"),
                ("POST", f"/buckets/{bucket}/{okey}"),
                ("DELETE", f"/buckets/{bucket}/{okey}"),
                ("DELETE", f"/buckets/{bucket}/{ANCHOR_PREFIX}000000000001.json"),
                ("GET", f"/col/delete?collection={bucket}")]
    for name, port in internal.items():
        for method, path in attempts:
            got = _http(method, f"http://127.0.0.1:{port}{path}", b"x" if method != "GET"
                        else None)
            assert isinstance(got, str), f"{name} {port} answered {method} {path}: {got}"
    # The servers live in network and mount namespaces of their own, and no socket of the
    # SeaweedFS process is listening in this machine's network namespace.
    for ns in ("net", "mnt"):
        assert os.readlink(f"/proc/{weed.pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
    ours = {c.laddr.port for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in {weed.pid, _pid(ops, "s3")}}
    assert ours == {int(str(ops.ctx.services.s3.endpoint_url).rsplit(":", 1)[1])}
    # The unix sockets (S3 and filer) are in the 0700 run dir: another account cannot use them.
    for sock in ("s3.sock", "filer.sock"):
        path = ops.home / "run" / sock
        assert path.exists()
        tried = _as_nobody(
            "import socket; s = socket.socket(socket.AF_UNIX); "
            f"s.connect({str(path)!r}); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); "
            "print(s.recv(100))")
        assert tried.returncode != 0 and "PermissionError" in tried.stderr, tried
    # The evidence is untouched.
    stored = ops.ctx.store.sha256_of(okey)
    assert stored is not None and stored[0] == sha


def test_the_s3_gateway_refuses_every_request_without_the_keys(ops: StackHandle) -> None:
    sha = str(_ingest(ops, "OPS-S3KEYS")["sha256"])
    base = f"{ops.ctx.services.s3.endpoint_url}/{ops.ctx.services.s3.bucket}"
    okey = original_key(sha)
    anchor = max(o.key for o in ops.ctx.store.list(ANCHOR_PREFIX))  # the latest audit anchor
    anchor_before = ops.ctx.store.get_bytes(anchor)
    for method, path in [("GET", "/"), ("GET", f"/{okey}"), ("PUT", f"/{anchor}"),
                         ("PUT", f"/{okey}"), ("DELETE", f"/{okey}"),
                         ("DELETE", f"/{anchor}")]:
        got = _http(method, base + path, b"{}" if method == "PUT" else None)
        assert got in (401, 403), f"anonymous {method} {path}: {got}"
    forged = _admin_s3(ops, secret="not-the-secret-key-000000000000")
    for call in (lambda: forged.list_objects_v2(Bucket=ops.ctx.services.s3.bucket),  # type: ignore[attr-defined]
                 lambda: forged.delete_object(Bucket=ops.ctx.services.s3.bucket,  # type: ignore[attr-defined]
                                              Key=okey)):
        with pytest.raises(ClientError):
            call()
    # Nothing changed, and with the keys the store works.
    assert ops.ctx.store.get_bytes(anchor) == anchor_before
    stored = ops.ctx.store.sha256_of(okey)
    assert stored is not None and stored[0] == sha


# --- the home is private ---------------------------------------------------------------------

def test_the_home_is_0700_and_everything_the_stack_wrote_is_owner_only(
        ops: StackHandle) -> None:
    res = _ingest(ops, "OPS-PERMS")
    assert res["status"] == "done"
    assert (ops.home / "cache" / str(res["sha256"])).exists()
    assert ops.home.stat().st_mode & 0o777 == 0o700
    loose = []
    for root, dirs, files in os.walk(ops.home):
        for name in dirs + files:
            path = Path(root, name)
            st = path.lstat()
            if st.st_mode & 0o077:
                loose.append(f"{oct(st.st_mode & 0o777)} {path}")
    assert not loose, "\n".join(loose[:20])
    checked = {p.name for p in ops.home.iterdir()}
    assert {"stack.json", "client.json", "secrets", "operator.token", "logs", "cache", "pgdata",
            "s3data", "redis", "run"} <= checked
    assert {p.name for p in (ops.home / "secrets").iterdir()} == {"admin.json", "server.json",
                                                                   "worker.json"}
    # Another account of the machine can neither list the home nor read what is in it.
    tried = _as_nobody(f"import os; print(os.listdir({str(ops.home)!r}))")
    assert tried.returncode != 0 and "PermissionError" in tried.stderr
    for name in ("stack.json", "secrets/server.json", "secrets/admin.json",
                 "secrets/worker.json"):
        tried = _as_nobody(f"print(open({str(ops.home / name)!r}).read())")
        assert tried.returncode != 0 and "PermissionError" in tried.stderr


# --- outages ---------------------------------------------------------------------------------

def test_ingest_during_an_s3_outage_prints_one_line_and_leaves_nothing(
        ops: StackHandle) -> None:
    before = ops.counts()
    os.kill(_pid(ops, "s3"), signal.SIGKILL)
    _wait(lambda: _status(ops)[1]["services"]["s3"] == "stopped", 20,  # type: ignore[index]
          "status did not report S3 stopped")
    try:
        proc = ops.cli.run("ingest", str(HAMILTON), "--case", "OPS-OUTAGE", "--officer", "O",
                           "--device", "D")
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert "object store (S3)" in lines[0] and "bodycam up" in lines[0]
        assert "Traceback" not in proc.stderr + proc.stdout
    finally:
        ops.cli.run("up", check=True, timeout=300)
    assert ops.counts() == before


def test_an_ingest_while_the_broker_is_paused_is_answered_and_processed_once_it_resumes(
        ops: StackHandle) -> None:
    """A broker that stops answering (paused, a host cut off) held an ingest's answer as long
    as it did, 600 s until the client gave up, and the client then said it failed though the
    video was stored (bb49). A send gives up in about 10 s (queue.SEND_TIMEOUT_S): the answer
    is `queued`, and the reaper sends the unit once the broker answers again."""
    redis = psutil.Process(_pid(ops, "redis"))
    redis.suspend()
    try:  # the command's own limit: without the bound it waits as long as the pause
        proc = ops.cli.run("ingest", str(HAMILTON), "--case", "OPS-REDIS-PAUSED", "--officer",
                           "O", "--device", "D", "--json", timeout=90)
    finally:
        redis.resume()
    assert proc.returncode == 0, proc.stderr
    [res] = json.loads(proc.stdout)
    assert res["status"] == "queued" and not res["duplicate"], res
    video = str(res["video_id"])
    _wait(lambda: _video_status(ops, video) == "done", 240,
          "the video stored while the broker was paused was processed")


@pytest.mark.parametrize("service", ["redis", "s3", "postgres"])
def test_up_after_a_service_was_killed_heals_the_stack_and_processing_resumes(
        ops: StackHandle, service: str) -> None:
    url_key = {"redis": "redis_url", "s3": "s3_endpoint_url", "postgres": "database_url"}[service]
    url = _state(ops)[url_key]
    apps_before = {n: _pid(ops, n) for n in ("api", "beat", "worker-cpu-1", "worker-gpu-1")}
    victim = _weed(ops) if service == "s3" else psutil.Process(_pid(ops, service))
    victim.kill()  # SIGKILL: SeaweedFS itself, Redis, or the Postgres postmaster
    _wait(lambda: _status(ops)[1]["services"][service] == "stopped", 20,  # type: ignore[index]
          f"status did not report {service} stopped")
    code, st = _status(ops)
    assert code == 1 and st["ok"] is False
    early = None
    if service == "redis":
        # Stored, recorded and audited while the broker is down: the answer says so (it said
        # 503 "not stored"), and the work is queued once the broker is back.
        [res] = ops.cli.json("ingest", str(HAMILTON), "--case", "OPS-DURING-REDIS",  # type: ignore[misc]
                             "--officer", "O", "--device", "D")
        assert res["status"] == "queued" and not res["duplicate"], res
        early = str(res["video_id"])
        # What the broker could not take is marked, and the reaper's next run sends it: it
        # waited for the stale re-send, four leases after it was asked, however soon the
        # broker was back (bb45). Shown here without sending (rolled back).
        with ops.ctx.db() as conn:
            job = redaction_jobs.create(conn, early, "OPS-DURING-REDIS", redaction_jobs.PLAN,
                                        "operator")
        redaction_jobs.send(ops.ctx, job)
        cfg = ops.ctx.settings.jobs
        with ops.ctx.db() as conn, conn.transaction(force_rollback=True):
            units = jobs.reap(conn, ops.ctx.audit_key, cfg, stale_pending_s=3600)
            sent = redaction_jobs.reap(conn, ops.ctx.store, ops.ctx.audit_key, cfg,
                                       stale_queued_s=3600)
        assert {v for v, _ in units} == {early} and sent == [job], (units, sent)
        with ops.ctx.db() as conn:  # no one asks a plan of a video still being processed
            conn.execute("DELETE FROM redaction_jobs WHERE id = %s", (job,))
    anchored = None
    if service == "s3":
        # Committed with the object store down: the answer says done (it was 503, and a
        # retry was refused as done already), and the row is anchored once the store is back.
        made = ops.cli.run("users", "add", "ops-during-s3", "--role", "clerk")
        assert made.returncode == 0, made.stderr
        with ops.ctx.db() as conn:
            anchored = int(conn.execute("SELECT max(id) AS n FROM audit_log").fetchone()["n"])
    up = ops.cli.run("up", timeout=300)
    assert up.returncode == 0, up.stderr
    code, st = _status(ops)
    assert code == 0 and st["ok"] is True, st
    assert set(st["services"].values()) == {"running"}  # type: ignore[attr-defined]
    # The service is back where every process expects it, and its dependents were restarted.
    assert _state(ops)[url_key] == url
    assert all(_pid(ops, n) != pid for n, pid in apps_before.items())
    if anchored is not None:  # before any other action could anchor a later row
        def top_anchor() -> int:
            return max((int(o.key[len(ANCHOR_PREFIX):].split(".")[0])
                        for o in ops.ctx.store.list(ANCHOR_PREFIX)), default=0)
        _wait(lambda: top_anchor() >= anchored, 120,
              "the row committed while the store was down was anchored by the server")
    res = _ingest(ops, f"OPS-AFTER-{service.upper()}")
    assert res["status"] == "done"
    if early is not None:
        _wait(lambda: _video_status(ops, early) == "done", 240,
              "the video stored while the broker was down was processed")


# --- the worker's cache of originals ---------------------------------------------------------

def _cached(root: Path, name: str, size: int, age_s: float) -> Path:
    path = root / name
    path.write_bytes(b"v" * size)
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def test_up_from_an_environment_with_another_model_refuses_to_heal_with_it(
        ops: StackHandle) -> None:
    """A heal from a shell without BODYCAM_PIPELINE__EMBEDDER restarted the server with the
    production default (FaceNet) beside workers running dlib-resnet: a silent model switch."""
    apps = {n: _pid(ops, n) for n in ("api", "worker-cpu-1")}
    proc = ops.cli.run("up", extra_env={"BODYCAM_PIPELINE__EMBEDDER": "facenet-vggface2"},
                       timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "runs the embedder dlib-resnet" in proc.stderr and "never switched silently" in \
        proc.stderr, proc.stderr
    assert {n: _pid(ops, n) for n in apps} == apps, "nothing was restarted"
    ops.cli.run("up", check=True, timeout=120)  # the stack's own model: a no-op


def test_cache_eviction_removes_least_recently_used_originals_but_never_one_in_use(
        tmp_path: Path) -> None:
    root = cache.cache_dir(tmp_path)
    shas = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(5)]
    oldest_in_use = _cached(root, shas[0], 100, age_s=5000)
    old = _cached(root, shas[1], 100, age_s=4000)
    middle = _cached(root, shas[2], 100, age_s=3000)
    recent = _cached(root, shas[3], 100, age_s=2000)
    just_used = _cached(root, shas[4], 100, age_s=1)
    partial = _cached(root, cache.PART_PREFIX + "x", 100, age_s=9000)
    removed = cache.evict(root, 250, in_use={shas[0]})
    assert removed == [shas[1], shas[2], shas[3]]
    assert oldest_in_use.exists() and just_used.exists() and partial.exists()
    assert not old.exists() and not middle.exists() and not recent.exists()
    # Touching a file makes it recent: it outlives an older one.
    a = _cached(root, shas[1], 100, age_s=4000)
    b = _cached(root, shas[2], 100, age_s=3000)
    cache.touch(a)
    assert cache.evict(root, 250, in_use={shas[0]}, grace_s=0) == [shas[2], shas[4]]
    assert a.exists() and not b.exists()


def test_processing_bounds_the_cache_and_a_purge_removes_the_cached_original(
        ops: StackHandle) -> None:
    res = _ingest(ops, "OPS-CACHE")
    sha, video_id = str(res["sha256"]), str(res["video_id"])
    cached = ops.home / "cache" / sha
    assert cached.exists()
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == sha
    # The tracks expire: backdate them past the retention period, then purge.
    with psycopg.connect(home_admin_url(ops.home), autocommit=True) as conn:
        conn.execute("UPDATE tracks SET created_at = now() - interval '400 days'"
                     " WHERE video_id = %s", (video_id,))
    purged = ops.cli.run("purge", check=True)
    assert "purged" in purged.stdout
    assert not cached.exists()
    assert ops.ctx.store.sha256_of(original_key(sha)) is not None  # the evidence stays


# --- fixity ----------------------------------------------------------------------------------

def _audit_rows(ops: StackHandle, action: str) -> list[dict[str, object]]:
    with ops.ctx.db() as conn:
        return [dict(r) for r in conn.execute(
            "SELECT id, actor, details FROM audit_log WHERE action = %s ORDER BY id",
            (action,)).fetchall()]


def test_fixity_reports_and_audits_a_flipped_byte_in_an_original_and_a_thumbnail(
        ops: StackHandle) -> None:
    res = _ingest(ops, "OPS-FIXITY")
    sha = str(res["sha256"])
    # An enrolment photo is the record of who is sought: re-hashed too (it was not).
    enrolled = ops.cli.run("subjects", "enroll", "--name", "p06", "--photo", str(P06),
                           "--case", "OPS-FIXITY", "--reason", "fixity test", "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    subject = str(json.loads(enrolled.stdout)["subject_id"])
    clean = ops.cli.run("fixity", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["ok"] is True and json.loads(clean.stdout)["photos"] >= 1
    with ops.ctx.db() as conn:
        thumb = str(conn.execute("SELECT thumbnail_key FROM tracks WHERE video_id = %s"
                                 " AND thumbnail_key IS NOT NULL LIMIT 1",
                                 (res["video_id"],)).fetchone()["thumbnail_key"])
        photo = str(conn.execute("SELECT photo_key FROM subject_faces WHERE subject_id = %s",
                                 (subject,)).fetchone()["photo_key"])
    admin = _admin_s3(ops)
    bucket = ops.ctx.services.s3.bucket
    okey = original_key(sha)
    saved = {k: ops.ctx.store.get_bytes(k) for k in (okey, thumb, photo)}
    flipped: dict[str, str] = {}
    try:
        for key, data in saved.items():
            bad = bytearray(data)
            bad[len(bad) // 2] ^= 0x01
            admin.put_object(Bucket=bucket, Key=key, Body=bytes(bad))  # type: ignore[attr-defined]
            flipped[key] = hashlib.sha256(bad).hexdigest()
        since = max([int(r["id"]) for r in _audit_rows(ops, "fixity.mismatch")], default=0)
        proc = ops.cli.run("fixity", "--json")
        assert proc.returncode == 1
        report = json.loads(proc.stdout)
        assert report["ok"] is False
        got = {m["key"]: m for m in report["mismatched"]}
        assert got[okey]["expected_sha256"] == sha
        assert got[okey]["actual_sha256"] == flipped[okey]
        assert got[thumb]["expected_sha256"] == hashlib.sha256(saved[thumb]).hexdigest()
        assert got[thumb]["actual_sha256"] == flipped[thumb]
        audited = {str(r["details"]["key"]): r for r in _audit_rows(ops, "fixity.mismatch")  # type: ignore[index]
                   if int(r["id"]) > since and r["actor"] == "operator"}
        assert audited[okey]["details"]["actual_sha256"] == flipped[okey]  # type: ignore[index]
        assert audited[okey]["details"]["expected_sha256"] == sha  # type: ignore[index]
        assert audited[thumb]["details"]["actual_sha256"] == flipped[thumb]  # type: ignore[index]
        assert (got[photo]["kind"], got[photo]["subject_id"]) == ("enrolment photo", subject)
        assert audited[photo]["details"]["case"] == "OPS-FIXITY"  # type: ignore[index]
        text = ops.cli.run("fixity")
        assert text.returncode == 1 and f"MISMATCH original {okey}" in text.stdout
        assert f"MISMATCH enrolment photo {photo} (subject {subject})" in text.stdout
    finally:
        for key, data in saved.items():
            admin.put_object(Bucket=bucket, Key=key, Body=data)  # type: ignore[attr-defined]
    again = ops.cli.run("fixity", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["ok"] is True
    verified = ops.cli.run("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_one_fixity_check_runs_at_a_time(ops: StackHandle) -> None:
    """A check reads every stored byte, and an auditor's asked at once each ran (bb42): while
    one runs (its lock held here), another waits ASKED_WAIT_S for it and is then refused in
    one line, auditing nothing; once it has ended, the next runs."""
    from bodycam import fixity
    from bodycam.db import autocommit

    def runs() -> int:  # asked ones (the scheduler's, every 5 s here, are system:fixity)
        return len([r for a in ("fixity.ok", "fixity.failed") for r in _audit_rows(ops, a)
                    if r["actor"] != fixity.SCHEDULED_ACTOR])

    before = runs()
    with autocommit(ops.ctx.services.database_url) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (fixity.FIXITY_LOCK,))
        busy = ops.cli.run("fixity")
        assert busy.returncode == 1 and busy.stderr.strip().endswith(
            "a fixity check is running: ask again once it has ended"), busy.stderr
        assert len(busy.stderr.strip().splitlines()) == 1, busy.stderr
        assert runs() == before
    done = ops.cli.run("fixity", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["ok"] is True, done.stderr
    assert runs() == before + 1


def test_the_scheduler_runs_fixity_and_audits_each_run(ops: StackHandle) -> None:
    before = len([r for r in _audit_rows(ops, "fixity.ok") if r["actor"] == "system:fixity"])
    _wait(lambda: len([r for r in _audit_rows(ops, "fixity.ok")
                       if r["actor"] == "system:fixity"]) > before, 60,
          "no scheduled fixity run was audited")
    [last] = [r for r in _audit_rows(ops, "fixity.ok") if r["actor"] == "system:fixity"][-1:]
    assert int(last["details"]["originals"]) >= 1  # type: ignore[index]


def test_a_port_another_process_took_is_not_reused() -> None:
    from bodycam.stack import _stable_port

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        state: dict[str, object] = {"ports": {"redis": taken}}
        port = _stable_port(state, "redis")
    assert port != taken and state["ports"] == {"redis": port}
    free = {"ports": {"redis": port}}
    assert _stable_port(free, "redis") == port  # type: ignore[arg-type]


def test_up_on_a_nearly_full_disk_says_so_in_one_line_and_down_stops_what_it_started(
        tmp_path: Path) -> None:
    """SeaweedFS stores nothing on a disk under its reserve: `up` must say so before it waits
    minutes on a store that cannot write, and a service it started before must stay in the
    state, where `down` stops it."""
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(small)], check=True)
    try:
        env = {k: v for k, v in os.environ.items() if k not in EXTERNAL}
        env.update(OPS_ENV)
        env["BODYCAM_HOME"] = str(small / "home")
        cli = Cli(env)
        try:
            up = cli.run("up", timeout=120)
            pids = [int(p["pid"]) for p in json.loads(
                (small / "home" / "stack.json").read_text())["processes"]]
            status = cli.run("status", "--json")
        finally:
            cli.run("down", timeout=120)
        assert up.returncode != 0
        [line] = [x for x in up.stderr.splitlines() if x.startswith("error")]
        assert line.startswith("error: only ") and "MiB free under" in line, line
        assert up.stderr.strip().endswith(line)
        assert pids, "the Postgres that up started is not in the state"
        st = json.loads(status.stdout)
        assert status.returncode == 1 and st["ok"] is False
        assert st["disk"]["free_mib"] < 1024 and st["services"]["postgres"] == "running"
        deadline = time.monotonic() + 30
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                  for p in pids):
            assert time.monotonic() < deadline, "down left a process of the failed up running"
            time.sleep(0.5)
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


def test_a_home_under_tmp_keeps_the_filesystems_mounted_inside_it(tmp_path: Path) -> None:
    """The services run with a private /tmp; a home under /tmp is bound back into it. A disk
    mounted inside the home (SeaweedFS's data on a volume of its own) was left out: the
    store started on the empty folder under it and `up` said nothing."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    home = Path("/tmp") / f"bc-home-{os.getpid()}"
    code = f"""
import os, subprocess, sys
from pathlib import Path
home = Path({str(home)!r})
(home / "s3data").mkdir(parents=True)
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(home / "s3data")], check=True)
(home / "s3data" / "marker").write_text("on its own disk")
from bodycam.stack import _private_tmp
_private_tmp(0o755, {{str(home): str(home)}})
print((home / "s3data" / "marker").read_text() if (home / "s3data" / "marker").exists()
      else "missing")
"""
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private",
                               sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60, cwd=Path(__file__).resolve().parent.parent)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "on its own disk"


def test_the_last_admin_cannot_be_disabled_and_a_deployment_with_none_bootstraps_one(
        ops: StackHandle) -> None:
    """Disabling is for good: disabling the last enabled admin left a stack where no account
    could ever be added, assigned or disabled again (bb50), so it is refused. A deployment
    not started by `bodycam up` (compose) has no account at all: `bodycam bootstrap-admin`,
    run where the server's secrets are, creates the first admin, and only where no enabled
    admin exists. Runs last in this module: it disables `operator`."""
    from bodycam import accounts, audit

    refused = ops.cli.run("bootstrap-admin", "first")
    assert refused.returncode == 1 and "an enabled admin account exists (operator)" in \
        refused.stderr, refused.stderr
    token = ops.cli.run("users", "add", "ops-adm", "--role", "admin",
                        check=True).stdout.strip()
    as_adm = {"BODYCAM_USER": "ops-adm", "BODYCAM_TOKEN": token}
    ops.cli.run("users", "disable", "operator", check=True, extra_env=as_adm)
    last = ops.cli.run("users", "disable", "ops-adm", extra_env=as_adm)
    assert last.returncode == 1 and "ops-adm is the last enabled admin" in last.stderr, \
        last.stderr
    assert ops.cli.run("whoami", extra_env=as_adm).returncode == 0
    # A database where no admin is left (made before this rule): disabled as the server
    # would, with its sealed audit row.
    with ops.ctx.db() as conn:
        audit.lock(conn)
        row = audit.append(conn, ops.ctx.audit_key, "test", "user.disable",
                           {"user": "ops-adm", "tokens_revoked": 1})
        conn.execute("SELECT bodycam_user_disable(%s::bigint, %s::text)", (row.id, "ops-adm"))
    made = ops.cli.run("bootstrap-admin", "first", check=True)
    first = {"BODYCAM_USER": "first", "BODYCAM_TOKEN": made.stdout.strip()}
    me = json.loads(ops.cli.run("whoami", "--json", check=True, extra_env=first).stdout)
    assert me["roles"] == ["admin"], me
    again = ops.cli.run("bootstrap-admin", "second")
    assert again.returncode == 1 and "exists (first)" in again.stderr, again.stderr
    with ops.ctx.db() as conn:
        assert accounts.enabled_admins(conn) == ["first"]
        entry = conn.execute("SELECT actor, action FROM audit_log WHERE details->>'user' ="
                             " 'first'").fetchone()
    assert (entry["actor"], entry["action"]) == ("bodycam bootstrap-admin", "user.create")
    # The new admin adds accounts; the log, read by one of them, is intact.
    aud = ops.cli.run("users", "add", "ops-aud", "--role", "auditor", check=True,
                      extra_env=first).stdout.strip()
    ops.cli.run("audit", "verify", check=True,
                extra_env={"BODYCAM_USER": "ops-aud", "BODYCAM_TOKEN": aud})
