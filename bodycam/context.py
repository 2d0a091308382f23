"""The resolved runtime of one process: settings, service locations, store, database, user."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import psycopg

from bodycam import jobs, queue
from bodycam.case_vectors import CaseVectors
from bodycam.config import Settings, get_settings
from bodycam.db import Conn, Pool, connect
from bodycam.errors import ConfigError, TransientError
from bodycam.services import Services, resolve
from bodycam.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class Context:
    """What the edges (CLI, API, workers) hand to the library."""

    settings: Settings
    services: Services
    _store: ObjectStore | None = field(default=None, repr=False)
    pool: Pool | None = field(default=None, repr=False)  # a long-running server's connections
    vectors: CaseVectors | None = field(default=None, repr=False)  # the server's, see shared()

    @classmethod
    def load(cls, settings: Settings | None = None) -> Context:
        """Resolve services for these settings (default: the process's settings)."""
        s = settings or get_settings()
        return cls(settings=s, services=resolve(s))

    @classmethod
    def server(cls, settings: Settings | None = None) -> Context:
        """What a long-running API server holds: kept database connections
        (server.db_idle_connections) and the checked copy of searched cases' vectors
        (search.vector_cache_mb), each when its setting is not 0."""
        ctx = cls.load(settings)
        idle = ctx.settings.server.db_idle_connections
        if idle:
            ctx.pool = Pool(ctx.services.database_url, idle)
        cache_mb = ctx.settings.search.vector_cache_mb
        if cache_mb:
            ctx.vectors = CaseVectors(cache_mb << 20, ctx.settings.search.vector_cache_idle_s)
        return ctx

    @property
    def store(self) -> ObjectStore:
        """The object store client, created once."""
        if self._store is None:
            self._store = ObjectStore(self.services.s3)
        return self._store

    @property
    def audit_key(self) -> str:
        """The key that seals audit rows."""
        return self.services.audit_key

    @property
    def export_signing_key(self) -> str:
        """The server's secret that export manifests are signed with; ConfigError where it is
        not held (a worker never needs it)."""
        if not self.services.export_signing_key:
            raise ConfigError("no export signing key: set BODYCAM_EXPORT_SIGNING_KEY on the "
                              "server (its alone), or run `bodycam up`")
        return self.services.export_signing_key

    def db(self) -> AbstractContextManager[Conn]:
        """A database connection (one transaction; commits on success, then anchors any
        audit rows it wrote)."""
        from bodycam import audit

        return self._connected(connect(self.services.database_url,
                                       after_commit=lambda conn: audit.anchor_after_commit(
                                           conn, self.store, self.audit_key), pool=self.pool,
                                       after_rollback=lambda conn: audit.after_rollback(
                                           conn, self.store, self.audit_key)))

    @contextmanager
    def _connected(self, cm: AbstractContextManager[Conn]) -> Iterator[Conn]:
        with ExitStack() as stack:
            try:
                conn = stack.enter_context(cm)
            except TransientError as exc:
                raise self.database_unreachable(exc) from exc
            yield conn

    def database_unreachable(self, exc: TransientError) -> TransientError:
        """A database that did not answer (db.unreachable), with what to do about it."""
        return TransientError(f"{exc}: {self.remedy('database_url')}")

    def remedy(self, setting: str) -> str:
        """What an operator does about an unreachable service: start the embedded stack, or
        check the external service's setting."""
        if getattr(self.settings, setting, None):
            return f"check that it runs and BODYCAM_{setting.upper()}, then retry"
        return f"start it with `bodycam up` (home {self.settings.home_dir}), then retry"

    def audit(self, actor: str, action: str, details: dict[str, object]) -> None:
        """Record an event in its own transaction (for events with no other database write)."""
        from bodycam import audit

        with self.db() as conn:
            audit.append(conn, self.audit_key, actor, action, details)

    def send(self, task: str, *args: str | int) -> None:
        """Queue a task by name with id arguments."""
        try:
            queue.send(self.services.redis_url, task, *args)
        except TransientError as exc:
            raise TransientError(f"{exc}: {self.remedy('redis_url')}") from exc

    def queue_units(self, video_id: str, idxs: Iterable[int]) -> None:
        """Send a video's units, recorded pending in the database, to the workers. A broker
        that cannot be reached loses nothing: the units not sent are marked, and the
        reaper's next run once the broker is back sends them, so the caller's answer stands."""
        left = list(idxs)
        try:
            while left:
                self.send(queue.PROCESS_UNIT, video_id, left[0])
                left.pop(0)
        except TransientError as exc:
            log.warning("video %s: queueing its units failed (%s): the reaper queues them",
                        video_id, exc)
            self.mark_unsent(f"video {video_id}",
                             lambda conn: jobs.mark_unsent(conn, video_id, left))

    def mark_unsent(self, what: str, mark: Callable[[Conn], object]) -> None:
        """Mark work the broker could not take, for the reaper's next run to send. Where the
        database cannot be reached either, the reaper's stale re-send sends it later."""
        try:
            with self.db() as conn:
                mark(conn)
        except (TransientError, psycopg.Error) as exc:
            log.warning("%s: not marked unsent (%s): the reaper's stale re-send sends it",
                        what, exc.__class__.__name__)


@lru_cache(maxsize=1)
def shared() -> Context:
    """The process-wide context of the API server, resolved on first use; it keeps idle
    database connections for reuse (server.db_idle_connections) and a checked copy of
    searched cases' track vectors (search.vector_cache_mb)."""
    return Context.server()
