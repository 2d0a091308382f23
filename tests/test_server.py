"""The HTTP server on the real stack: tokens, problem bodies, uploads, SSE, pages, ranges."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import secrets
import struct
import subprocess
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import imageio_ffmpeg
import numpy as np
import psycopg
import pytest
from PIL import Image

from bodycam.auth import UnauthenticatedError
from bodycam.limits import FailureLimiter, RateLimitedError
from bodycam.services import home_admin_url
from bodycam.storage import PART_BYTES, original_key
from tests.conftest import HAMILTON, TESTDATA, StackHandle, serve_with

PROBLEM = "application/problem+json"
P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"


@dataclass
class Server:
    """The stack's server, its operator token and a client."""

    url: str
    token: str
    http: httpx.Client

    def call(self, method: str, path: str, token: str | None = None,
             **kwargs: object) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, self.url + path, headers=headers,
                                 **kwargs)  # type: ignore[arg-type]

    def op(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return self.call(method, path, self.token, **kwargs)

    def account(self, roles: list[str], cases: tuple[str, ...] = ()) -> tuple[str, str]:
        """A new account (name, token) with these roles and case assignments."""
        name = f"srv-{roles[0]}-{secrets.token_hex(3)}"
        made = self.op("POST", "/api/v1/users", json={"name": name, "roles": roles})
        assert made.status_code == 201, made.text
        for case in cases:
            assert self.op("POST", f"/api/v1/users/{name}/cases",
                           json={"case": case}).status_code == 200
        return name, str(made.json()["token"])


@pytest.fixture(scope="module")
def server(stack: StackHandle) -> Iterator[Server]:
    url = json.loads((stack.home / "client.json").read_text())["url"]
    token = (stack.home / "operator.token").read_text().strip()
    with httpx.Client(timeout=120) as http:
        yield Server(str(url), token, http)


def assert_problem(r: httpx.Response, status: int, *needles: str) -> dict[str, object]:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = r.json()
    assert set(body) == {"type", "title", "status", "detail"}, body
    assert body["status"] == status and str(body["type"]).startswith(
        "https://bodycam.invalid/problems/")
    for needle in needles:
        assert needle in str(body["detail"]), body
    assert not re.search(r"(^|\W)--[a-z]", str(body["detail"])), body  # a field, not a flag
    return dict(body)


def audit_rows(stack: StackHandle, action: str, since_id: int = 0) -> list[dict[str, object]]:
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT id, actor, details FROM audit_log WHERE action = %s"
                            " AND id > %s ORDER BY id", (action, since_id)).fetchall()
    return [dict(r) for r in rows]


def last_audit_id(stack: StackHandle) -> int:
    with stack.ctx.db() as conn:
        return int(conn.execute("SELECT COALESCE(max(id), 0) AS n FROM audit_log"
                                ).fetchone()["n"])


# --- tokens ---------------------------------------------------------------------------------

def test_a_login_gives_a_session_token_that_works_and_logout_revokes_it(server: Server) -> None:
    r = server.call("POST", "/api/v1/auth/login", json={"user": "operator",
                                                        "token": server.token})
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["user"] == "operator" and session["token"] != server.token
    me = server.call("GET", "/api/v1/auth/me", session["token"]).json()
    assert me["user"] == "operator" and me["kind"] == "session" and me["cases"] is None
    # A session cannot mint another session, so a stolen one cannot be extended.
    again = server.call("POST", "/api/v1/auth/login", json={"user": "operator",
                                                            "token": session["token"]})
    assert_problem(again, 401, "account token")
    assert server.call("POST", "/api/v1/auth/logout", session["token"]).status_code == 200
    gone = server.call("GET", "/api/v1/auth/me", session["token"])
    assert_problem(gone, 401, "revoked")
    assert gone.headers["www-authenticate"] == "Bearer"
    # The account token itself is untouched by the session's logout.
    assert server.op("GET", "/api/v1/auth/me").json()["kind"] == "account"


def test_anonymous_wrong_expired_and_other_accounts_tokens_get_401(
        server: Server, stack: StackHandle) -> None:
    assert_problem(server.call("GET", "/api/v1/jobs"), 401, "no credentials")
    assert_problem(server.call("GET", "/api/v1/jobs", server.token + "x"), 401,
                   "invalid credentials")
    assert_problem(server.call("GET", "/api/v1/jobs", headers={"Authorization": server.token}),
                   401)
    name, token = server.account(["clerk"])
    assert server.call("GET", "/api/v1/jobs", token).status_code == 200
    # A token presented under another account's name is refused like a wrong one.
    claimed = server.call("GET", "/api/v1/jobs", token, headers={"X-Bodycam-User": "operator"})
    assert_problem(claimed, 401, "invalid credentials for operator")
    # Time passes (as the superuser: the application's role cannot write tokens, migration
    # 011); triggers are skipped so the account journal does not record it as a change.
    with psycopg.connect(home_admin_url(stack.home), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE api_tokens SET created_at = now() - interval '2 days',"
                     " expires_at = now() - interval '1 second' WHERE user_name = %s", (name,))
    assert_problem(server.call("GET", "/api/v1/jobs", token), 401, "expired")


def test_disabling_an_account_revokes_its_account_and_session_tokens(server: Server) -> None:
    name, token = server.account(["clerk"])
    session = server.call("POST", "/api/v1/auth/login",
                          json={"user": name, "token": token}).json()["token"]
    assert server.call("GET", "/api/v1/jobs", session).status_code == 200
    assert server.op("POST", f"/api/v1/users/{name}/disable").json() == {
        "name": name, "disabled": True}
    assert_problem(server.call("GET", "/api/v1/jobs", token), 401, "disabled")
    assert_problem(server.call("GET", "/api/v1/jobs", session), 401, "disabled")
    assert_problem(server.call("POST", "/api/v1/auth/login",
                               json={"user": name, "token": token}), 401, "disabled")
    # Only admins disable accounts: a clerk's attempt is a 403 naming the role needed.
    _, clerk = server.account(["clerk"])
    assert_problem(server.call("POST", "/api/v1/users/operator/disable", clerk), 403,
                   "`users` needs the admin role")


