"""Database access: connections with pgvector registered, and ordered schema migrations."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from importlib import resources
from typing import Any

import psycopg
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.rows import dict_row

from bodycam.errors import TransientError

Conn = psycopg.Connection[dict[str, Any]]


def uid(value: object) -> uuid.UUID | None:
    """An id as a uuid query parameter, so that `WHERE id = %s` uses the uuid indexes
    (`id::text = %s` cannot). Text that is not a uuid becomes None, which matches no row:
    an unknown or malformed id still reads as not found, never as a database error."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value).strip())
    except ValueError:
        return None


def uids(values: Iterable[object]) -> list[uuid.UUID]:
    """Ids as a uuid[] parameter for `id = ANY(%s)`; malformed ones are left out."""
    return [u for u in map(uid, values) if u is not None]


def _open(url: str) -> Conn:
    """A new connection with dict rows and the vector type registered, idle."""
    try:
        # tcp_user_timeout: data the server does not acknowledge within 10 s (a host cut off,
        # no reset) fails the connection instead of blocking (a pooled one's check included).
        conn = psycopg.connect(url, row_factory=dict_row, connect_timeout=10,
                               tcp_user_timeout=10_000)
    except psycopg.OperationalError as exc:
        raise unreachable(exc) from exc
    try:
        register_vector(conn)
        conn.commit()
    except psycopg.ProgrammingError:
        conn.rollback()  # before the first migration the extension does not exist yet
    return conn


def unreachable(exc: psycopg.OperationalError) -> TransientError:
    """The error for a database that refused or dropped a new connection (its reason can
    name the server, never a password; the caller adds what to check)."""
    return TransientError(f"database unreachable: {exc.__class__.__name__}")


def autocommit(url: str) -> Conn:
    """A connection outside any transaction, each statement its own: for a session's
    advisory lock held for long (an open snapshot would hold back vacuum). Raises
    TransientError when the database cannot be reached."""
    conn = _open(url)
    conn.autocommit = True
    return conn


