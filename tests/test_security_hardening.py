"""Hardening: case isolation of every id, the incoming path, audit anchors and exports, policy."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bodycam import audit, search
from bodycam.accounts import Scope
from bodycam.config import Settings
from bodycam.errors import NotFoundError
from tests.conftest import HAMILTON, TESTDATA, StackHandle, jsonl
from tests.test_accountability import tampering, verify

P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"
CASE_A = "T-SEC-A"  # the investigator's case
CASE_B = "T-SEC-B"  # a case the investigator is not assigned to
FORMULA_NAME = '=HYPERLINK("http://evil.example/x","p06")'
DLIB = "dlib-resnet"


def env_of(stack: StackHandle, name: str, *roles: str) -> dict[str, str]:
    """Create an account; returns the environment to act as it."""
    argv = ["users", "add"]
    for r in roles:
        argv += ["--role", r]
    token = stack.cli.run(*argv, "--", name, check=True).stdout.strip()
    return {"BODYCAM_USER": name, "BODYCAM_TOKEN": token}


def audit_rows(stack: StackHandle, action: str | None = None) -> list[dict[str, object]]:
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT id, actor, action, details FROM audit_log"
                            " WHERE %s::text IS NULL OR action = %s ORDER BY id",
                            (action, action)).fetchall()
    return [dict(r) for r in rows]


def one_line(proc: object) -> str:
    text = proc.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return " ".join(text.split())


def wait_idle(stack: StackHandle, timeout_s: float = 300) -> None:
    """Until no video is being processed (their audit rows would race the tamper tests)."""
    deadline = time.monotonic() + timeout_s
    busy: list[object] = []
    while time.monotonic() < deadline:
        jobs = stack.cli.json("jobs")
        assert isinstance(jobs, list)
        busy = [j for j in jobs if j["status"] not in ("done", "failed", "quarantined")]
        if not busy:
            return
        time.sleep(1)
    raise AssertionError(f"processing did not settle: {busy}")


@pytest.fixture(scope="module")
def users(stack: StackHandle) -> dict[str, dict[str, str]]:
    envs = {"inv": env_of(stack, "sec-inv", "investigator"),
            "sup": env_of(stack, "sec-sup", "supervisor"),
            "aud": env_of(stack, "sec-aud", "auditor")}
    stack.cli.run("users", "assign", "sec-inv", "--case", CASE_A, check=True)
    return envs


@pytest.fixture(scope="module")
def case_b(stack: StackHandle, processed: object) -> dict[str, str]:
    """p06 enrolled in CASE_B (under a name that is a spreadsheet formula), then
    short_hamilton_clip processed there: ids of the video, subject, a track and a match."""
    res = stack.cli.json("subjects", "enroll", "--name", FORMULA_NAME, "--photo", str(P06),
                         "--case", CASE_B, "--reason", "hardening test")
    assert isinstance(res, dict)
    vid = processed(HAMILTON, CASE_B)  # type: ignore[operator]
    with stack.ctx.db() as conn:
        track = conn.execute("SELECT id::text AS id FROM tracks WHERE video_id = %s AND"
                             " embedding IS NOT NULL LIMIT 1", (vid,)).fetchone()
        match = conn.execute("SELECT id::text AS id FROM matches WHERE subject_id = %s"
                             " LIMIT 1", (res["subject_id"],)).fetchone()
    assert track is not None and match is not None, "the clip gave tracks and a p06 match"
    return {"video": vid, "subject": str(res["subject_id"]), "track": track["id"],
            "match": match["id"]}


# --- case isolation ---------------------------------------------------------------------

def test_a_search_cannot_use_a_subject_track_or_video_of_a_case_the_user_is_not_on(
        stack: StackHandle, users: dict[str, dict[str, str]], case_b: dict[str, str]) -> None:
    inv = users["inv"]
    with stack.ctx.db() as conn:
        searches_before = conn.execute("SELECT count(*) AS n FROM searches").fetchone()["n"]
    refused_before = len(audit_rows(stack, "refused"))
    attempts = {
        "subject": ["--subject", case_b["subject"]],
        "track": ["--track", case_b["track"]],
        "video": ["--photo", str(P06), "--video", case_b["video"]],
    }
    for kind, argv in attempts.items():
        proc = stack.cli.run("search", *argv, "--case", CASE_A, "--purpose", "probe B",
                             extra_env=inv)
        text = one_line(proc)
        # answered as an id that names nothing (a refusal told that it exists elsewhere:
        # bb32), and audited as the refusal it is
        assert proc.returncode != 0 and text.endswith(
            f"no {kind} {case_b[kind]} in case {CASE_A}"), (kind, text)
    with stack.ctx.db() as conn:
        searches_after = conn.execute("SELECT count(*) AS n FROM searches").fetchone()["n"]
    assert searches_after == searches_before, "no refused search ran or was recorded"
    refused = audit_rows(stack, "refused")[refused_before:]
    assert [r["actor"] for r in refused] == ["sec-inv"] * 3
    assert all(r["details"]["attempted"] == "search" for r in refused)  # type: ignore[index]
    # The library refuses too, whoever calls it.
    scope = Scope("library-caller", CASE_A, stack.ctx.audit_key)
    with pytest.raises(NotFoundError), stack.ctx.db() as conn:
        search.query_from_subject(conn, stack.ctx.settings, case_b["subject"], scope)
    with pytest.raises(NotFoundError), stack.ctx.db() as conn:
        search.query_from_track(conn, case_b["track"], scope)
    # The same ids inside their own case work.
    ok = stack.cli.json("search", "--subject", case_b["subject"], "--case", CASE_B,
                        "--purpose", "own case")
    assert isinstance(ok, dict) and ok["results"], "p06 is found in the case it belongs to"
    ok = stack.cli.json("search", "--track", case_b["track"], "--case", CASE_B,
                        "--purpose", "own case")
    assert isinstance(ok, dict) and ok["results"]


def test_matches_and_subjects_of_another_case_cannot_be_reviewed_removed_or_listed(
        stack: StackHandle, users: dict[str, dict[str, str]], case_b: dict[str, str]) -> None:
    inv = users["inv"]
    refused_before = len(audit_rows(stack, "refused"))
    proc = stack.cli.run("review", case_b["match"], "--confirm", "--note", "not mine",
                         extra_env=inv)
    assert proc.returncode != 0 and one_line(proc).endswith(f"no match {case_b['match']}")
    proc = stack.cli.run("subjects", "remove", case_b["subject"], extra_env=inv)
    assert proc.returncode != 0 and one_line(proc).endswith(f"no subject {case_b['subject']}")
    with stack.ctx.db() as conn:
        status = conn.execute("SELECT status FROM matches WHERE id = %s",
                              (case_b["match"],)).fetchone()["status"]
        n_reviews = conn.execute("SELECT count(*) AS n FROM reviews WHERE match_id = %s",
                                 (case_b["match"],)).fetchone()["n"]
        removed = conn.execute("SELECT removed_at FROM subjects WHERE id = %s",
                               (case_b["subject"],)).fetchone()["removed_at"]
    assert status == "pending" and n_reviews == 0 and removed is None
    refused = audit_rows(stack, "refused")[refused_before:]
    assert [r["details"]["attempted"] for r in refused] == [  # type: ignore[index]
        "review", "subjects.remove"]
    listed = stack.cli.json("matches", extra_env=inv)
    assert isinstance(listed, list) and all(m["case"] == CASE_A for m in listed)
    subjects = stack.cli.json("subjects", "list", extra_env=inv)
    assert isinstance(subjects, list) and all(s["case"] == CASE_A for s in subjects)


def test_tracks_and_retry_of_a_video_in_another_case_are_refused(
        stack: StackHandle, users: dict[str, dict[str, str]], case_b: dict[str, str]) -> None:
    clerk = env_of(stack, "sec-clerk", "clerk")
    stack.cli.run("users", "assign", "sec-clerk", "--case", CASE_A, check=True)
    refused_before = len(audit_rows(stack, "refused"))
    proc = stack.cli.run("tracks", case_b["video"], "--json", extra_env=users["inv"])
    gone = f"no video {case_b['video']}"  # as for an id that names nothing (bb32)
    assert proc.returncode != 0 and one_line(proc).endswith(gone) and not proc.stdout
    proc = stack.cli.run("retry", case_b["video"], extra_env=clerk)
    assert proc.returncode != 0 and one_line(proc).endswith(gone)
    refused = audit_rows(stack, "refused")[refused_before:]
    assert [r["details"]["attempted"] for r in refused] == [  # type: ignore[index]
        "tracks", "retry"]
    assert not [r for r in audit_rows(stack, "retry")
                if r["details"]["video_id"] == case_b["video"]]  # type: ignore[index]
    # The rule is the case, not the command: an account that sees every case may.
    assert stack.cli.run("tracks", case_b["video"], "--json").returncode == 0
    # An id that names nothing is answered and audited as another case's is: only the other
    # case's was audited, and the time its audit row took told which ids exist (bb38).
    nothing = str(uuid.uuid4())
    for argv, kind in ((["tracks", nothing, "--json"], "video"),
                       (["search", "--track", nothing, "--case", CASE_A, "--purpose", "probe"],
                        "track")):
        refused_before = len(audit_rows(stack, "refused"))
        proc = stack.cli.run(*argv, extra_env=users["inv"])
        assert proc.returncode != 0 and f"no {kind} {nothing}" in one_line(proc)
        [row] = audit_rows(stack, "refused")[refused_before:]
        assert (row["actor"], row["details"]["object"]) == (  # type: ignore[index]
            "sec-inv", f"{kind} {nothing}")
        assert row["details"]["reason"] == f"{kind} {nothing} names nothing"  # type: ignore[index]


# --- auditing of reads and failed logins -------------------------------------------------

def test_failed_logins_listings_and_person_grouping_are_audited(
        stack: StackHandle, users: dict[str, dict[str, str]], case_b: dict[str, str]) -> None:
    inv = users["inv"]
    bad = stack.cli.run("jobs", extra_env={**inv, "BODYCAM_TOKEN": inv["BODYCAM_TOKEN"] + "x"})
    assert bad.returncode != 0 and "invalid credentials" in bad.stderr
    nobody = stack.cli.run("jobs", extra_env={"BODYCAM_USER": "no-such-user",
                                              "BODYCAM_TOKEN": "bct_guess"})
    assert nobody.returncode != 0 and "invalid credentials" in nobody.stderr
    failed = audit_rows(stack, "login.failed")[-2:]
    assert [r["details"]["claimed_user"] for r in failed] == [  # type: ignore[index]
        "sec-inv", "no-such-user"]
    assert all(r["actor"] == "anonymous" for r in failed), "a claimed name is not an actor"
    assert inv["BODYCAM_TOKEN"] not in json.dumps(failed) and "bct_guess" not in json.dumps(
        failed), "tokens are never recorded"

    stack.cli.run("matches", "--case", CASE_B, "--json", check=True)
    [listed] = audit_rows(stack, "matches.list")[-1:]
    assert case_b["match"] in listed["details"]["match_ids"]  # type: ignore[index]
    stack.cli.run("subjects", "list", "--case", CASE_B, "--json", check=True)
    [seen] = audit_rows(stack, "subjects.list")[-1:]
    assert case_b["subject"] in seen["details"]["subject_ids"]  # type: ignore[index]

    before = len(audit_rows(stack, "persons"))
    missing = stack.cli.run("persons", "--case", CASE_B)
    assert missing.returncode != 0 and "missing purpose: " in one_line(missing)
    assert len(audit_rows(stack, "persons")) == before, "no purpose, no grouping"
    people = stack.cli.json("persons", "--case", CASE_B, "--purpose", "who else was there")
    assert isinstance(people, list) and people
    [row] = audit_rows(stack, "persons")[before:]
    d = row["details"]
    assert d["case"] == CASE_B and d["purpose"] == "who else was there"  # type: ignore[index]
    assert d["persons"] == len(people)  # type: ignore[index]


# --- the incoming path ------------------------------------------------------------------

def _api(stack: StackHandle) -> str:
    return str(json.loads((stack.home / "stack.json").read_text())["api_url"])


def _event(bucket: str, key: str, etag: str) -> dict[str, object]:
    return {"eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag}}}


def test_s3_events_need_the_notifier_token_and_only_real_incoming_objects_are_queued(
        stack: StackHandle, users: dict[str, dict[str, str]]) -> None:
    store = stack.ctx.store
    url = f"{_api(stack)}/s3/events"
    fake = {"Records": [_event(store.bucket, f"incoming/fake/{i}.mp4", f"etag{i}")
                        for i in range(50)]}
    audit_before = len(audit_rows(stack))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"},
                    {"Authorization": "Basic Ym9keWNhbTpib2R5Y2Ft"}):
        reply = httpx.post(url, json=fake, headers=headers, timeout=10)
        assert reply.status_code == 401, headers
    token = stack.cli.run("events-token", check=True).stdout.strip()
    refused = stack.cli.run("events-token", extra_env=users["inv"])
    assert refused.returncode != 0 and "needs the admin role" in refused.stderr
    auth = {"Authorization": f"Bearer {token}"}
    reply = httpx.post(url, json=fake, headers=auth, timeout=10)
    assert reply.status_code == 200 and reply.json() == {"queued": 0}, "no such objects"
    # Thousands of records in one notification cost a store listing each: refused whole.
    flood = {"Records": [_event(store.bucket, f"incoming/fake/{i}.mp4", f"etag{i}")
                         for i in range(101)]}
    reply = httpx.post(url, json=flood, headers=auth, timeout=10)
    assert reply.status_code == 413 and "at most 100 records" in reply.json()["detail"]
    # A real object: under another bucket's name, or with another etag, is not queued either.
    key = "incoming/sec/claimed.mp4"
    store.put_bytes(key + ".json", json.dumps(
        {"case": "T-SEC-IN", "officer": "O", "device": "D",
         "uploader": "sec-sup"}).encode(), "application/json")
    store._client.put_object(Bucket=store.bucket, Key=key, Body=HAMILTON.read_bytes())
    etag = next(o.etag for o in store.list(key) if o.key == key)
    reply = httpx.post(url, json={"Records": [_event(store.bucket, key, etag)]}, headers=auth,
                       timeout=10)
    assert reply.json() == {"queued": 1}
    # The same object named twice more in one notification: queued once.
    reply = httpx.post(url, json={"Records": [_event(store.bucket, key, etag)] * 2},
                       headers=auth, timeout=10)
    assert reply.json() == {"queued": 1}
    # Under another bucket's name, with another etag, or outside incoming/: nothing queued.
    for rec in (_event("other-bucket", key, etag), _event(store.bucket, key, "0" * 32),
                _event(store.bucket, "originals/x.mp4", etag)):
        reply = httpx.post(url, json={"Records": [rec]}, headers=auth, timeout=10)
        assert reply.json() == {"queued": 0}, rec
    with stack.ctx.db() as conn:
        fakes = conn.execute("SELECT count(*) AS n FROM incoming_objects WHERE key LIKE"
                             " 'incoming/fake/%'").fetchone()["n"]
    assert fakes == 0
    assert not [r for r in audit_rows(stack)[audit_before:]
                if "fake" in json.dumps(r["details"])], "forged records leave no audit rows"
    deadline = time.monotonic() + 120
    row = None
    while time.monotonic() < deadline and row is None:
        with stack.ctx.db() as conn:
            row = conn.execute("SELECT id::text AS id, uploader FROM videos WHERE case_id ="
                               " 'T-SEC-IN'").fetchone()
        time.sleep(0.5)
    assert row is not None, "the real object was ingested"
    assert row["uploader"] == "system:incoming", "an unauthenticated upload has no user"
    [ingest] = [r for r in audit_rows(stack, "ingest")
                if r["details"]["video_id"] == row["id"]]  # type: ignore[index]
    assert ingest["actor"] == "system:incoming"
    deadline = time.monotonic() + 30
    claims: list[dict[str, object]] = []
    while time.monotonic() < deadline and not claims:
        claims = [r for r in audit_rows(stack, "ingest.incoming")
                  if r["details"]["video_id"] == row["id"]]  # type: ignore[index]
        time.sleep(0.5)
    [claim] = claims
    assert claim["actor"] == "system:incoming"
    assert claim["details"]["claimed_uploader"] == "sec-sup"  # type: ignore[index]
    assert claim["details"]["claim_verified"] is False  # type: ignore[index]
    assert not [r for r in audit_rows(stack) if r["actor"] == "sec-sup"
                and r["action"].startswith("ingest")], "the claim never becomes the actor"
    stack.wait_status(row["id"])


@pytest.mark.parametrize("sidecar", [b"[1, 2, 3]", b'"a string"', b"{not json",
                                     b'{"case": ["T-SEC-IN"], "officer": "O", "device": "D"}'])
def test_a_bad_sidecar_is_rejected_once_with_its_reason_kept_and_not_retried(
        stack: StackHandle, sidecar: bytes) -> None:
    store = stack.ctx.store
    key = f"incoming/sec-sidecar/{hashlib.sha256(sidecar).hexdigest()[:12]}.mp4"
    store.put_bytes(key + ".json", sidecar, "application/json")
    store._client.put_object(Bucket=store.bucket, Key=key, Body=b"not even a video")
    deadline = time.monotonic() + 60
    row = None
    while time.monotonic() < deadline:
        with stack.ctx.db() as conn:
            row = conn.execute("SELECT state, error, attempts FROM incoming_objects"
                               " WHERE key = %s", (key,)).fetchone()
        if row and row["state"] == "rejected":
            break
        time.sleep(0.5)
    assert row is not None and row["state"] == "rejected", row
    assert "sidecar" in row["error"] and ".json" in row["error"], row["error"]
    reconcile_s = Settings().jobs.reconcile_interval_s
    time.sleep(4 * reconcile_s + 1)  # several reconciler passes
    with stack.ctx.db() as conn:
        again = conn.execute("SELECT state, attempts FROM incoming_objects WHERE key = %s",
                             (key,)).fetchone()
    assert again["state"] == "rejected" and again["attempts"] == 1, "never retried"
    rejected = [r for r in audit_rows(stack, "ingest.rejected")
                if r["details"].get("object") == key]  # type: ignore[attr-defined]
    assert len(rejected) == 1 and rejected[0]["actor"] == "system:incoming"
    assert store.exists(key) and store.exists(key + ".json"), "kept for someone to look at"


# --- the audit log's anchors ---------------------------------------------------------------

@pytest.fixture
def attacker(stack: StackHandle) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A database superuser with triggers off, and an intact, idle log before and after."""
    wait_idle(stack)
    with tampering(stack) as conn:
        yield conn


