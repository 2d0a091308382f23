"""A 2 GB upload keeps the server's memory flat and, not being a video, leaves nothing behind
(neither a spooled file nor, its digest declared, an upload streamed to the store)."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.conftest import HAMILTON, TESTDATA, StackHandle, stack_pids

TOTAL = 2 * 1024**3
CHUNK = 1024**2
MAX_GROWTH_KB = 150 * 1024


P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _body() -> Iterator[bytes]:
    # Generated chunk by chunk, never held whole: a repeated pattern that is no video.
    block = (b"not a video " * (CHUNK // 12 + 1))[:CHUNK]
    for _ in range(TOTAL // CHUNK):
        yield block


def _big_files(*roots: Path) -> set[str]:
    found: set[str] = set()
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            if any(part in dirpath for part in ("s3data", "pgdata", "postgres")):
                continue
            for f in files:
                p = Path(dirpath) / f
                try:
                    if p.stat().st_size >= 64 * 1024**2:
                        found.add(str(p))
                except OSError:
                    continue
    return found


def test_a_2gb_upload_keeps_server_memory_flat_is_refused_cleanly_and_leaves_nothing(
        stack: StackHandle, api_url: str, operator_token: str) -> None:
    with httpx.Client(timeout=900) as http:
        r = http.post(api_url + "/api/v1/users", json={"name": f"up-{secrets.token_hex(3)}",
                                                       "roles": ["clerk"]},
                      headers={"Authorization": f"Bearer {operator_token}"})
        assert r.status_code == 201, r.text
        clerk = str(r.json()["token"])
        pids = stack_pids(stack, "api")
        for pid in pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := current RSS
        base = {pid: _status_kb(pid, "VmRSS") for pid in pids}
        before = stack.counts()
        big_before = _big_files(stack.home, Path(tempfile.gettempdir()))
        # The digest declared, as the CLI does: the body is also sent to the object store as
        # it arrives, a few parts at a time, and that upload is aborted when the probe fails.
        digest = hashlib.sha256()
        for block in _body():
            digest.update(block)
        t0 = time.monotonic()
        r = http.post(api_url + "/api/v1/videos", content=_body(),
                      params={"case": "T-UP-BIG", "officer": "O", "device": "D",
                              "filename": "big.mp4"},
                      headers={"Authorization": f"Bearer {clerk}",
                               "Content-Type": "application/octet-stream",
                               "X-Content-SHA256": digest.hexdigest()})
        took = time.monotonic() - t0
        growth = {pid: _status_kb(pid, "VmHWM") - base[pid] for pid in pids}
        print(f"2 GB upload: {took:.1f} s, api peak RSS growth {growth} kB")
        assert r.status_code == 422, (r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert len(str(r.json()["detail"]).splitlines()) == 1
        assert max(growth.values()) < MAX_GROWTH_KB, f"server RSS grew {growth} kB"
        assert stack.counts() == before, "no video row, original or job is left"
        assert stack.ctx.store.unfinished_uploads() == (), "the streamed upload was aborted"
        assert _big_files(stack.home, Path(tempfile.gettempdir())) <= big_before, \
            "no spooled upload is left on disk"
        uploads = stack.home / "uploads"
        assert not uploads.exists() or not any(uploads.iterdir()), list(uploads.iterdir())


def test_a_wrong_content_digest_stores_nothing_and_the_right_one_stores_the_video(
        stack: StackHandle, api_url: str, operator_token: str) -> None:
    data = HAMILTON.read_bytes()
    case = f"T-UP-SHA-{secrets.token_hex(3)}"
    with httpx.Client(timeout=300) as http:
        r = http.post(api_url + "/api/v1/users", json={"name": f"up-{secrets.token_hex(3)}",
                                                       "roles": ["clerk"]},
                      headers={"Authorization": f"Bearer {operator_token}"})
        clerk = str(r.json()["token"])

        def put(digest: str) -> httpx.Response:
            return http.post(api_url + "/api/v1/videos", content=data,
                             params={"case": case, "officer": "O", "device": "D",
                                     "filename": "h.mp4"},
                             headers={"Authorization": f"Bearer {clerk}",
                                      "Content-Type": "application/octet-stream",
                                      "X-Content-SHA256": digest})

        before = stack.counts()
        wrong = put(hashlib.sha256(data + b"x").hexdigest())
        assert wrong.status_code == 422, wrong.text
        assert "sha" in str(wrong.json()["detail"]).lower(), wrong.text
        assert stack.counts() == before, "a digest mismatch stores nothing"
        right = put(hashlib.sha256(data).hexdigest())
        assert right.status_code == 201, right.text
        assert right.json()["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_stalled_upload_is_dropped_a_full_disk_is_one_line_and_orphans_are_swept(
        stack: StackHandle, operator_token: str, api_url: str, tmp_path: Path) -> None:
    import json
    import socket
    from urllib.parse import urlsplit

    import pytest

    from bodycam.api.problems import ProblemError
    from bodycam.api.uploads import _write_all
    from tests.conftest import serve_with

    # A full disk while spooling was a 500: now one line (507) naming the cause. /dev/full
    # answers every write with ENOSPC.
    with open("/dev/full", "wb") as full, pytest.raises(ProblemError) as refused:
        _write_all(full.fileno(), b"x" * 4096, None)
    assert refused.value.status == 507 and "no space left" in refused.value.detail
    spool = tmp_path / "spool"
    spool.mkdir(mode=0o700)
    # A server killed mid-upload a minute ago left `orphan` (it was kept for an hour, and
    # only an upload swept it: bb36); `live` is locked by a live process, as a server locks
    # the files it spools.
    import fcntl

    orphan, live = spool / "upload-orphan.part", spool / "upload-live.part"
    for f in (orphan, live):
        f.write_bytes(b"footage of a server that was killed")
        old = time.time() - 60
        os.utime(f, (old, old))
    held = os.open(live, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    env = {"BODYCAM_SERVER__UPLOAD_IDLE_S": "2", "BODYCAM_SERVER__UPLOAD_DIR": str(spool)}
    with serve_with(stack, env) as cli_env:
        assert not orphan.exists() and live.exists(), "swept at the server's start"
        orphan.write_bytes(b"footage of another server that was killed")
        os.utime(orphan, (old, old))
        url = urlsplit(cli_env["BODYCAM_URL"])
        before = stack.counts()
        data = HAMILTON.read_bytes()
        head = (f"POST /api/v1/videos?case=T-UP-STALL&officer=O&device=D&filename=s.mp4"
                f" HTTP/1.1\r\nHost: {url.netloc}\r\nAuthorization: Bearer {operator_token}"
                f"\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(data)}"
                "\r\n\r\n").encode()

        def stalled(sent: bytes) -> tuple[str, float]:
            """Send part of a request, then nothing: the answer's detail and the wait."""
            with socket.create_connection((url.hostname, url.port), timeout=30) as sock:
                sock.sendall(sent)
                started = time.monotonic()
                answer = b""
                while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                    got = sock.recv(65536)
                    if not got:
                        break
                    answer += got
            status = answer.split(b"\r\n", 1)[0]
            assert b" 408 " in status, answer[:300]
            return (json.loads(answer.split(b"\r\n\r\n", 1)[1])["detail"],
                    time.monotonic() - started)

        detail, waited = stalled(head + data[: len(data) // 2])
        assert "no byte of the upload arrived for 2 s" in detail and waited < 20
        assert stack.counts() == before, "nothing stored"
        assert not orphan.exists() and live.exists(), "only the spool file nobody holds"
        assert [p.name for p in spool.iterdir()] == [live.name]
        os.close(held)
        # A form of photos that stops is dropped the same way: one that promised more bytes
        # than it sent was never answered, 300 of them held at once (bb30).
        form = (b"--b\r\nContent-Disposition: form-data; name=\"case\"\r\n\r\nT-UP-STALL\r\n"
                b"--b\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"p.png\"\r\n"
                b"Content-Type: image/png\r\n\r\n" + P06.read_bytes()[:2000])
        head = (f"POST /api/v1/photos/faces HTTP/1.1\r\nHost: {url.netloc}\r\n"
                f"Authorization: Bearer {operator_token}\r\nContent-Type: multipart/form-data;"
                f" boundary=b\r\nContent-Length: {len(form) + 50_000}\r\n\r\n").encode()
        detail, waited = stalled(head + form)
        assert "no byte of the request's body arrived for 2 s" in detail and waited < 20
        # A body that arrives whole is not timed after it: the answer to a slow request and
        # a stream of job progress outlive the idle time.
        assert httpx.get(cli_env["BODYCAM_URL"] + "/healthz", timeout=10).status_code == 200
    # A client that leaves mid-upload is no server error: it was logged "unhandled", with a
    # traceback, as a fault of the server's would be (bb30).
    api_log = stack.home / "logs" / "api.log"
    unhandled = api_log.read_text(errors="replace").count("unhandled ClientDisconnect")
    server = urlsplit(api_url)
    head = (f"POST /api/v1/videos?case=T-UP-LEFT&officer=O&device=D&filename=l.mp4"
            f" HTTP/1.1\r\nHost: {server.netloc}\r\nAuthorization: Bearer {operator_token}"
            f"\r\nContent-Type: application/octet-stream\r\nContent-Length: {len(data)}"
            "\r\n\r\n").encode()
    with socket.create_connection((server.hostname, server.port), timeout=30) as sock:
        sock.sendall(head + data[: len(data) // 2])
        time.sleep(0.5)
    deadline = time.monotonic() + 20
    while "the client left before its body was read" not in api_log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the client's leaving was not noted"
        time.sleep(0.2)
    assert api_log.read_text(errors="replace").count("unhandled ClientDisconnect") == unhandled
    assert stack.counts() == before, "nothing stored"
