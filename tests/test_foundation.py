"""Evidence ingest, custody, bad input and durable processing against the real embedded stack."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bodycam import jobs, queue
from bodycam.api.uploads import Tee
from bodycam.errors import TransientError
from bodycam.storage import PART_BYTES, SMALL_PUT, original_key
from tests.conftest import (
    FACENET_CLIP,
    HAMILTON,
    TESTDATA,
    StackHandle,
    serve_with,
    stack_pids,
)

FFMPEG = shutil.which("ffmpeg")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_status_reports_every_service_and_the_database_url(stack: StackHandle) -> None:
    st = stack.cli.json("status")
    assert isinstance(st, dict)
    assert st["database_url"].startswith("postgresql://")
    assert st["services"] == {"postgres": "running", "s3": "running", "redis": "running",
                              "api": "running", "scheduler": "running"}
    assert st["workers"] == {"cpu": 1, "gpu": 2}
    assert set(st["queues"]) == {"cpu", "gpu"}
    assert st["disk"]["store_stops_at_mib"] == 512
    assert st["disk"]["free_mib"] >= 2 * 512 and st["ok"] is True
    state = stack.home / "stack.json"
    assert state.stat().st_mode & 0o777 == 0o600
    # as text, one line a field, in words (it printed Python dicts: bb33)
    lines = {ln.split()[0]: ln.split(None, 1)[1] for ln in
             stack.cli.run("status", check=True).stdout.splitlines()}
    assert lines["workers"] == "cpu 1, gpu 2" and lines["ok"] == "True"
    assert lines["services"] == ("postgres running, s3 running, redis running, api running, "
                                 "scheduler running")
    assert not any("{" in v or "'" in v for v in lines.values()), lines


def test_status_checks_external_services_and_never_shows_a_password(
        stack: StackHandle) -> None:
    """External services are not this home's to start, but status said `ok True` with an
    external database nothing listened for, and printed a key=value database setting whole,
    password and all (bb53)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    svc = stack.ctx.services
    kv = conninfo_to_dict(svc.database_url)
    password = str(kv["password"])
    assert len(password) >= 8
    external = {"BODYCAM_DATABASE_URL": make_conninfo("", **kv),
                "BODYCAM_S3_ENDPOINT_URL": str(svc.s3.endpoint_url),
                "BODYCAM_REDIS_URL": svc.redis_url}
    up = stack.cli.run("status", "--json", extra_env=external)
    st = json.loads(up.stdout)
    assert {k: st["services"][k] for k in ("postgres", "s3", "redis")} == dict.fromkeys(
        ("postgres", "s3", "redis"), "external"), st
    assert up.returncode == 0 and st["ok"] is True, st
    assert "password=***" in st["database_url"]
    for env in (external, {**external, "BODYCAM_DATABASE_URL": f"{svc.database_url}x y"}):
        for argv in (("status",), ("status", "--json")):
            proc = stack.cli.run(*argv, extra_env=env)
            assert password not in proc.stdout + proc.stderr, argv
    down = stack.cli.run("status", "--json", extra_env={
        **external, "BODYCAM_DATABASE_URL": make_conninfo("", **{**kv, "port": "1"})})
    st = json.loads(down.stdout)
    assert down.returncode == 1 and st["ok"] is False
    assert st["services"]["postgres"] == "external, not answering", st


def test_status_names_a_paused_service_or_worker_and_fails(stack: StackHandle) -> None:
    """A stopped process (SIGSTOP) keeps its pid and its port takes connections into the
    kernel's backlog: `status` said `ok True` with the scheduler, a worker or SeaweedFS
    frozen (bb36). It now names them paused and exits 1."""
    from bodycam.stack import Stack

    gpu = next(p for p in Stack(stack.ctx.settings).processes() if p.name.startswith("worker-gpu"))
    weed = [pid for pid in stack_pids(stack, "s3") if pid not in
            {p.pid for p in Stack(stack.ctx.settings).processes()}]
    assert weed, "the S3 gateway's SeaweedFS"
    frozen = [*stack_pids(stack, "beat")[:1], gpu.pid, weed[0]]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        proc = stack.cli.run("status", "--json")
        st = json.loads(proc.stdout)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert proc.returncode == 1 and st["ok"] is False
    assert st["services"]["scheduler"] == "paused" and st["services"]["s3"] == "paused"
    assert st["workers"]["gpu"] == 1 and st["paused"] == sorted(["beat", "s3", gpu.name])
    again = stack.cli.json("status")
    assert isinstance(again, dict) and again["ok"] is True and "paused" not in again