def test_wrong_tokens_are_audited_without_the_token_and_a_name_is_limited_to_429(
        server: Server, stack: StackHandle) -> None:
    name, token = server.account(["clerk"])
    before = last_audit_id(stack)
    wrong = [f"bct_{secrets.token_urlsafe(32)}" for _ in range(10)]
    for w in wrong:  # a local process naming another client: believed by default until 12-05
        assert_problem(server.call("POST", "/api/v1/auth/login",
                                   json={"user": name, "token": w},
                                   headers={"X-Forwarded-For": "203.0.113.77"}), 401)
    limited = server.call("POST", "/api/v1/auth/login", json={"user": name, "token": wrong[0]})
    assert_problem(limited, 429, "too many failed logins")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    limited = server.call("GET", "/api/v1/jobs", wrong[1], headers={"X-Bodycam-User": name})
    assert_problem(limited, 429, "too many failed logins")
    # The name's holder is not locked out by whoever knows the name (bb33: ten bad logins
    # naming an account refused its right token for a minute, the CLI's bearer token too).
    assert server.call("POST", "/api/v1/auth/login",
                       json={"user": name, "token": token}).status_code == 200
    assert server.call("GET", "/api/v1/jobs", token,
                       headers={"X-Bodycam-User": name}).status_code == 200
    assert server.op("GET", "/api/v1/auth/me").status_code == 200
    rows = [r for r in audit_rows(stack, "login.failed", before)
            if r["details"]["claimed_user"] == name]  # type: ignore[index]
    # The ten, and the two answered 429: checked, and as failures audited.
    assert len(rows) == 12 and all(r["actor"] == "anonymous" for r in rows)
    assert {r["details"]["client"] for r in rows} == {"127.0.0.1"}, "the peer, not the header"  # type: ignore[index]
    text = json.dumps(rows)
    assert not any(w in text for w in wrong) and token not in text
    assert all(r["details"]["reason"] == "invalid credentials" for r in rows)  # type: ignore[index]


def test_the_failure_limiter_blocks_a_client_across_names_and_forgets_after_the_window(
        ) -> None:
    limiter = FailureLimiter(max_per_name=100, max_per_client=3, window_s=0.5)
    ok = limiter.reserve("10.0.0.1", "right")
    limiter.release(ok)  # an attempt that succeeded is not counted
    for i in range(3):
        limiter.reserve("10.0.0.1", f"name{i}")  # failed: the reservation stays
    with pytest.raises(RateLimitedError) as caught:
        limiter.reserve("10.0.0.1", "a-fresh-name")
    assert caught.value.retry_after_s >= 1
    limiter.reserve("10.0.0.2", "a-fresh-name")  # another client is not blocked
    time.sleep(0.6)
    limiter.reserve("10.0.0.1", "a-fresh-name")  # the window has passed


def test_the_failure_limiter_counts_attempts_in_flight() -> None:
    """60 wrong logins sent at once were all checked against a limit of 10: each was counted
    only after it had failed."""
    limiter = FailureLimiter(max_per_name=1000, max_per_client=10, window_s=60)
    barrier = threading.Barrier(30)

    def guess(i: int) -> bool:
        barrier.wait()
        try:
            limiter.reserve("10.0.1.1", f"aud{i}")
        except RateLimitedError:
            return False
        time.sleep(0.05)  # the token check, during which the others arrive
        return True

    with ThreadPoolExecutor(30) as pool:
        checked = list(pool.map(guess, range(30)))
    assert sum(checked) == 10, sum(checked)


def test_a_blocked_client_is_served_only_the_tokens_vouched_for() -> None:
    limiter = FailureLimiter(max_per_name=100, max_per_client=1, window_s=60)
    with pytest.raises(UnauthenticatedError), limiter.attempt("10.0.3.1", "x"):
        raise UnauthenticatedError("invalid credentials for x")
    looked: list[str] = []

    def vouch(answer: bool) -> Callable[[], bool]:
        return lambda: looked.append("look-up") is None and answer

    with pytest.raises(RateLimitedError), limiter.attempt("10.0.3.1", "y"):
        pass  # no look-up offered: refused before any check
    with pytest.raises(RateLimitedError), limiter.attempt("10.0.3.1", "y", vouch=vouch(False)):
        pass
    with limiter.attempt("10.0.3.1", "ann", vouch=vouch(True)):
        pass  # a valid token: checked and served
    assert looked == ["look-up", "look-up"]
    with pytest.raises(RateLimitedError):
        limiter.reserve("10.0.3.1", "z")  # still blocked: the valid one counted for nothing


def test_a_name_s_failures_answer_its_wrong_tokens_429_and_never_refuse_its_right_one(
        ) -> None:
    limiter = FailureLimiter(max_per_name=2, max_per_client=1000, window_s=60)
    for i in range(2):
        with pytest.raises(UnauthenticatedError), limiter.attempt(f"10.0.2.{i}", "ann"):
            raise UnauthenticatedError("invalid credentials for ann")
    with pytest.raises(RateLimitedError, match="too many failed logins for ann"), \
            limiter.attempt("10.0.2.9", "ann"):
        raise UnauthenticatedError("invalid credentials for ann")
    with limiter.attempt("10.0.2.9", "ann"):
        pass  # the right token, checked and let through
    with pytest.raises(UnauthenticatedError), limiter.attempt("10.0.2.9", "bob"):
        raise UnauthenticatedError("invalid credentials for bob")  # another name: its own
    with pytest.raises(UnauthenticatedError), \
            limiter.attempt("10.0.2.9", "ann", counted=False):
        raise UnauthenticatedError("no credentials")  # sent no token: guessed nothing


