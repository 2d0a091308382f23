"""Limits on how fast an account or a client may act: searches and enrolments per account and
hour (`search.max_per_hour`, counted in the database), and failed logins per name and client
address (`FailureLimiter`, in-process). Both refuse with RateLimitedError (HTTP 429, with
Retry-After)."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from bodycam.accounts import User
from bodycam.auth import UnauthenticatedError
from bodycam.config import Settings
from bodycam.db import Conn
from bodycam.errors import BodycamError


class RateLimitedError(BodycamError):
    """Too many failed authentications from one client or for one name, or too many searches
    and enrolments by one account (HTTP 429, with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def require_rate(conn: Conn, settings: Settings, by: User | str) -> None:
    """Refuse an account's search or enrolment past `search.max_per_hour` of them in the
    last hour (429, saying when the next one is allowed): each puts a face against the
    case's footage (an enrolment is matched at once), so a script must not run either
    without end. A tool in the server's own process (`by` a name) is not counted: it has
    the database already. Read again under the audit log's lock where the result is
    recorded, so requests sent at once cannot pass the limit together."""
    if not isinstance(by, User):
        return
    per_hour = settings.search.max_per_hour
    row = conn.execute(
        "SELECT count(*) AS n, ceil(extract(epoch FROM min(at) + interval '1 hour' - now()))"
        " AS wait_s FROM ((SELECT created_at AS at FROM searches WHERE actor = %(who)s"
        " AND created_at > now() - interval '1 hour') UNION ALL (SELECT created_at FROM"
        " subjects WHERE created_by = %(who)s AND created_at > now() - interval '1 hour')"
        # An enrolment refused for photos of two people compared them, and said how alike.
        " UNION ALL (SELECT at FROM audit_log WHERE action = 'refused' AND actor = %(who)s"
        " AND at > now() - interval '1 hour' AND details->>'attempted' = 'subjects.enroll'"
        " AND details ? 'photos_sha256')"
        " ORDER BY at DESC LIMIT %(n)s) recent", {"who": by.name, "n": per_hour}).fetchone()
    if row is not None and int(row["n"]) >= per_hour:
        wait = max(1, int(row["wait_s"] or 1))
        raise RateLimitedError(f"{by.name} has run {per_hour} searches and enrolments in the"
                               " last hour, the most allowed (search.max_per_hour): the next"
                               f" one in {wait} s", wait)


class FailureLimiter:
    """Sliding-window count of failed authentications per claimed name and per client address.

    A client address is blocked after `max_per_client` failures within `window_s`: its
    attempts are then answered 429 unless the caller's `vouch` (a look-up of the token, not
    audited) finds a valid one: made-up tokens from one address locked every user behind it
    (a proxy, a NAT, the embedded stack's loopback) out, valid tokens too (bb34). A name, after
    `max_per_name`, has its failed attempts answered 429 instead of 401, but a valid token
    claiming it is never refused: anyone who knew an account's name could lock its holder out
    with ten bad logins (bb33), and the name guards nothing a token guess needs (a token is
    looked up whatever name is claimed, or none). In-process: each server process keeps its
    own counts and they are lost on restart, so with N server processes an attacker gets N
    times the allowance; put a shared limiter (at the reverse proxy, or in Redis) in front of
    a multi-process deployment.
    """

    def __init__(self, max_per_name: int, max_per_client: int, window_s: float) -> None:
        self.limits = {"name": max_per_name, "client": max_per_client}
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(client: str | None, name: str | None) -> list[tuple[str, str]]:
        keys = [("client", client)] if client else []
        if name:
            keys.append(("name", name[:64]))
        return keys

    def _live(self, key: tuple[str, str], now: float) -> deque[float]:
        q = self._failures.setdefault(key, deque())
        while q and q[0] <= now - self.window_s:
            q.popleft()
        return q

    def reserve(self, client: str | None, name: str | None) -> Attempt:
        """Count an attempt as a failure before it is checked, and return it for `release`
        once it succeeds; RateLimitedError when the client has used up its failures. (Counted
        only after failing, 60 guesses sent at once were all checked against a limit of 10.)
        The attempt carries the name's refusal, for its answer should it fail."""
        now = time.monotonic()
        with self._lock:
            keys = self._keys(client, name)
            refusals = {}
            for key in keys:
                q = self._live(key, now)
                if len(q) >= self.limits[key[0]]:
                    wait = max(1, int(q[0] + self.window_s - now + 0.999))
                    who = "this client" if key[0] == "client" else key[1]
                    refusals[key[0]] = RateLimitedError(
                        f"too many failed logins for {who} ({len(q)} in "
                        f"{self.window_s:.0f} s): try again in {wait} s", wait)
            if "client" in refusals:
                raise refusals["client"]
            if len(self._failures) > 100_000:  # bound memory under a spray of names
                for k in [k for k, q in self._failures.items()
                          if not q or q[-1] <= now - self.window_s]:
                    del self._failures[k]
            counted = [k for k in keys if k[0] not in refusals]  # a full name's stays full
            for key in counted:
                self._live(key, now).append(now)
        return Attempt(now, tuple(counted), refusals.get("name"))

    def release(self, attempt: Attempt) -> None:
        """Forget a reserved attempt that did not fail."""
        with self._lock:
            for key in attempt.keys:
                q = self._failures.get(key)
                if q is not None and attempt.stamp in q:
                    q.remove(attempt.stamp)
                    if not q:
                        del self._failures[key]

    @contextmanager
    def attempt(self, client: str | None, name: str | None, counted: bool = True,
                vouch: Callable[[], bool] | None = None) -> Iterator[None]:
        """One authentication checked inside: refused (429) before it is checked when the
        client has used up its failures, unless `vouch()` says its token is valid (then it
        is checked, and counted nowhere); a failure (UnauthenticatedError) stays counted when
        `counted`, and is answered 429 when the name had used up its failures; anything
        else is forgotten."""
        try:
            attempt = self.reserve(client, name)
        except RateLimitedError:
            if vouch is None or not vouch():
                raise
            yield  # a valid token from a blocked address: served
            return
        try:
            yield
        except UnauthenticatedError:
            if not counted:
                self.release(attempt)
            elif attempt.name_refusal is not None:
                raise attempt.name_refusal from None
            raise
        except BaseException:
            self.release(attempt)
            raise
        self.release(attempt)


@dataclass(frozen=True)
class Attempt:
    """A reserved authentication: its stamp, the keys it was counted under, and the name's
    refusal when the name had used up its failures."""

    stamp: float
    keys: tuple[tuple[str, str], ...]
    name_refusal: RateLimitedError | None