def test_second_up_changes_nothing(stack: StackHandle) -> None:
    before = json.loads((stack.home / "stack.json").read_text())["processes"]
    stack.cli.run("up", check=True)
    after = json.loads((stack.home / "stack.json").read_text())["processes"]
    assert sorted(p["pid"] for p in after) == sorted(p["pid"] for p in before)


def test_ingest_keeps_the_sha256_and_custody_and_processes_the_video(stack: StackHandle) -> None:
    [res] = stack.cli.json("ingest", str(HAMILTON), "--case", "T-SHA", "--officer", "Off. Reyes",
                           "--device", "CAM-7", "--recorded-at", "2026-03-14T09:30:00Z", "--wait")
    assert res["sha256"] == sha256(HAMILTON)
    assert res["duplicate"] is False
    assert res["status"] == "done"
    stored = stack.ctx.store.get_bytes(original_key(res["sha256"]))
    assert hashlib.sha256(stored).hexdigest() == res["sha256"]
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT * FROM videos WHERE id = %s", (res["video_id"],)).fetchone()
    assert row["original_filename"] == "short_hamilton_clip.mp4"
    assert row["size_bytes"] == HAMILTON.stat().st_size
    assert (row["container"], row["codec"], row["width_px"], row["height_px"]) == (
        "mov,mp4,m4a,3gp,3g2,mj2", "h264", 640, 360)
    assert 9.0 < row["duration_s"] < 9.4
    assert (row["case_id"], row["officer"], row["device"]) == ("T-SHA", "Off. Reyes", "CAM-7")
    assert row["recorded_at"].year == 2026 and row["uploader"]
    assert {"ingested", "processing", "done"} <= set(row["stage_times"])


def test_the_same_file_in_the_same_case_is_a_duplicate(stack: StackHandle,
                                                        tmp_path: Path) -> None:
    [first] = stack.cli.json("ingest", str(HAMILTON), "--case", "T-DUP", "--officer", "O",
                             "--device", "D")
    renamed = tmp_path / "passwd"
    shutil.copyfile(HAMILTON, renamed)
    [again] = stack.cli.json("ingest", str(renamed), "--case", "T-DUP", "--officer", "O",
                             "--device", "D")
    assert again["duplicate"] is True and again["video_id"] == first["video_id"]
    # The answer names the video as recorded, not as sent again (it said "passwd": bb43);
    # the audit row keeps the name the duplicate came under.
    assert again["filename"] == first["filename"] == HAMILTON.name, again
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT details FROM audit_log WHERE action = 'ingest.duplicate'"
                           " AND details->>'video_id' = %s ORDER BY id DESC LIMIT 1",
                           (first["video_id"],)).fetchone()
    assert row["details"]["filename"] == "passwd"
    [other] = stack.cli.json("ingest", str(HAMILTON), "--case", "T-DUP-2", "--officer", "O",
                             "--device", "D")
    assert other["duplicate"] is False and other["video_id"] != first["video_id"]
    assert other["sha256"] == first["sha256"]