def _tail(conn: psycopg.Connection[tuple[object, ...]], n: int) -> list[tuple[object, ...]]:
    rows = conn.execute("SELECT id, at, actor, action, details::text, prev_hash, hash, seal"
                        " FROM audit_log ORDER BY id DESC LIMIT %s", (n,)).fetchall()
    return list(reversed(rows))


def _put_back(conn: psycopg.Connection[tuple[object, ...]], rows: list[tuple[object, ...]]
              ) -> None:
    for r in rows:
        conn.execute("INSERT INTO audit_log (id, at, actor, action, details, prev_hash, hash,"
                     " seal) VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s)", r)
    last = rows[-1]
    conn.execute("UPDATE audit_head SET last_id = %s, last_hash = %s", (last[0], last[6]))


def test_rows_deleted_from_the_end_are_caught_even_with_an_older_anchor_put_back(
        stack: StackHandle, attacker: psycopg.Connection[tuple[object, ...]]) -> None:
    store = stack.ctx.store
    stack.ctx.audit("sec-test", "marker", {"n": 1})
    stack.ctx.audit("sec-test", "marker", {"n": 2})
    tail = _tail(attacker, 3)
    keep, gone = tail[0], tail[1:]
    keep_id, keep_hash = int(keep[0]), str(keep[6])  # type: ignore[call-overload]
    anchors = {int(r[0]): store.get_bytes(audit.anchor_key(int(r[0])))  # type: ignore[call-overload]
               for r in tail}
    # The attack on the old design: delete the newest rows, roll the database's head back,
    # and put an older sealed anchor back as the single head.
    attacker.execute("DELETE FROM audit_log WHERE id > %s", (keep_id,))
    attacker.execute("UPDATE audit_head SET last_id = %s, last_hash = %s", (keep_id, keep_hash))
    store.put_bytes(audit.LEGACY_ANCHOR_KEY, anchors[keep_id], "application/json")
    code, text = verify(stack)
    assert code != 0 and "deleted" in text and f"first bad row {keep_id + 1}" in text, text
    # Overwriting the newer anchors with the older one's body does not make them pass.
    for r in gone:
        store.put_bytes(audit.anchor_key(int(r[0])), anchors[keep_id],  # type: ignore[call-overload]
                        "application/json")
    code, text = verify(stack)
    assert code != 0 and "forged" in text, text
    # Removing the newer anchors altogether is caught by the database high-water mark.
    for r in gone:
        store.delete(audit.anchor_key(int(r[0])))  # type: ignore[call-overload]
    store.delete(audit.LEGACY_ANCHOR_KEY)
    attacker.execute("UPDATE audit_head SET last_id = %s, last_hash = %s",
                     (gone[-1][0], gone[-1][6]))
    code, text = verify(stack)
    assert code != 0 and "high-water mark" in text and "deleted" in text, text
    # The application itself cannot move the mark back.
    with pytest.raises(psycopg.errors.RaiseException), stack.ctx.db() as conn:
        conn.execute("UPDATE audit_head SET last_id = last_id - 1")
    _put_back(attacker, gone)
    for rid, body in anchors.items():
        store.put_bytes(audit.anchor_key(rid), body, "application/json")