def test_tokens_are_stored_only_as_sha256_hashes(server: Server, stack: StackHandle) -> None:
    name, token = server.account(["auditor"])
    with stack.ctx.db() as conn:
        rows = conn.execute("SELECT * FROM api_tokens WHERE user_name = %s", (name,)).fetchall()
        cols = {r["column_name"] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'")}
    assert [r["sha256"] for r in rows] == [hashlib.sha256(token.encode()).hexdigest()]
    assert token not in json.dumps(rows, default=str) and "token_sha256" not in cols


# --- errors, schema, pages ------------------------------------------------------------------

def test_every_error_is_a_problem_document(server: Server) -> None:
    assert_problem(server.op("GET", "/api/v1/no-such-route"), 404)
    assert_problem(server.op("GET", "/api/v1/videos/00000000-0000-0000-0000-000000000000"),
                   404, "no video")
    for bad in ("not-a-uuid", "1'%20OR%20'1'='1"):  # malformed ids are unknown ones, not 500s
        assert_problem(server.op("GET", f"/api/v1/videos/{bad}"), 404, "no video")
    long = server.op("POST", f"/api/v1/matches/{'a' * 5000}/reopen", json={"reason": "r"})
    assert_problem(long, 404, "no match aaa")  # the id was echoed whole: 5,009 characters
    assert len(long.json()["detail"]) == 500 and long.json()["detail"].endswith("…")
    assert_problem(server.op("GET", "/api/v1/jobs", params={"limit": 0}), 422, "limit")
    # A status no video has listed nothing, as if none were in it (bb33).
    assert_problem(server.op("GET", "/api/v1/jobs", params={"status": "bogus"}), 422,
                   "choose from queued, processing, done, failed, quarantined")
    assert_problem(server.op("POST", "/api/v1/users", json={"name": "x"}), 422, "roles")
    assert_problem(server.op("POST", "/api/v1/users", json={"name": "x", "roles": ["clerk"],
                                                            "token": "mine"}), 422)
    assert_problem(server.op("DELETE", "/api/v1/jobs"), 405)
    _, clerk = server.account(["clerk"])
    assert_problem(server.call("POST", "/api/v1/search", clerk,
                               data={"case": "T-SRV", "purpose": "p",
                                     "subject": "00000000-0000-0000-0000-000000000000"}), 403,
                   "refused: `search` needs the investigator role")


def test_openapi_lists_the_routes_and_the_root_serves_the_login_page(server: Server) -> None:
    paths = server.call("GET", "/openapi.json").json()["paths"]
    for prefix in ("/api/v1/videos", "/api/v1/search", "/api/v1/subjects", "/api/v1/matches",
                   "/api/v1/audit"):
        assert any(p.startswith(prefix) for p in paths), prefix
    assert "application/octet-stream" in json.dumps(paths["/api/v1/videos"]["post"])
    page = server.call("GET", "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'action="/login"' in page.text and 'name="token"' in page.text
    # No documentation pages that load scripts from elsewhere into this origin.
    assert server.call("GET", "/docs").status_code == 404
    assert server.call("GET", "/redoc").status_code == 404
    assert server.call("GET", "/healthz").json() == {"status": "ok"}


# --- uploads, SSE, ranges, thumbnails -------------------------------------------------------

def upload(server: Server, token: str, data: bytes | Path, case: str,
           sha256: str | None = None, filename: str = "clip.mp4") -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream"}
    if sha256 is not None:
        headers["X-Content-SHA256"] = sha256
    body = data.read_bytes() if isinstance(data, Path) else data

    def chunks() -> Iterator[bytes]:  # streamed, as a client with a large file sends it
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    return server.call("POST", "/api/v1/videos", token, headers=headers, content=chunks(),
                       params={"case": case, "officer": "O", "device": "D",
                               "filename": filename})


def test_a_digest_mismatch_or_bad_media_stores_nothing_and_is_audited(
        server: Server, stack: StackHandle) -> None:
    before, mark = stack.counts(), last_audit_id(stack)
    wrong = hashlib.sha256(b"other bytes").hexdigest()
    r = upload(server, server.token, HAMILTON, "T-SRV-BAD", sha256=wrong)
    assert_problem(r, 422, "does not match X-Content-SHA256", "nothing was stored")
    assert_problem(upload(server, server.token, b"not a video at all", "T-SRV-BAD"), 422,
                   "clip.mp4")
    assert_problem(upload(server, server.token, HAMILTON, ""), 422, "missing case: ")
    _, investigator = server.account(["investigator"], ("T-SRV-BAD",))
    assert_problem(upload(server, investigator, HAMILTON, "T-SRV-BAD"), 403,
                   "`ingest` needs the clerk role")
    assert stack.counts() == before
    assert not list((stack.home / "uploads").iterdir()), "no spooled upload is left behind"
    rejected = audit_rows(stack, "ingest.rejected", mark)
    assert [r["details"]["case"] for r in rejected] == ["T-SRV-BAD", "T-SRV-BAD"]  # type: ignore[index]


def test_a_declared_digest_sends_the_body_to_the_store_as_it_arrives_but_only_a_video_lands(
        server: Server, stack: StackHandle, tmp_path: Path) -> None:
    """With X-Content-SHA256 the body goes to the store while it arrives; that upload is
    completed only once the body hashed to the digest and passed the probe. Bytes that are
    not a video, longer than a part (so parts were sent), leave no object and no unfinished
    upload. A new video is stored, and linked into the home's cache of originals before the
    answer, so the worker that processes it downloads nothing."""
    store = stack.ctx.store
    before = stack.counts()
    junk = os.urandom(PART_BYTES + 4096)
    junk_sha = hashlib.sha256(junk).hexdigest()
    assert_problem(upload(server, server.token, junk, "T-SRV-TEE", sha256=junk_sha), 422,
                   "clip.mp4")
    assert not store.exists(original_key(junk_sha)) and store.unfinished_uploads() == ()
    assert stack.counts() == before and not (stack.home / "cache" / junk_sha).exists()

    fresh = tmp_path / "fresh.mp4"  # Hamilton's frames in bytes no test stored before
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(HAMILTON),
                    "-c", "copy", "-metadata", f"title={secrets.token_hex(8)}", str(fresh)],
                   check=True, timeout=60)
    data = fresh.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    r = upload(server, server.token, fresh, "T-SRV-TEE", sha256=sha)
    assert r.status_code == 201, r.text
    cached = stack.home / "cache" / sha
    assert cached.exists() and hashlib.sha256(cached.read_bytes()).hexdigest() == sha
    assert store.get_bytes(original_key(sha)) == data and store.unfinished_uploads() == ()
    # Other bytes declared as a stored original, into its own case or another: refused as
    # any wrong digest is; the bytes sent while they arrived are dropped, the original stays.
    wrong = os.urandom(PART_BYTES + 4096)
    for case in ("T-SRV-TEE", "T-SRV-TEE2"):
        assert_problem(upload(server, server.token, wrong, case, sha256=sha), 422,
                       "does not match X-Content-SHA256")
    assert store.get_bytes(original_key(sha)) == data and store.unfinished_uploads() == ()
    video_id = str(r.json()["video_id"])
    assert stack.wait_status(video_id)["status"] == "done"
    logs = "".join(p.read_text() for p in (stack.home / "logs").glob("worker-*.log"))
    assert f"video {video_id} unit 0: original" in logs
    assert f"video {video_id}: original downloaded" not in logs


@pytest.fixture(scope="module")
def served_video(server: Server) -> tuple[str, dict[str, object]]:
    """Hamilton uploaded with its digest into T-SRV; (video id, upload answer)."""
    digest = hashlib.sha256(HAMILTON.read_bytes()).hexdigest()
    r = upload(server, server.token, HAMILTON, "T-SRV", sha256=digest, filename="ham.mp4")
    assert r.status_code in (200, 201), r.text
    return str(r.json()["video_id"]), dict(r.json())