def test_an_original_is_stored_only_as_the_bytes_its_key_names(
        stack: StackHandle, tmp_path: Path) -> None:
    """put_original sends a file in parts, several at once, and completes the upload only when
    the bytes sent hash to the key's SHA-256: a file that changed since it was hashed, or one
    over the size limit, leaves nothing under originals/. An original already stored is not
    replaced, but its bytes are sent and checked as any other's (then dropped): an upload
    that were quicker when the store holds the bytes would tell its sender so by the clock."""
    store = stack.ctx.store
    sent: list[int] = []

    def record(params: dict[str, object], **_: object) -> None:
        sent.append(int(params["PartNumber"]))  # type: ignore[call-overload]

    data = os.urandom(3 * PART_BYTES + 12345)  # four parts
    path = tmp_path / "clip.bin"
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    before = stack.counts()["objects"]
    lied = hashlib.sha256(b"another file").hexdigest()
    with path.open("rb") as f, pytest.raises(TransientError, match="changed"):
        store.put_original(f, lied, 10 * PART_BYTES)
    with path.open("rb") as f, pytest.raises(ValueError, match="limit"):
        store.put_original(f, digest, 2 * PART_BYTES)
    assert not store.exists(original_key(lied)) and not store.exists(original_key(digest))
    assert stack.counts()["objects"] == before
    store._client.meta.events.register("provide-client-params.s3.UploadPart", record)
    try:
        with path.open("rb") as f:
            stored = store.put_original(f, digest, 10 * PART_BYTES)
        assert sorted(sent) == [1, 2, 3, 4]
        assert (stored.key, stored.size_bytes) == (original_key(digest), len(data))
        assert store.get_bytes(stored.key) == data
        sent.clear()
        with path.open("rb") as f:
            again = store.put_original(f, digest, 10 * PART_BYTES)
        assert again == stored and sorted(sent) == [1, 2, 3, 4], "sent as a new one is"
        sent.clear()
        path.write_bytes(os.urandom(PART_BYTES + 10))  # other bytes under a stored digest
        with path.open("rb") as f, pytest.raises(TransientError, match="changed"):
            store.put_original(f, digest, 10 * PART_BYTES)
        assert sent == [1], "whole parts sent, then refused, as for any other digest"
    finally:
        store._client.meta.events.unregister("provide-client-params.s3.UploadPart", record)
    assert store.get_bytes(stored.key) == data
    assert stack.counts()["objects"] == before + 1
    assert store.unfinished_uploads() == (), "every failed upload was aborted"


def test_a_multipart_upload_left_unfinished_is_aborted_once_stale(stack: StackHandle) -> None:
    # A server killed mid-upload, or an abort that failed while the store was down, left
    # parts of footage that no object shows, for good.
    store = stack.ctx.store
    key = "originals/" + "0" * 64 + ".part-test"
    store._client.create_multipart_upload(Bucket=store.bucket, Key=key)
    assert key in store.unfinished_uploads()
    assert store.abort_stale_uploads(older_than_s=3600) == 0, "a recent one is left alone"
    assert key in store.unfinished_uploads()
    time.sleep(1.5)
    assert store.abort_stale_uploads(older_than_s=1) == 1
    assert key not in store.unfinished_uploads()


def test_an_upload_streamed_as_it_arrives_sends_parts_before_it_ends_and_a_failure_drops_it(
        stack: StackHandle) -> None:
    """begin_original sends whole parts while bytes are still being written (the server's
    Tee feeds it from the arriving body); finish completes it. A Tee whose upload fails
    drops it, aborted, so the spooled file is stored the ordinary way afterwards."""
    store = stack.ctx.store
    sent: list[int] = []

    def record(params: dict[str, object], **_: object) -> None:
        sent.append(int(params["PartNumber"]))  # type: ignore[call-overload]

    data = os.urandom(2 * PART_BYTES + 7)
    digest = hashlib.sha256(data).hexdigest()
    store._client.meta.events.register("provide-client-params.s3.UploadPart", record)
    try:
        upload = store.begin_original(digest, 10 * PART_BYTES)
        upload.write(data[:PART_BYTES + 5])
        upload.write(data[PART_BYTES + 5:2 * PART_BYTES + 3])
        deadline = time.monotonic() + 30
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted(sent) == [1, 2], "whole parts go out before the end"
        assert not store.exists(original_key(digest)), "nothing is visible before finish"
        upload.write(data[2 * PART_BYTES + 3:])
        stored = upload.finish()
    finally:
        store._client.meta.events.unregister("provide-client-params.s3.UploadPart", record)
    assert sorted(sent) == [1, 2, 3] and stored.size_bytes == len(data)
    assert store.get_bytes(stored.key) == data

    other = os.urandom(64)
    tee = Tee(store.begin_original(hashlib.sha256(other).hexdigest(), 32))
    tee.write(other)  # past this upload's limit: it fails, and the Tee lets it go
    assert tee.upload is None and store.unfinished_uploads() == ()