def test_a_forged_anchor_with_a_huge_id_is_reported_and_does_not_stop_anchoring(
        stack: StackHandle, attacker: psycopg.Connection[tuple[object, ...]]) -> None:
    store = stack.ctx.store
    huge = 10**11
    forged = {"id": huge, "hash": "f" * 64, "seal": "0" * 64}
    store.put_bytes(audit.anchor_key(huge), json.dumps(forged).encode(), "application/json")
    try:
        code, text = verify(stack)
        assert code != 0 and "forged" in text and audit.anchor_key(huge) in text, text
        stack.ctx.audit("sec-test", "marker", {"after": "forged anchor"})
        [last] = _tail(attacker, 1)
        rid = int(last[0])  # type: ignore[call-overload]
        body = json.loads(store.get_bytes(audit.anchor_key(rid)))
        assert body["hash"] == last[6], "the new row was anchored despite the forged anchor"
    finally:
        store.delete(audit.anchor_key(huge))
    code, text = verify(stack)
    assert code == 0, text
    # Anchoring still guards the end of the log.
    attacker.execute("DELETE FROM audit_log WHERE id = %s", (rid,))
    attacker.execute("UPDATE audit_head SET last_id = %s, last_hash = %s", (rid - 1, last[5]))
    code, text = verify(stack)
    assert code != 0 and "deleted" in text and f"first bad row {rid}" in text, text
    _put_back(attacker, [last])


