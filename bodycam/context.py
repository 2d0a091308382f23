"""The resolved runtime of one process: settings, service locations, store and database."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from bodycam import queue
from bodycam.config import Settings, get_settings
from bodycam.db import Conn, connect
from bodycam.services import Services, resolve
from bodycam.storage import ObjectStore


@dataclass
class Context:
    """What the edges (CLI, API, workers) hand to the library."""

    settings: Settings
    services: Services
    _store: ObjectStore | None = field(default=None, repr=False)

    @classmethod
    def load(cls, settings: Settings | None = None) -> Context:
        """Resolve services for these settings (default: the process's settings)."""
        s = settings or get_settings()
        return cls(settings=s, services=resolve(s))

    @property
    def store(self) -> ObjectStore:
        """The object store client, created once."""
        if self._store is None:
            self._store = ObjectStore(self.services.s3)
        return self._store

    def db(self) -> AbstractContextManager[Conn]:
        """A database connection (one transaction; commits on success)."""
        return connect(self.services.database_url)

    def send(self, task: str, *args: str | int) -> None:
        """Queue a task by name with id arguments."""
        queue.send(self.services.redis_url, task, *args)