def test_an_upload_streams_in_and_its_progress_streams_out_until_done(
        server: Server, stack: StackHandle, served_video: tuple[str, dict[str, object]]) -> None:
    video_id, answer = served_video
    assert answer["sha256"] == hashlib.sha256(HAMILTON.read_bytes()).hexdigest()
    assert answer["filename"] == "ham.mp4"
    events: list[dict[str, object]] = []
    with server.http.stream("GET", f"{server.url}/api/v1/videos/{video_id}/events",
                            headers={"Authorization": f"Bearer {server.token}"},
                            timeout=300) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                assert kind == "progress"
                events.append(json.loads(line[6:]))
    assert events and events[-1]["status"] == "done", events[-1:]
    assert all(e["video_id"] == video_id for e in events)
    assert len({json.dumps(e) for e in events}) == len(events), "only changes are sent"
    # The same bytes again in the same case: the existing video, flagged duplicate, no copy.
    before = stack.counts()
    again = upload(server, server.token, HAMILTON, "T-SRV")
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["video_id"] == video_id and stack.counts() == before


def test_concurrent_uploads_of_the_same_bytes_make_one_video_and_audit_every_duplicate(
        server: Server, stack: StackHandle) -> None:
    # The losers of the race at the database insert were answered "duplicate" with no audit
    # row (3 of 5 in a black-box run).
    since = last_audit_id(stack)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: upload(server, server.token, HAMILTON, "T-SRV-RACE"),
                                range(4)))
    assert all(a.status_code in (200, 201) for a in answers), [a.text[:200] for a in answers]
    ids = {a.json()["video_id"] for a in answers}
    assert len(ids) == 1 and sum(not a.json()["duplicate"] for a in answers) == 1
    assert len(audit_rows(stack, "ingest", since)) == 1
    assert len(audit_rows(stack, "ingest.duplicate", since)) == 3


def test_an_upload_whose_account_is_disabled_while_it_streams_is_refused_and_stores_nothing(
        server: Server, stack: StackHandle) -> None:
    name, token = server.account(["clerk"], ())
    body = HAMILTON.read_bytes()
    before, since = stack.counts(), last_audit_id(stack)

    def chunks() -> Iterator[bytes]:  # half the body, then the account goes, then the rest
        half = len(body) // 2
        for i in range(0, half, 65536):
            yield body[i:min(i + 65536, half)]
        stack.cli.run("users", "disable", name, check=True)
        for i in range(half, len(body), 65536):
            yield body[i:i + 65536]

    r = server.call("POST", "/api/v1/videos", token, content=chunks(),
                    headers={"Content-Type": "application/octet-stream"},
                    params={"case": "T-SRV-GONE", "officer": "O", "device": "D",
                            "filename": "gone.mp4"})
    assert_problem(r, 401, "no longer valid")
    assert stack.counts() == before, "nothing stored"
    [rejected] = audit_rows(stack, "ingest.rejected", since)
    assert rejected["actor"] == name and "no longer valid" in str(rejected["details"])
    assert not audit_rows(stack, "ingest", since)


def test_a_duplicate_names_its_video_only_to_who_may_follow_it(
        server: Server, stack: StackHandle, served_video: tuple[str, dict[str, object]],
        tmp_path: Path) -> None:
    """A clerk may upload into any case; of a case they cannot see, a duplicate tells them
    only that the case holds those bytes, not its video's id or state."""
    video_id, _ = served_video  # in T-SRV, uploaded by the operator
    before, since = stack.counts(), last_audit_id(stack)
    stranger, outsider = server.account(["clerk"], ("T-SRV-ELSEWHERE",))
    assert_problem(upload(server, outsider, HAMILTON, "T-SRV"), 409,
                   "case T-SRV already holds these bytes", "nothing was stored")
    assert stack.counts() == before
    assert [r["actor"] for r in audit_rows(stack, "ingest.duplicate", since)] == [stranger]
    _, insider = server.account(["clerk"], ("T-SRV",))
    seen = upload(server, insider, HAMILTON, "T-SRV")
    assert seen.status_code == 200 and seen.json()["video_id"] == video_id
    # One's own upload, in a case one cannot see, is named again: one may follow it.
    own = tmp_path / "own.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(HAMILTON),
                    "-c", "copy", "-metadata", f"title={secrets.token_hex(8)}", str(own)],
                   check=True, timeout=60)
    first = upload(server, outsider, own, "T-SRV-OWN")
    assert first.status_code == 201, first.text
    again = upload(server, outsider, own, "T-SRV-OWN")
    assert again.status_code == 200 and again.json()["video_id"] == first.json()["video_id"]
    assert stack.wait_status(str(first.json()["video_id"]))["status"] == "done"


def _stream_until_it_ends(server: Server, token: str, video_id: str,
                          then: Callable[[], object]) -> list[tuple[str, dict[str, object]]]:
    """(event, data) of a video's progress stream; `then()` runs after the first event."""
    got: list[tuple[str, dict[str, object]]] = []
    with server.http.stream("GET", f"{server.url}/api/v1/videos/{video_id}/events",
                            headers={"Authorization": f"Bearer {token}"}, timeout=30) as r:
        assert r.status_code == 200, r.read()
        kind = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                got.append((kind, json.loads(line[6:])))
                if len(got) == 1:
                    then()
    return got


def test_a_progress_stream_ends_once_a_new_request_would_be_refused(
        server: Server, stack: StackHandle, served_video: tuple[str, dict[str, object]]) -> None:
    """The stream's request was checked once; its caller is checked again at every poll, so
    a logout, or the loss of the video's case, ends it (with an audited refusal) rather than
    letting it follow the job on."""
    video_id, _ = served_video
    with stack.ctx.db() as conn:  # a job still running, so that the stream stays open
        conn.execute("UPDATE videos SET status = 'processing' WHERE id = %s", (video_id,))
    try:
        session = server.call("POST", "/api/v1/auth/login", json={
            "user": "operator", "token": server.token}).json()["token"]
        got = _stream_until_it_ends(server, session, video_id, lambda: server.call(
            "POST", "/api/v1/auth/logout", session).raise_for_status())
        assert [k for k, _ in got] == ["progress", "error"], got
        assert got[0][1]["status"] == "processing" and "no longer valid" in str(got[1][1])

        name, clerk = server.account(["clerk"], ("T-SRV",))
        since = last_audit_id(stack)
        got = _stream_until_it_ends(server, clerk, video_id, lambda: server.op(
            "DELETE", f"/api/v1/users/{name}/cases/T-SRV").raise_for_status())
        assert [k for k, _ in got] == ["progress", "error"], got
        assert f"no video {video_id}" in str(got[1][1])
        assert [r["actor"] for r in audit_rows(stack, "refused", since)] == [name]
    finally:
        with stack.ctx.db() as conn:
            conn.execute("UPDATE videos SET status = 'done' WHERE id = %s", (video_id,))


