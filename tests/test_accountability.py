"""Accounts and roles, the tamper-evident audit log, exports, retention and policy profiles."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest

from bodycam import audit, queue, retention
from bodycam.accounts import PERMISSIONS, ROLES
from bodycam.config import Settings
from bodycam.context import Context
from bodycam.db import Pool
from bodycam.errors import InvalidInputError
from bodycam.services import home_admin_url
from bodycam.timeparse import parse_period
from tests.conftest import FACENET_CLIP, HAMILTON, TESTDATA, StackHandle, jsonl

ZERO = "00000000-0000-0000-0000-000000000000"
CASE = "T-ROLES"
P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"


@pytest.fixture(scope="module")
def accounts(stack: StackHandle) -> dict[str, dict[str, str]]:
    """One account per role (investigators assigned to CASE); name -> env to act as it."""
    envs = {}
    for role in ROLES:
        name = f"user-{role}"
        token = stack.cli.run("users", "add", name, "--role", role, check=True).stdout.strip()
        envs[role] = {"BODYCAM_USER": name, "BODYCAM_TOKEN": token}
    stack.cli.run("users", "assign", "user-investigator", "--case", CASE, check=True)
    return envs


def admin_conn(stack: StackHandle) -> psycopg.Connection[tuple[object, ...]]:
    """A database superuser connection: the attacker in the tamper tests."""
    url = home_admin_url(stack.home)
    return psycopg.connect(url, autocommit=True)


def verify(stack: StackHandle) -> tuple[int, str]:
    proc = stack.cli.run("audit", "verify")
    return proc.returncode, " ".join((proc.stdout + proc.stderr).split())


def commands(tmp: Path) -> dict[str, list[str]]:
    """Action -> a cheap command line that performs it (no heavy work when allowed). The
    files exist (the CLI refuses a missing file itself, before any server), but are not
    media: the server checks the role first, then refuses the content."""
    s = Settings().search
    (tmp / "x.jpg").write_bytes(b"not a photo")
    (tmp / "x.mp4").write_bytes(b"not a video")
    return {
        "ingest": ["ingest", str(tmp / "x.mp4"), "--case", CASE, "--officer", "O",
                   "--device", "D"],
        "jobs": ["jobs", "--json"],
        "retry": ["retry", ZERO],
        "tracks": ["tracks", ZERO],
        "subjects.enroll": ["subjects", "enroll", "--name", "N", "--photo", str(tmp / "x.jpg"),
                            "--case", CASE, "--reason", "r"],
        "subjects.list": ["subjects", "list", "--json"],
        "subjects.remove": ["subjects", "remove", ZERO],
        "subjects.approve": ["subjects", "approve", ZERO],
        "search": ["search", "--photo", str(tmp / "x.jpg"), "--case", CASE, "--purpose", "p"],
        "matches": ["matches", "--json"],
        "review": ["review", ZERO, "--confirm", "--note", "n"],
        "matches.reopen": ["matches", "reopen", ZERO, "--reason", "r"],
        "persons": ["persons", "--case", CASE, "--purpose", "p", "--json"],
        "thresholds.set": ["thresholds", "set", "--model", "dlib-resnet", "--default",
                           str(s.default_threshold["dlib-resnet"]), "--floor",
                           str(s.threshold_floor["dlib-resnet"]), "--reason", "unchanged"],
        "cases.hold": ["cases", "hold", "T-ROLES-HOLD", "--reason", "r"],
        "cases.assign": ["users", "assign", "user-clerk", "--case", "T-ROLES-2"],
        "audit.verify": ["audit", "verify"],
        "fixity": ["fixity"],
        "events.token": ["events-token"],
        "audit.export": ["audit", "export", "--format", "jsonl", "-o", str(tmp / "a.jsonl")],
        "matches.export": ["matches", "export", "--format", "csv", "-o", str(tmp / "m.csv")],
        "users": ["users", "list", "--json"],
        "policy.set": ["policy", "set", "--retention-days", "30", "--reason", "unchanged"],
        "purge": ["purge", "--dry-run"],
        "reprocess": ["reprocess", "--reason", "matrix"],
        "redact": ["redact", ZERO, "-o", str(tmp / "r.mp4")],
    }


def test_every_command_is_checked_against_every_role(
        stack: StackHandle, accounts: dict[str, dict[str, str]], tmp_path: Path) -> None:
    cmds = commands(tmp_path)
    assert set(cmds) == set(PERMISSIONS), "every permission is exercised"
    for role, env in accounts.items():
        for action, argv in cmds.items():
            proc = stack.cli.run(*argv, extra_env=env)
            text = " ".join(proc.stderr.split())
            if role in PERMISSIONS[action]:
                assert "refused:" not in text, (role, action, text)
            else:
                assert proc.returncode != 0, (role, action)
                needed = " or ".join(PERMISSIONS[action])
                assert f"needs the {needed} role" in text, (role, action, text)
    exported = tmp_path / "all.jsonl"
    stack.cli.run("audit", "export", "--format", "jsonl", "-o", str(exported), check=True)
    refused = jsonl(exported.read_text())
    refused = [r for r in refused if r["action"] == "refused"]
    assert any(r["actor"] == "user-auditor" and r["details"]["attempted"] == "search"
               for r in refused), "the auditor's refused search is on record"


def test_investigators_see_only_cases_assigned_to_them(
        stack: StackHandle, accounts: dict[str, dict[str, str]]) -> None:
    env = accounts["investigator"]
    proc = stack.cli.run("search", "--photo", str(P06), "--case", "T-OTHER", "--purpose", "p",
                         extra_env=env)
    assert proc.returncode != 0 and "not assigned to case T-OTHER" in proc.stderr
    ok = stack.cli.run("search", "--photo", str(P06), "--case", CASE, "--purpose", "p",
                       "--json", extra_env=env)
    assert ok.returncode == 0, ok.stderr


def test_supervisors_list_cases_thresholds_and_the_policy_and_unassign_through_the_cli(
        stack: StackHandle, accounts: dict[str, dict[str, str]]) -> None:
    """The web app had these views and the CLI had not (bb33): cases with their accounts and
    holds, taking a case away, each model's thresholds, and the policy as text (it printed a
    Python dict). Each is the server's rule: an investigator is refused them."""
    sup, inv, case = accounts["supervisor"], accounts["investigator"], "T-UNASSIGN"
    stack.cli.run("users", "assign", "user-investigator", "--case", case, extra_env=sup,
                  check=True)
    held = stack.cli.run("cases", "hold", case, "--reason", "court order 11", extra_env=sup,
                         check=True)
    # a case with no footage may be held (footage may follow), but a typo would look the
    # same: the answer says so (bb33)
    assert " ".join(held.stderr.split()) == (
        f"case {case} on hold: it holds no footage yet (the hold covers what arrives; check "
        "the case number)")
    try:
        cases = cast(list[dict[str, Any]], stack.cli.json("cases", "list", extra_env=sup))
        [row] = [r for r in cases if r["case"] == case]
        assert row["users"] == ["user-investigator"] and row["held"]
        assert row["held_by"] == "user-supervisor" and row["hold_reason"] == "court order 11"
        shown = stack.cli.run("cases", "list", extra_env=sup, check=True).stdout
        [line] = [ln for ln in shown.splitlines() if ln.startswith(case + " ")]
        assert "accounts: user-investigator" in line and "held by user-supervisor" in line
        assert "court order 11" in line
        for argv in (["cases", "list"], ["users", "unassign", "user-investigator", "--case",
                                         case]):
            proc = stack.cli.run(*argv, extra_env=inv)
            assert proc.returncode != 0, argv
            assert "needs the supervisor or admin role" in " ".join(proc.stderr.split())
        # A case number is trimmed wherever it is named, as the assignment stored it (an
        # unassign with the spaces an assign had stripped left the access in place: bb34).
        ok = stack.cli.run("search", "--photo", str(P06), "--case", f"{case} ", "--purpose",
                           "p", "--json", extra_env=inv)
        assert ok.returncode == 0, ok.stderr
        gone = stack.cli.run("users", "unassign", "user-investigator", "--case", f"  {case}",
                             extra_env=sup, check=True)
        assert gone.stderr.strip() == f"user-investigator no longer sees case {case}"
        gone = stack.cli.run("search", "--photo", str(P06), "--case", f"{case} ", "--purpose",
                             "p", extra_env=inv)
        assert gone.returncode != 0 and f"not assigned to case {case}" in gone.stderr
        with stack.ctx.db() as conn:
            refused = conn.execute("SELECT details FROM audit_log WHERE action = 'refused'"
                                   " ORDER BY id DESC LIMIT 1").fetchone()["details"]
        assert (refused["attempted"], refused["case"]) == ("search", case), refused
        # nor does a disabled account see it (the list named it: bb34)
        stack.cli.run("users", "add", "user-gone", "--role", "investigator", check=True)
        stack.cli.run("users", "assign", "user-gone", "--case", case, check=True)
        stack.cli.run("users", "disable", "user-gone", check=True)
        [row] = [r for r in cast(list[dict[str, Any]],
                                 stack.cli.json("cases", "list", extra_env=sup))
                 if r["case"] == case]
        assert row["users"] == []
        # A supervisor sees every case: an assignment that limits nothing says so (bb47).
        wide = stack.cli.run("users", "assign", "user-admin", "--case", case, extra_env=sup,
                             check=True)
        assert " ".join(wide.stderr.split()) == (
            f"user-admin assigned to case {case} user-admin has the admin role, which sees"
            " every case: this assignment limits nothing")
    finally:
        stack.cli.run("cases", "release", case, "--reason", "test over", extra_env=sup,
                      check=True)
    s = Settings().search
    rows = cast(list[dict[str, Any]], stack.cli.json("thresholds", "list", extra_env=inv))
    [dlib] = [r for r in rows if r["model"] == "dlib-resnet"]
    assert dlib["calibrated_floor"] == s.threshold_floor["dlib-resnet"]
    shown = stack.cli.run("thresholds", "list", extra_env=inv, check=True).stdout
    [line] = [ln for ln in shown.splitlines() if ln.startswith("dlib-resnet ")]
    assert f"default {dlib['default']}" in line and f"floor {dlib['floor']}" in line
    policy = cast(dict[str, Any], stack.cli.json("policy", "show", extra_env=inv))
    shown = stack.cli.run("policy", "show", extra_env=inv, check=True).stdout
    assert "{" not in shown
    assert shown.splitlines()[0].split() == ["profile", str(policy["profile"])]


