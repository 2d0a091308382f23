"""Where the services are: external settings win, else the embedded stack's files in its home.

The embedded stack's home keeps each secret with the processes that need it (all 0600, in
0700 directories):

- `stack.json`: non-secret state (ports, pids, URLs without passwords);
- `client.json`: `{"url": ...}`, the server's address for clients (no secret);
- `secrets/server.json`: what the server uses (its database URL, S3 keys, Redis URL, the
  audit key, the export signing key);
- `secrets/worker.json`: what the workers and the scheduler use (`worker_secrets`: the
  workers' database role, S3 keys, Redis URL, and the workers' sealing key, derived from the
  audit key, in place of it);
- `secrets/admin.json`: the database superuser URL, alone; read only by `up`, `migrate` and
  `down` (`admin_database_url`), never by `resolve`, and hidden from the server and workers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bodycam.config import Settings
from bodycam.errors import ConfigError
from bodycam.storage import S3Config

STATE_FILE = "stack.json"
CLIENT_FILE = "client.json"
SECRETS_DIR = "secrets"
SERVER_SECRETS = "server.json"
WORKER_SECRETS = "worker.json"
ADMIN_SECRETS = "admin.json"
# Which state keys live in which secrets file (everything else is in stack.json).
ADMIN_KEYS = frozenset({"admin_database_url", "pg_superuser_password"})
SERVER_KEYS = frozenset({"database_url", "pg_app_password", "s3_access_key", "s3_secret_key",
                         "redis_password", "redis_url", "audit_key",
                         "export_signing_key", "worker_database_url", "pg_worker_password"})
# What the workers are given of them (the database URL and the key as `worker_secrets` says).
_WORKER_SHARED = ("s3_access_key", "s3_secret_key", "redis_password", "redis_url")


@dataclass(frozen=True)
class Services:
    """Resolved connection details for one process (never the database superuser's)."""

    database_url: str
    s3: S3Config
    redis_url: str
    api_url: str | None
    audit_key: str
    export_signing_key: str | None = None  # the server's alone (exports); None elsewhere


def state_path(settings: Settings) -> Path:
    """The embedded stack's non-secret state file."""
    return settings.home_dir / STATE_FILE


def secrets_dir(home: Path) -> Path:
    """The 0700 folder of a home's secrets files."""
    return home / SECRETS_DIR


def _load(path: Path) -> dict[str, object]:
    if not path.exists():
        return {}
    loaded = json.loads(path.read_text())
    return loaded if isinstance(loaded, dict) else {}


def worker_secrets(state: dict[str, object]) -> dict[str, object]:
    """The secrets file of the workers and the scheduler, from the stack's state: the
    workers' database role in place of the server's, the S3 keys, the broker, and the
    workers' sealing key (`audit.worker_key`) in place of the audit key. A key or URL the
    environment gives instead (an external service) is not in it."""
    from bodycam.audit import worker_key

    out = {k: v for k, v in state.items() if k in _WORKER_SHARED}
    if isinstance(url := state.get("worker_database_url"), str):
        out["database_url"] = url
    if isinstance(key := state.get("audit_key"), str):
        out["audit_key"] = worker_key(key)
    return out


def read_state(settings: Settings) -> dict[str, object]:
    """The stack's non-secret state and the secrets this process can read (the server's, or
    a worker's in its own view of the home: see bodycam.stack._app_exec; the server's win
    where both are readable), or an empty dict before the first `bodycam up`. Never the
    superuser URL: a home written by an earlier version (secrets in stack.json) has it
    dropped here."""
    home = settings.home_dir
    state = {k: v for k, v in _load(home / STATE_FILE).items() if k not in ADMIN_KEYS}
    for name in (WORKER_SECRETS, SERVER_SECRETS):
        try:
            found = _load(secrets_dir(home) / name)
        except PermissionError:
            found = {}
        state.update({k: v for k, v in found.items() if k in SERVER_KEYS})
    return state


def admin_database_url(settings: Settings) -> str:
    """The database superuser URL (external BODYCAM_DATABASE_URL first): for `up`, `migrate`
    and `down` only. Raises ConfigError when there is none."""
    if settings.database_url:
        return settings.database_url
    return home_admin_url(settings.home_dir)


def home_admin_url(home: Path) -> str:
    """The embedded stack's superuser URL from its home (secrets/admin.json)."""
    url = _load(secrets_dir(home) / ADMIN_SECRETS).get("admin_database_url")
    if not isinstance(url, str) or not url:
        # A home from before the split keeps it in stack.json until the next `up` moves it.
        url = _load(home / STATE_FILE).get("admin_database_url")
    if isinstance(url, str) and url:
        return url
    raise ConfigError(f"no database administrator URL: run `bodycam up` (home {home}) as the "
                      "account that owns it, or set BODYCAM_DATABASE_URL")


def resolve(settings: Settings) -> Services:
    """Connection details: BODYCAM_* settings first, the embedded stack for the rest.

    Raises ConfigError when a service is neither configured nor started by `bodycam up`.
    """
    state = read_state(settings)

    def pick(external: str | None, key: str, what: str) -> str:
        if external:
            return external
        value = state.get(key)
        if isinstance(value, str) and value:
            return value
        raise ConfigError(
            f"no {what}: run `bodycam up` (home {settings.home_dir}) "
            f"or set BODYCAM_{key.upper()}"
        )

    database_url = pick(settings.database_url, "database_url", "database")
    s3_endpoint = pick(settings.s3_endpoint_url, "s3_endpoint_url", "S3 endpoint")
    external_s3 = settings.s3_endpoint_url is not None
    s3 = S3Config(
        endpoint_url=s3_endpoint,
        access_key=settings.s3_access_key if external_s3 else _str(state.get("s3_access_key")),
        secret_key=settings.s3_secret_key if external_s3 else _str(state.get("s3_secret_key")),
        bucket=settings.s3_bucket,
        region=settings.s3_region,
    )
    redis_url = pick(settings.redis_url, "redis_url", "Redis broker")
    api_url = settings.api_url or _str(state.get("api_url"))
    audit_key = pick(settings.audit_key, "audit_key", "audit key")
    signing = settings.export_signing_key or _str(state.get("export_signing_key")) or None
    return Services(database_url, s3, redis_url, api_url, audit_key, signing)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
