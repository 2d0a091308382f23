"""Every route x every role (401, 403 naming the role, allowed) and case isolation of every id."""

from __future__ import annotations

import contextlib
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from bodycam.accounts import PERMISSIONS, ROLES
from tests.conftest import HAMILTON, TESTDATA, StackHandle, jsonl

CASE_A = "T-API-A"  # every role account is assigned here
CASE_B = "T-API-B"  # nobody's case but the operator's
CASE_C = "T-API-C"  # holds and releases
P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"
B_NAME = "Bravo-Secret-Subject"
ANY, PUBLIC, NOTIFIER = "any", "public", "notifier"
PROBLEM = "application/problem+json"
ZERO_ID = "00000000-0000-0000-0000-000000000000"


@dataclass
class Req:
    """One HTTP request; `token` replaces the acting role's token when set."""

    method: str
    path: str
    params: dict[str, str] | None = None
    json: object = None
    data: dict[str, str] | None = None
    files: list[tuple[str, tuple[str, bytes, str]]] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = None


@dataclass
class World:
    """The accounts and the objects of case A and case B."""

    stack: StackHandle
    http: httpx.Client
    url: str
    op: str
    tokens: dict[str, str]
    names: dict[str, str]
    a: dict[str, str]
    b: dict[str, str]

    def send(self, req: Req, token: str | None, anonymous: bool = False) -> httpx.Response:
        """Send as `token` (the request's own token wins), or with none when anonymous."""
        headers = dict(req.headers)
        token = None if anonymous else (req.token or token)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(req.method, self.url + req.path, params=req.params,
                                 json=req.json, data=req.data, files=req.files,
                                 content=req.content, headers=headers)

    def as_op(self, method: str, path: str, **kw: object) -> httpx.Response:
        r = self.send(Req(method, path, **kw), self.op)  # type: ignore[arg-type]
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        return r

    def subject(self, case: str, name: str) -> str:
        r = self.as_op("POST", "/api/v1/subjects",
                       data={"name": name, "case": case, "reason": "matrix"},
                       files=[("photo", ("p06.png", P06.read_bytes(), "image/png"))])
        return str(r.json()["subject_id"])

    def user(self, *roles: str) -> str:
        name = f"mx-tmp-{secrets.token_hex(4)}"
        self.as_op("POST", "/api/v1/users", json={"name": name, "roles": list(roles)})
        return name

    def refused(self, actor: str) -> int:
        with self.stack.ctx.db() as conn:
            return int(conn.execute("SELECT count(*) AS n FROM audit_log WHERE action ="
                                    " 'refused' AND actor = %s", (actor,)).fetchone()["n"])

    def last_refusal(self, actor: str) -> dict[str, Any]:
        with self.stack.ctx.db() as conn:
            return dict(conn.execute("SELECT details FROM audit_log WHERE action = 'refused'"
                                     " AND actor = %s ORDER BY id DESC LIMIT 1",
                                     (actor,)).fetchone()["details"])


def _photo() -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("photo", ("p.png", P06.read_bytes(), "image/png"))]


def _logout(w: World, role: str, fresh: bool) -> Req:
    # A session token of its own, so that logging out does not revoke the role's token.
    tok = w.tokens.get(role, w.op)
    r = w.send(Req("POST", "/api/v1/auth/login",
                   json={"user": w.names.get(role, "operator"), "token": tok}), None)
    assert r.status_code == 200, r.text
    return Req("POST", "/api/v1/auth/logout", token=str(r.json()["token"]) if fresh else None)


def _remove(w: World, role: str, fresh: bool) -> Req:
    sid = w.subject(CASE_A, f"mx-rm-{secrets.token_hex(3)}") if fresh else w.a["victim"]
    return Req("DELETE", f"/api/v1/subjects/{sid}")


def _review(w: World, role: str, fresh: bool) -> Req:
    mid = w.a[f"match-{role}"] if fresh and f"match-{role}" in w.a else w.a["match"]
    return Req("POST", f"/api/v1/matches/{mid}/review",
               json={"decision": "reject", "note": f"matrix {role}"})


def _policy(w: World, role: str, fresh: bool) -> Req:
    cur = w.as_op("GET", "/api/v1/policy").json()
    return Req("PUT", "/api/v1/policy",
               json={"reason": "matrix", "retention_days": cur["retention_days"]})


def _check_live(w: World, role: str, fresh: bool) -> Req:
    return Req("POST", "/api/v1/audit/check-live", json={"manifest": w.a["manifest"]})


def _unassign(w: World, role: str, fresh: bool) -> Req:
    name = w.user("clerk") if fresh else w.names["investigator"]
    if fresh:
        w.as_op("POST", f"{V}/users/{name}/cases", json={"case": CASE_C})
    return Req("DELETE", f"{V}/users/{name}/cases/{CASE_C if fresh else CASE_A}")


Make = Callable[[World, str, bool], Req]


@dataclass(frozen=True)
class Route:
    """A row of the matrix: the route, who may call it, how to call it."""

    method: str
    template: str
    roles: tuple[str, ...] | str
    make: Make


def _r(method: str, template: str, roles: str | tuple[str, ...], make: Make) -> Route:
    return Route(method, template, PERMISSIONS[roles] if isinstance(roles, str)
                 and roles in PERMISSIONS else roles, make)