def test_tokens_are_stored_only_as_hashes_and_disabled_accounts_are_refused(
        stack: StackHandle) -> None:
    token = stack.cli.run("users", "add", "temp-clerk", "--role", "clerk",
                          check=True).stdout.strip()
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT sha256 FROM api_tokens WHERE user_name = 'temp-clerk'"
                           ).fetchone()
    assert row["sha256"] != token and token not in json.dumps(row)
    env = {"BODYCAM_USER": "temp-clerk", "BODYCAM_TOKEN": token}
    assert stack.cli.run("jobs", "--json", extra_env=env).returncode == 0
    bad = stack.cli.run("jobs", extra_env={**env, "BODYCAM_TOKEN": token + "x"})
    assert bad.returncode != 0 and "invalid credentials" in bad.stderr
    stack.cli.run("users", "disable", "temp-clerk", check=True)
    gone = stack.cli.run("jobs", extra_env=env)
    assert gone.returncode != 0 and "disabled" in gone.stderr


def test_a_search_is_audited_with_case_purpose_threshold_model_and_results(
        stack: StackHandle, processed: object, tmp_path: Path) -> None:
    vid = processed(HAMILTON, "T-AUDIT")  # type: ignore[operator]
    res = stack.cli.json("search", "--photo", str(P06), "--case", "T-AUDIT", "--purpose",
                         "robbery 2026-118 suspect check")
    assert isinstance(res, dict)
    out = tmp_path / "audit.jsonl"
    stack.cli.run("audit", "export", "--format", "jsonl", "-o", str(out), check=True)
    rows = jsonl(out.read_text())
    [row] = [r for r in rows if r["action"] == "search"
             and r["details"]["purpose"] == "robbery 2026-118 suspect check"]
    d = row["details"]
    assert d["case"] == "T-AUDIT" and d["threshold"] == res["threshold"]
    assert d["model"] == res["model"] and d["query_fingerprint"].startswith("sha256:")
    assert d["result_track_ids"] == [t for a in res["results"] for t in a["track_ids"]]
    assert any(r["action"] == "ingest" and r["details"]["video_id"] == vid for r in rows)
    assert any(r["action"] == "processing.done" and r["details"]["video_id"] == vid
               for r in rows)
    assert stack.cli.run("audit", "verify-export", str(out)).returncode == 0


def test_the_application_role_cannot_change_or_delete_audit_rows(stack: StackHandle) -> None:
    with stack.ctx.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM audit_log").fetchone()["n"] > 0
    for statement in ("UPDATE audit_log SET actor = 'x' WHERE id = 1",
                      "DELETE FROM audit_log WHERE id = 1", "TRUNCATE audit_log"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), stack.ctx.db() as conn:
            conn.execute(statement)  # type: ignore[arg-type]


def test_numbers_jsonb_spells_otherwise_keep_the_chain_verifying(stack: StackHandle) -> None:
    """A row is hashed as jsonb gives its details back: 1e16 (Python's JSON writes 1e+16,
    jsonb gives 10000000000000000) and -0.0 (jsonb: 0.0), reachable by any investigator in
    a render's mute range, made every later `audit verify` fail at that row (bb19)."""
    from bodycam import audit

    odd = {"mute_ranges": [[-0.0, 1e16], [1.5e300, 1e-7]], "big": 2**70, "third": 1 / 3,
           "nested": {"z": [0.1, -0.0, 12345678901234567890.0]}}
    with stack.ctx.db() as conn:
        row = audit.append(conn, stack.ctx.audit_key, "operator", "test.numbers", odd)
    with stack.ctx.db() as conn:
        stored = conn.execute("SELECT details FROM audit_log WHERE id = %s",
                              (row.id,)).fetchone()["details"]
    assert stored == row.details
    code, text = verify(stack)
    assert code == 0, text