def test_a_case_number_with_a_slash_is_listed_held_released_and_unassigned(
        server: Server) -> None:
    """Case numbers may hold "/" (2024/00123). Clients send it as %2F, which the server
    decodes before routing: the routes that name a case in the path must still match."""
    case = f"T-SRV/{secrets.token_hex(3)}"
    quoted = quote(case, safe="")
    name, investigator = server.account(["investigator"], (case,))
    videos = server.call("GET", f"/api/v1/cases/{quoted}/videos", investigator)
    assert videos.status_code == 200 and videos.json() == {"items": [], "next_offset": None}
    held = server.op("POST", f"/api/v1/cases/{quoted}/hold", json={"reason": "litigation"})
    assert held.status_code == 200 and held.json() == {"case": case, "held": True, "videos": 0}
    [listed] = [c for c in server.op("GET", "/api/v1/cases", params={"limit": 1000}
                                     ).json()["items"] if c["case"] == case]
    assert listed["held"] and listed["users"] == [name], listed
    released = server.op("POST", f"/api/v1/cases/{quoted}/release", json={"reason": "over"})
    assert released.status_code == 200 and released.json() == {"case": case, "held": False,
                                                          "videos": 0}
    gone = server.op("DELETE", f"/api/v1/users/{name}/cases/{quoted}")
    assert gone.status_code == 200 and gone.json() == {"name": name, "case": case}
    assert_problem(server.call("GET", f"/api/v1/cases/{quoted}/videos", investigator), 403,
                   "not assigned")
    # The rest of the path still decides the route: a case named like a route's tail.
    odd = "T-SRV/hold"
    assert server.op("POST", f"/api/v1/cases/{quote(odd, safe='')}/hold",
                     json={"reason": "r"}).json() == {"case": odd, "held": True, "videos": 0}
    assert server.op("POST", f"/api/v1/cases/{quote(odd, safe='')}/release",
                     json={"reason": "r"}).json() == {"case": odd, "held": False, "videos": 0}


def test_lists_are_paginated_with_next_offset(
        server: Server, served_video: tuple[str, dict[str, object]]) -> None:
    upload(server, server.token, HAMILTON, "T-SRV-PAGE")  # a second job at least
    everything = server.op("GET", "/api/v1/jobs", params={"limit": 1000}).json()
    assert everything["next_offset"] is None and len(everything["items"]) >= 2
    seen, offset = [], 0
    while offset is not None:
        page = server.op("GET", "/api/v1/jobs", params={"limit": 1, "offset": offset}).json()
        assert len(page["items"]) == 1
        seen += [j["video_id"] for j in page["items"]]
        offset = page["next_offset"]
    assert seen == [j["video_id"] for j in everything["items"]]


def test_an_original_is_served_with_ranges_only_inside_the_case(
        server: Server, served_video: tuple[str, dict[str, object]]) -> None:
    video_id, _ = served_video
    data = HAMILTON.read_bytes()
    path = f"/api/v1/videos/{video_id}/original"
    _, investigator = server.account(["investigator"], ("T-SRV",))
    part = server.call("GET", path, investigator, headers={"Range": "bytes=100-1123"})
    assert part.status_code == 206 and part.content == data[100:1124]
    assert part.headers["content-range"] == f"bytes 100-1123/{len(data)}"
    tail = server.call("GET", path, investigator, headers={"Range": "bytes=-500"})
    assert tail.status_code == 206 and tail.content == data[-500:]
    whole = server.call("GET", path, investigator)
    assert whole.status_code == 200 and hashlib.sha256(whole.content).hexdigest() == \
        hashlib.sha256(data).hexdigest()
    assert_problem(server.call("GET", path, investigator,
                               headers={"Range": f"bytes={len(data)}-"}), 416)
    for huge in ("1" * 5000 + "-", "-" + "1" * 5000, "0-" + "1" * 4301):  # were 500s
        assert_problem(server.call("GET", path, investigator,
                                   headers={"Range": f"bytes={huge}"}), 416, "unsupported range")
    _, outsider = server.account(["investigator"], ("T-SRV-ELSEWHERE",))
    assert_problem(server.call("GET", path, outsider, headers={"Range": "bytes=0-9"}), 404,
                   f"no video {video_id}")
    _, clerk = server.account(["clerk"], ("T-SRV",))
    assert_problem(server.call("GET", path, clerk), 403, "investigator")


def test_a_thumbnail_is_never_cached_and_only_shown_inside_the_case(
        stack: StackHandle, server: Server, served_video: tuple[str, dict[str, object]]
) -> None:
    video_id, _ = served_video
    since = last_audit_id(stack)
    name, investigator = server.account(["investigator"], ("T-SRV",))
    tracks = server.call("GET", f"/api/v1/videos/{video_id}/tracks", investigator,
                         params={"limit": 1})
    assert tracks.status_code == 200, tracks.text
    [track] = tracks.json()["items"]
    path = f"/api/v1/tracks/{track['track_id']}/thumbnail"
    r = server.call("GET", path, investigator)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert r.headers["content-type"] == "image/jpeg" and r.content[:3] == b"\xff\xd8\xff"
    _, outsider = server.account(["investigator"], ("T-SRV-ELSEWHERE",))
    assert_problem(server.call("GET", path, outsider), 404, f"no track {track['track_id']}")
    # Nor is it told that the video exists (bb32), nor its case named.
    refused = server.call("GET", f"/api/v1/videos/{video_id}/tracks", outsider)
    assert_problem(refused, 404, f"no video {video_id}")
    assert "T-SRV" not in refused.text
    # A face picture served is audited with its case; the refused one is not served.
    served = [(r["actor"], r["details"]) for r in audit_rows(stack, "track.thumbnail", since)]
    assert served == [(name, {"track_id": track["track_id"], "case": "T-SRV"})]