def _bad_files(tmp: Path) -> dict[str, tuple[list[str], dict[str, str], str]]:
    """name -> (ingest args, extra env, expected reason fragment)."""
    data = HAMILTON.read_bytes()
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "notes.mp4").write_text("officer notes, not a video\n" * 20)
    shutil.copy(TESTDATA / "faces" / "identities" / "p01" / "01.jpg", tmp / "photo.mp4")
    (tmp / "truncated.mp4").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[len(corrupt) - 4000:] = os.urandom(4000)  # the index (moov) is at the end
    (tmp / "corrupt.mp4").write_bytes(bytes(corrupt))
    base = ["--case", "T-BAD", "--officer", "O", "--device", "D"]
    cases = {
        "empty": ([str(tmp / "empty.mp4"), *base], {}, "empty"),
        "text": ([str(tmp / "notes.mp4"), *base], {}, "not a readable video"),
        "image": ([str(tmp / "photo.mp4"), *base], {}, "image"),
        "truncated": ([str(tmp / "truncated.mp4"), *base], {}, "video"),
        "corrupt": ([str(tmp / "corrupt.mp4"), *base], {}, "video"),
        "too-large-frame": ([str(FACENET_CLIP), *base], {"BODYCAM_LIMITS__MAX_WIDTH_PX": "1280"},
                            "larger than the limit"),
        "too-long": ([str(HAMILTON), *base], {"BODYCAM_LIMITS__MAX_DURATION_S": "5"},
                     "longer than the limit"),
        "url": (["rtsp://camera.local/live", *base], {}, "no live mode"),
        "missing-case": ([str(HAMILTON), "--officer", "O", "--device", "D"], {}, "--case"),
        "missing-file": ([str(tmp / "nope.mp4"), *base], {}, "no such file"),
    }
    if FFMPEG:
        subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i",
                        "testsrc=size=320x240:rate=10", "-t", "2", "-c:v", "ffv1",
                        str(tmp / "lossless.mkv")], check=True)
        cases["unsupported-codec"] = ([str(tmp / "lossless.mkv"), *base], {}, "unsupported")
    return cases


def test_every_bad_input_is_refused_with_a_reason_and_leaves_nothing(
        stack: StackHandle, tmp_path: Path) -> None:
    for name, (args, env, reason) in _bad_files(tmp_path).items():
        before = stack.counts()
        if env:  # limits are the server's: a second server with them
            with serve_with(stack, env) as at:
                proc = stack.cli.run("ingest", *args, extra_env=at)
        else:
            proc = stack.cli.run("ingest", *args)
        assert proc.returncode != 0, name
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        assert lines and "error:" in lines[0], (name, proc.stderr)
        message = " ".join(proc.stderr.split())
        assert reason.lower() in message.lower(), (name, message)
        if name not in ("missing-case", "url"):
            assert Path(args[0]).name in message, (name, message)
        assert stack.counts() == before, name


def test_a_file_put_into_incoming_is_ingested_and_processed(stack: StackHandle) -> None:
    store = stack.ctx.store
    key = "incoming/dock-7/hamilton-copy.mp4"
    store._client.put_object(Bucket=store.bucket, Key=key, Body=HAMILTON.read_bytes(),
                             Tagging="case=T-INCOMING&officer=Off.%20Diaz&device=CAM-9")
    video = _wait_for_case(stack, "T-INCOMING")
    assert stack.wait_status(video["video_id"])["status"] == "done"
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT * FROM videos WHERE id = %s", (video["video_id"],)).fetchone()
    assert (row["officer"], row["device"], row["source"]) == ("Off. Diaz", "CAM-9", "incoming")
    assert row["sha256"] == sha256(HAMILTON)
    assert not store.exists(key), "an ingested object leaves incoming/"