@contextmanager
def tampering(stack: StackHandle) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection with triggers bypassed; the chain is intact before and after."""
    code, text = verify(stack)
    assert code == 0, text
    conn = admin_conn(stack)
    conn.execute("SET session_replication_role = replica")
    yield conn
    conn.close()
    code, text = verify(stack)
    assert code == 0, f"restored log verifies again: {text}"


@pytest.fixture
def tamperable(stack: StackHandle) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection with triggers bypassed; the chain must be intact afterwards."""
    with tampering(stack) as conn:
        yield conn


def _row(conn: psycopg.Connection[tuple[object, ...]], rid: int) -> tuple[object, ...]:
    row = conn.execute("SELECT id, at, actor, action, details::text, prev_hash, hash, seal"
                       " FROM audit_log WHERE id = %s", (rid,)).fetchone()
    assert row is not None
    return row


def _restore(conn: psycopg.Connection[tuple[object, ...]], row: tuple[object, ...]) -> None:
    conn.execute("INSERT INTO audit_log (id, at, actor, action, details, prev_hash, hash, seal)"
                 " VALUES (%s, %s, %s, %s, %s::jsonb, %s, %s, %s)", row)


def test_a_row_changed_in_sql_is_caught_and_named(
        stack: StackHandle, tamperable: psycopg.Connection[tuple[object, ...]]) -> None:
    original = _row(tamperable, 3)
    tamperable.execute("UPDATE audit_log SET details = details || '{\"case\": \"forged\"}'"
                       " WHERE id = 3")
    code, text = verify(stack)
    assert code != 0 and "first bad row 3" in text and "changed" in text
    tamperable.execute("DELETE FROM audit_log WHERE id = 3")
    _restore(tamperable, original)


def test_a_row_deleted_in_sql_is_caught_and_named(
        stack: StackHandle, tamperable: psycopg.Connection[tuple[object, ...]]) -> None:
    middle = _row(tamperable, 2)
    tamperable.execute("DELETE FROM audit_log WHERE id = 2")
    code, text = verify(stack)
    assert code != 0 and "first bad row 2" in text
    _restore(tamperable, middle)
    last_id = tamperable.execute("SELECT max(id) FROM audit_log").fetchone()[0]  # type: ignore[index]
    last = _row(tamperable, int(last_id))  # type: ignore[arg-type]
    tamperable.execute("DELETE FROM audit_log WHERE id = %s", (last_id,))
    code, text = verify(stack)
    assert code != 0 and "deleted" in text, "removing the newest row is caught by the anchor"
    _restore(tamperable, last)


def test_a_refusal_and_a_failed_login_are_anchored_so_deleting_them_is_caught(
        stack: StackHandle, accounts: dict[str, dict[str, str]], api_url: str,
        tamperable: psycopg.Connection[tuple[object, ...]]) -> None:
    # These two are committed before their request fails; their anchors were never written,
    # so deleting them (and moving the high-water mark back) passed `audit verify`.
    refused = stack.cli.run("purge", "--dry-run", extra_env=accounts["clerk"])
    assert refused.returncode != 0 and "needs the admin role" in refused.stderr
    login = httpx.post(f"{api_url}/api/v1/auth/login", timeout=30,
                       json={"user": "user-clerk", "token": "not-the-token"})
    assert login.status_code == 401
    ids = [int(r[0]) for r in tamperable.execute(  # type: ignore[call-overload]
        "SELECT id FROM audit_log WHERE action IN ('refused', 'login.failed')"
        " ORDER BY id DESC LIMIT 2").fetchall()]
    top = int(tamperable.execute("SELECT max(id) FROM audit_log").fetchone()[0])  # type: ignore[index,arg-type]
    assert max(ids) == top, "nothing else was audited since"
    for rid in ids:
        assert stack.ctx.store.exists(audit.anchor_key(rid)), f"row {rid} is anchored"
    first = min(ids)
    saved = [_row(tamperable, rid) for rid in range(first, top + 1)]
    head = tamperable.execute("SELECT last_id, last_hash FROM audit_head").fetchone()
    before = _row(tamperable, first - 1)
    tamperable.execute("DELETE FROM audit_log WHERE id >= %s", (first,))
    tamperable.execute("UPDATE audit_head SET last_id = %s, last_hash = %s",
                       (first - 1, before[6]))
    code, text = verify(stack)
    assert code != 0 and "missing" in text, text
    tamperable.execute("DELETE FROM audit_log WHERE id >= %s", (first,))  # verify's own rows
    for row in saved:
        _restore(tamperable, row)
    tamperable.execute("UPDATE audit_head SET last_id = %s, last_hash = %s", head)


def test_a_row_inserted_in_sql_is_caught_even_with_a_recomputed_hash(
        stack: StackHandle, tamperable: psycopg.Connection[tuple[object, ...]]) -> None:
    last_id, prev = tamperable.execute(
        "SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()  # type: ignore[misc]
    at = datetime.now(UTC)
    details = {"case": "T-AUDIT", "purpose": "never happened"}
    digest = audit.row_hash(last_id + 1, at, "intruder", "search", details, prev)
    tamperable.execute(
        "INSERT INTO audit_log (id, at, actor, action, details, prev_hash, hash, seal)"
        " VALUES (%s, %s, 'intruder', 'search', %s, %s, %s, %s)",
        (last_id + 1, at, json.dumps(details), prev, digest, "0" * 64))
    code, text = verify(stack)
    assert code != 0 and f"first bad row {last_id + 1}" in text and "seal" in text
    # The server's backstop, which anchors a head whose own anchor failed, does not vouch
    # for it.
    with stack.ctx.db() as conn:
        assert not audit.anchor_head(conn, stack.ctx.store, stack.ctx.audit_key)
    assert not stack.ctx.store.exists(audit.anchor_key(last_id + 1))
    tamperable.execute("DELETE FROM audit_log WHERE id = %s", (last_id + 1,))


def test_a_period_named_by_dates_holds_the_whole_of_its_last_day(
        stack: StackHandle, tmp_path: Path) -> None:
    # `--to 2026-12-05` meant that day's first instant: an export of one day had no rows, and
    # its signed manifest verified. A time without a zone was the database's, not UTC. The
    # other spellings of a date alone still did so (bb23), and `--to ...T23:59:59` left out
    # the rows of that second's fraction.
    end_of_day = datetime(2026, 12, 5, 23, 59, 59, 999999, tzinfo=UTC)
    for spelling in ("2026-12-05", "20261205", "2026-W49-6", "2026W496", "2026-12-05Z"):
        assert parse_period(None, spelling) == (None, end_of_day), spelling
    assert parse_period(None, "2026-12-05T23:59:59Z") == (None, end_of_day)
    assert parse_period(None, "2026-12-05T10:00:00.25") == (
        None, datetime(2026, 12, 5, 10, 0, 0, 250000, tzinfo=UTC))
    # A date with a zone was read as a time of day (Python takes any character between a
    # date and a time: 2026-12-05+05:00 was 05:00), and a time without seconds ended at its
    # first second (bb24).
    plus2 = timezone(timedelta(hours=2))
    assert parse_period("2026-12-05+02:00", "2026-12-05+02:00") == (
        datetime(2026, 12, 5, tzinfo=plus2),
        datetime(2026, 12, 5, 23, 59, 59, 999999, tzinfo=plus2))
    assert parse_period(None, "2026-12-05T10:30")[1] == datetime(
        2026, 12, 5, 10, 30, 59, 999999, tzinfo=UTC)
    assert parse_period(None, "20261205T10")[1] == datetime(
        2026, 12, 5, 10, 59, 59, 999999, tzinfo=UTC)
    assert parse_period("2026-12-05T10:00", None) == (
        datetime(2026, 12, 5, 10, tzinfo=UTC), None)
    with pytest.raises(InvalidInputError, match="before its start, from"):
        parse_period("2026-12-06", "2026-12-05")
    # A week alone was its Monday: an export of `2026-W49` held one day of seven (bb27). A
    # week or a month alone is the whole of it.
    week = (datetime(2026, 11, 30, tzinfo=UTC), end_of_day + timedelta(days=1))
    assert parse_period("2026-W49", "2026-W49") == parse_period("2026W49", "2026W49") == week
    assert parse_period("2026-12", "2026-12") == (
        datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=UTC))
    assert parse_period(None, "2028-02")[1] == datetime(2028, 2, 29, 23, 59, 59, 999999,
                                                        tzinfo=UTC)
    # An impossible day was read as a month at a zone of -30 hours (a 500) or, -00, as the
    # whole month (bb28): each is refused in one line.
    for bad in ("2026-13", "2026-02-30", "2026-04-31", "2026-12-00", "2026-12-06+25:00"):
        with pytest.raises(InvalidInputError, match="not an ISO 8601 date"):
            parse_period(None, bad)
    with stack.ctx.db() as conn:
        last = conn.execute("SELECT at FROM audit_log ORDER BY id DESC LIMIT 1").fetchone()["at"]
    day = last.astimezone(UTC).date()
    for to in (day.isoformat(), day.strftime("%Y%m%d")):
        out = tmp_path / f"day-{to}.jsonl"
        stack.cli.run("audit", "export", "--from", day.isoformat(), "--to", to, "-o", str(out),
                      check=True)
        manifest = json.loads(out.with_name(out.name + ".manifest.json").read_text())
        rows = jsonl(out.read_text())
        assert manifest["rows"] == len(rows) > 0, to
        assert all(r["at"].startswith(day.isoformat()) for r in rows), {r["at"][:10]
                                                                       for r in rows}
    # A period that ends before it starts is refused, not exported as a signed empty file.
    res = stack.cli.run("audit", "export", "--from", (day + timedelta(days=1)).isoformat(),
                        "--to", day.isoformat(), "-o", str(tmp_path / "none.jsonl"))
    assert res.returncode != 0 and "before its start, from" in res.stderr, res.stderr
    assert not (tmp_path / "none.jsonl").exists()