def test_an_export_is_served_only_to_the_account_that_made_it(server: Server) -> None:
    _, alice = server.account(["auditor"])
    _, bob = server.account(["auditor"])
    made = server.call("POST", "/api/v1/exports/audit", alice, json={"format": "jsonl"})
    assert made.status_code == 201, made.text
    export_id, manifest = made.json()["export_id"], made.json()["manifest"]
    got = server.call("GET", f"/api/v1/exports/{export_id}", alice)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == \
        manifest["sha256"]
    signed = server.call("GET", f"/api/v1/exports/{export_id}/manifest", alice).json()
    assert signed["signature"] == manifest["signature"]
    assert_problem(server.call("GET", f"/api/v1/exports/{export_id}", bob), 403,
                   "made by another account")
    assert_problem(server.call("GET", f"/api/v1/exports/{export_id}/manifest", bob), 403)
    assert_problem(server.call("GET", "/api/v1/exports/not-an-id", alice), 404)


def test_search_and_enrolment_take_photos_as_multipart_and_name_missing_fields(
        server: Server, served_video: tuple[str, dict[str, object]]) -> None:
    name, investigator = server.account(["investigator"], ("T-SRV",))
    missing = server.call("POST", "/api/v1/search", investigator, data={"case": "T-SRV"})
    assert_problem(missing, 422, "missing purpose: ")
    # A JSON body was told "missing --case"; a review's body that is not JSON was "invalid 0:
    # JSON decode error" (bb32).
    as_json = server.call("POST", "/api/v1/search", investigator,
                          json={"case": "T-SRV", "purpose": "p", "track": "x"})
    assert_problem(as_json, 415, "/api/v1/search takes a form (multipart/form-data), not "
                                 "application/json")
    garbled = server.call("POST", f"/api/v1/matches/{uuid.uuid4()}/review", investigator,
                          content=b"{not json", headers={"Content-Type": "application/json"})
    assert_problem(garbled, 422, "the body is not valid JSON")
    with P06.open("rb") as f:
        found = server.call("POST", "/api/v1/search", investigator,
                            data={"case": "T-SRV", "purpose": "server test"},
                            files={"photo": ("p06.png", f, "image/png")})
    assert found.status_code == 200, found.text
    assert {"search_id", "results", "threshold", "model"} <= set(found.json())
    with P06.open("rb") as f:
        other = server.call("POST", "/api/v1/search", investigator,
                            data={"case": "T-SRV-ELSEWHERE", "purpose": "p"},
                            files={"photo": ("p06.png", f, "image/png")})
    assert_problem(other, 403, f"{name} is not assigned to case T-SRV-ELSEWHERE")
    notface = server.call("POST", "/api/v1/subjects", investigator,
                          data={"name": "X", "case": "T-SRV", "reason": "r"},
                          files={"photo": ("notes.png", b"not an image", "image/png")})
    assert_problem(notface, 422, "notes.png: not a readable image")
    # Images whose header claims more pixels than a photo has are refused before any pixel
    # is decoded: a 12-kB PNG of 10,000 x 10,000 cost the server 1.7 GB; 30,000 x 30,000 was
    # a 500 (Pillow's own bomb check). A few bytes of header stand for them here.
    for side, field, route, data in (
            (10_000, "photo", "/api/v1/photos/faces", {"case": "T-SRV"}),
            (30_000, "photo", "/api/v1/search", {"case": "T-SRV", "purpose": "p"}),
            (10_000, "photo", "/api/v1/subjects", {"name": "X", "case": "T-SRV",
                                                   "reason": "r"})):
        bomb = server.call("POST", route, investigator, data=data,
                           files={field: ("bomb.png", _png_header(side, side), "image/png")})
        if side == 30_000:
            assert_problem(bomb, 422, "bomb.png: the image claims more than 50,000,000 pixels")
        else:
            assert_problem(bomb, 422, f"bomb.png: the image is {side}x{side} pixels, over the"
                           " limit of 50,000,000")
    # A side that holds no face once the photo is scaled down is refused from its header: a
    # 3841x1 PNG scaled to no rows was a 500, and 50,000,000x1 was decoded first (bb30).
    def grey_png(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (w, h), (128, 128, 128)).save(buf, "PNG")
        return buf.getvalue()

    for (w, h), png, route, data in (
            ((3841, 1), grey_png(3841, 1), "/api/v1/photos/faces", {"case": "T-SRV"}),
            ((1, 49_000_000), _png_header(1, 49_000_000), "/api/v1/search",
             {"case": "T-SRV", "purpose": "p"}),
            ((50_000, 20), grey_png(50_000, 20), "/api/v1/subjects",
             {"name": "X", "case": "T-SRV", "reason": "r"})):
        thin = server.call("POST", route, investigator, data=data,
                           files={"photo": ("thin.png", png, "image/png")})
        assert_problem(thin, 422, f"thin.png: the image is {w}x{h} pixels, too small or too "
                       "narrow to hold a face")
    # A field given twice is refused, not taken at its last value: the first of two probe
    # photos was never searched; a list of photos is an enrolment's alone (bb30).
    photo = P06.read_bytes()
    two = server.call("POST", "/api/v1/search", investigator,
                      data={"case": "T-SRV", "purpose": "p"},
                      files=[("photo", ("a.png", photo, "image/png")),
                             ("photo", ("b.png", photo, "image/png"))])
    assert_problem(two, 422, "the form gives 'photo' more than once")
    # The framework's words are not the answer: a photo sent as text, an enrolment without one.
    text = server.call("POST", "/api/v1/search", investigator,
                       data={"case": "T-SRV", "purpose": "p", "photo": "p06.png"})
    assert_problem(text, 422, "invalid photo: send it as a file part of a multipart form")
    none = server.call("POST", "/api/v1/subjects", investigator,
                       data={"name": "X", "case": "T-SRV", "reason": "r"})
    assert_problem(none, 422, "missing photo: the request needs it")
    cases = server.call("GET", "/api/v1/matches?case=T-SRV&case=T-SRV-ELSEWHERE", investigator)
    assert_problem(cases, 422, "the query gives 'case' more than once")
    # So is a key given twice in a JSON object, at any depth (the last one won: bb34).
    name, _ = server.account(["investigator"])
    for body in ('{"case": "T-SRV-A", "case": "T-SRV-B"}',
                 '{"case": "T-SRV-A", "x": {"y": 1, "y": 2}}'):
        twice = server.op("POST", f"/api/v1/users/{name}/cases", content=body,
                          headers={"Content-Type": "application/json"})
        assert_problem(twice, 422, "the JSON body gives")
    for case in ("T-SRV-B", "T-SRV-A"):  # nothing was assigned (a second assign is a 409)
        ok = server.op("POST", f"/api/v1/users/{name}/cases", json={"case": case})
        assert ok.status_code == 200, ok.text
    _, elsewhere = server.account(["investigator"], ("T-SRV-PHOTOS",))
    enrolled = server.call("POST", "/api/v1/subjects", elsewhere,
                           data={"name": "p06 twice", "case": "T-SRV-PHOTOS", "reason": "r"},
                           files=[("photo", ("a.png", photo, "image/png")),
                                  ("photo", ("b.png", photo, "image/png"))])
    assert enrolled.status_code == 201, enrolled.text