def test_an_s3_event_notification_queues_the_object(stack: StackHandle) -> None:
    store = stack.ctx.store
    token = stack.cli.run("events-token", check=True).stdout.strip()
    key = "incoming/event/facenet.mp4"
    store._client.put_object(Bucket=store.bucket, Key=key, Body=FACENET_CLIP.read_bytes())
    store.put_bytes(key + ".json", json.dumps(
        {"case": "T-EVENT", "officer": "O", "device": "D"}).encode(), "application/json")
    etag = next(o.etag for o in store.list(key) if o.key == key)
    api = json.loads((stack.home / "stack.json").read_text())["api_url"]
    event = {"Records": [{"eventName": "s3:ObjectCreated:Put",
                          "s3": {"bucket": {"name": store.bucket},
                                 "object": {"key": key, "eTag": etag}}}]}
    reply = httpx.post(f"{api}/s3/events", json=event, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    assert reply.status_code == 200 and reply.json() == {"queued": 1}
    video = _wait_for_case(stack, "T-EVENT")
    assert stack.wait_status(video["video_id"])["status"] == "done"


def test_small_objects_are_written_without_a_100_continue_round_trip(
        stack: StackHandle) -> None:
    """A small object (thumbnail, audit anchor) goes in one request; a large body keeps the
    handshake; both arrive intact and signed."""
    store = stack.ctx.store
    seen: list[str | None] = []

    def record(request: object, **_: object) -> None:
        seen.append(request.headers.get("Expect"))  # type: ignore[attr-defined]

    store._client.meta.events.register("before-send.s3.PutObject", record)
    try:
        small, large = b'{"id": 1}', os.urandom(SMALL_PUT + 1)
        store.put_bytes("tmp/small.json", small, "application/json")
        store.put_bytes("tmp/large.bin", large, "application/octet-stream")
    finally:
        store._client.meta.events.unregister("before-send.s3.PutObject", record)
    assert seen == [None, b"100-continue"], seen
    assert store.get_bytes("tmp/small.json") == small
    assert store.get_bytes("tmp/large.bin") == large
    for key in ("tmp/small.json", "tmp/large.bin"):
        store.delete(key)


def test_an_incoming_object_without_a_case_is_rejected_and_kept(stack: StackHandle) -> None:
    store = stack.ctx.store
    key = "incoming/no-case/clip.mp4"
    store._client.put_object(Bucket=store.bucket, Key=key, Body=HAMILTON.read_bytes())
    deadline = time.monotonic() + 60
    row = None
    while time.monotonic() < deadline:
        with stack.ctx.db() as conn:
            row = conn.execute("SELECT state, error FROM incoming_objects WHERE key = %s",
                               (key,)).fetchone()
        if row and row["state"] == "rejected":
            break
        time.sleep(1)
    assert row is not None and row["state"] == "rejected"
    assert row["error"].startswith(
        "missing case (an object tag, or a key of its sidecar JSON, the object's name + .json):"
        " every video must be bound to a case"), row["error"]
    assert store.exists(key), "a rejected upload is never deleted"


def _wait_for_case(stack: StackHandle, case: str, timeout_s: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with stack.ctx.db() as conn:
            row = conn.execute("SELECT id::text AS video_id FROM videos WHERE case_id = %s",
                               (case,)).fetchone()
        if row:
            return dict(row)
        time.sleep(1)
    with stack.ctx.db() as conn:
        seen = conn.execute("SELECT key, state, error, attempts FROM incoming_objects").fetchall()
    raise AssertionError(f"nothing was ingested for case {case}; incoming/: {seen}")


@pytest.mark.slow
def test_kill_9_of_a_worker_mid_video_still_ends_done_exactly_once(
        stack: StackHandle, make_clip: object, tmp_path: Path) -> None:
    clip, _truth = make_clip("--seed", "11", "--duration", "36", "--size", "640x360")  # type: ignore[operator]
    with serve_with(stack, {"BODYCAM_JOBS__CHUNK_S": "9"}) as at:  # units are cut at ingest
        [res] = stack.cli.json("ingest", str(clip), "--case", "T-KILL", "--officer", "O",
                               "--device", "D", extra_env=at)
    vid = res["video_id"]
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:
        with stack.ctx.db() as conn:
            row = conn.execute(
                "SELECT idx, lease_owner FROM work_units WHERE video_id = %s AND state ="
                " 'running' AND progress < 0.7 ORDER BY idx LIMIT 1",
                (vid,)).fetchone()
        if row:
            owner = str(row["lease_owner"])
            os.kill(int(owner.rsplit(":", 1)[1]), signal.SIGKILL)
            with stack.ctx.db() as conn:
                after = conn.execute("SELECT state, lease_owner FROM work_units WHERE"
                                     " video_id = %s AND idx = %s", (vid, row["idx"])).fetchone()
            # The worker is dead either way; count it only if it died holding the unit.
            if after["state"] == "running" and after["lease_owner"] == owner:
                victim = int(row["idx"])
            stack.cli.run("up", check=True)  # replace the killed worker
        time.sleep(0.1)
    assert victim is not None, "no worker was killed while holding a unit"
    idx = victim
    job = stack.wait_status(vid, timeout_s=300)
    assert job["status"] == "done", job
    with stack.ctx.db() as conn:
        units = conn.execute("SELECT idx, state, attempts FROM work_units WHERE video_id = %s"
                             " ORDER BY idx", (vid,)).fetchall()
        per_chunk = conn.execute(
            "SELECT chunk_idx, count(*) AS n, count(DISTINCT (frame_index, box_px)) AS uniq"
            " FROM detections WHERE video_id = %s GROUP BY chunk_idx", (vid,)).fetchall()
        scenes = conn.execute("SELECT count(*) AS n FROM scenes WHERE video_id = %s",
                              (vid,)).fetchone()
    assert len(units) >= 4 and all(u["state"] == "done" for u in units)
    assert units[idx]["attempts"] >= 2, "the killed unit was retried by another worker"
    assert all(r["n"] == r["uniq"] for r in per_chunk), "no detection was written twice"
    assert scenes["n"] >= 4


def test_repeated_crashes_quarantine_the_video_with_its_reason(stack: StackHandle) -> None:
    control = queue.client(stack.ctx.services.redis_url).control
    deadline = time.monotonic() + 60
    while len(control.cancel_consumer("gpu", reply=True, timeout=2) or []) < 2:  # park GPU workers
        assert time.monotonic() < deadline, "GPU workers did not answer"
    try:
        [res] = stack.cli.json("ingest", str(HAMILTON), "--case", "T-QUAR", "--officer", "O",
                               "--device", "D")
        vid = res["video_id"]
        # Three workers in a row claim the unit and die: their leases expire, and the live
        # reaper puts the unit back twice (each time after a backoff wait, during which it
        # cannot be claimed), then quarantines it.
        for attempt in range(1, 4):
            deadline = time.monotonic() + 30
            while True:
                with stack.ctx.db() as conn:
                    lease = jobs.claim(conn, vid, 0, f"ghost:{attempt}", lease_s=0.3)
                if lease is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert lease is not None and lease.attempt == attempt
            expected = "quarantined" if attempt == 3 else "pending"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with stack.ctx.db() as conn:
                    state = conn.execute("SELECT state FROM work_units WHERE video_id = %s",
                                         (vid,)).fetchone()["state"]
                if state == expected:
                    break
                time.sleep(0.1)
            assert state == expected
        [job] = [j for j in stack.cli.json("jobs")  # type: ignore[union-attr]
                 if j["video_id"] == vid]
        assert job["status"] == "quarantined"
        assert "ghost:3" in job["error"] and job["attempts"] == 3
    finally:
        control.add_consumer("gpu", reply=True, timeout=5)
    assert stack.cli.run("retry", vid).returncode == 0
    assert stack.wait_status(vid)["status"] == "done"


def test_an_incoming_drop_names_its_case_as_every_other_path_does(stack: StackHandle) -> None:
    """A sidecar's `" T-TRIM "` or `"T-TRIM\\n"` was stored as it came (bb38): a case of its
    own that no hold, search or assignment of T-TRIM reached, and the same file in it was
    not a duplicate. Its case, officer and device are trimmed as the API's are."""
    store = stack.ctx.store
    ids = []
    for key, case in (("incoming/trim/a.mp4", " T-TRIM \n"), ("incoming/trim/b.mp4",
                                                                "T-TRIM\t")):
        store._client.put_object(Bucket=store.bucket, Key=key, Body=FACENET_CLIP.read_bytes())
        store.put_bytes(key + ".json", json.dumps(
            {"case": case, "officer": " Off. Lee ", "device": "CAM-3\n"}).encode(),
                        "application/json")
        _wait_incoming(stack, key, "ingested")
        with stack.ctx.db() as conn:
            ids.append(conn.execute("SELECT video_id::text AS v FROM incoming_objects"
                                    " WHERE key = %s", (key,)).fetchone()["v"])
    assert ids[0] == ids[1], "the same bytes in the same case are one video"
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT id::text AS id, case_id, officer, device FROM videos"
                            " WHERE lower(trim(case_id)) LIKE 't-trim%'").fetchall()
    assert [(r["id"], r["case_id"], r["officer"], r["device"]) for r in rows] == [
        (ids[0], "T-TRIM", "Off. Lee", "CAM-3")]


def _wait_incoming(stack: StackHandle, key: str, state: str, timeout_s: float = 90
                   ) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with stack.ctx.db() as conn:
            row = conn.execute("SELECT state, error, attempts FROM incoming_objects"
                               " WHERE key = %s ORDER BY updated_at DESC LIMIT 1",
                               (key,)).fetchone()
        if row and row["state"] == state:
            return dict(row)
        time.sleep(1)
    raise AssertionError(f"{key} never became {state}")


def test_an_incoming_drop_put_again_or_given_its_sidecar_later_is_handled_again(
        stack: StackHandle) -> None:
    """The same bytes at the same key have the same etag: once handled, a sidecar that came
    after its video's rejection, and the same file put again for another case, were ignored
    for good (bb36). A drop is (key, etag, when it and its sidecar were put); a sidecar's
    S3 event stands for its video."""
    store = stack.ctx.store
    key = "incoming/again/clip.mp4"
    store._client.put_object(Bucket=store.bucket, Key=key, Body=HAMILTON.read_bytes(),
                             Tagging="case=T-AGAIN-A&officer=O")
    assert "missing device (an object tag, or a key of its sidecar JSON, the object's name +" \
        in str(_wait_incoming(stack, key, "rejected")["error"])
    token = stack.cli.run("events-token", check=True).stdout.strip()
    api = json.loads((stack.home / "stack.json").read_text())["api_url"]
    event = {"Records": [{"eventName": "s3:ObjectCreated:Put",
                          "s3": {"bucket": {"name": store.bucket},
                                 "object": {"key": key + ".json"}}}]}
    time.sleep(1.1)  # the store's times are in whole seconds
    store.put_bytes(key + ".json", json.dumps({"device": "D"}).encode(), "application/json")
    reply = httpx.post(f"{api}/s3/events", json=event, timeout=10,
                       headers={"Authorization": f"Bearer {token}"})
    # The video's turn; unless the reconciler, which runs on its own every few seconds, took
    # the new drop first and it is gone already (then there is nothing left to queue).
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"queued": 1} or not store.exists(key), reply.json()
    _wait_for_case(stack, "T-AGAIN-A")
    assert _wait_incoming(stack, key, "ingested")["attempts"] == 1
    _wait_gone(stack, key)  # removed once recorded, the sidecar with it
    assert not store.exists(key + ".json")
    # The same file at the same key again, for another case: ingested there too.
    store._client.put_object(Bucket=store.bucket, Key=key, Body=HAMILTON.read_bytes(),
                             Tagging="case=T-AGAIN-B&officer=O&device=D")
    _wait_for_case(stack, "T-AGAIN-B")
    _wait_gone(stack, key)