class Pool:
    """Idle connections kept for reuse by a long-running process (the API server).

    A new connection costs a TCP handshake, a SCRAM login, a backend process and a type
    lookup: several milliseconds, more than a case-bound search's query. A connection goes
    back only when it is idle and healthy (no transaction, not broken); one taken out is
    checked with an empty query first, so a database restart costs no request: dead ones
    are dropped and, with none left, a new connection is made exactly as without the pool
    (an unreachable database still fails at once with TransientError).
    """

    def __init__(self, url: str, max_idle: int) -> None:
        self.url, self.max_idle = url, max_idle
        self._idle: list[Conn] = []
        self._lock = threading.Lock()

    def take(self) -> Conn:
        """An idle live connection, or a new one."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return _open(self.url)
            try:
                conn.autocommit = True
                conn.execute("")
                conn.autocommit = False
                return conn
            except psycopg.Error:
                conn.close()

    def give(self, conn: Conn) -> None:
        """Keep a connection for reuse if it is idle and healthy, else close it."""
        healthy = (not conn.closed
                   and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE)
        with self._lock:
            if healthy and len(self._idle) < self.max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every idle connection."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


@contextmanager
def connect(url: str, after_commit: Callable[[Conn], None] | None = None,
            pool: Pool | None = None, after_rollback: Callable[[Conn], None] | None = None
            ) -> Iterator[Conn]:
    """A connection with dict rows and the vector type registered: one transaction, committed
    on success and rolled back on error; from `pool` when given, and given back after.

    after_commit runs once the transaction has committed (e.g. to anchor the audit log's
    head outside the database), after_rollback once it was rolled back (to forget what it
    would have anchored: a pooled connection lives on). Raises TransientError when the
    database cannot be reached.
    """
    conn = pool.take() if pool is not None else _open(url)
    try:
        try:
            yield conn
            conn.commit()
        except BaseException:
            with suppress(psycopg.Error):  # a broken connection: the error above tells more
                conn.rollback()
            if after_rollback is not None:
                after_rollback(conn)
            raise
        if after_commit is not None:
            after_commit(conn)
    finally:
        if pool is not None:
            pool.give(conn)
        else:
            conn.close()


def _migration_files() -> list[tuple[int, str, str]]:
    root = resources.files("bodycam.db") / "migrations"
    out = []
    for entry in root.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text()))
    return sorted(out)


APP_ROLE = "bodycam_app"  # the server's database role
WORKER_ROLE = "bodycam_worker"  # the workers' and the scheduler's: less again (_grant_app_role)


def migrate(admin_url: str, passwords: dict[str, str] | None = None) -> list[str]:
    """Apply pending migrations in order, under an advisory lock; returns the names applied.

    Then grant the application's roles (APP_ROLE, WORKER_ROLE) what their processes need,
    again on every run. A role given a password in `passwords` is created if missing (the
    embedded stack's); one without is granted only if it exists (a deployment's database
    administrator made it: infra/postgres/init.sql).
    """
    applied: list[str] = []
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:  # a traceback of 60 lines (bb53)
        raise unreachable(exc) from exc
    with admin as conn:
        conn.execute("SELECT pg_advisory_lock(727001)")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version int PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations")}
            for version, name, text in _migration_files():
                if version in done:
                    continue
                with conn.transaction():
                    conn.execute(text)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (version, name),
                    )
                applied.append(name)
            for role, worker in ((APP_ROLE, False), (WORKER_ROLE, True)):
                _grant_app_role(conn, role, (passwords or {}).get(role), worker)
        finally:
            conn.execute("SELECT pg_advisory_unlock(727001)")
    return applied


def _grant_app_role(conn: psycopg.Connection[tuple[object, ...]], name: str,
                    password: str | None, worker: bool) -> None:
    """Grant a login role of the application what it needs (created, or its password set,
    when `password` is given; left alone if it does not exist and none is): rows of every
    table, the audit log append-only, the account tables through the audited functions only.
    The workers' role (`worker`) has no access at all to the account tables and cannot run
    the account functions (a worker never reads an account or a token), only reads what the
    server alone decides (WORKER_READ_ONLY), and writes no more than its job on
    WORKER_LIMITED: a worker host taken over can neither make an account or a token nor
    change the policy, a threshold, a review, a search record, a hold, a watchlist entry or a
    decision on a lead. Settings a role gave itself (`ALTER ROLE ... SET`) are reset."""
    role = sql.Identifier(name)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    if password is None and not exists:
        return
    if password is not None:
        verb = "ALTER" if exists else "CREATE"
        conn.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
    conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(role))
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
        sql.Identifier(conn.info.dbname), role))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(role))
    conn.execute(sql.SQL(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}").format(role))
    conn.execute(
        sql.SQL("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}").format(role))
    conn.execute(sql.SQL("REVOKE ALL ON schema_migrations FROM {}").format(role))
    conn.execute(sql.SQL("GRANT SELECT ON schema_migrations TO {}").format(role))
    # The audit log is append-only for the application: no UPDATE, DELETE or TRUNCATE.
    if conn.execute("SELECT to_regclass('public.audit_log')").fetchone() != (None,):
        conn.execute(sql.SQL("REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM {}").format(role))
    # Accounts, case assignments and tokens change only through the audited functions of
    # migration 011 (which journal every change in account_changes).
    revoked = "ALL" if worker else "INSERT, UPDATE, DELETE, TRUNCATE"
    for table in ACCOUNT_TABLES:
        if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone() != (None,):
            conn.execute(sql.SQL("REVOKE " + revoked + " ON {} FROM {}")
                         .format(sql.Identifier(table), role))
    if worker:
        _limit_worker(conn, role)
    for signature in ACCOUNT_FUNCTIONS:
        name = signature.split("(", 1)[0]
        if conn.execute("SELECT 1 FROM pg_proc WHERE proname = %s", (name,)).fetchone():
            verb = "REVOKE EXECUTE ON FUNCTION {} FROM {}" if worker else \
                "GRANT EXECUTE ON FUNCTION {} TO {}"
            conn.execute(sql.SQL(verb).format(sql.SQL(signature), role))


def _limit_worker(conn: psycopg.Connection[tuple[object, ...]], role: sql.Identifier) -> None:
    """Take from the workers' role what the server alone decides (WORKER_READ_ONLY) and all
    but its job's reach on WORKER_LIMITED."""
    for table in (*WORKER_READ_ONLY, *WORKER_LIMITED):
        if conn.execute("SELECT to_regclass(%s)", (f"public.{table}",)).fetchone() == (None,):
            continue
        name = sql.Identifier(table)
        conn.execute(sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON {} FROM {}")
                     .format(name, role))
        privileges, columns = WORKER_LIMITED.get(table, ("", ()))
        if privileges:
            conn.execute(sql.SQL("GRANT " + privileges + " ON {} TO {}").format(name, role))
        if columns:
            conn.execute(sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)), name, role))


ACCOUNT_TABLES = ("users", "case_assignments", "api_tokens", "account_changes")
# What the server alone writes and a worker only reads.
WORKER_READ_ONLY = ("policy", "thresholds", "reviews", "searches", "redactions",
                    "redaction_plans", "subject_photos")
# Where a worker needs some writes, these only (privileges, columns it may update):
WORKER_LIMITED = {
    # retention retires lapsed entries (never adds one) and deletes their templates
    "subjects": ("", ("removed_at", "removed_by")),
    "subject_faces": ("DELETE", ()),
    # matching makes leads, retention ends unreviewed ones (migration 019 holds the statuses
    # to pending and withdrawn)
    "matches": ("INSERT, DELETE", ("status", "decided_at")),
    # a purge locks holds and releases out while it runs (LOCK ... SHARE needs MAINTAIN,
    # PostgreSQL 17 on: the embedded 18 and compose's 17)
    "held_cases": ("MAINTAIN", ()),
    # ingest from incoming/ records videos and processing updates them; none is ever deleted
    "videos": ("INSERT, UPDATE", ()),
    # a worker claims a redaction job, renews its lease and ends it computed or failed
    # (migration 020 holds the states); the server asks for it and records it
    "redaction_jobs": ("", ("state", "attempts", "lease_owner", "lease_token", "lease_until",
                            "progress", "error", "result", "updated_at", "unsent")),
}
ACCOUNT_FUNCTIONS = (
    "bodycam_user_create(bigint, text, text[], text)",
    "bodycam_user_set_roles(bigint, text, text[])",
    "bodycam_user_disable(bigint, text)",
    "bodycam_case_assign(bigint, text, text, text)",
    "bodycam_case_unassign(bigint, text, text)",
    "bodycam_token_issue(bigint, uuid, text, text, text, timestamptz, text)",
    "bodycam_token_revoke(bigint, uuid)",
)