def test_an_error_no_handler_knows_is_a_500_with_every_header_on_a_connection_kept_open(
        server: Server, stack: StackHandle) -> None:
    """A failure the server has no answer for (here a table renamed under it) is one problem
    document with `nosniff` and `no-store`, and the client's connection serves the next
    request: Starlette's own 500 had neither header and made the server drop the connection."""
    ok = server.op("GET", "/api/v1/thresholds")
    assert ok.status_code == 200
    api_log = stack.home / "logs" / "api.log"
    dropped = api_log.read_text(errors="replace").count("Exception in ASGI application")
    with psycopg.connect(home_admin_url(stack.home), autocommit=True) as admin:
        admin.execute("ALTER TABLE thresholds RENAME TO thresholds_gone")
        try:
            failed = server.op("GET", "/api/v1/thresholds")
        finally:
            admin.execute("ALTER TABLE thresholds_gone RENAME TO thresholds")
    assert_problem(failed, 500, "internal error")
    assert failed.headers["x-content-type-options"] == "nosniff"
    assert failed.headers["cache-control"] == "no-store"
    assert "thresholds_gone" not in failed.text, "no internal detail is shown"
    again = server.op("GET", "/api/v1/thresholds")  # on the same pooled connection
    assert again.status_code == 200, again.text
    text = api_log.read_text(errors="replace")
    assert text.count("Exception in ASGI application") == dropped, "raised again: dropped"
    assert text.count("unhandled UndefinedTable") >= 1, "logged once, by name"


def test_a_database_connection_lost_mid_request_is_a_503_naming_it(server: Server,
                                                                   stack: StackHandle) -> None:
    """Postgres killed while a request's query ran was answered 500 "internal error" (an
    OperationalError no handler knew: bb45). The request waits on the audit log's lock,
    held here, and its backend is ended: 503, one line naming the database and the remedy,
    and nothing of it is kept; the next request is served."""
    from bodycam.audit import _LOCK

    name = f"srv-lost-{secrets.token_hex(3)}"
    got: list[httpx.Response] = []
    with stack.ctx.db() as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        asked = threading.Thread(target=lambda: got.append(server.op(
            "POST", "/api/v1/users", json={"name": name, "roles": ["clerk"]})))
        asked.start()
        deadline, pid = time.monotonic() + 30, None
        while pid is None:
            assert time.monotonic() < deadline, "the request never waited on the lock"
            time.sleep(0.1)
            with psycopg.connect(home_admin_url(stack.home), autocommit=True) as admin:
                row = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event = 'advisory'"
                    " AND pid <> %s", (holder.info.backend_pid,)).fetchone()
                pid = row[0] if row else None
        with psycopg.connect(home_admin_url(stack.home), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        asked.join(60)
        holder.rollback()
    [r] = got
    assert_problem(r, 503, "the database connection failed during the request",
                   "then retry")
    assert r.headers["retry-after"] == "5"
    users = server.op("GET", "/api/v1/users", params={"limit": 500})
    assert users.status_code == 200 and name not in users.text


def test_a_photo_is_a_jpeg_png_or_webp_and_a_16_bit_one_keeps_its_face(
        server: Server) -> None:
    """Every Pillow decoder used to read probe and enrolment photos (EPS runs Ghostscript
    where it is installed); and a 16-bit grey PNG came out white: "no face found"."""
    _, investigator = server.account(["investigator"], ("T-SRV",))
    grey = Image.open(P06).convert("L")
    for fmt in ("GIF", "TIFF", "BMP"):
        buf = io.BytesIO()
        grey.save(buf, fmt)
        refused = server.call("POST", "/api/v1/photos/faces", investigator,
                              data={"case": "T-SRV"},
                              files={"photo": (f"p06.{fmt.lower()}", buf.getvalue(),
                                               "image/png")})
        assert_problem(refused, 422, "not a readable image (use a JPEG, PNG or WebP photo)")
    buf = io.BytesIO()
    Image.fromarray(np.asarray(grey).astype(np.uint16) * 257).save(buf, "PNG")
    found = server.call("POST", "/api/v1/photos/faces", investigator, data={"case": "T-SRV"},
                        files={"photo": ("p06-16bit.png", buf.getvalue(), "image/png")})
    assert found.status_code == 200 and found.json()["faces"], found.text
    # The enrolment photo reviewers are shown is decoded the same way (it was white).
    enrolled = server.call("POST", "/api/v1/subjects", investigator,
                           data={"name": "Sixteen", "case": "T-SRV", "reason": "16-bit"},
                           files={"photo": ("p06-16bit.png", buf.getvalue(), "image/png")})
    assert enrolled.status_code < 300, enrolled.text
    shown = server.call("GET", f"/api/v1/subjects/{enrolled.json()['subject_id']}/photo",
                        investigator)
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
    preview = np.asarray(Image.open(io.BytesIO(shown.content)).convert("L"), dtype=float)
    assert abs(preview.mean() - np.asarray(grey, dtype=float).mean()) < 10, \
        "the preview keeps the photo's brightness"


def test_enrolment_photos_sharing_a_name_keep_the_names_they_were_sent_with(
        server: Server) -> None:
    """Photos sent as 2-x.jpg, x.jpg, x.jpg: the third was a 500 (the second had been saved
    as 2-x.jpg, taken), and messages named the server's renamed copy, a file the client
    never sent."""
    _, investigator = server.account(["investigator"], ("T-SRV",))
    ids = TESTDATA / "faces" / "identities"
    sent = [("2-x.jpg", ids / "p01" / "01.jpg"), ("x.jpg", ids / "p01" / "02.jpg"),
            ("x.jpg", ids / "p02" / "01.jpg")]
    r = server.call("POST", "/api/v1/subjects", investigator,
                    data={"name": "Shared names", "case": "T-SRV", "reason": "names"},
                    files=[("photo", (n, p.read_bytes(), "image/jpeg")) for n, p in sent])
    assert_problem(r, 422, "and photo 3 (x.jpg) do not show the same person")


def _png_header(width: int, height: int) -> bytes:
    """A PNG's signature and header chunk claiming width x height (1-bit grey), no pixels."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr
            + struct.pack(">I", zlib.crc32(ihdr)) + struct.pack(">I", 0) + b"IEND"
            + struct.pack(">I", zlib.crc32(b"IEND")))


# --- a second server with small limits, on the same stack -----------------------------------

@pytest.fixture(scope="module")
def strict_server(stack: StackHandle, server: Server) -> Iterator[Server]:
    """`bodycam serve` started by hand on the stack with a 200 kB upload limit and a client
    failure limit of 3 (the stack's own server keeps the defaults)."""
    with serve_with(stack, {"BODYCAM_LIMITS__MAX_BYTES": "200000",
                            "BODYCAM_AUTH__MAX_CLIENT_FAILURES": "3",
                            "BODYCAM_AUTH__FAILURE_WINDOW_S": "30",
                            "BODYCAM_SERVER__ALLOWED_HOSTS": " evidence.agency.example ,x.example"
                            }) as env:
        yield Server(env["BODYCAM_URL"], server.token, server.http)


def test_a_request_to_a_name_the_server_was_not_given_is_refused(server: Server,
                                                                  strict_server: Server
                                                                  ) -> None:
    """Any Host was served (bb42): a page whose name is pointed at the server after it loads
    (DNS rebinding) would read the server's pages as its own origin. An address, localhost,
    and the names in `server.allowed_hosts` are answered; any other name gets 400."""
    port = httpx.URL(server.url).port
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{port}",
                 "localhost.attacker.example", "evidence.agency.example"):
        for path in ("/healthz", "/", "/api/v1/jobs"):
            r = server.http.get(server.url + path, headers={
                "Host": host, "Authorization": f"Bearer {server.token}"})
            assert_problem(r, 400, f"does not answer to the host {host!r}",
                           "BODYCAM_SERVER__ALLOWED_HOSTS")
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LocalHost.", "[::1]:80",
                 "10.0.0.7"):
        r = server.http.get(server.url + "/api/v1/jobs", headers={
            "Host": host, "Authorization": f"Bearer {server.token}"})
        assert r.status_code == 200, (host, r.text)
    for host in ("evidence.agency.example", "EVIDENCE.Agency.example.:443", "x.example"):
        assert strict_server.http.get(strict_server.url + "/healthz",
                                      headers={"Host": host}).status_code == 200, host
    for host in ("evidence.agency.example.attacker.example", "agency.example", "example"):
        assert_problem(strict_server.http.get(strict_server.url + "/healthz",
                                              headers={"Host": host}), 400, host)