def _wait_gone(stack: StackHandle, key: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while stack.ctx.store.exists(key):
        assert time.monotonic() < deadline, f"{key} was not removed"
        time.sleep(0.5)


def test_an_incoming_claim_left_working_is_taken_over_and_a_drop_put_over_is_kept(
        stack: StackHandle) -> None:
    """A worker killed mid-ingest (or the database lost before the outcome was written) left
    the object `working` for good: the reconciler skipped it (bb36). After STALE_CLAIM_S it
    is handled again. And an object put again while it was read was deleted unseen: now
    only the drop that was read is removed."""
    from bodycam import ingest

    store = stack.ctx.store
    key = "incoming/stale/clip.mp4"
    body = FACENET_CLIP.read_bytes()
    etag = hashlib.md5(body).hexdigest()  # a single-part put's etag
    with stack.ctx.db() as conn:  # a claim a dead worker left, fresh
        conn.execute("INSERT INTO incoming_objects (key, etag, state, attempts)"
                     " VALUES (%s, %s, 'working', 1)", (key, etag))
    store._client.put_object(Bucket=store.bucket, Key=key, Body=body,
                             Tagging="case=T-STALE&officer=O&device=D")
    assert (key, etag) not in ingest.unhandled_incoming(stack.ctx), "being handled"
    with stack.ctx.db() as conn:
        conn.execute("UPDATE incoming_objects SET updated_at = now() - make_interval(secs => %s)"
                     " WHERE key = %s", (ingest.STALE_CLAIM_S + 1, key))
    assert (key, etag) in ingest.unhandled_incoming(stack.ctx), "left by a dead worker"
    _wait_for_case(stack, "T-STALE")
    # The guard on removal, on a key the reconciler does not read.
    guarded = "tmp/guard/clip.mp4"
    store.put_bytes(guarded, b"first drop", "application/octet-stream")
    read = ingest.current_drop(stack.ctx, guarded)
    assert read is not None
    time.sleep(1.1)
    store.put_bytes(guarded, b"first drop", "application/octet-stream")  # same bytes again
    assert not ingest.remove_drop(stack.ctx, guarded, *read) and store.exists(guarded)
    again = ingest.current_drop(stack.ctx, guarded)
    assert again is not None and again[0] == read[0] and again != read
    assert ingest.remove_drop(stack.ctx, guarded, *again) and not store.exists(guarded)
