"""Where the services are: external settings win, else the embedded stack's state file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from bodycam.config import Settings
from bodycam.errors import ConfigError
from bodycam.storage import S3Config

STATE_FILE = "stack.json"


@dataclass(frozen=True)
class Services:
    """Resolved connection details for one process."""

    database_url: str
    admin_database_url: str
    s3: S3Config
    redis_url: str
    api_url: str | None
    audit_key: str


def state_path(settings: Settings) -> Path:
    """The embedded stack's state file (mode 0600: it holds generated credentials)."""
    return settings.home_dir / STATE_FILE


def read_state(settings: Settings) -> dict[str, object]:
    """The embedded stack's state, or an empty dict before the first `bodycam up`."""
    path = state_path(settings)
    if not path.exists():
        return {}
    loaded: dict[str, object] = json.loads(path.read_text())
    return loaded


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
    admin = settings.database_url or str(state.get("admin_database_url") or database_url)
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
    return Services(database_url, admin, s3, redis_url, api_url, audit_key)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None