V = "/api/v1"
MATRIX: list[Route] = [
    _r("POST", V + "/auth/login", PUBLIC, lambda w, r, f: Req(
        "POST", V + "/auth/login", json={"user": w.names.get(r, "operator"),
                                          "token": w.tokens.get(r, w.op)})),
    _r("POST", V + "/auth/logout", ANY, _logout),
    _r("GET", V + "/auth/me", ANY, lambda w, r, f: Req("GET", V + "/auth/me")),
    _r("POST", V + "/videos", "ingest", lambda w, r, f: Req(
        "POST", V + "/videos", params={"case": CASE_A, "officer": "O", "device": "D",
                                       "filename": "h.mp4"},
        content=HAMILTON.read_bytes(), headers={"Content-Type": "application/octet-stream"})),
    _r("GET", V + "/jobs", "jobs", lambda w, r, f: Req("GET", V + "/jobs")),
    _r("GET", V + "/videos/{}", "jobs", lambda w, r, f: Req("GET", f"{V}/videos/{w.a['video']}")),
    _r("GET", V + "/videos/{}/events", "jobs",
       lambda w, r, f: Req("GET", f"{V}/videos/{w.a['video']}/events")),
    _r("POST", V + "/videos/{}/retry", "retry",
       lambda w, r, f: Req("POST", f"{V}/videos/{w.a['video']}/retry")),
    _r("GET", V + "/videos/{}/tracks", "tracks",
       lambda w, r, f: Req("GET", f"{V}/videos/{w.a['video']}/tracks")),
    _r("GET", V + "/videos/{}/original", "tracks", lambda w, r, f: Req(
        "GET", f"{V}/videos/{w.a['video']}/original", headers={"Range": "bytes=0-99"})),
    _r("GET", V + "/tracks/{}/thumbnail", "tracks",
       lambda w, r, f: Req("GET", f"{V}/tracks/{w.a['track']}/thumbnail")),
    _r("POST", V + "/subjects", "subjects.enroll", lambda w, r, f: Req(
        "POST", V + "/subjects", data={"name": f"mx-en-{r}", "case": CASE_A, "reason": "m"},
        files=_photo())),
    _r("GET", V + "/subjects", "subjects.list",
       lambda w, r, f: Req("GET", V + "/subjects", params={"case": CASE_A})),
    _r("DELETE", V + "/subjects/{}", "subjects.remove", _remove),
    _r("POST", V + "/subjects/{}/approve", "subjects.approve",
       lambda w, r, f: Req("POST", f"{V}/subjects/{w.a['subject']}/approve")),
    _r("POST", V + "/search", "search", lambda w, r, f: Req(
        "POST", V + "/search", data={"case": CASE_A, "purpose": "matrix",
                                     "subject": w.a["subject"]})),
    _r("POST", V + "/photos/faces", "search", lambda w, r, f: Req(
        "POST", V + "/photos/faces", data={"case": CASE_A}, files=_photo())),
    _r("GET", V + "/cases/{}/videos", "tracks",
       lambda w, r, f: Req("GET", f"{V}/cases/{CASE_A}/videos")),
    _r("GET", V + "/matches", "matches",
       lambda w, r, f: Req("GET", V + "/matches", params={"case": CASE_A})),
    _r("POST", V + "/matches/{}/review", "review", _review),
    _r("POST", V + "/matches/{}/reopen", "matches.reopen", lambda w, r, f: Req(
        "POST", f"{V}/matches/{w.a['match']}/reopen", json={"reason": f"matrix {r}"})),
    _r("GET", V + "/persons", "persons", lambda w, r, f: Req(
        "GET", V + "/persons", params={"case": CASE_A, "purpose": "matrix"})),
    _r("POST", V + "/exports/matches", "matches.export", lambda w, r, f: Req(
        "POST", V + "/exports/matches", json={"format": "jsonl", "case": CASE_A})),
    _r("POST", V + "/exports/audit", "audit.export", lambda w, r, f: Req(
        "POST", V + "/exports/audit", json={"format": "jsonl"})),
    _r("GET", V + "/exports/{}", "audit.export",
       lambda w, r, f: Req("GET", f"{V}/exports/{w.a['export']}")),
    _r("GET", V + "/exports/{}/manifest", "audit.export",
       lambda w, r, f: Req("GET", f"{V}/exports/{w.a['export']}/manifest")),
    _r("POST", V + "/audit/verify", "audit.verify",
       lambda w, r, f: Req("POST", V + "/audit/verify")),
    _r("GET", V + "/audit/export-key", "audit.export",
       lambda w, r, f: Req("GET", V + "/audit/export-key")),
    _r("POST", V + "/audit/check-live", "audit.verify", _check_live),
    _r("GET", V + "/audit", "audit.export",
       lambda w, r, f: Req("GET", V + "/audit", params={"limit": "5"})),
    _r("POST", V + "/users", "users", lambda w, r, f: Req(
        "POST", V + "/users", json={"name": f"mx-new-{secrets.token_hex(4)}",
                                    "roles": ["clerk"]})),
    _r("GET", V + "/users", "users", lambda w, r, f: Req("GET", V + "/users")),
    _r("POST", V + "/users/{}/disable", "users",
       lambda w, r, f: Req("POST", f"{V}/users/{w.user('clerk') if f else w.names['clerk']}"
                           "/disable")),
    _r("POST", V + "/users/{}/cases", "cases.assign", lambda w, r, f: Req(
        "POST", f"{V}/users/{w.names['investigator']}/cases", json={"case": CASE_C})),
    _r("POST", V + "/cases/{}/hold", "cases.hold",
       lambda w, r, f: Req("POST", f"{V}/cases/{CASE_C}/hold", json={"reason": "matrix"})),
    _r("POST", V + "/cases/{}/release", "cases.hold",
       lambda w, r, f: Req("POST", f"{V}/cases/{CASE_C}/release", json={"reason": "matrix"})),
    _r("GET", V + "/policy", ANY, lambda w, r, f: Req("GET", V + "/policy")),
    _r("PUT", V + "/policy", "policy.set", _policy),
    _r("PUT", V + "/thresholds/{}", "thresholds.set", lambda w, r, f: Req(
        "PUT", V + "/thresholds/dlib-resnet",
        json={"default": 0.93, "floor": 0.92, "reason": "matrix: unchanged"})),
    _r("POST", V + "/purge", "purge", lambda w, r, f: Req("POST", V + "/purge",
                                                         json={"dry_run": True})),
    _r("POST", V + "/reprocess", "reprocess",
       lambda w, r, f: Req("POST", V + "/reprocess", json={"reason": "matrix"})),
    _r("POST", V + "/fixity", ("auditor",), lambda w, r, f: Req("POST", V + "/fixity")),
    _r("GET", V + "/events-token", ("admin",), lambda w, r, f: Req("GET", V + "/events-token")),
    _r("POST", "/s3/events", NOTIFIER,
       lambda w, r, f: Req("POST", "/s3/events", json={"Records": []})),
    _r("GET", "/healthz", PUBLIC, lambda w, r, f: Req("GET", "/healthz")),
    _r("GET", "/", PUBLIC, lambda w, r, f: Req("GET", "/")),
    _r("GET", V + "/subjects/{}/photo", "subjects.list",
       lambda w, r, f: Req("GET", f"{V}/subjects/{w.a['subject']}/photo")),
    _r("DELETE", V + "/users/{}/cases/{}", "cases.assign", _unassign),
    _r("GET", V + "/cases", "cases.assign", lambda w, r, f: Req("GET", V + "/cases")),
    _r("GET", V + "/thresholds", ANY, lambda w, r, f: Req("GET", V + "/thresholds")),
    # Allowed roles get 422 (an unlisted legal basis is refused before any work) or 404 (no
    # such derivative): the role and case checks come first (tests/test_redaction.py renders).
    _r("POST", V + "/videos/{}/redactions", "redact", lambda w, r, f: Req(
        "POST", f"{V}/videos/{w.a['video']}/redactions",
        json={"keep_tracks": [{"id": "P1", "legal_basis": "matrix: not a listed basis"}]})),
    _r("GET", V + "/videos/{}/redaction-plan", "redact",
       lambda w, r, f: Req("GET", f"{V}/videos/{ZERO_ID}/redaction-plan")),
    _r("GET", V + "/redaction-jobs/{}", "redact",
       lambda w, r, f: Req("GET", f"{V}/redaction-jobs/{ZERO_ID}")),
    _r("GET", V + "/redactions/{}", "redact",
       lambda w, r, f: Req("GET", f"{V}/redactions/{ZERO_ID}")),
    _r("POST", V + "/redactions/{}/verify", "redact",
       lambda w, r, f: Req("POST", f"{V}/redactions/{ZERO_ID}/verify")),
    _r("GET", V + "/redactions/{}/{}", "redact",
       lambda w, r, f: Req("GET", f"{V}/redactions/{ZERO_ID}/video")),
]
NOT_IN_SCHEMA = {("GET", "/")}  # the web page is not an API operation


def _key(method: str, template: str) -> tuple[str, str]:
    return method.upper(), re.sub(r"\{[^}]*\}", "{}", template)