# --- exports ------------------------------------------------------------------------------

def _rehash(records: list[dict[str, object]]) -> None:
    prev = str(records[0]["prev_hash"])
    for r in records:
        r["prev_hash"] = prev
        r["hash"] = audit.row_hash(int(r["id"]), str(r["at"]), str(r["actor"]),  # type: ignore[call-overload]
                                   str(r["action"]), r["details"], prev)  # type: ignore[arg-type]
        prev = str(r["hash"])


def test_an_export_with_rows_removed_and_everything_recomputed_fails_verification(
        stack: StackHandle, users: dict[str, dict[str, str]], tmp_path: Path) -> None:
    aud = users["aud"]
    out = tmp_path / "audit.jsonl"
    stack.cli.run("audit", "export", "--format", "jsonl", "-o", str(out), check=True,
                  extra_env=aud)
    assert stack.cli.run("audit", "verify-export", str(out)).returncode == 0
    key = stack.cli.run("audit", "export-key", check=True, extra_env=aud).stdout.strip()
    key_file = tmp_path / "export.key"
    key_file.write_text(key + "\n")
    offline = {"BODYCAM_HOME": str(tmp_path / "no-stack")}
    proc = stack.cli.run("audit", "verify-export", str(out), "--key-file", str(key_file),
                         extra_env=offline)
    assert proc.returncode == 0, proc.stderr
    unkeyed = stack.cli.run("audit", "verify-export", str(out), extra_env=offline)
    assert unkeyed.returncode != 0 and "--key-file" in one_line(unkeyed)
    original = out.read_bytes()
    manifest = json.loads(audit.manifest_path(out).read_text())
    records = jsonl(original.decode())
    forged_key = hashlib.sha256(b"a guess").hexdigest()
    attacks = {
        "a middle row removed": records[:3] + records[4:],
        "the last row removed": records[:-1],
        "the first row removed": records[1:],
    }
    for name, kept in attacks.items():
        kept = [dict(r) for r in kept]
        if name == "a middle row removed":
            _rehash(kept)
        data = audit._serialise(kept, "jsonl", audit.CSV_COLUMNS)
        out.write_bytes(data)
        fake = {**manifest, "rows": len(kept), "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data), "last_row": {"id": kept[-1]["id"], "hash": kept[-1]["hash"]},
                "first_row": {"id": kept[0]["id"], "hash": kept[0]["hash"],
                              "prev_hash": kept[0]["prev_hash"]}}
        for signer in (None, Ed25519PrivateKey.generate()):  # the forger's own key
            if signer is not None:
                fake["signature"] = signer.sign(audit._manifest_bytes(fake)).hex()
            audit.manifest_path(out).write_text(json.dumps(fake))
            proc = stack.cli.run("audit", "verify-export", str(out))
            assert proc.returncode != 0 and "signature" in one_line(proc), (name, proc.stderr)
        # Keeping the genuine signed manifest exposes the missing rows.
        audit.manifest_path(out).write_text(json.dumps(manifest))
        proc = stack.cli.run("audit", "verify-export", str(out))
        assert proc.returncode != 0 and "NOT intact" in proc.stderr, name
    out.write_bytes(original)
    assert stack.cli.run("audit", "verify-export", str(out)).returncode == 0
    wrong = tmp_path / "wrong.key"
    wrong.write_text(forged_key)
    proc = stack.cli.run("audit", "verify-export", str(out), "--key-file", str(wrong),
                         extra_env=offline)
    assert proc.returncode != 0 and "signature" in proc.stderr