def test_exports_older_than_their_keep_days_are_swept_when_the_next_is_made(
        stack: StackHandle, tmp_path: Path) -> None:
    # Server-side exports hold subject names and purposes; they were never deleted.
    folder = stack.home / "exports"
    stack.cli.run("matches", "export", "--format", "jsonl", "-o", str(tmp_path / "a.jsonl"),
                  check=True)
    made = {p.name: p for p in folder.iterdir()}
    assert made
    old = time.time() - 8 * 86400
    for p in made.values():
        os.utime(p / "owner.json", (old, old))
    stack.cli.run("matches", "export", "--format", "jsonl", "-o", str(tmp_path / "b.jsonl"),
                  check=True)
    left = {p.name for p in folder.iterdir()}
    assert left and not left & set(made), (left, set(made))


def test_whoever_holds_the_export_key_cannot_sign_a_shortened_export(
        stack: StackHandle, tmp_path: Path) -> None:
    # The key given to verifiers used to be the HMAC key that signed manifests: a holder
    # dropped the first rows, re-signed, and the export verified.
    for _ in range(3):  # rows enough to drop some
        stack.cli.run("purge", "--dry-run", check=True)
    out = tmp_path / "audit.jsonl"
    stack.cli.run("audit", "export", "--format", "jsonl", "-o", str(out), check=True)
    key = stack.cli.run("audit", "export-key", check=True).stdout.strip()
    assert audit.verify_export(out, key).ok
    lines = out.read_text().splitlines(keepends=True)
    rest = "".join(lines[2:]).encode()
    out.write_bytes(rest)
    first = json.loads(lines[2])
    manifest = audit.read_manifest(out)
    manifest.update(rows=len(lines) - 2, sha256=hashlib.sha256(rest).hexdigest(),
                    bytes=len(rest), first_row={"id": first["id"], "hash": first["hash"],
                                                "prev_hash": first["prev_hash"]})
    for alg in ("HMAC-SHA256(export key)", audit.SIGNATURE_ALG):
        manifest["signature_alg"] = alg
        body = {k: v for k, v in manifest.items() if k != "signature"}
        data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        manifest["signature"] = hmac.new(key.encode(), data.encode(),
                                         hashlib.sha256).hexdigest()
        audit.manifest_path(out).write_text(json.dumps(manifest))
        verdict = audit.verify_export(out, key)
        assert not verdict.ok and "sign" in str(verdict.reason), (alg, verdict)
        proc = stack.cli.run("audit", "verify-export", str(out))
        assert proc.returncode != 0 and "NOT intact" in proc.stderr
    # Nor a worker host, which holds the audit key to seal its rows: the signing key used
    # to be derived from it, and a worker host re-signed a shortened export that verified.
    signer = audit._export_signer(stack.ctx.audit_key)
    body = {k: v for k, v in manifest.items() if k != "signature"}
    manifest["signature"] = signer.sign(json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hex()
    audit.manifest_path(out).write_text(json.dumps(manifest))
    verdict = audit.verify_export(out, key)
    assert not verdict.ok and "sign" in str(verdict.reason), verdict
    assert key == audit.export_key(stack.ctx.export_signing_key) != audit.export_key(
        stack.ctx.audit_key)


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_single_changed_byte_in_an_export_is_detected(
        stack: StackHandle, tmp_path: Path, fmt: str) -> None:
    # Text with line and paragraph separators (a reviewer's note may hold them): JSONL was
    # read back split at U+2028 too, and every later export of the log failed to verify
    # (bb24).
    stack.ctx.audit("operator", "note.separators", {"note": "a\u2028b\u2029c\x85d\x1ce"})
    out = tmp_path / f"audit.{fmt}"
    stack.cli.run("audit", "export", "--format", fmt, "-o", str(out), check=True)
    manifest = json.loads((tmp_path / f"audit.{fmt}.manifest.json").read_text())
    assert manifest["rows"] > 0 and len(manifest["sha256"]) == 64 and manifest["chain_head"]
    assert stack.cli.run("audit", "verify-export", str(out)).returncode == 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01
    out.write_bytes(bytes(data))
    proc = stack.cli.run("audit", "verify-export", str(out))
    assert proc.returncode != 0 and "NOT intact" in proc.stderr


def test_purge_removes_exactly_what_the_retention_policy_allows(
        stack: StackHandle, processed: object) -> None:
    free = processed(HAMILTON, "T-PURGE-FREE")  # type: ignore[operator]
    held = processed(HAMILTON, "T-PURGE-HELD")  # type: ignore[operator]
    matched = processed(HAMILTON, "T-PURGE-MATCH")  # type: ignore[operator]
    stack.cli.run("cases", "hold", "T-PURGE-HELD", "--reason", "court order 7", check=True)
    stack.cli.run("subjects", "enroll", "--name", "p06", "--photo", str(P06), "--case",
                  "T-PURGE-MATCH", "--reason", "retention test", check=True)
    vids = (free, held, matched)
    # Watchlist entries enrolled with an expiry date, now past: one in a case on hold.
    stack.cli.run("cases", "hold", "T-PURGE-LAPSED-HELD", "--reason", "court order 8",
                  check=True)
    lapsed, lapsed_held = (str(stack.cli.json(
        "subjects", "enroll", "--name", "p06", "--photo", str(P06), "--case", case,
        "--reason", "lapses", "--expires", "2099-01-01")["subject_id"])  # type: ignore[index]
        for case in ("T-PURGE-LAPSED", "T-PURGE-LAPSED-HELD"))
    with stack.ctx.db() as conn:
        conn.execute("UPDATE subjects SET expires_at = now() - interval '1 day'"
                     " WHERE id = ANY(%s::uuid[])", ([lapsed, lapsed_held],))
        conn.execute("UPDATE tracks SET created_at = now() - interval '40 days'"
                     " WHERE video_id = ANY(%s::uuid[])", (list(vids),))
        conn.execute("UPDATE videos SET ingested_at = now() - interval '40 days'"
                     " WHERE id = ANY(%s::uuid[])", (list(vids),))
        matched_tracks = {r["track_id"] for r in conn.execute(
            "SELECT track_id::text AS track_id FROM matches WHERE video_id = %s",
            (matched,)).fetchall()}
        before = {r["id"]: r for r in conn.execute(
            "SELECT id::text AS id, video_id::text AS video_id, thumbnail_key FROM tracks"
            " WHERE video_id = ANY(%s::uuid[])", (list(vids),)).fetchall()}
    assert matched_tracks, "the enrolled subject matched some tracks"
    dry = stack.cli.run("purge", "--dry-run", check=True).stdout
    expected = [t for t in before.values() if t["video_id"] == free or
                (t["video_id"] == matched and t["id"] not in matched_tracks)]
    assert f"would purge {len(expected)} tracks" in " ".join(dry.split())
    assert "1 lapsed watchlist entries (1 templates)" in " ".join(dry.split()), dry
    stack.cli.run("purge", check=True)
    with stack.ctx.db() as conn:
        faces = {sid: conn.execute(
            "SELECT count(*) AS n FROM subject_faces f JOIN subjects s ON s.id = f.subject_id"
            " WHERE s.id = %s", (sid,)).fetchone()["n"] for sid in (lapsed, lapsed_held)}
        removed = {str(r["id"]) for r in conn.execute(
            "SELECT id FROM subjects WHERE id = ANY(%s::uuid[]) AND removed_at IS NOT NULL",
            ([lapsed, lapsed_held],)).fetchall()}
        live = conn.execute("SELECT count(*) AS n FROM subject_faces f JOIN subjects s"
                            " ON s.id = f.subject_id WHERE s.case_id = 'T-PURGE-MATCH'"
                            ).fetchone()["n"]
    assert faces == {lapsed: 0, lapsed_held: 1} and removed == {lapsed}, (faces, removed)
    assert live == 1, "an entry with no expiry date keeps its template"
    with stack.ctx.db() as conn:
        after = {r["id"]: r for r in conn.execute(
            "SELECT id::text AS id, embedding IS NULL AS gone, purged_at, thumbnail_key"
            " FROM tracks WHERE video_id = ANY(%s::uuid[])", (list(vids),)).fetchall()}
        loose = conn.execute(
            "SELECT count(*) AS n FROM detections WHERE video_id = %s AND embedding IS NOT NULL",
            (free,)).fetchone()["n"]
        sha = conn.execute("SELECT object_key FROM videos WHERE id = %s",
                           (free,)).fetchone()["object_key"]
    purged = {tid for tid, r in after.items() if r["gone"]}
    assert purged == {t["id"] for t in expected}
    assert loose == 0
    for tid in purged:
        assert not stack.ctx.store.exists(before[tid]["thumbnail_key"])
    for tid in set(after) - purged:
        assert stack.ctx.store.exists(after[tid]["thumbnail_key"])
    assert stack.ctx.store.exists(sha), "originals are never touched"


def _backdate(stack: StackHandle, video_id: str) -> list[str]:
    """Age a video's tracks past the retention period; returns their ids."""
    with stack.ctx.db() as conn:
        conn.execute("UPDATE tracks SET created_at = now() - interval '40 days'"
                     " WHERE video_id = %s", (video_id,))
        conn.execute("UPDATE videos SET ingested_at = now() - interval '40 days'"
                     " WHERE id = %s", (video_id,))
        return [str(r["id"]) for r in conn.execute(
            "SELECT id::text AS id FROM tracks WHERE video_id = %s", (video_id,)).fetchall()]


def _purged(stack: StackHandle, track_ids: list[str]) -> set[str]:
    with stack.ctx.db() as conn:
        return {str(r["id"]) for r in conn.execute(
            "SELECT id::text AS id FROM tracks WHERE id = ANY(%s::uuid[])"
            " AND purged_at IS NOT NULL AND embedding IS NULL", (track_ids,)).fetchall()}


def test_a_lapsed_entrys_leads_are_no_longer_pending_nor_decided(
        stack: StackHandle, processed: object, accounts: dict[str, dict[str, str]]) -> None:
    """An entry lapses on its expiry date: its pending leads went on being listed and could
    be confirmed (making the track a confirmed match's, kept for good) until the next purge.
    Now they go at once, as a removed entry's do."""
    case = "T-LAPSE"
    processed(HAMILTON, case)  # type: ignore[operator]
    sid = str(stack.cli.json("subjects", "enroll", "--name", "p06", "--photo", str(P06),
                             "--case", case, "--reason", "lapse test", "--expires",
                             "2099-01-01")["subject_id"])  # type: ignore[index]
    pending = [m for m in stack.cli.json("matches", "--case", case, "--status", "pending")
               if m["subject_id"] == sid]
    assert pending, "p06 matched"
    with stack.ctx.db() as conn:
        conn.execute("UPDATE subjects SET expires_at = now() - interval '1 minute'"
                     " WHERE id = %s", (sid,))
    assert not [m for m in stack.cli.json("matches", "--case", case, "--status", "pending")
                if m["subject_id"] == sid], "a lapsed entry's leads are not listed as pending"
    for decision in ("--confirm", "--reject"):
        proc = stack.cli.run("review", pending[0]["match_id"], decision, "--note", "late",
                             extra_env=accounts["supervisor"])
        assert proc.returncode != 0 and "lapsed" in proc.stderr, proc.stderr
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT status FROM matches WHERE id = %s",
                           (pending[0]["match_id"],)).fetchone()
    assert row["status"] == "pending", "nothing decided; the next purge deletes it"