def _wait_done(w: World, vid: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        st = w.as_op("GET", f"{V}/videos/{vid}").json()["status"]
        if st in ("done", "failed", "quarantined"):
            assert st == "done", st
            return
        time.sleep(1)
    raise AssertionError(f"video {vid} not processed in {timeout_s}s")


@pytest.fixture(scope="module")
def world(stack: StackHandle, api_url: str, operator_token: str) -> Iterator[World]:
    with httpx.Client(timeout=600) as http:
        w = World(stack, http, api_url, operator_token, {}, {}, {}, {})
        for role in ROLES:
            name = f"mx-{role}-{secrets.token_hex(3)}"
            r = w.as_op("POST", V + "/users", json={"name": name, "roles": [role]})
            w.tokens[role], w.names[role] = str(r.json()["token"]), name
            w.as_op("POST", f"{V}/users/{name}/cases", json={"case": CASE_A})
        # p06 on both watchlists (twice in A: a match per reviewer), then the clip in both cases.
        w.a["subject"] = w.subject(CASE_A, "Alpha-Subject")
        w.a["subject2"] = w.subject(CASE_A, "Alpha-Subject-2")
        w.b["subject"] = w.subject(CASE_B, B_NAME)
        for case, objs in ((CASE_A, w.a), (CASE_B, w.b)):
            r = w.as_op("POST", V + "/videos", params={"case": case, "officer": "O",
                                                       "device": "D", "filename": "h.mp4"},
                        content=HAMILTON.read_bytes(),
                        headers={"Content-Type": "application/octet-stream"})
            objs["video"] = str(r.json()["video_id"])
        for objs in (w.a, w.b):
            _wait_done(w, objs["video"])
        w.a["victim"] = w.subject(CASE_A, "Alpha-Victim")
        with stack.ctx.db() as conn:
            for case, objs in ((CASE_A, w.a), (CASE_B, w.b)):
                t = conn.execute("SELECT id::text AS id FROM tracks WHERE video_id = %s AND"
                                 " embedding IS NOT NULL LIMIT 1", (objs["video"],)).fetchone()
                ms = conn.execute("SELECT m.id::text AS id FROM matches m JOIN subjects s"
                                  " ON s.id = m.subject_id WHERE s.case_id = %s ORDER BY m.id",
                                  (case,)).fetchall()
                assert t is not None and ms, f"case {case}: tracks and a p06 match"
                objs["track"], objs["match"] = t["id"], ms[0]["id"]
                for role, m in zip(("investigator", "supervisor"), ms[1:], strict=False):
                    objs[f"match-{role}"] = m["id"]
        # An export of the matrix auditor, and one of another auditor (case-B-like: not theirs).
        r = w.send(Req("POST", V + "/exports/matches", json={"format": "jsonl",
                                                              "case": CASE_A}),
                   w.tokens["auditor"])
        assert r.status_code == 201, r.text
        w.a["export"], w.a["manifest"] = str(r.json()["export_id"]), r.json()["manifest"]
        r = w.as_op("POST", V + "/exports/matches", json={"format": "jsonl", "case": CASE_B})
        w.b["export"] = str(r.json()["export_id"])
        yield w


def test_the_matrix_has_a_row_for_every_operation_of_the_openapi_schema(api_url: str) -> None:
    spec = httpx.get(api_url + "/openapi.json", timeout=30).json()
    served = {_key(m, p) for p, ops in spec["paths"].items() for m in ops
              if m in ("get", "post", "put", "delete", "patch")}
    table = {_key(r.method, r.template) for r in MATRIX}
    assert not served - table, f"routes without a matrix row: {sorted(served - table)}"
    assert not table - served - NOT_IN_SCHEMA, f"contract routes not served: {table - served}"
    assert len(table) == len(MATRIX), "one row per route"


def _problem(r: httpx.Response, status: int) -> dict[str, object]:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.headers["content-type"].startswith(PROBLEM), r.headers
    body = dict(r.json())
    assert body["status"] == status and "detail" in body, body
    # The detail names a field as the API and the web app's forms do, never a CLI flag: the
    # web app showed "missing --note" to whoever left its note box empty.
    assert not re.search(r"(^|\W)--[a-z]", str(body["detail"])), body
    return body


def test_every_route_refuses_an_anonymous_call_with_401_problem(world: World) -> None:
    for route in MATRIX:
        req = route.make(world, "clerk", False)
        r = world.send(req, None, anonymous=True)
        if route.roles == PUBLIC:
            assert r.status_code not in (401, 403), (route.template, r.status_code, r.text)
            continue
        _problem(r, 401)
        assert r.headers.get("www-authenticate", "").lower().startswith("bearer"), route


def test_a_wrong_or_claimed_other_token_is_401_and_audited_without_the_token(
        world: World) -> None:
    bogus = "bct_" + secrets.token_urlsafe(32)
    _problem(world.send(Req("GET", V + "/auth/me"), bogus), 401)
    # A valid token of another account than the one claimed is refused like a wrong one.
    _problem(world.send(Req("GET", V + "/auth/me",
                            headers={"X-Bodycam-User": world.names["admin"]}),
                        world.tokens["clerk"]), 401)
    with world.stack.ctx.db() as conn:
        rows = conn.execute("SELECT details::text AS d FROM audit_log WHERE action ="
                            " 'login.failed' ORDER BY id DESC LIMIT 5").fetchall()
    assert rows, "failed logins are audited"
    assert all(bogus not in r["d"] and world.tokens["clerk"] not in r["d"] for r in rows)


def test_every_route_refuses_each_role_it_does_not_allow_with_403_naming_the_role(
        world: World) -> None:
    failures: list[str] = []
    for route in MATRIX:
        if route.roles in (PUBLIC, ANY):
            continue
        allowed = () if route.roles == NOTIFIER else route.roles
        for role in ROLES:
            if role in allowed:
                continue
            before = world.refused(world.names[role])
            r = world.send(route.make(world, role, False), world.tokens[role])
            where = f"{route.method} {route.template} as {role}"
            if route.roles == NOTIFIER:  # an account's token is not the notifier's
                if r.status_code not in (401, 403):
                    failures.append(f"{where}: {r.status_code}")
                continue
            if r.status_code != 403:
                failures.append(f"{where}: {r.status_code} {r.text[:200]}")
                continue
            detail = str(r.json().get("detail", ""))
            if not all(a in detail for a in allowed) or "needs" not in detail:
                failures.append(f"{where}: detail does not name {allowed}: {detail}")
            if world.refused(world.names[role]) <= before:
                failures.append(f"{where}: no `refused` audit row")
    assert not failures, "\n".join(failures)


def test_every_route_lets_each_role_it_allows_through(world: World) -> None:
    failures: list[str] = []
    for route in MATRIX:
        if route.roles in (PUBLIC, NOTIFIER):
            continue
        roles = ROLES if route.roles == ANY else route.roles
        for role in roles:
            r = world.send(route.make(world, role, True), world.tokens[role])
            if r.status_code in (401, 403) or r.status_code >= 500:
                failures.append(f"{route.method} {route.template} as {role}: "
                                f"{r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)


def _leaks(w: World, text: str) -> list[str]:
    return [v for k, v in w.b.items() if v in text and k != "export"] + (
        [B_NAME] if B_NAME in text else []) + ([CASE_B] if CASE_B in text else [])


def _isolated(w: World, role: str, req: Req, what: str, failures: list[str],
              attempted: str | None = None) -> None:
    """`req` of case B's object as `role` of case A: refused and audited (as `attempted`,
    where given), leaking nothing of case B."""
    name = w.names[role]
    before = w.refused(name)
    r = w.send(req, w.tokens[role])
    body = r.text
    # The id the caller sent may be echoed; nothing else of case B may be.
    sent = {v for v in (*w.b.values(), CASE_B) if v in (req.path + str(req.data)
                                                       + str(req.params))}
    leaked = [x for x in _leaks(w, body) if x not in sent]
    if r.status_code not in (403, 404):
        failures.append(f"{what} as {role}: {r.status_code} {body[:200]}")
    elif leaked:
        failures.append(f"{what} as {role}: leaks {leaked}")
    elif w.refused(name) <= before:
        failures.append(f"{what} as {role}: {r.status_code} without a `refused` audit row")
    elif attempted and w.last_refusal(name).get("attempted") != attempted:
        # A refused download of an original was recorded as an attempt to list tracks (bb23).
        failures.append(f"{what} as {role}: refusal recorded as {w.last_refusal(name)}")


def test_ids_of_another_case_are_refused_on_every_object_kind_and_audited(world: World) -> None:
    b, f = world.b, []  # type: ignore[var-annotated]
    failures: list[str] = f
    inv = "investigator"
    for what, req, attempted in [
        ("video tracks", Req("GET", f"{V}/videos/{b['video']}/tracks"), "tracks"),
        ("video original", Req("GET", f"{V}/videos/{b['video']}/original"), "video.original"),
        ("thumbnail", Req("GET", f"{V}/tracks/{b['track']}/thumbnail"), "track.thumbnail"),
        ("subject photo", Req("GET", f"{V}/subjects/{b['subject']}/photo"), "subject.photo"),
        ("match review", Req("POST", f"{V}/matches/{b['match']}/review",
                             json={"decision": "confirm", "note": "probe"}), "review"),
    ]:
        _isolated(world, inv, req, what, failures, attempted)
    for what, req in [
        ("search subject", Req("POST", V + "/search", data={
            "case": CASE_A, "purpose": "probe", "subject": b["subject"]})),
        ("search track", Req("POST", V + "/search", data={
            "case": CASE_A, "purpose": "probe", "track": b["track"]})),
        ("search video", Req("POST", V + "/search", data={
            "case": CASE_A, "purpose": "probe", "video": b["video"]}, files=_photo())),
        ("search case B", Req("POST", V + "/search", data={
            "case": CASE_B, "purpose": "probe", "subject": b["subject"]})),
        ("photo faces case B", Req("POST", V + "/photos/faces", data={"case": CASE_B},
                                   files=_photo())),
        ("videos of B", Req("GET", f"{V}/cases/{CASE_B}/videos")),
        ("subject remove", Req("DELETE", f"{V}/subjects/{b['subject']}")),
        ("subjects of B", Req("GET", V + "/subjects", params={"case": CASE_B})),
        ("matches of B", Req("GET", V + "/matches", params={"case": CASE_B})),
        ("persons of B", Req("GET", V + "/persons", params={"case": CASE_B, "purpose": "p"})),
        ("video redaction", Req("POST", f"{V}/videos/{b['video']}/redactions", json={})),
    ]:
        _isolated(world, inv, req, what, failures)
    for what, req in [
        ("video row", Req("GET", f"{V}/videos/{b['video']}")),
        ("video events", Req("GET", f"{V}/videos/{b['video']}/events")),
        ("video retry", Req("POST", f"{V}/videos/{b['video']}/retry")),
    ]:
        _isolated(world, "clerk", req, what, failures)
    for what, req in [("export of another auditor", Req("GET", f"{V}/exports/{b['export']}")),
                      ("manifest of another auditor",
                       Req("GET", f"{V}/exports/{b['export']}/manifest"))]:
        r = world.send(req, world.tokens["auditor"])
        if r.status_code not in (403, 404) or B_NAME in r.text:
            failures.append(f"{what}: {r.status_code} {r.text[:200]}")
    # Lists without a case filter show nothing of case B.
    for role, path in [(inv, V + "/matches"), (inv, V + "/subjects"), ("clerk", V + "/jobs")]:
        r = world.send(Req("GET", path), world.tokens[role])
        if r.status_code == 200 and _leaks(world, r.text):
            failures.append(f"{path} as {role} lists case B: {_leaks(world, r.text)}")
    # The same ids work in their own case (the refusals above are about the case).
    ok = world.send(Req("POST", V + "/search", data={"case": CASE_B, "purpose": "own case",
                                                     "subject": b["subject"]}), world.op)
    assert ok.status_code == 200 and ok.json()["results"], ok.text
    assert not failures, "\n".join(failures)


def test_reads_of_evidence_and_of_the_log_are_on_record_under_every_case_they_touch(
        world: World) -> None:
    """What bb23 found the log could not prove: a listing of a video's tracks left no row; an
    unsatisfiable range was recorded as a read of the original; lists of several cases, the
    matches export and a probe of another case's subject were recorded under no case or the
    asker's, so the auditor's case filter missed them; an export's row and its downloads
    could not be tied together; the export did not say who decided what; reading the log
    itself left no row."""
    inv, sup, aud = (world.tokens[r] for r in ("investigator", "supervisor", "auditor"))
    a, b = world.a, world.b
    with world.stack.ctx.db() as conn:
        since = int(conn.execute("SELECT max(id) AS n FROM audit_log").fetchone()["n"])

    def since_rows(action: str) -> list[dict[str, Any]]:
        with world.stack.ctx.db() as conn:
            return [dict(r) for r in conn.execute(
                "SELECT actor, details FROM audit_log WHERE id > %s AND action = %s"
                " ORDER BY id", (since, action))]

    r = world.send(Req("GET", f"{V}/videos/{a['video']}/tracks", params={"limit": "500"}),
                   inv)
    assert r.status_code == 200, r.text
    shown = [t["track_id"] for t in r.json()["items"]]
    [row] = since_rows("tracks")
    assert row["actor"] == world.names["investigator"] and row["details"] == {
        "video_id": a["video"], "case": CASE_A, "count": len(shown), "offset": 0,
        "track_ids": shown}
    # Page by page, each row names the page's ids.
    r = world.send(Req("GET", f"{V}/videos/{a['video']}/tracks",
                       params={"limit": "1", "offset": "1"}), inv)
    assert [t["track_id"] for t in r.json()["items"]] == shown[1:2]
    assert since_rows("tracks")[-1]["details"]["track_ids"] == shown[1:2]
    r = world.send(Req("GET", f"{V}/videos/{a['video']}/original",
                       headers={"Range": "bytes=999999999-"}), inv)
    assert r.status_code == 416 and not since_rows("video.original"), r.text
    r = world.send(Req("GET", f"{V}/videos/{a['video']}/original",
                       headers={"Range": "bytes=0-9"}), inv)
    assert r.status_code == 206 and len(since_rows("video.original")) == 1
    # Several ranges are served whole, and recorded so (the range asked was: bb28).
    r = world.send(Req("GET", f"{V}/videos/{a['video']}/original",
                       headers={"Range": "bytes=0-1,3-4"}), inv)
    assert r.status_code == 200
    assert [x["details"]["range"] for x in since_rows("video.original")] == ["bytes=0-9", None]
    # A supervisor's list of every case names the cases it showed.
    r = world.send(Req("GET", V + "/matches", params={"limit": "500"}), sup)
    assert r.status_code == 200, r.text
    [row] = since_rows("matches.list")
    assert row["details"]["case"] is None
    assert {CASE_A, CASE_B} <= set(row["details"]["cases"]), row
    # A probe of case B's subject from case A is recorded under case B, the object's.
    r = world.send(Req("POST", V + "/search", data={"case": CASE_A, "purpose": "probe",
                                                    "subject": b["subject"]}), inv)
    assert r.status_code == 404, r.text  # as for an id that names nothing (bb32)
    probe = [x for x in since_rows("refused") if x["actor"] == world.names["investigator"]]
    assert probe[-1]["details"]["case"] == CASE_B, probe
    assert probe[-1]["details"]["object"] == f"subject {b['subject']}", probe
    for actor, action in ((world.names["supervisor"], "matches.list"),
                          (world.names["investigator"], "refused")):
        r = world.send(Req("GET", V + "/audit", params={
            "case": CASE_B, "actor": actor, "action": action, "limit": "500"}), aud)
        assert r.status_code == 200 and r.json()["items"], (actor, action, r.text)
    [row] = since_rows("audit.list")[-1:]
    assert row["actor"] == world.names["auditor"] and row["details"]["filters"]["case"] == CASE_B
    # A case named in other letter case is that case: a probe spelled so is found under its
    # case, and the log and the export read the case's rows (an empty log and a signed export
    # of no rows answered: bb42).
    r = world.send(Req("GET", V + "/persons", params={"case": CASE_B.lower(),
                                                      "purpose": "probe"}), inv)
    assert r.status_code == 403, r.text
    r = world.send(Req("GET", V + "/audit", params={
        "case": CASE_B, "action": "refused", "actor": world.names["investigator"],
        "limit": "500"}), aud)
    assert CASE_B.lower() in [x["details"].get("case") for x in r.json()["items"]], r.text
    listed = {spelling: [x["id"] for x in world.send(Req("GET", V + "/audit", params={
        "case": spelling, "limit": "500"}), aud).json()["items"]]
        for spelling in (CASE_A, CASE_A.lower())}
    assert listed[CASE_A] and listed[CASE_A] == listed[CASE_A.lower()], listed
    made = {spelling: world.send(Req("POST", V + "/exports/matches", json={
        "format": "jsonl", "case": spelling}), aud).json()["manifest"]
        for spelling in (CASE_A, CASE_A.lower())}
    assert made[CASE_A]["rows"] and made[CASE_A.lower()]["rows"] == made[CASE_A]["rows"]
    assert made[CASE_A.lower()]["case"] == CASE_A, made
    # An export and its download name each other, what was delivered and every case in it;
    # each match carries its reviews (who decided what, why and when).
    r = world.send(Req("POST", V + "/exports/matches", json={"format": "jsonl"}), aud)
    assert r.status_code == 201, r.text
    export_id, manifest = str(r.json()["export_id"]), r.json()["manifest"]
    got = world.send(Req("GET", f"{V}/exports/{export_id}"), aud)
    assert got.status_code == 200, got.text
    [made] = [x for x in since_rows("export") if x["details"].get("export_id") == export_id]
    assert {CASE_A, CASE_B} <= set(made["details"]["cases"]), made
    [down] = since_rows("export.download")
    assert down["details"] == {"export_id": export_id, "part": "export", "kind": "matches",
                               "sha256": manifest["sha256"], "rows": manifest["rows"],
                               "cases": made["details"]["cases"]}, down
    assert made["details"]["sha256"] == manifest["sha256"]
    records = jsonl(got.text)
    assert records and all({"reviews", "decided_at", "enrolled_by"} <= set(m)
                           for m in records), records[:1]
    assert all(isinstance(m["reviews"], list) and m["enrolled_by"] for m in records)
    # An export is read by ranges as every file is (deps.parse_range): each range recorded as
    # that range, an unsatisfiable one refused unrecorded, several answered whole; its
    # manifest's downloads are recorded too. (Ranges were served outside parse_range and each
    # recorded as the whole export; a 416 as well: bb27.)
    part = world.send(Req("GET", f"{V}/exports/{export_id}", headers={"Range": "bytes=5-14"}),
                      aud)
    assert part.status_code == 206 and part.content == got.content[5:15], part.status_code
    assert part.headers["content-range"] == f"bytes 5-14/{len(got.content)}"
    far = world.send(Req("GET", f"{V}/exports/{export_id}",
                         headers={"Range": f"bytes={len(got.content)}-"}), aud)
    several = world.send(Req("GET", f"{V}/exports/{export_id}",
                             headers={"Range": "bytes=0-1,5-6"}), aud)
    assert far.status_code == 416 and several.status_code == 200, (far.text, several.text)
    assert several.content == got.content
    # The unit is case-insensitive; a unit other than bytes is ignored (bb28: both were 416).
    upper = world.send(Req("GET", f"{V}/exports/{export_id}", headers={"Range": "BYTES=5-14"}),
                       aud)
    items = world.send(Req("GET", f"{V}/exports/{export_id}", headers={"Range": "items=0-1"}),
                       aud)
    assert (upper.status_code, upper.content) == (206, got.content[5:15])
    assert (items.status_code, items.content) == (200, got.content)
    signed = world.send(Req("GET", f"{V}/exports/{export_id}/manifest"), aud)
    assert signed.status_code == 200 and signed.json()["sha256"] == manifest["sha256"]
    assert [(x["details"]["part"], x["details"].get("range"))
            for x in since_rows("export.download")] == [
        ("export", None), ("export", "bytes=5-14"), ("export", None), ("export", "BYTES=5-14"),
        ("export", None), ("manifest", None)]
    # Another account's export: refused under the export and the cases it holds; so is a
    # role's refusal (it named neither: bb28).
    r = world.send(Req("GET", f"{V}/exports/{b['export']}"), aud)
    assert r.status_code == 403, r.text
    [no] = [x for x in since_rows("refused") if x["actor"] == world.names["auditor"]]
    assert (no["details"]["attempted"], no["details"]["object"], no["details"]["case"]) == (
        "export.download", b["export"], CASE_B), no
    r = world.send(Req("GET", f"{V}/exports/{export_id}"), inv)
    assert r.status_code == 403, r.text
    [no] = [x for x in since_rows("refused") if x["actor"] == world.names["investigator"]
            and x["details"]["attempted"] == "export.download"]
    assert no["details"]["object"] == export_id
    assert set(no["details"]["cases"]) == set(made["details"]["cases"]), no


def test_a_read_is_recorded_once_its_bytes_are_read(world: World) -> None:
    """A thumbnail or an enrolment photo was recorded as served before the store was read:
    with the store unreachable, or the object gone, the answer was an error and the audit
    log said it was seen (bb22, bb24)."""
    inv = world.tokens["investigator"]
    with world.stack.ctx.db() as conn:
        row = conn.execute("SELECT id::text AS id, thumbnail_key FROM tracks WHERE video_id ="
                           " %s AND id <> %s AND thumbnail_key IS NOT NULL ORDER BY id LIMIT 1",
                           (world.a["video"], world.a["track"])).fetchone()
    assert row is not None, "a second track with a thumbnail"
    world.stack.ctx.store.delete(row["thumbnail_key"])  # lost by the store
    r = world.send(Req("GET", f"{V}/tracks/{row['id']}/thumbnail"), inv)
    assert r.status_code in (404, 503), r.text
    # An enrolment photo alike (a photo of its own: the store keeps one object per photo).
    photo = TESTDATA / "faces" / "identities" / "p20" / "02.jpg"
    sid = str(world.as_op("POST", "/api/v1/subjects",
                          data={"name": "Lost-Photo", "case": CASE_A, "reason": "matrix"},
                          files=[("photo", ("p.jpg", photo.read_bytes(), "image/jpeg"))]
                          ).json()["subject_id"])
    with world.stack.ctx.db() as conn:
        key = conn.execute("SELECT photo_key FROM subject_faces WHERE subject_id = %s",
                           (sid,)).fetchone()["photo_key"]
    store = world.stack.ctx.store  # lost by the store (the application never deletes it)
    store._client.delete_object(Bucket=store.bucket, Key=key)
    r = world.send(Req("GET", f"{V}/subjects/{sid}/photo"), inv)
    assert r.status_code in (404, 503), r.text
    with world.stack.ctx.db() as conn:
        seen = conn.execute("SELECT count(*) AS n FROM audit_log WHERE action IN"
                            " ('track.thumbnail', 'subject.photo') AND (details->>'track_id'"
                            " = %s OR details->>'subject_id' = %s)",
                            (row["id"], sid)).fetchone()["n"]
    assert seen == 0


def test_an_original_named_in_any_script_is_served_under_its_name(world: World) -> None:
    """Headers are Latin-1: a file name with an em dash or CJK made every read of its video
    a 500, in every player of the web app, each one audited as a read (bb25)."""
    name = "crowd \u2014 \u00dcn\u00efcode \u9577\u3044\u540d\u524d \"q\";x.mp4"
    r = world.as_op("POST", V + "/videos", params={
        "case": f"T-MX-NAME-{secrets.token_hex(2)}", "officer": "O", "device": "D",
        "filename": name}, content=HAMILTON.read_bytes(),
        headers={"Content-Type": "application/octet-stream"})
    vid = str(r.json()["video_id"])
    got = world.send(Req("GET", f"{V}/videos/{vid}/original", headers={"Range": "bytes=0-9"}),
                     world.op)
    assert got.status_code == 206 and len(got.content) == 10, got.text
    disposition = got.headers["content-disposition"]
    plain = re.search(r'filename="([^"]*)"', disposition)
    assert plain is not None and plain.group(1).isascii() and plain.group(1).endswith(".mp4")
    stored = world.send(Req("GET", f"{V}/videos/{vid}"), world.op).json()["filename"]
    assert "\u9577" in stored and "\u2014" in stored, stored
    assert httpx.QueryParams("n=" + disposition.split("filename*=UTF-8''", 1)[1])["n"] == stored


def test_a_retry_of_a_video_that_did_not_fail_is_refused_and_leaves_it_as_it_was(
        world: World) -> None:
    """A done video re-queued with every unit done would wait forever as `queued`."""
    vid = world.a["video"]
    before = world.send(Req("GET", f"{V}/videos/{vid}"), world.op).json()
    assert before["status"] == "done", before
    r = world.send(Req("POST", f"{V}/videos/{vid}/retry"), world.tokens["clerk"])
    body = _problem(r, 409)
    assert "done" in str(body["detail"]) and "failed or quarantined" in str(body["detail"])
    after = world.send(Req("GET", f"{V}/videos/{vid}"), world.op).json()
    assert after["status"] == "done" and after["attempts"] == before["attempts"], after


def test_a_nul_character_is_refused_in_one_line_wherever_it_comes_from(world: World) -> None:
    """PostgreSQL stores no NUL character. One in a path, a query, a JSON body or a form field
    used to fail deep in a case check or an audit row: a 500, the refusal unaudited, and a
    failed login neither audited nor counted by the limiter."""
    inv, b = world.tokens["investigator"], world.b
    for req, status, token in [
        (Req("GET", f"{V}/cases/{CASE_B}%00/videos"), 400, inv),
        (Req("GET", f"{V}/videos/{b['video']}%00/tracks"), 400, inv),
        (Req("GET", V + "/subjects", params={"case": CASE_B + "\x00"}), 400, inv),
        (Req("GET", V + "/persons", params={"case": CASE_A, "purpose": "p\x00"}), 400, inv),
        (Req("GET", V + "/audit", params={"actor": "x\x00"}), 400, world.tokens["auditor"]),
        (Req("POST", f"{V}/matches/{b['match']}/review",
             json={"decision": "confirm", "note": "a\x00b"}), 422, inv),
        (Req("POST", V + "/auth/login", json={"user": world.names["investigator"] + "\x00",
                                              "token": "bct_" + secrets.token_urlsafe(8)}),
         422, None),
        # A form field: refused where the database meets it, as a request's fault.
        (Req("POST", V + "/search", data={"case": CASE_B + "\x00", "purpose": "probe",
                                          "subject": b["subject"]}), 400, inv),
    ]:
        r = world.send(req, token, anonymous=token is None)
        assert "NUL" in str(_problem(r, status)["detail"]), (req.path, r.text)
    # The web sign-in form: a claimed name with a NUL is a failed login like any other,
    # audited (the character shown as U+FFFD) and counted.
    page = world.http.get(world.url + "/")
    nonce = page.cookies["bodycam_login"]
    name = f"nul-{secrets.token_hex(3)}"
    r = world.http.post(world.url + "/login", data={"user": name + "\x00", "token": "bct_x",
                                                   "csrf": nonce},
                        cookies={"bodycam_login": nonce})
    assert r.status_code == 401, r.text[:300]
    with world.stack.ctx.db() as conn:
        row = conn.execute("SELECT details FROM audit_log WHERE action = 'login.failed'"
                           " AND details->>'claimed_user' = %s", (name + "\ufffd",)).fetchone()
    assert row is not None and row["details"]["reason"] == "invalid credentials"


def test_free_text_that_reaches_the_audit_log_is_bounded(world: World) -> None:
    """A 20-MB review note used to be stored, and a 5-MB threshold reason served to every
    account: every free-text field is at most 2,000 characters."""
    long = "x" * 2001
    for req, token, field_name in [
        (Req("POST", f"{V}/matches/{world.a['match']}/review",
             json={"decision": "reject", "note": long}), world.tokens["investigator"], "note"),
        (Req("PUT", V + "/thresholds/dlib-resnet",
             json={"default": 0.93, "floor": 0.92, "reason": long}),
         world.tokens["supervisor"], "reason"),
        (Req("POST", f"{V}/cases/{CASE_C}/hold", json={"reason": long}),
         world.tokens["supervisor"], "reason"),
        (Req("POST", V + "/search", data={"case": CASE_A, "purpose": long,
                                          "subject": world.a["subject"]}),
         world.tokens["investigator"], "purpose"),
    ]:
        r = world.send(req, token)
        assert field_name in str(_problem(r, 422)["detail"]), (req.path, r.text[:300])


def test_every_audit_row_about_an_object_of_a_case_names_the_case(world: World) -> None:
    """The auditor's case filter reads each row's `case`: views of an enrolment photo,
    approvals, reviews and the worker's rows once went without it, so a question like "who
    looked at faces of case B" missed them."""
    sid = world.send(Req("POST", V + "/subjects", data={
        "name": f"mx-audit-{secrets.token_hex(3)}", "case": CASE_A, "reason": "audit"},
        files=_photo()), world.tokens["investigator"]).json()["subject_id"]
    assert world.send(Req("GET", f"{V}/subjects/{sid}/photo"),
                      world.tokens["investigator"]).status_code == 200
    with world.stack.ctx.db() as conn:  # enrolment matched the subject against case A
        mid = conn.execute("SELECT id::text AS id FROM matches WHERE subject_id = %s LIMIT 1",
                           (sid,)).fetchone()["id"]
    assert world.send(Req("POST", f"{V}/matches/{mid}/review",
                          json={"decision": "reject", "note": "audit"}),
                      world.tokens["investigator"]).status_code == 200
    with world.stack.ctx.db() as conn:
        missing = conn.execute(
            "SELECT action, count(*) AS n FROM audit_log WHERE details ?| array['video_id',"
            " 'subject_id', 'match_id', 'track_id', 'derivative_id']"
            " AND details->>'case' IS NULL GROUP BY action").fetchall()
        actions = {r["action"] for r in conn.execute(
            "SELECT DISTINCT action FROM audit_log WHERE details->>'case' = %s",
            (CASE_A,)).fetchall()}
    assert not missing, [(r["action"], r["n"]) for r in missing]
    assert {"subject.photo", "review", "processing.done"} <= actions, actions
    r = world.send(Req("GET", V + "/audit", params={"case": CASE_A, "action": "subject.photo"}),
                   world.tokens["auditor"])
    assert r.status_code == 200 and any(sid in str(i) for i in r.json()["items"]), r.text[:300]


def test_a_refusal_by_role_names_the_object_and_its_case(world: World) -> None:
    """A clerk's or an auditor's probes of case A's evidence by id were audited as `refused`
    with `case: null` and no id (bb19): the auditor's case filter missed them. Each names
    the object and its case now; the answer names neither."""
    a, failures = world.a, []
    for role, req, about in [
        ("auditor", Req("GET", f"{V}/videos/{a['video']}/original"), f"video {a['video']}"),
        ("auditor", Req("GET", f"{V}/videos/{a['video']}/tracks"), f"video {a['video']}"),
        ("auditor", Req("POST", f"{V}/videos/{a['video']}/retry"), f"video {a['video']}"),
        ("clerk", Req("GET", f"{V}/tracks/{a['track']}/thumbnail"), f"track {a['track']}"),
        ("clerk", Req("GET", f"{V}/subjects/{a['subject']}/photo"),
         f"subject {a['subject']}"),
        ("clerk", Req("GET", f"{V}/videos/{a['video']}/redaction-plan"),
         f"video {a['video']}"),
        ("auditor", Req("DELETE", f"{V}/subjects/{a['subject']}"), f"subject {a['subject']}"),
    ]:
        r = world.send(req, world.tokens[role])
        with world.stack.ctx.db() as conn:
            row = conn.execute("SELECT details FROM audit_log WHERE actor = %s AND action ="
                               " 'refused' ORDER BY id DESC LIMIT 1",
                               (world.names[role],)).fetchone()
        got = row and (row["details"].get("case"), row["details"].get("object"))
        if r.status_code != 403 or got != (CASE_A, about) or CASE_A in r.text:
            failures.append(f"{req.method} {req.path} as {role}: {r.status_code} {got}")
    assert not failures, failures


def test_odd_values_get_one_clean_line_and_are_not_stored(world: World) -> None:
    """Each of these was stored and broke later reads, or was a 500 (a black-box pass, with
    reproductions kept by the session that fixed them)."""
    inv, sup, aud = (world.tokens[r] for r in ("investigator", "supervisor", "auditor"))
    region = (b'{"regions": [{"box_px": [0, 0, 10, 10], "start_s": 0, "end_s": 1e309,'
              b' "reason": "r", "legal_basis": "b"}]}')
    for what, req, token, status, says in [
        # An expiry of year 10000 in UTC was stored; every later read of the subjects failed.
        ("far expiry", Req("POST", V + "/subjects", data={
            "name": "mx-far", "case": CASE_A, "reason": "r",
            "expires": "9999-12-31T23:59:59-14:00"}, files=_photo()), inv, 422,
         "between the years 1900 and 3000"),
        # An expiry already past was stored: an entry that lapsed before it could match.
        ("past expiry", Req("POST", V + "/subjects", data={
            "name": "mx-past", "case": CASE_A, "reason": "r", "expires": "2020-01-01"},
            files=_photo()), inv, 422, "already past"),
        # A recording time in 1 BC broke its case's video list.
        ("early recording", Req("POST", V + "/videos", params={
            "case": CASE_C, "officer": "O", "device": "D", "filename": "h.mp4",
            "recorded_at": "0001-01-01T00:00:00+14:00"}, content=HAMILTON.read_bytes(),
            headers={"Content-Type": "application/octet-stream"}), world.tokens["clerk"], 422,
         "between the years 1900 and 3000"),
        ("far filter", Req("GET", V + "/audit", params={"from": "0001-01-01"}), aud, 422,
         "between the years 1900 and 3000"),
        ("huge offset", Req("GET", V + "/audit", params={"offset": "9" * 20}), aud, 422,
         "offset"),
        # A huge search limit with a video filter overflowed the candidate query (500); 0
        # meant the default. A search returns at most a list page's 1000.
        ("huge search limit", Req("POST", V + "/search", data={
            "case": CASE_A, "purpose": "matrix", "subject": world.a["subject"],
            "video": world.a["video"], "limit": str(2**62)}), inv, 422,
         "between 1 and 1000"),
        ("zero search limit", Req("POST", V + "/search", data={
            "case": CASE_A, "purpose": "matrix", "subject": world.a["subject"],
            "limit": "0"}), inv, 422, "limit 0: between 1 and 1000"),
        ("unknown match status", Req("GET", V + "/matches", params={"status": "bogus"}), sup,
         422, "choose from pending, confirmed, rejected"),
        # A zero-width space was a stated purpose; an escape sequence in a name acted on the
        # terminal of whoever listed it; a right-to-left override reorders what is read.
        ("invisible purpose", Req("POST", V + "/search", data={
            "case": CASE_A, "purpose": "\u200b\u200d\ufeff", "subject": world.a["subject"]}),
         inv, 422, "missing purpose: "),
        ("escape in a name", Req("POST", V + "/subjects", data={
            "name": "Eve\x1b]0;T\x07\x1b[2J", "case": CASE_A, "reason": "r"},
            files=_photo()), inv, 422, "name holds the control character U+001B"),
        ("override in a note", Req("POST", f"{V}/matches/{world.a['match']}/review",
                                   json={"decision": "reject", "note": "ok \u202edesrever"}),
         sup, 422, "note holds the control character U+202E"),
        ("punctuation reason", Req("PUT", V + "/policy", json={"reason": ". . ."}),
         world.tokens["admin"], 422, "missing reason: "),
        # `true` was taken for a count of 1 (bb53).
        ("true for a count", Req("PUT", V + "/policy", json={"reason": "r", "reviewers": True}),
         world.tokens["admin"], 422, "reviewers: true or false is not a value of this field"),
        ("endless region", Req("POST", f"{V}/videos/{world.a['video']}/redactions",
                               content=region, headers={"Content-Type": "application/json"}),
         inv, 422, "end_s"),
        ("empty manifest", Req("POST", V + "/audit/check-live", json={"manifest": {}}), aud,
         422, "not the manifest of an audit export"),
        ("rows, no ends", Req("POST", V + "/audit/check-live", json={"manifest": {
            "kind": "audit", "rows": 49, "first_row": None, "last_row": None}}), aud, 422,
         "names no first_row and last_row"),
        ("no rows named", Req("POST", V + "/audit/check-live", json={"manifest": {
            "kind": "audit"}}), aud, 422, "names no first_row and last_row"),
        ("one end", Req("POST", V + "/audit/check-live", json={"manifest": {
            "kind": "audit", "first_row": {"id": 1, "hash": "x"}, "last_row": None}}), aud,
         422, "last_row must name a row"),
        ("fractional id", Req("POST", V + "/audit/check-live", json={"manifest": {
            "kind": "audit", "first_row": {"id": 1.9, "hash": "x"},
            "last_row": {"id": 1, "hash": "x"}}}), aud, 422, "first_row must name a row"),
        ("no id", Req("POST", V + "/audit/check-live", json={"manifest": {
            "kind": "audit", "first_row": {"hash": "x"}, "last_row": {"id": 1, "hash": "x"}}}),
         aud, 422, "first_row must name a row"),
        # `..` could be assigned and then never held, released or unassigned.
        # Full-width digits made a second case beside 2026/119, not that case.
        ("look-alike case", Req("POST", V + "/videos", params={
            "case": "\uff12\uff10\uff12\uff16/119", "officer": "O", "device": "D",
            "filename": "h.mp4"}, content=HAMILTON.read_bytes(),
            headers={"Content-Type": "application/octet-stream"}), world.tokens["clerk"], 422,
         "ASCII letters"),
        ("dot case", Req("POST", f"{V}/users/{world.names['clerk']}/cases",
                         json={"case": ".."}), sup, 422, "not a case number"),
        ("markup case", Req("POST", f"{V}/users/{world.names['clerk']}/cases",
                            json={"case": "<b>A</b>"}), sup, 422, "not a case number"),
    ]:
        r = world.send(req, token)
        assert says in str(_problem(r, status)["detail"]), (what, r.text[:300])
    with world.stack.ctx.db() as conn:
        assert conn.execute("SELECT count(*) AS n FROM subjects WHERE name IN ('mx-far', 'mx-past')"
                            ).fetchone()["n"] == 0
        assert conn.execute("SELECT count(*) AS n FROM case_assignments WHERE case_id IN"
                            " ('..', '<b>A</b>')").fetchone()["n"] == 0


def test_a_page_of_leads_or_persons_is_audited_with_that_pages_ids(world: World) -> None:
    """Each page used to record every lead the caller could see: listing N leads page by page
    wrote N^2 ids, and said leads were shown that were not."""
    inv = world.tokens["investigator"]
    for path, params, action, ids_of in (
            ("/matches", {"case": CASE_A}, "matches.list", lambda i: [i["match_id"]]),
            ("/persons", {"case": CASE_A, "purpose": "matrix: page"}, "persons",
             lambda i: i["track_ids"])):
        r = world.send(Req("GET", V + path, params={**params, "limit": "1", "offset": "1"}),
                       inv)
        assert r.status_code == 200, r.text
        [item] = r.json()["items"]
        with world.stack.ctx.db() as conn:
            row = conn.execute("SELECT details FROM audit_log WHERE action = %s"
                               " ORDER BY id DESC LIMIT 1", (action,)).fetchone()
        details = row["details"]
        total = details["count" if action == "matches.list" else "persons"]
        assert total >= 3, "the case has more than this page"
        assert details["offset"] == 1 and r.json()["next_offset"] == 2
        assert details["match_ids" if action == "matches.list" else "track_ids"] == \
            ids_of(item), details


def test_no_response_is_sniffed_and_no_api_answer_is_stored_by_a_cache(world: World) -> None:
    r = world.send(Req("POST", V + "/auth/login", json={
        "user": world.names["investigator"], "token": world.tokens["investigator"]}), None)
    assert r.status_code == 200 and "token" in r.json()
    assert r.headers["cache-control"] == "no-store"  # it carries a session token
    for path in (V + "/auth/me", "/healthz", "/", "/static/app.js"):
        r = world.send(Req("GET", path), world.tokens["investigator"])
        assert r.headers.get("x-content-type-options") == "nosniff", path
        if path.startswith("/api/"):
            assert r.headers["cache-control"] == "no-store", path


def test_one_account_holds_at_most_eight_progress_streams(world: World) -> None:
    """1,500 open progress streams of one account slowed every other user's requests (each
    polls the database through the server's threads)."""
    vid = world.a["video"]
    url = f"{world.url}{V}/videos/{vid}/events"

    def auth(role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.tokens[role]}"}

    with world.stack.ctx.db() as conn:  # a stream stays open while its video is not done
        conn.execute("UPDATE videos SET status = 'processing' WHERE id = %s", (vid,))
    try:
        with contextlib.ExitStack() as open_streams:
            for _ in range(8):
                s = open_streams.enter_context(world.http.stream("GET", url,
                                                                 headers=auth("supervisor")))
                assert s.status_code == 200
            ninth = world.http.get(url, headers=auth("supervisor"))
            assert "8 progress streams open" in str(_problem(ninth, 429)["detail"])
            assert ninth.headers["retry-after"] == "1"
            # Another account is not held back by that one.
            with world.http.stream("GET", url, headers=auth("admin")) as other:
                assert other.status_code == 200
        deadline = time.monotonic() + 10  # the server sees the closed streams at its next poll
        while True:
            with world.http.stream("GET", url, headers=auth("supervisor")) as again:
                if again.status_code == 200:
                    break
            assert time.monotonic() < deadline, "the closed streams were never counted out"
            time.sleep(0.5)
    finally:
        with world.stack.ctx.db() as conn:
            conn.execute("UPDATE videos SET status = 'done' WHERE id = %s", (vid,))


def test_a_body_over_its_limit_is_refused_413_before_it_is_read(world: World) -> None:
    """A 500-MB JSON body without a token took the server (which holds the audit and export
    keys) from 160 MB to 1.16 GB before its 401 (black-box round bb17). Bodies are bounded:
    2 MiB for JSON and the like, 256 MiB for a form of photos; a video upload by its own
    limit. A declared length over the limit is refused unread; a body that grows past it
    (chunked, or a length that lied) when it does."""
    url = f"{world.url}{V}/videos/{world.a['video']}/redactions"
    token = {"Authorization": f"Bearer {world.tokens['investigator']}"}
    big = b'{"style": "' + b"x" * (3 * 2**20) + b'"}'
    for headers in ({}, token):  # without a token, and with one
        r = world.http.post(url, content=big, headers={**headers,
                                                       "Content-Type": "application/json"})
        assert "over the limit of 2 MiB" in str(_problem(r, 413)["detail"])

    def chunks() -> Iterator[bytes]:  # no length declared: counted as it comes
        yield b'{"style": "'
        for _ in range(48):
            yield b"x" * 2**16
        yield b'"}'

    r = world.http.post(url, content=chunks(), headers={**token,
                                                        "Content-Type": "application/json"})
    assert "over the limit" in str(_problem(r, 413)["detail"])
    # A length that says 10 GB is refused at once, before a byte of the body is sent.
    with socket.create_connection((httpx.URL(world.url).host, httpx.URL(world.url).port),
                                  timeout=10) as s:
        s.sendall(f"POST {V}/videos/{world.a['video']}/redactions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  "Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
                  .encode())
        assert s.recv(200).startswith(b"HTTP/1.1 413")
    # Under the limits: a request as usual, and a form of photos larger than a JSON body.
    r = world.http.post(url, json={"style": "nope"}, headers=token)
    assert _problem(r, 422)
    r = world.http.post(f"{world.url}{V}/photos/faces", headers=token,
                        files={"photo": ("p.png", P06.read_bytes() + b"\0" * (3 * 2**20),
                                         "image/png")})
    assert r.status_code != 413, r.text