def test_an_upload_over_the_limit_is_refused_while_streaming_and_leaves_nothing(
        strict_server: Server, stack: StackHandle) -> None:
    before = stack.counts()
    body = HAMILTON.read_bytes()  # 614 kB, over the 200 kB limit
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        for i in range(0, len(body), 65536):
            sent += 65536
            yield body[i:i + 65536]

    try:
        r = strict_server.call("POST", "/api/v1/videos", strict_server.token,
                               params={"case": "T-SRV-BIG", "officer": "O", "device": "D"},
                               content=chunks())
        assert_problem(r, 413, "limits.max_bytes")
    except httpx.TransportError:
        pass  # the server answered and closed before the client finished sending
    assert stack.counts() == before
    assert not list((stack.home / "uploads").iterdir())
    # Declared too large up front: refused before a byte of the body is read.
    declared = strict_server.call("POST", "/api/v1/videos", strict_server.token,
                                  params={"case": "T-SRV-BIG", "officer": "O", "device": "D"},
                                  content=body)
    assert_problem(declared, 413, "nothing was stored")
    assert stack.counts() == before


def test_a_client_address_is_limited_across_claimed_names(strict_server: Server,
                                                          stack: StackHandle) -> None:
    for i in range(3):
        assert_problem(strict_server.call("GET", "/api/v1/jobs", f"bct_wrong{i}",
                                          headers={"X-Bodycam-User": f"spray{i}"}), 401)
    limited = strict_server.call("GET", "/api/v1/jobs", "bct_wrong", headers={
        "X-Bodycam-User": "spray-new"})
    assert_problem(limited, 429, "this client")
    assert int(limited.headers["retry-after"]) <= 30
    # Valid tokens from the address are still served (made-up tokens locked every user
    # behind one address out: bb34), a bearer token as a login; made-up ones still wait,
    # and while they wait they are not audited (nor is the look-up that let a valid one in).
    since = last_audit_id(stack)
    assert strict_server.op("GET", "/api/v1/jobs").status_code == 200
    signed = strict_server.call("POST", "/api/v1/auth/login", json={
        "user": "operator", "token": strict_server.token})
    assert signed.status_code == 200, signed.text
    session = signed.json()["token"]
    assert strict_server.call("GET", "/api/v1/auth/me", session).status_code == 200
    for attempt in (lambda: strict_server.call("GET", "/api/v1/jobs", "bct_wrong4"),
                    lambda: strict_server.call("GET", "/api/v1/jobs", strict_server.token,
                                               headers={"X-Bodycam-User": "spray0"}),
                    lambda: strict_server.call("POST", "/api/v1/auth/login", json={
                        "user": "operator", "token": "bct_wrong5"}),
                    lambda: strict_server.call("POST", "/api/v1/auth/login", json={
                        "user": "spray1", "token": strict_server.token})):
        assert_problem(attempt(), 429, "this client")
    assert audit_rows(stack, "login.failed", since) == []
    assert [r["actor"] for r in audit_rows(stack, "login", since)] == ["operator"]
    strict_server.call("POST", "/api/v1/auth/logout", session).raise_for_status()


def test_a_server_out_of_descriptors_logs_it_once_a_while_and_answers_503(
        stack: StackHandle, tmp_path: Path) -> None:
    """Out of file descriptors (a limit of 24 and 60 clients at once), the server logged
    asyncio's accept error with a traceback at every retry (91 MB in seconds: a flood of
    clients became a full disk), and an ingest then got "internal error" (bb14)."""
    import errno
    import socket
    import sys

    from bodycam.api import problems

    answer = problems.internal(OSError(errno.EMFILE, "Too many open files"))
    assert answer.status_code == 503 and b"too many open files" in answer.body
    assert answer.headers["retry-after"] == "10"
    assert problems.internal(ValueError("x")).status_code == 500
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "api.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["prlimit", "--nofile=64:64", sys.executable, "-m", "bodycam",
                                 "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=stack.cli.env, stdout=out, stderr=out)
    held: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        for _ in range(120):  # every descriptor the server has, and more, held open
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(4)
        text = log.read_text(errors="replace")
        assert 1 <= text.count("out of system resource") <= 2, text[-2000:]
        assert len(text) < 20_000
    finally:
        for s in held:
            s.close()
        proc.terminate()
        proc.wait(timeout=30)