def _matches_of(stack: StackHandle, video_id: str) -> list[tuple[str, str]]:
    """(match id, track id) of a video's matches, by match id."""
    with stack.ctx.db() as conn:
        return [(str(r["id"]), str(r["track_id"])) for r in conn.execute(
            "SELECT id::text AS id, track_id::text AS track_id FROM matches"
            " WHERE video_id = %s ORDER BY id", (video_id,)).fetchall()]


def test_the_scheduler_purges_and_a_rejected_match_keeps_nothing(
        stack: StackHandle, processed: object) -> None:
    case = "T-PURGE-REJECT"
    video = processed(HAMILTON, case)  # type: ignore[operator]
    stack.cli.run("subjects", "enroll", "--name", "p06", "--photo", str(P06), "--case", case,
                  "--reason", "retention test", check=True)
    matches = _matches_of(stack, video)
    assert len(matches) >= 2, "p06 matched at least two tracks"
    (rejected, rejected_track), (_, pending_track) = matches[0], matches[1]
    stack.cli.run("review", rejected, "--reject", "--note", "not the same person", check=True)
    tracks = _backdate(stack, video)
    with stack.ctx.db() as conn:
        last = conn.execute("SELECT max(id) AS n FROM audit_log").fetchone()["n"]
    # What the scheduler sends every jobs.purge_interval_s, sent now.
    queue.client(stack.ctx.services.redis_url).send_task(retention.PURGE_TASK, queue="cpu")
    deadline = time.monotonic() + 60
    while rejected_track not in _purged(stack, tracks) and time.monotonic() < deadline:
        time.sleep(0.5)
    purged = _purged(stack, tracks)
    assert rejected_track in purged, "a rejected lead is a bystander: it expires"
    assert pending_track not in purged, "a lead awaiting review is kept"
    assert purged == set(tracks) - {t for _, t in matches[1:]}
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT actor, details FROM audit_log WHERE id > %s AND"
                            " action = 'purge'", (last,)).fetchall()
    assert [r["actor"] for r in rows] == [retention.SCHEDULED_ACTOR]
    assert rows[0]["details"]["tracks"] >= len(purged)
    # A scheduled purge that removes nothing leaves no audit row; an admin's always does.
    retention.purge(stack.ctx, retention.SCHEDULED_ACTOR, dry_run=False, audit_empty=False)
    with stack.ctx.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM audit_log WHERE id > %s AND"
                            " action = 'purge'", (last,)).fetchone()["n"] == 1