def test_no_csv_export_cell_starts_a_spreadsheet_formula_and_csv_exports_still_verify(
        stack: StackHandle, users: dict[str, dict[str, str]], case_b: dict[str, str],
        tmp_path: Path) -> None:
    # A name that starts a formula (`@`; one starting with `-` is refused: test_trust_boundary)
    env = env_of(stack, "@sec-formula", "clerk")
    stack.cli.run("purge", "--dry-run", extra_env=env)  # refused, audited with the name
    aud = users["aud"]
    for kind in ("audit", "matches"):
        out = tmp_path / f"{kind}.csv"
        argv = ([kind, "export"] if kind == "audit" else ["matches", "export", "--case",
                                                          CASE_B])
        stack.cli.run(*argv, "--format", "csv", "-o", str(out), check=True, extra_env=aud)
        cells = [c for row in csv.reader(io.StringIO(out.read_text())) for c in row]
        risky = [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
        assert not risky, (kind, risky[:5])
        expect = "'@sec-formula" if kind == "audit" else "'" + FORMULA_NAME
        assert expect in cells, kind
        assert stack.cli.run("audit", "verify-export", str(out)).returncode == 0, kind
    for value in ("=1+1", "+1", "-1", "@A1", "\tx", "\rx", "'=already", "'", "plain", ""):
        assert audit.csv_value(audit.csv_cell(value)) == value
        assert not audit.csv_cell(value).startswith(("=", "+", "-", "@", "\t", "\r"))


# --- thresholds -------------------------------------------------------------------------

def test_non_finite_out_of_range_and_below_calibration_thresholds_are_refused(
        stack: StackHandle, case_b: dict[str, str]) -> None:
    calibrated = Settings().search.threshold_floor[DLIB]
    default = Settings().search.default_threshold[DLIB]
    for value, reason in (("nan", "not a number"), ("inf", "not a number"),
                          ("1.5", "between -1.0 and 1.0"),
                          (str(calibrated - 0.2), "below the floor")):
        proc = stack.cli.run("search", "--subject", case_b["subject"], "--case", CASE_B,
                             "--purpose", "p", "--threshold", value)
        assert proc.returncode == 1 and reason in one_line(proc), (value, proc.stderr)
    with stack.ctx.db() as conn:
        n_before = conn.execute("SELECT count(*) AS n FROM thresholds").fetchone()["n"]
    for floor, dflt, reason in (("0.001", str(default), "calibrated floor"),
                                ("nan", str(default), "not a number"),
                                (str(calibrated), "nan", "not a number"),
                                (str(calibrated), "2", "between -1.0 and 1.0")):
        proc = stack.cli.run("thresholds", "set", "--model", DLIB, "--default", dflt,
                             "--floor", floor, "--reason", "attempt")
        assert proc.returncode == 1 and reason in one_line(proc), (floor, dflt, proc.stderr)
    with stack.ctx.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM thresholds").fetchone()["n"] == n_before
        # A floor written below calibration by other means still does not lower the bar.
        conn.execute("INSERT INTO thresholds (model, default_threshold, floor, changed_by,"
                     " reason) VALUES (%s, 0.5, 0.001, 'intruder', 'bypass')", (DLIB,))
    try:
        proc = stack.cli.run("search", "--subject", case_b["subject"], "--case", CASE_B,
                             "--purpose", "p", "--threshold", "0.5")
        assert proc.returncode == 1 and f"below the floor {calibrated}" in one_line(proc)
    finally:
        stack.cli.run("thresholds", "set", "--model", DLIB, "--default", str(default),
                      "--floor", str(calibrated), "--reason", "restore calibrated values",
                      check=True)


# --- policy profiles ----------------------------------------------------------------------

def test_a_profile_switch_keeps_an_explicit_reviewer_count(stack: StackHandle) -> None:
    def policy() -> dict[str, object]:
        shown = stack.cli.json("policy", "show")
        assert isinstance(shown, dict)
        return shown

    def switch(*argv: str) -> None:
        stack.cli.run("policy", "set", *argv, "--reason", "test", check=True)

    start = policy()
    try:
        if not start["reviewers_explicit"]:
            switch("--profile", "identify-eu")
            assert policy()["reviewers_required"] == 2, "a profile default follows the profile"
            switch("--profile", "identify")
            assert policy()["reviewers_required"] == 1
        switch("--reviewers", "3")
        for profile in ("identify-eu", "identify", "identify-eu"):
            switch("--profile", profile)
            now = policy()
            assert now["reviewers_required"] == 3 and now["profile"] == profile, now
        proc = stack.cli.run("policy", "set", "--reviewers", "0", "--reason", "x")
        assert proc.returncode == 1 and "between 1 and 5" in one_line(proc)
        switch("--profile", "identify", "--reviewers", "2")
        switch("--profile", "identify-eu")
        switch("--profile", "identify")
        assert policy()["reviewers_required"] == 2, "kept, not reset to identify's 1"
        # Never below a profile's own count: 1 set under identify left identify-eu with one
        # confirmation (bb50); asking for fewer under it is refused.
        switch("--reviewers", "1")
        switch("--profile", "identify-eu")
        assert policy()["reviewers_required"] == 2, policy()
        for argv in (("--reviewers", "1"), ("--profile", "identify-eu", "--reviewers", "1")):
            proc = stack.cli.run("policy", "set", *argv, "--reason", "x")
            assert proc.returncode == 1 and "identify-eu profile needs at least 2" in \
                one_line(proc), proc.stderr
        assert policy()["reviewers_required"] == 2
        switch("--profile", "identify")  # the count as set, found again (not the raised 2)
        assert policy()["reviewers_required"] == 1, policy()
    finally:
        switch("--profile", "identify", "--reviewers", str(start["reviewers_required"]))


def test_two_policy_changes_made_at_once_are_both_kept(stack: StackHandle) -> None:
    """Each change is made on the one before: a switch to identify-eu sent beside a reviewer
    count was lost 2 times in 10, and the count 6 times (bb53). The first change holds its
    transaction open while the second is made; both are in force after."""
    from bodycam import policy

    start = stack.cli.json("policy", "show")
    assert isinstance(start, dict) and start["profile"] == "identify", start
    key, made = stack.ctx.audit_key, {}

    def second() -> None:
        with stack.ctx.db() as conn:
            made["second"] = policy.change(conn, key, "admin", "test: the count", reviewers=3)

    try:
        with stack.ctx.db() as conn:
            first = policy.change(conn, key, "admin", "test: the profile", profile="identify-eu")
            t = threading.Thread(target=second)
            t.start()
            t.join(1.0)
        t.join(30)
        assert not t.is_alive()
        now = stack.cli.json("policy", "show")
        assert isinstance(now, dict)
        assert (now["profile"], now["reviewers_required"]) == ("identify-eu", 3), now
        assert made["second"].profile == first.profile == "identify-eu"
        with stack.ctx.db() as conn:
            rows = conn.execute("SELECT details FROM audit_log WHERE action = 'policy.change'"
                                " ORDER BY id DESC LIMIT 2").fetchall()
        assert rows[0]["details"]["from"] == rows[1]["details"]["to"], "each from the last"
    finally:
        stack.cli.run("policy", "set", "--profile", "identify", "--reviewers",
                      str(start["reviewers_required"]), "--reason", "restore", check=True)


def test_redact_only_purges_every_template_refuses_approval_and_face_processing(
        stack: StackHandle, users: dict[str, dict[str, str]], case_b: dict[str, str],
        tmp_path: Path) -> None:
    """Last in this file: switching to redact-only deletes every embedding of the session."""
    stack.cli.run("policy", "set", "--profile", "identify-eu", "--reason", "approval first",
                  check=True)
    pending = stack.cli.json("subjects", "enroll", "--name", "p06 again", "--photo", str(P06),
                             "--case", CASE_B, "--reason", "awaits approval")
    assert isinstance(pending, dict) and pending["pending_matches"] == 0
    assert pending["awaiting_approval"] is True
    sid = str(pending["subject_id"])
    # Listed as awaiting approval, in JSON and in words (it read as enrolled with no match: bb33)
    [row] = [r for r in cast(list[dict[str, Any]],
                             stack.cli.json("subjects", "list", "--case", CASE_B))
             if r["subject_id"] == sid]
    assert row["approved"] is False
    [line] = [ln for ln in stack.cli.run("subjects", "list", "--case", CASE_B,
                                         check=True).stdout.splitlines() if ln.startswith(sid)]
    assert "[awaiting approval]" in line, line
    # Its author holds the supervisor role too (the operator holds every role): four eyes
    # still refuse, 403 like every refusal, and the attempt is audited.
    own = stack.cli.run("subjects", "approve", sid)
    assert own.returncode != 0 and "other than its author" in one_line(own), one_line(own)
    [refused] = audit_rows(stack, "refused")[-1:]
    assert refused["actor"] == "operator", refused
    assert refused["details"] == {  # type: ignore[comparison-overlap]
        "attempted": "subjects.approve", "case": CASE_B, "object": f"subject {sid}",
        "reason": "an enrolment must be approved by someone other than its author"}
    # Nor is the pending enrolment searched for, as it is not matched, until it is approved.
    early = stack.cli.run("search", "--subject", sid, "--case", CASE_B, "--purpose", "too soon")
    assert early.returncode != 0 and "awaits a supervisor's approval" in one_line(early)
    [refused] = audit_rows(stack, "refused")[-1:]
    details = dict(refused["details"])  # type: ignore[call-overload]
    assert details["attempted"] == "search" and "approval" in details["reason"], details
    wait_idle(stack)
    with stack.ctx.db() as conn:
        before = conn.execute(
            "SELECT (SELECT count(*) FROM tracks WHERE embedding IS NOT NULL) AS t,"
            " (SELECT count(*) FROM detections WHERE embedding IS NOT NULL) AS d,"
            " (SELECT count(*) FROM subject_faces) AS f,"
            " (SELECT count(*) FROM matches WHERE status = 'pending') AS m,"
            " (SELECT count(*) FROM matches m WHERE status = 'pending' AND (EXISTS"
            " (SELECT 1 FROM reviews r WHERE r.match_id = m.id) OR m.case_id = %(held)s"
            " OR m.case_id IN (SELECT case_id FROM held_cases))) AS w",  # kept as withdrawn
            {"held": CASE_B}).fetchone()
    assert before["t"] > 0 and before["f"] > 0
    stack.cli.run("cases", "hold", CASE_B, "--reason", "court order", check=True)
    try:
        stack.cli.run("policy", "set", "--profile", "redact-only", "--reason",
                      "jurisdiction bans face matching", check=True)
        [purge] = audit_rows(stack, "policy.purge_biometrics")[-1:]
        details = dict(purge["details"])  # type: ignore[call-overload]
        # A held case loses its templates too (the ban leaves none; the hold keeps the
        # originals), and the row says so by name.
        assert CASE_B in details.pop("held_cases_purged"), purge
        assert details == {
            "track_embeddings": before["t"], "detection_embeddings": before["d"],
            "subject_templates": before["f"], "pending_matches": before["m"] - before["w"],
            "withdrawn_matches": before["w"],
            "reason": "the redact-only profile allows no face embeddings"}
        with stack.ctx.db() as conn:
            after = conn.execute(
                "SELECT (SELECT count(*) FROM tracks WHERE embedding IS NOT NULL) AS t,"
                " (SELECT count(*) FROM detections WHERE embedding IS NOT NULL) AS d,"
                " (SELECT count(*) FROM subject_faces) AS f").fetchone()
        assert (after["t"], after["d"], after["f"]) == (0, 0, 0)
        # Whatever path writes an embedding now, the database drops or refuses it.
        with stack.ctx.db() as conn:
            conn.execute("UPDATE tracks SET embedding = array_fill(0.1, ARRAY[128])::vector"
                         " WHERE id = %s", (case_b["track"],))
            assert conn.execute("SELECT embedding FROM tracks WHERE id = %s",
                                (case_b["track"],)).fetchone()["embedding"] is None
        with pytest.raises(psycopg.errors.RaiseException), stack.ctx.db() as conn:
            conn.execute("INSERT INTO subject_faces (subject_id, photo_sha256, photo_key,"
                         " face_index, box_px, quality, model, model_version, weights_sha256,"
                         " embedding) VALUES (%s, 'x', 'x', 0, '{0,0,1,1}', 1, %s, 'v', 'w',"
                         " array_fill(0.1, ARRAY[128])::vector)", (sid, DLIB))
        approve = stack.cli.run("subjects", "approve", sid, extra_env=users["sup"])
        assert approve.returncode != 0 and "redact-only" in one_line(approve)
        review = stack.cli.run("review", case_b["match"], "--confirm", "--note", "n",
                               extra_env=users["sup"])
        assert review.returncode != 0
        not_an_image = tmp_path / "probe.jpg"
        not_an_image.write_bytes(b"not an image at all")
        for photo in (str(not_an_image), str(tmp_path / "absent.jpg")):
            proc = stack.cli.run("search", "--photo", photo, "--case", CASE_B, "--purpose", "p")
            assert proc.returncode != 0 and "redact-only" in one_line(proc), (
                "the policy is checked before the photo is even read")
        with stack.ctx.db() as conn:
            assert conn.execute("SELECT count(*) AS n FROM matches WHERE subject_id = %s",
                                (sid,)).fetchone()["n"] == 0
            assert conn.execute("SELECT approved_at FROM subjects WHERE id = %s",
                                (sid,)).fetchone()["approved_at"] is None
    finally:
        stack.cli.run("policy", "set", "--profile", "identify", "--reason", "test over",
                      check=True)
        stack.cli.run("cases", "release", CASE_B, "--reason", "test over", check=True)
    # Back under identify, approving the subject finds no template to match with.
    approved = stack.cli.run("subjects", "approve", sid, extra_env=users["sup"])
    assert approved.returncode == 0 and "0 pending matches" in approved.stdout
    [row] = [r for r in cast(list[dict[str, Any]],
                             stack.cli.json("subjects", "list", "--case", CASE_B))
             if r["subject_id"] == sid]
    assert row["approved"] is True
