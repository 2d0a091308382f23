"""Two requests at once: one change wins and is audited once, the other gets the answer it
would get afterwards; a search or an enrolment never completes after its right was taken."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import quote

import httpx
import pytest

from bodycam import accounts, audit, auth, subjects
from bodycam.accounts import User
from bodycam.db import Conn
from tests.conftest import HAMILTON, TESTDATA, StackHandle, serve_with

P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"
V = "/api/v1"
CASE = "T-RACE"


class Api:
    """The server, called as one account or another."""

    def __init__(self, url: str, tokens: dict[str, str]) -> None:
        self.url, self.tokens = url, tokens

    def call(self, who: str, method: str, path: str, **kw: object) -> httpx.Response:
        return httpx.request(method, self.url + V + path, timeout=300,  # type: ignore[arg-type]
                             headers={"Authorization": f"Bearer {self.tokens[who]}"}, **kw)

    def add(self, who: str, *roles: str, case: str | None = None) -> str:
        """A new account with a unique name; returns the name (its token kept)."""
        name = f"race-{who}-{secrets.token_hex(3)}"
        r = self.call("op", "POST", "/users", json={"name": name, "roles": list(roles)})
        assert r.status_code == 201, r.text
        self.tokens[name] = str(r.json()["token"])
        if case is not None:
            r = self.call("op", "POST", f"/users/{name}/cases", json={"case": case})
            assert r.status_code == 200, r.text
        return name

    def enroll(self, who: str, case: str = CASE) -> httpx.Response:
        return self.call(who, "POST", "/subjects", data={"name": "P06", "case": case,
                                                         "reason": "race test"},
                         files={"photo": ("p06.png", P06.read_bytes(), "image/png")})

    def search(self, who: str, case: str = CASE, subject: str | None = None
               ) -> httpx.Response:
        data = {"case": case, "purpose": "race test"}
        if subject is not None:
            return self.call(who, "POST", "/search", data={**data, "subject": subject})
        return self.call(who, "POST", "/search", data=data,
                         files={"photo": ("p06.png", P06.read_bytes(), "image/png")})


@pytest.fixture(scope="module")
def api(stack: StackHandle, api_url: str, operator_token: str) -> Api:
    return Api(api_url, {"op": operator_token})


def _waiting(stack: StackHandle) -> int:
    """Backends waiting for a lock (the audit log's, or a row another one has written)."""
    with stack.ctx.db() as conn:
        row = conn.execute("SELECT count(DISTINCT pid) AS n FROM pg_locks"
                           " WHERE NOT granted").fetchone()
    return int(row["n"]) if row else 0


@contextmanager
def window(stack: StackHandle, act: Callable[[Conn], object] | None = None
           ) -> Iterator[Callable[[int], None]]:
    """A transaction holding the audit log's lock (after `act`, an audited change made in it)
    until the block ends, then committed: requests started inside the block run up to their
    first wait for it. Yields `wait(n)`: until n backends wait."""
    def wait(n: int) -> None:
        deadline = time.monotonic() + 120
        while _waiting(stack) < n:
            assert time.monotonic() < deadline, f"{n} requests did not reach a lock"
            time.sleep(0.1)
        time.sleep(0.3)  # nothing else to wait for: they stay waiting

    with stack.ctx.db() as conn:
        audit.lock(conn)
        if act is not None:
            act(conn)
        yield wait


class _Call(threading.Thread):
    """A request running in a thread."""

    def __init__(self, call: Callable[[], httpx.Response]) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.response: httpx.Response | None = None

    def run(self) -> None:
        self.response = self.call()


def _start(call: Callable[[], httpx.Response]) -> _Call:
    t = _Call(call)
    t.start()
    return t


def each(who: list[str], call: Callable[[str], httpx.Response]) -> list[_Call]:
    """The same request by each account, all started at once."""
    return [_start(lambda w=w: call(w)) for w in who]  # type: ignore[misc]


def answers(threads: list[_Call]) -> list[tuple[int, str]]:
    """(status, problem detail) of each finished request, sorted."""
    out = []
    for t in threads:
        t.join(300)
        assert t.response is not None, "the request finished"
        r = t.response
        out.append((r.status_code, r.json().get("detail", "") if r.status_code >= 300 else ""))
    return sorted(out)


def rows(stack: StackHandle, action: str, key: str, value: str) -> list[dict[str, object]]:
    with stack.ctx.db() as conn:
        found = conn.execute("SELECT id, actor, details FROM audit_log WHERE action = %s"
                             " AND details ->> %s = %s ORDER BY id",
                             (action, key, value)).fetchall()
    return [dict(r) for r in found]


# --- two changes at once: one winner --------------------------------------------------------

def test_the_same_account_created_twice_at_once_is_created_once_and_the_other_told_so(
        stack: StackHandle, api: Api) -> None:
    name = f"race-twin-{secrets.token_hex(3)}"
    body = {"name": name, "roles": ["clerk"]}
    with window(stack) as wait:
        calls = each(["op", "op"], lambda w: api.call(w, "POST", "/users", json=body))
        wait(2)
    got = answers(calls)
    assert got == [(201, ""), (409, f"user {name} already exists")], got
    assert len(rows(stack, "user.create", "user", name)) == 1
    again = api.call("op", "POST", "/users", json=body)
    assert again.status_code == 409 and again.json()["detail"] == f"user {name} already exists"
    # Nor in other letter case: `Operator` beside `operator` read as one account in reviews
    # and the audit log (bb42).
    upper = api.call("op", "POST", "/users", json={**body, "name": name.upper()})
    assert upper.status_code == 409 and upper.json()["detail"].startswith(
        f"user {name.upper()} would read as user {name}"), upper.text
    assert rows(stack, "user.create", "user", name.upper()) == []


def test_two_unassignments_at_once_remove_and_audit_once(stack: StackHandle, api: Api) -> None:
    inv = api.add("unassign", "investigator", case=CASE)
    admins = [api.add(f"admin{i}", "admin") for i in (1, 2)]
    path = f"/users/{inv}/cases/{quote(CASE, safe='')}"
    with window(stack) as wait:
        calls = each(admins, lambda a: api.call(a, "DELETE", path))
        wait(2)
    got = answers(calls)
    assert got == [(200, ""), (404, f"user {inv} is not assigned to case {CASE}")], got
    [row] = rows(stack, "case.unassign", "user", inv)
    assert row["actor"] in admins
    assert api.call(admins[0], "DELETE", path).status_code == 404
    assert len(rows(stack, "case.unassign", "user", inv)) == 1


def test_an_assignment_that_exists_is_refused_and_not_audited_again(
        stack: StackHandle, api: Api) -> None:
    inv = api.add("assign", "investigator", case=CASE)
    r = api.call("op", "POST", f"/users/{inv}/cases", json={"case": CASE})
    assert r.status_code == 409 and r.json()["detail"] == \
        f"user {inv} is already assigned to case {CASE}", r.text
    assert len(rows(stack, "case.assign", "user", inv)) == 1
    other = api.call("op", "POST", f"/users/{inv}/cases", json={"case": CASE + "-2"})
    assert other.status_code == 200, "another case is assigned"


def test_a_case_is_held_and_released_once_and_a_second_hold_names_the_first(
        stack: StackHandle, api: Api) -> None:
    case = f"T-RACE-HOLD-{secrets.token_hex(2)}"
    sups = [api.add(f"sup{i}", "supervisor") for i in (1, 2)]
    hold = f"/cases/{case}/hold"
    with window(stack) as wait:
        calls = each(sups, lambda s: api.call(s, "POST", hold, json={"reason": f"order {s}"}))
        wait(2)
    got = answers(calls)
    [held] = rows(stack, "case.hold", "case", case)
    first = str(held["actor"])
    assert got == [(200, ""), (409, f"case {case} is already on hold (by {first}, reason "
                                    f"'order {first}')")], got
    assert held["details"] == {"case": case, "reason": f"order {first}"}  # type: ignore[comparison-overlap]
    listed = {c["case"]: c for c in api.call("op", "GET", "/cases").json()["items"]}
    assert listed[case]["held_by"] == first and listed[case]["hold_reason"] == f"order {first}"
    # A hold and a release of a case in the other state say so and leave no audit row.
    again = api.call(sups[0], "POST", hold, json={"reason": "another order"})
    assert again.status_code == 409 and f"already on hold (by {first}" in again.json()["detail"]
    release = f"/cases/{case}/release"
    with window(stack) as wait:
        calls = each(sups, lambda s: api.call(s, "POST", release, json={"reason": "over"}))
        wait(2)
    assert answers(calls) == [(200, ""), (409, f"case {case} is not on hold")]
    never = api.call("op", "POST", "/cases/T-RACE-NEVER-HELD/release", json={"reason": "x"})
    assert never.status_code == 409 and never.json()["detail"] == \
        "case T-RACE-NEVER-HELD is not on hold"
    assert len(rows(stack, "case.hold", "case", case)) == 1
    assert len(rows(stack, "case.release", "case", case)) == 1
    assert not rows(stack, "case.release", "case", "T-RACE-NEVER-HELD")


def test_a_subject_removed_twice_at_once_is_removed_and_audited_once(
        stack: StackHandle, api: Api) -> None:
    inv = api.add("remove", "investigator", case=CASE)
    sup = api.add("remove-sup", "supervisor")
    r = api.enroll(inv)
    assert r.status_code == 201, r.text
    sid = str(r.json()["subject_id"])
    with window(stack) as wait:
        calls = each([inv, sup], lambda w: api.call(w, "DELETE", f"/subjects/{sid}"))
        wait(2)
    assert answers(calls) == [(200, ""), (404, f"no active subject {sid}")]
    assert len(rows(stack, "subject.remove", "subject_id", sid)) == 1
    assert api.call(sup, "DELETE", f"/subjects/{sid}").status_code == 404


@pytest.fixture
def approval_required(stack: StackHandle, api: Api) -> Iterator[None]:
    before = api.call("op", "GET", "/policy").json()
    r = api.call("op", "PUT", "/policy", json={"profile": "identify-eu", "reason": "race test"})
    assert r.status_code == 200, r.text
    yield
    back = {"profile": before["profile"], "reason": "race test over"}
    if before["reviewers_explicit"]:
        back["reviewers"] = before["reviewers_required"]
    r = api.call("op", "PUT", "/policy", json=back)
    assert r.status_code == 200, r.text


def test_two_supervisors_approving_at_once_record_one_approval_by_its_approver(
        stack: StackHandle, api: Api, approval_required: None) -> None:
    inv = api.add("approve", "investigator", case=CASE)
    sups = [api.add(f"approver{i}", "supervisor") for i in (1, 2)]
    r = api.enroll(inv)
    assert r.status_code == 201, r.text
    sid = str(r.json()["subject_id"])
    with window(stack) as wait:
        calls = each(sups, lambda s: api.call(s, "POST", f"/subjects/{sid}/approve"))
        wait(2)
    got = answers(calls)
    assert [c for c, _ in got] == [200, 409] and \
        got[1][1] == f"subject {sid} is already approved", got
    [row] = rows(stack, "subject.approve", "subject_id", sid)
    with stack.ctx.db() as conn:
        got = conn.execute("SELECT approved_by FROM subjects WHERE id = %s", (sid,)).fetchone()
    assert got is not None and got["approved_by"] == row["actor"]


# --- a right taken while a search or an enrolment runs --------------------------------------

def _recorded(stack: StackHandle, actor: str) -> tuple[int, list[str]]:
    with stack.ctx.db() as conn:
        n = conn.execute("SELECT count(*) AS n FROM searches WHERE actor = %s",
                         (actor,)).fetchone()
        acts = [str(r["action"]) for r in conn.execute(
            "SELECT action FROM audit_log WHERE actor = %s ORDER BY id", (actor,)).fetchall()]
    return int(n["n"]) if n else 0, acts


def test_a_search_whose_account_is_disabled_meanwhile_is_refused_and_stores_nothing(
        stack: StackHandle, api: Api) -> None:
    inv = api.add("search-disabled", "investigator", case=CASE)
    key = stack.ctx.audit_key
    with window(stack, lambda c: accounts.disable_user(c, key, inv, "race-admin")) as wait:
        call = _start(lambda: api.search(inv))
        wait(1)
    assert answers([call]) == [(401, f"account {inv} is disabled")]
    # Refused, and audited as every refusal is (it left no row until bb19).
    assert _recorded(stack, inv) == (0, ["refused"])


@pytest.mark.parametrize("what", ["search", "enrol"])
def test_a_search_or_enrolment_whose_token_is_revoked_meanwhile_is_refused_and_stores_nothing(
        stack: StackHandle, api: Api, what: str) -> None:
    # A logout while the faces were worked on was not read again: the result was stored and
    # answered to a token no longer valid.
    inv = api.add(f"{what}-logout", "investigator", case=CASE)
    with stack.ctx.db() as conn:
        [tid] = [str(r["id"]) for r in conn.execute(
            "SELECT id FROM api_tokens WHERE user_name = %s", (inv,)).fetchall()]
    key = stack.ctx.audit_key
    with window(stack, lambda c: auth.revoke(c, key, tid, inv)) as wait:
        call = _start(lambda: api.search(inv) if what == "search" else api.enroll(inv))
        wait(1)
    assert answers([call]) == [(401, f"the token of {inv} was revoked or expired while the"
                                     " request ran: log in again")]
    assert _recorded(stack, inv) == (0, ["logout", "refused"])
    with stack.ctx.db() as conn:
        assert conn.execute("SELECT 1 FROM subjects WHERE created_by = %s",
                            (inv,)).fetchone() is None


@pytest.mark.parametrize("what", ["search", "enrol"])
def test_a_search_or_enrolment_whose_case_is_taken_away_meanwhile_is_refused_and_stores_nothing(
        stack: StackHandle, api: Api, what: str) -> None:
    inv = api.add(f"{what}-unassigned", "investigator", case=CASE)
    key = stack.ctx.audit_key
    with window(stack, lambda c: accounts.unassign_case(c, key, inv, CASE, "race-admin")) \
            as wait:
        call = _start(lambda: api.search(inv) if what == "search" else api.enroll(inv))
        wait(1)
    assert answers([call]) == [(403, f"refused: {inv} is not assigned to case {CASE}")]
    assert _recorded(stack, inv) == (0, ["refused"])
    with stack.ctx.db() as conn:
        assert conn.execute("SELECT 1 FROM subjects WHERE created_by = %s",
                            (inv,)).fetchone() is None


def test_a_search_by_a_subject_removed_meanwhile_answers_as_after_the_removal(
        stack: StackHandle, api: Api) -> None:
    inv = api.add("search-removed", "investigator", case=CASE)
    r = api.enroll(inv)
    assert r.status_code == 201, r.text
    sid = str(r.json()["subject_id"])
    assert api.search(inv, subject=sid).status_code == 200, "searchable while on the list"
    sup = User(api.add("search-removed-sup", "supervisor"), ("supervisor",))
    key = stack.ctx.audit_key
    with window(stack, lambda c: subjects.remove_subject(c, key, sid, sup)) as wait:
        call = _start(lambda: api.search(inv, subject=sid))
        wait(1)
    assert answers([call]) == [(404, f"no active subject {sid}")]
    assert _recorded(stack, inv)[0] == 1, "only the search made before the removal"



def _a_pending_lead(stack: StackHandle, api: Api, processed: object, who: str, case: str
                    ) -> tuple[str, str]:
    """p06 enrolled by a new investigator in a case where the Hamilton clip is processed:
    (subject id, one of its pending matches)."""
    processed(HAMILTON, case)  # type: ignore[operator]
    r = api.enroll(api.add(f"{who}-enrol", "investigator", case=case), case)
    assert r.status_code == 201 and r.json()["pending_matches"], r.text
    sid = str(r.json()["subject_id"])
    with stack.ctx.db() as conn:
        mid = str(conn.execute("SELECT id FROM matches WHERE subject_id = %s LIMIT 1",
                               (sid,)).fetchone()["id"])
    return sid, mid


def test_a_review_racing_the_removal_of_its_entry_answers_as_after_it(
        stack: StackHandle, api: Api, processed: object) -> None:
    """A review locked the match's row and then waited for the audit log's lock, which the
    removal held while it waited for that row: a deadlock, a 500 after a second."""
    case = "T-RACE-REVIEW"
    sid, mid = _a_pending_lead(stack, api, processed, "review", case)
    other = api.add("review-other", "investigator", case=case)
    sup = User(api.add("review-sup", "supervisor"), ("supervisor",))
    with stack.ctx.db() as conn:
        audit.lock(conn)
        call = _start(lambda: api.call(other, "POST", f"/matches/{mid}/review",
                                       json={"decision": "confirm", "note": "race test"}))
        deadline = time.monotonic() + 120
        while _waiting(stack) < 1:
            assert time.monotonic() < deadline, "the review did not reach a lock"
            time.sleep(0.1)
        time.sleep(0.3)
        subjects.remove_subject(conn, stack.ctx.audit_key, sid, sup)  # deletes its leads
    assert answers([call]) == [(404, f"no match {mid}")]
    assert not rows(stack, "review", "match_id", mid)


@pytest.mark.parametrize("what", ["original", "thumbnail", "photo"])
def test_a_read_of_evidence_whose_case_is_taken_meanwhile_is_refused_and_not_recorded(
        stack: StackHandle, api: Api, processed: object, what: str) -> None:
    """A read of an original, a thumbnail or an enrolment photo checked the account when the
    request began: taken off the case before the read was recorded, it was still served and
    recorded after the unassignment (bb27 asked). It is read again where it is recorded."""
    case = "T-RACE-READ"
    sid, mid = _a_pending_lead(stack, api, processed, what, case)
    with stack.ctx.db() as conn:
        m = conn.execute("SELECT video_id::text AS v, track_id::text AS t FROM matches"
                         " WHERE id = %s", (mid,)).fetchone()
    who = api.add(f"{what}-reader", "investigator", case=case)
    path, action = {"original": (f"/videos/{m['v']}/original", "video.original"),
                    "thumbnail": (f"/tracks/{m['t']}/thumbnail", "track.thumbnail"),
                    "photo": (f"/subjects/{sid}/photo", "subject.photo")}[what]
    assert api.call(who, "GET", path).status_code == 200  # allowed before
    key = stack.ctx.audit_key
    with window(stack, lambda c: accounts.unassign_case(c, key, who, case, "admin")) as wait:
        call = _start(lambda: api.call(who, "GET", path))
        wait(1)
    assert answers([call]) == [(403, f"refused: {who} is not assigned to case {case}")]
    assert len([r for r in rows(stack, "refused", "attempted", action)
                if r["actor"] == who]) == 1
    with stack.ctx.db() as conn:
        reads = conn.execute("SELECT count(*) AS n FROM audit_log WHERE actor = %s AND action"
                             " = %s", (who, action)).fetchone()["n"]
    assert reads == 1, "only the read made before the unassignment is on record"


@pytest.mark.parametrize("what", ["review", "remove", "export"])
def test_a_review_removal_or_export_whose_right_is_taken_meanwhile_is_refused_and_not_done(
        stack: StackHandle, api: Api, processed: object, what: str) -> None:
    """A review, a removal of a watchlist entry and an audit export read the account before
    the audit log's lock and not again: taken off the case (or disabled) meanwhile, the
    action was recorded after that (bb19: 2 of 7 reviews, 3 of 7 removals, 4 of 6 exports).
    They read it again under the lock, as a search does."""
    case = "T-RACE-REVIEW"
    sid, mid = _a_pending_lead(stack, api, processed, what, case)
    key = stack.ctx.audit_key
    if what == "export":
        who = api.add("export-aud", "auditor")
        expected = (401, f"account {who} is disabled")
    else:
        who = api.add(f"{what}-other", "investigator", case=case)
        expected = (403, f"refused: {who} is not assigned to case {case}")

    def take(c: Conn) -> object:
        if what == "export":
            return accounts.disable_user(c, key, who, "admin")
        return accounts.unassign_case(c, key, who, case, "admin")

    def ask() -> httpx.Response:
        if what == "export":
            return api.call(who, "POST", "/exports/audit", json={"format": "jsonl"})
        if what == "review":
            return api.call(who, "POST", f"/matches/{mid}/review",
                            json={"decision": "reject", "note": "race test"})
        return api.call(who, "DELETE", f"/subjects/{sid}")

    with window(stack, take) as wait:
        call = _start(ask)
        wait(1)
    assert answers([call]) == [expected]
    refusals = [r for r in rows(stack, "refused", "attempted", {
        "review": "review", "remove": "subjects.remove", "export": "audit.export"}[what])
        if r["actor"] == who]
    assert len(refusals) == 1, refusals
    with stack.ctx.db() as conn:
        done = conn.execute("SELECT count(*) AS n FROM audit_log WHERE actor = %s AND action"
                            " IN ('review', 'subject.remove', 'export')", (who,)).fetchone()
        assert done["n"] == 0
        state = conn.execute("SELECT m.status, s.removed_at FROM matches m JOIN subjects s"
                             " ON s.id = m.subject_id WHERE m.id = %s", (mid,)).fetchone()
    assert (state["status"], state["removed_at"]) == ("pending", None)


def test_an_accounts_searches_and_enrolments_past_its_hourly_number_are_refused_even_at_once(
        stack: StackHandle, api: Api) -> None:
    """Searches were audited, never limited: a script could run one account's searches one
    after another without end. Past `search.max_per_hour` a search is a 429 with Retry-After,
    audited with its case; four sent at once with two left run two (each counted where it is
    recorded, under the audit log's lock); an enrolment, matched against the footage at once,
    counts and is refused as well; another account is not held back."""
    inv = api.add("rate", "investigator", case=CASE)
    other = api.add("rate-other", "investigator", case=CASE)
    with serve_with(stack, {"BODYCAM_SEARCH__MAX_PER_HOUR": "3"}) as env:
        limited = Api(env["BODYCAM_URL"], api.tokens)
        assert limited.search(inv).status_code == 200
        with window(stack) as wait:
            calls = [_start(lambda: limited.search(inv)) for _ in range(4)]
            wait(4)
        told = f"{inv} has run 3 searches and enrolments in the last hour, the most allowed"
        got = answers(calls)
        assert [s for s, _ in got] == [200, 200, 429, 429], got
        assert all(told in d for s, d in got if s == 429), got
        late = limited.search(inv)  # refused before the photo is looked at
        assert late.status_code == 429 and told in late.json()["detail"], late.text
        assert 1 <= int(late.headers["retry-after"]) <= 3600, late.headers
        enrolled = limited.enroll(inv)  # it would list where the person appears
        assert enrolled.status_code == 429 and told in enrolled.json()["detail"], enrolled.text
        assert limited.search(other).status_code == 200
    with stack.ctx.db() as conn:
        ran = conn.execute("SELECT count(*) AS n FROM searches WHERE actor = %s",
                           (inv,)).fetchone()["n"]
        refused = conn.execute("SELECT count(*) AS n FROM audit_log WHERE action = 'refused'"
                               " AND actor = %s AND details ->> 'case' = %s",
                               (inv, CASE)).fetchone()["n"]
        subjects_made = conn.execute("SELECT count(*) AS n FROM subjects WHERE created_by ="
                                     " %s", (inv,)).fetchone()["n"]
    assert (ran, refused, subjects_made) == (3, 4, 0)