def test_a_reopened_confirmation_ended_with_its_entry_keeps_its_track_and_says_so_by_case(
        stack: StackHandle, processed: object, accounts: dict[str, dict[str, str]]) -> None:
    """Found by attacking: one supervisor's reopening and a removal of the entry made a
    two-person confirmation withdrawn and its track purgeable, and no audit row under the
    case said which leads had ended."""
    case = "T-PURGE-WITHDRAWN"
    video = processed(HAMILTON, case)  # type: ignore[operator]
    sid = str(stack.cli.json("subjects", "enroll", "--name", "p06", "--photo", str(P06),
                             "--case", case, "--reason", "withdrawal test")["subject_id"])  # type: ignore[index]
    matches = _matches_of(stack, video)
    assert len(matches) >= 2, "p06 matched at least two tracks"
    (kept, kept_track), (gone, gone_track) = matches[0], matches[1]
    sup = accounts["supervisor"]
    done = stack.cli.run("review", kept, "--confirm", "--note", "it is p06", extra_env=sup)
    assert done.returncode == 0 and "confirmed" in done.stdout, done.stderr
    assert stack.cli.run("review", gone, "--reject", "--note", "another man",
                         extra_env=sup).returncode == 0
    for m in (kept, gone):
        assert stack.cli.run("matches", "reopen", m, "--reason", "a second look",
                             extra_env=sup).returncode == 0
    stack.cli.run("subjects", "remove", sid, check=True)
    with stack.ctx.db() as conn:
        status = {str(r["id"]): (r["status"], r["reopened_from"]) for r in conn.execute(
            "SELECT id::text AS id, status, reopened_from FROM matches WHERE video_id = %s",
            (video,)).fetchall()}
        [ended] = conn.execute("SELECT details FROM audit_log WHERE action = 'matches.end'"
                               " AND details->>'case' = %s", (case,)).fetchall()
    assert status == {kept: ("withdrawn", "confirmed"), gone: ("withdrawn", "rejected")}, status
    assert ended["details"] == {"case": case, "withdrawn_match_ids": sorted([kept, gone]),
                                "deleted_pending": len(matches) - 2,
                                "deleted_match_ids": sorted(m for m, _t in matches[2:]),
                                "reason": "its watchlist entry was removed"}, ended
    tracks = _backdate(stack, video)
    retention.purge(stack.ctx, retention.SCHEDULED_ACTOR, dry_run=False)
    purged = _purged(stack, tracks)
    assert kept_track not in purged, "a confirmation reopened, then ended, keeps its track"
    assert gone_track in purged, "a rejection reopened, then ended, keeps nothing"


def test_an_entry_removed_while_its_case_is_held_keeps_its_leads_as_withdrawn(
        stack: StackHandle, processed: object) -> None:
    """A legal hold preserves what a case found: removing a watchlist entry deleted its
    unreviewed leads outright, even on a held case, and the row gave only a count (bb19)."""
    case = "T-HOLD-REMOVE"
    video = processed(HAMILTON, case)  # type: ignore[operator]
    sid = str(stack.cli.json("subjects", "enroll", "--name", "p06", "--photo", str(P06),
                             "--case", case, "--reason", "hold test")["subject_id"])  # type: ignore[index]
    matches = sorted(m for m, _t in _matches_of(stack, video))
    assert matches, "p06 matched"
    stack.cli.run("cases", "hold", case, "--reason", "court order", check=True)
    try:
        stack.cli.run("subjects", "remove", sid, check=True)
    finally:
        stack.cli.run("cases", "release", case, "--reason", "test over", check=True)
    with stack.ctx.db() as conn:
        status = {r["status"] for r in conn.execute(
            "SELECT status FROM matches WHERE id = ANY(%s::uuid[])", (matches,)).fetchall()}
        [ended] = conn.execute("SELECT details FROM audit_log WHERE action = 'matches.end'"
                               " AND details->>'case' = %s", (case,)).fetchall()
    assert status == {"withdrawn"}, status
    assert (ended["details"]["withdrawn_match_ids"], ended["details"]["deleted_match_ids"]) \
        == (matches, []), ended


def test_a_hold_placed_while_a_purge_runs_waits_for_it_and_is_never_ignored(
        stack: StackHandle, processed: object) -> None:
    case = "T-PURGE-RACE"
    video = processed(HAMILTON, case)  # type: ignore[operator]
    tracks = _backdate(stack, video)
    blocker = admin_conn(stack)
    blocker.autocommit = False
    blocker.execute("SELECT 1 FROM tracks WHERE id = %s FOR UPDATE", (tracks[0],))
    results: dict[str, int] = {}

    def run(name: str, *argv: str) -> threading.Thread:
        t = threading.Thread(target=lambda: results.__setitem__(
            name, stack.cli.run(*argv).returncode), daemon=True)
        t.start()
        return t

    def purge_waits() -> bool:
        # Another connection: pg_stat_activity is a snapshot for the rest of a transaction.
        with admin_conn(stack) as probe:
            row = probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE %s", ("%FOR UPDATE OF t%",)).fetchone()
        return bool(row and row[0])

    try:
        purging = run("purge", "purge")
        deadline = time.monotonic() + 60
        while not purge_waits() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert purge_waits(), "the purge reached the locked track"
        holding = run("hold", "cases", "hold", case, "--reason", "court order 9")
        holding.join(4)
        assert holding.is_alive(), "a hold waits for the purge that is running"
    finally:
        blocker.rollback()
        blocker.close()
    purging.join(60)
    holding.join(60)
    assert results == {"purge": 0, "hold": 0}, results
    with stack.ctx.db() as conn:
        order = [str(r["action"]) for r in conn.execute(
            "SELECT action FROM audit_log WHERE action IN ('purge', 'case.hold')"
            " ORDER BY id DESC LIMIT 2").fetchall()]
    # The log tells what happened: the purge ran first, the hold protects what came after.
    assert order == ["case.hold", "purge"]
    assert _purged(stack, tracks) == set(tracks)
    stack.cli.run("cases", "release", case, "--reason", "test over", check=True)


