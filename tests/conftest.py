"""Test session: a real embedded stack (Postgres+pgvector, SeaweedFS S3, Redis, Celery workers)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from bodycam.config import Settings, reload_settings
from bodycam.context import Context

REPO = Path(__file__).resolve().parent.parent
TESTDATA = Path(os.environ.get("BODYCAM_TESTDATA", REPO.parent / "shared" / "testdata")).resolve()
TOOLS = TESTDATA.parent / "tools"
HAMILTON = TESTDATA / "video" / "short_hamilton_clip.mp4"
FACENET_CLIP = TESTDATA / "video" / "facenet_example.mp4"

# Short leases and fast reaping so that crash recovery is observable within a test; the lease
# still leaves room for a heartbeat delayed by a loaded 2-core machine.
STACK_ENV = {
    "BODYCAM_PIPELINE__EMBEDDER": "dlib-resnet",
    "BODYCAM_JOBS__LEASE_S": "15",
    "BODYCAM_JOBS__HEARTBEAT_S": "2",
    "BODYCAM_JOBS__REAP_INTERVAL_S": "1",
    "BODYCAM_JOBS__RECONCILE_INTERVAL_S": "2",
    "BODYCAM_GPU_WORKERS": "2",
    "BODYCAM_CPU_WORKERS": "1",
}
EXTERNAL = ("BODYCAM_DATABASE_URL", "BODYCAM_S3_ENDPOINT_URL", "BODYCAM_REDIS_URL",
            "BODYCAM_API_URL")


def jsonl(text: str) -> list[dict[str, object]]:
    """The records of a JSONL export: one per line feed, as `audit verify-export` reads them
    (a note may hold U+2028, at which str.splitlines() splits too)."""
    return [json.loads(line) for line in text.split("\n") if line.strip()]


@dataclass
class Cli:
    """Runs the real `bodycam` command in the test stack's environment."""

    env: dict[str, str]

    def run(self, *args: str, check: bool = False, timeout: float = 600,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **(extra_env or {})}
        proc = subprocess.run([sys.executable, "-m", "bodycam", *args], env=env,
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"bodycam {' '.join(args)} failed ({proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc

    def json(self, *args: str, extra_env: dict[str, str] | None = None) -> object:
        proc = self.run(*args, "--json", check=True, extra_env=extra_env)
        return json.loads(proc.stdout)


def stack_pids(stack: StackHandle, name: str) -> list[int]:
    """The processes of the stack's service `name` (a name ending in `-`: every one it
    begins, e.g. `worker-`) and their children."""
    import psutil

    from bodycam.stack import Stack

    tops = [psutil.Process(p.pid) for p in Stack(stack.ctx.settings).processes()
            if p.name == name or (name.endswith("-") and p.name.startswith(name))]
    assert tops, f"no {name} process in the stack"
    return [q.pid for top in tops for q in (top, *top.children(recursive=True))]


@dataclass
class StackHandle:
    """The running test stack."""

    home: Path
    cli: Cli
    ctx: Context

    def wait_status(self, video_id: str, timeout_s: float = 300) -> dict[str, object]:
        """Poll `bodycam jobs --json` until the video reaches a terminal status."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for job in self.cli.json("jobs"):  # type: ignore[union-attr]
                if job["video_id"] == video_id and job["status"] in ("done", "failed",
                                                                     "quarantined"):
                    return dict(job)
            time.sleep(1)
        raise AssertionError(f"video {video_id} did not finish within {timeout_s}s")

    def counts(self) -> dict[str, int]:
        """Rows, objects and queued jobs: what bad input must not leave behind."""
        with self.ctx.db() as conn:
            videos = conn.execute("SELECT count(*) AS n FROM videos").fetchone()["n"]
            units = conn.execute("SELECT count(*) AS n FROM work_units").fetchone()["n"]
        # Evidence objects only: thumbnails and the audit anchor are written in the background
        # by processing of earlier uploads.
        objects = sum(1 for o in self.ctx.store.list("")
                      if o.key.startswith("originals/"))
        return {"videos": videos, "units": units, "objects": objects}


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackHandle]:
    """Start a real embedded stack in a temporary BODYCAM_HOME for the whole session."""
    if not TESTDATA.exists():
        pytest.exit(f"test data not found at {TESTDATA}: set BODYCAM_TESTDATA", returncode=2)
    home = tmp_path_factory.mktemp("bodycam-home")
    for key in EXTERNAL:
        os.environ.pop(key, None)
    os.environ.update(STACK_ENV)
    os.environ["BODYCAM_HOME"] = str(home)
    env = dict(os.environ)
    cli = Cli(env)
    up = cli.run("up", timeout=300)
    if up.returncode != 0:
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}"
                         for p in (home / "logs").glob("*.log"))
        cli.run("down")
        pytest.exit(f"bodycam up failed:\n{up.stderr}\n{logs}", returncode=3)
    settings: Settings = reload_settings()
    try:
        yield StackHandle(home=home, cli=cli, ctx=Context.load(settings))
    finally:
        cli.run("down", timeout=120)


@contextmanager
def serve_with(stack: StackHandle, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A second `bodycam serve` on the test stack with extra settings (server-side limits
    and job sizes are the server's, not the CLI's); yields the CLI env that points at it."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "bodycam", "serve", "--host", "127.0.0.1",
                             "--port", str(port)], env={**stack.cli.env, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"bodycam serve with {env} did not start")
            time.sleep(0.3)
        # The operator's token named: a home's token goes only to the home's own server.
        yield {"BODYCAM_URL": url,
               "BODYCAM_TOKEN": (stack.home / "operator.token").read_text().strip()}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def turned_clips(tmp_path: Path) -> tuple[Path, Path, Path]:
    """p06 recorded turned a quarter clockwise and counter-clockwise, with no rotation in the
    files, and a picture with no face."""
    from bodycam.hostile import ffmpeg_exe

    ff = ffmpeg_exe()
    cw, ccw, empty = tmp_path / "cw.mp4", tmp_path / "ccw.mp4", tmp_path / "empty.mp4"
    for out, turn in ((cw, "transpose=1"), (ccw, "transpose=2")):
        subprocess.run([ff, "-v", "error", "-y", "-ss", "2.8", "-i", str(HAMILTON), "-t", "3",
                        "-vf", turn, "-an", "-c:v", "libx264", "-crf", "20", str(out)],
                       check=True)
    subprocess.run([ff, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=360x640:rate=30",
                    "-t", "3", "-c:v", "libx264", str(empty)], check=True)
    return cw, ccw, empty


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory: pytest.TempPathFactory) -> object:
    """Generate a synthetic body-cam clip with exact truth (cached per arguments)."""
    cache: dict[tuple[str, ...], tuple[Path, dict[str, object]]] = {}
    root = tmp_path_factory.mktemp("clips")

    def make(*args: str) -> tuple[Path, dict[str, object]]:
        if args not in cache:
            out = root / f"clip{len(cache)}.mp4"
            subprocess.run([sys.executable, str(TOOLS / "make_bodycam_clip.py"), "--out",
                            str(out), *args], check=True, capture_output=True, timeout=900)
            cache[args] = (out, json.loads(out.with_suffix(".json").read_text()))
        return cache[args]

    return make


@pytest.fixture(scope="session")
def processed(stack: StackHandle) -> object:
    """Ingest a file into a case once per session and wait until it is processed."""
    done: dict[tuple[str, str], str] = {}

    def run(path: Path, case: str) -> str:
        if (str(path), case) not in done:
            [res] = stack.cli.json("ingest", str(path), "--case", case, "--officer", "O",
                                   "--device", "D", "--wait")  # type: ignore[misc]
            assert res["status"] == "done", res
            done[(str(path), case)] = res["video_id"]
        return done[(str(path), case)]

    return run


@pytest.fixture(scope="session")
def api_url(stack: StackHandle) -> str:
    """The server's base URL: client.json (no secret), else the stack state's api_url."""
    client = stack.home / "client.json"
    if client.exists():
        return str(json.loads(client.read_text())["url"])
    return str(json.loads((stack.home / "stack.json").read_text())["api_url"])


@pytest.fixture(scope="session")
def operator_token(stack: StackHandle) -> str:
    """The bootstrap operator's token (every role), from the stack's home."""
    return (stack.home / "operator.token").read_text().strip()


# The browser fixtures (headless Debian chromium driven by Playwright) for the web-app tests.
from tests.web import browser, page  # noqa: E402, F401