def test_a_hold_names_its_case_as_ingest_does(stack: StackHandle, processed: object) -> None:
    case = "T-PURGE-SPACE"
    video = processed(HAMILTON, case)  # type: ignore[operator]
    held = stack.cli.run("cases", "hold", f" {case} ", "--reason", "court order 10",
                         check=True)
    assert held.stderr.strip() == f"case {case} on hold", "it holds footage: no note"
    try:
        tracks = _backdate(stack, video)
        stack.cli.run("purge", check=True)
        assert not _purged(stack, tracks), "the hold with spaces held the case"
        proc = stack.cli.run("cases", "hold", "<b>x</b>", "--reason", "r")
        assert proc.returncode != 0 and "not a case number" in proc.stderr
    finally:
        stack.cli.run("cases", "release", f"{case} ", "--reason", "test over", check=True)
    stack.cli.run("purge", check=True)
    assert _purged(stack, tracks) == set(tracks), "released: the case expires"


def test_case_numbers_in_other_letter_case_are_refused_as_another_case(
        stack: StackHandle, accounts: dict[str, dict[str, str]], api_url: str,
        operator_token: str) -> None:
    """`case-a` beside `CASE-A` was a second case: a hold on the one left the other's
    bystanders to be purged, and footage filed under it was not under the case's hold (bb34).
    A new spelling of a case in use is refused wherever a case number first appears (ingest,
    assignment, hold), naming the one to use, and nothing is stored or audited for it."""
    case, other = "T-Spelling-9", "t-SPELLING-9"
    stack.cli.run("users", "assign", "user-investigator", "--case", case, check=True)
    try:
        with stack.ctx.db() as conn:
            before = conn.execute("SELECT max(id) AS n FROM audit_log").fetchone()["n"]
        told = f"case {other} is case {case}: case numbers that differ only in letter case" \
               f" name one case; use {case}"
        for argv in (["cases", "hold", other, "--reason", "court order 12"],
                     ["users", "assign", "user-investigator", "--case", other],
                     ["ingest", str(HAMILTON), "--case", other, "--officer", "O1",
                      "--device", "D1"]):
            proc = stack.cli.run(*argv)
            assert proc.returncode != 0, argv
            assert told in " ".join(proc.stderr.split()), (argv, proc.stderr)
        # over the API too: the server decides, not the client
        refused = httpx.post(f"{api_url}/api/v1/cases/{other.lower()}/hold", timeout=30,
                             json={"reason": "court order 12"},
                             headers={"Authorization": f"Bearer {operator_token}"})
        assert refused.status_code == 409, refused.text
        assert f"use {case}" in refused.json()["detail"]
        with stack.ctx.db() as conn:
            assert conn.execute(
                "SELECT count(*) AS n FROM videos WHERE lower(case_id) = lower(%s)",
                (case,)).fetchone()["n"] == 0
            assert conn.execute("SELECT count(*) AS n FROM held_cases WHERE lower(case_id) ="
                                " lower(%s)", (case,)).fetchone()["n"] == 0
            assert [r["case_id"] for r in conn.execute(
                "SELECT case_id FROM case_assignments WHERE lower(case_id) = lower(%s)",
                (case,)).fetchall()] == [case]
            assert conn.execute("SELECT count(*) AS n FROM audit_log WHERE id > %s AND action"
                                " IN ('ingest', 'case.hold', 'case.assign')",
                                (before,)).fetchone()["n"] == 0
        # the case's own spelling is taken, and another case is still another case
        stack.cli.run("cases", "hold", case, "--reason", "court order 12", check=True)
        stack.cli.run("cases", "release", case, "--reason", "test over", check=True)
        stack.cli.run("cases", "hold", case + "0", "--reason", "court order 12", check=True)
        stack.cli.run("cases", "release", case + "0", "--reason", "test over", check=True)
        # a database from before the rule may hold both spellings: each is still taken
        with stack.ctx.db() as conn:
            conn.execute("INSERT INTO held_cases (case_id, held_by, reason) VALUES"
                         " (%s, 'operator', 'from before')", (other,))
        stack.cli.run("cases", "hold", case, "--reason", "court order 12", check=True)
        stack.cli.run("users", "assign", "user-investigator", "--case", other, check=True)
        stack.cli.run("users", "unassign", "user-investigator", "--case", other, check=True)
        for held in (case, other):
            stack.cli.run("cases", "release", held, "--reason", "test over", check=True)
    finally:
        stack.cli.run("users", "unassign", "user-investigator", "--case", case, check=True)


def test_redact_only_stores_no_embeddings_and_refuses_face_matching(
        stack: StackHandle) -> None:
    # Watchlist entries from before the switch: one kept, one removed (bb33: the switch left
    # the kept one nothing to match with for good, and a removed entry's photo left fixity).
    def enrolled(name: str) -> str:
        res = stack.cli.json("subjects", "enroll", "--name", name, "--photo", str(P06),
                             "--case", "T-REDACT", "--reason", "before the ban")
        assert isinstance(res, dict)
        return str(res["subject_id"])

    kept, gone, lost = enrolled("p06 kept"), enrolled("p06 removed"), enrolled("p06 lost")
    photos = stack.cli.json("fixity", "--json")["photos"]  # type: ignore[call-overload,index]
    stack.cli.run("subjects", "remove", gone, check=True)
    assert stack.cli.json("fixity", "--json")["photos"] == photos  # type: ignore[call-overload,index]
    stack.cli.run("policy", "set", "--profile", "redact-only", "--reason",
                  "jurisdiction bans face matching", check=True)
    try:
        [res] = stack.cli.json("ingest", str(FACENET_CLIP), "--case", "T-REDACT", "--officer",
                               "O", "--device", "D", "--wait")
        assert res["status"] == "done"
        with stack.ctx.db() as conn:
            counts = conn.execute(
                "SELECT (SELECT count(*) FROM tracks WHERE video_id = %(v)s) AS tracks,"
                " (SELECT count(*) FROM tracks WHERE video_id = %(v)s AND embedding IS NOT NULL)"
                " AS t_emb, (SELECT count(*) FROM detections WHERE video_id = %(v)s AND"
                " embedding IS NOT NULL) AS d_emb", {"v": res["video_id"]}).fetchone()
        assert counts["tracks"] > 0, "faces are still found and tracked (for redaction)"
        assert counts["t_emb"] == 0 and counts["d_emb"] == 0
        for argv in (["search", "--photo", str(P06), "--case", "T-REDACT", "--purpose", "p"],
                     ["subjects", "enroll", "--name", "n", "--photo", str(P06), "--case",
                      "T-REDACT", "--reason", "r"],
                     ["persons", "--case", "T-REDACT", "--purpose", "p"]):
            proc = stack.cli.run(*argv)
            assert proc.returncode != 0 and "redact-only" in proc.stderr, argv
        proc = stack.cli.run("reprocess", "--reason", "r")
        assert proc.returncode != 0 and "redact-only" in proc.stderr
    finally:
        stack.cli.run("policy", "set", "--profile", "identify", "--reason", "test over",
                      check=True)
    # Back under identify, the footage stored meanwhile, and that stored before whose
    # embeddings the switch deleted, is analysed again on an admin's word, so that its faces
    # can be searched; done once, it is not queued again.
    proc = stack.cli.run("reprocess", "--reason", " ")
    assert proc.returncode != 0 and "reason" in proc.stderr
    with stack.ctx.db() as conn:  # one entry's photo gone from the store (the suite met one)
        key = conn.execute("SELECT photo_key FROM subject_photos WHERE subject_id = %s",
                           (lost,)).fetchone()["photo_key"]
        conn.execute("UPDATE subject_photos SET photo_key = 'originals/no/such-photo'"
                     " WHERE subject_id = %s", (lost,))
    try:
        done = stack.cli.run("reprocess", "--reason", "the ban was lifted", check=True).stdout
    finally:
        with stack.ctx.db() as conn:
            conn.execute("UPDATE subject_photos SET photo_key = %s WHERE subject_id = %s",
                         (key, lost))
    assert f"{res['video_id']}  case T-REDACT  1 units queued" in done, done
    queued = [line.split()[0] for line in done.splitlines() if "units queued" in line
              and "case" in line]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        jobs = {j["video_id"]: j["status"] for j in stack.cli.json("jobs", "--json")}
        if all(jobs[v] == "done" for v in queued):
            break
        time.sleep(1)
    assert all(jobs[v] == "done" for v in queued), jobs
    with stack.ctx.db() as conn:
        again = conn.execute(
            "SELECT count(*) AS tracks, count(embedding) AS t_emb, min(model) AS model"
            " FROM tracks WHERE video_id = %s", (res["video_id"],)).fetchone()
        unit = conn.execute("SELECT computed_on FROM work_units WHERE video_id = %s",
                            (res["video_id"],)).fetchone()
        empty = conn.execute(
            "SELECT count(*) AS n FROM tracks t WHERE t.video_id = ANY(%s::uuid[])"
            " AND t.embedding IS NULL AND NOT EXISTS (SELECT 1 FROM matches m"
            " WHERE m.track_id = t.id)", (queued,)).fetchone()
        row = conn.execute("SELECT actor, details FROM audit_log WHERE action = 'reprocess'"
                           " ORDER BY id DESC LIMIT 1").fetchone()
    assert again["tracks"] > 0 and again["t_emb"] == again["tracks"], again
    assert again["model"] == "dlib-resnet" and "embed dlib-resnet" in unit["computed_on"]
    assert empty["n"] == 0, "every unmatched track queued again has its embedding back"
    assert row["actor"] == "operator" and row["details"]["reason"] == "the ban was lifted"
    assert {"video_id": res["video_id"], "case": "T-REDACT", "units": 1} in (
        row["details"]["videos"])
    # The row names its cases, for an auditor's case filter (bb33: it named them only inside
    # its videos, and the filter missed it); the units left for their matched tracks are
    # named in it and in the answer, not left unsaid (bb33).
    assert "T-REDACT" in row["details"]["cases"], row
    left = {v["video_id"] for v in row["details"]["left_with_matches"]}
    assert not left & set(queued)
    assert all(f"left: {v}" in done for v in left), done
    # The entry kept through the switch is enrolled again from its photo, and found; the
    # removed one is not, and its photo is still re-hashed.
    assert kept in row["details"]["templates_rebuilt"], row
    assert gone not in row["details"]["templates_rebuilt"], row
    assert row["details"]["templates_not_rebuilt"] == [lost], row
    assert "watchlist entries enrolled again from their photos" in done, done
    [entry] = [s for s in stack.cli.json("subjects", "list", "--case", "T-REDACT")  # type: ignore[union-attr]
               if s["subject_id"] == kept]
    assert entry["faces"] == 1, entry
    found = stack.cli.run("search", "--subject", kept, "--case", "T-REDACT", "--purpose",
                          "after the ban")
    assert found.returncode == 0, found.stderr
    assert stack.cli.json("fixity", "--json")["photos"] == photos  # type: ignore[call-overload,index]
    assert "0 videos, 0 units queued" in stack.cli.run(
        "reprocess", "--reason", "again", check=True).stdout


def test_a_policy_change_needs_an_admin_and_a_reason(
        stack: StackHandle, accounts: dict[str, dict[str, str]]) -> None:
    proc = stack.cli.run("policy", "set", "--profile", "redact-only", "--reason", "x",
                         extra_env=accounts["supervisor"])
    assert proc.returncode != 0 and "needs the admin role" in proc.stderr
    proc = stack.cli.run("policy", "set", "--profile", "identify", "--reason", " ")
    assert proc.returncode != 0 and "reason" in proc.stderr
    # Stored, 100,000,000 days made every later purge fail ("timestamp out of range").
    proc = stack.cli.run("policy", "set", "--retention-days", "100000000", "--reason", "r")
    assert proc.returncode != 0 and "between 1 and 36500" in proc.stderr
    assert stack.cli.run("purge", "--dry-run").returncode == 0


def test_the_servers_pooled_connections_are_reused_checked_and_never_anchor_a_rollback(
        stack: StackHandle) -> None:
    """The API server keeps idle connections (server.db_idle_connections): each is reused,
    a dead one is replaced without failing the request, one left mid-transaction is not
    kept, and a rolled-back audit row is never anchored by the next transaction."""
    pool = Pool(stack.ctx.services.database_url, 2)
    ctx = Context(settings=stack.ctx.settings, services=stack.ctx.services, pool=pool)

    def backend() -> int:
        with ctx.db() as conn:
            return int(conn.execute("SELECT pg_backend_pid() AS p").fetchone()["p"])

    try:
        first = backend()
        assert backend() == first  # reused, not a new login

        with pytest.raises(RuntimeError), ctx.db() as conn:
            audit.append(conn, ctx.audit_key, "tester", "pool-rollback", {})
            assert conn in audit._pending
            raise RuntimeError("abort after an audit row")
        assert conn not in audit._pending  # nothing of it is left to anchor
        assert backend() == first  # rolled back and idle: kept

        with psycopg.connect(home_admin_url(stack.home), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (first,))
        second = backend()  # the dead one is dropped, a new one made; no error
        assert second != first

        with pytest.raises(psycopg.Error), ctx.db() as conn:  # broken: closed, not kept
            conn.execute("SELECT 1")
            conn.pgconn.finish()
        assert backend() != second
        with ctx.db() as conn:
            assert audit.verify(conn, ctx.audit_key, ctx.store).ok
    finally:
        pool.close()
