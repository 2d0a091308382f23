"""Commands that manage the embedded stack here: up, down, status, migrate, worker-key, serve,
demo, bench, eval."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Annotated

import typer

from bodycam.cli.base import (
    JsonFlag,
    app,
    context,
    emit_json,
    err,
    fail,
    guarded,
    out,
    plain,
    settings,
)


@app.command()
def up() -> None:
    """Start the embedded stack (Postgres+pgvector, S3, Redis, workers, API) on loopback."""
    from bodycam.stack import Stack

    stack = Stack(settings())
    guarded(lambda: stack.up(progress=lambda m: err.print(f"  {m}")))
    st = stack.status()
    if not st["ok"]:
        fail(f"stack in {st['home']} is not fully up: {plain(st['services'])}, "
             f"{st['workers']} workers: see its logs/")
    err.print(f"stack up in {st['home']}: database, S3, broker, "
              f"{st['workers']} workers")


@app.command()
def down() -> None:
    """Stop what `bodycam up` started in this BODYCAM_HOME (external services are untouched)."""
    from bodycam.stack import Stack

    stopped = Stack(settings()).down(progress=lambda m: err.print(f"  {m}"))
    err.print(f"stopped {len(stopped)} processes" if stopped else "nothing was running")


@app.command()
def status(as_json: JsonFlag = False) -> None:
    """Each service's state, URLs, worker counts and queue depths; exit 1 unless all are up."""
    from bodycam.stack import Stack

    st = Stack(settings()).status()
    if as_json:
        emit_json(st)
    else:
        for key, value in st.items():
            out.print(f"{key:16} {plain(value)}")
    if not st["ok"]:
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply database migrations (production: run once before starting workers)."""
    from bodycam.db import migrate as run
    from bodycam.errors import TransientError
    from bodycam.services import admin_database_url

    ctx = context()

    def apply() -> list[str]:
        try:
            return run(admin_database_url(ctx.settings))
        except TransientError as exc:  # as any command's database (Context.db)
            raise ctx.database_unreachable(exc) from exc

    applied = guarded(apply)
    err.print(f"applied {len(applied)} migrations" if applied else "schema is up to date")


@app.command(name="bootstrap-admin")
def bootstrap_admin(name: Annotated[str, typer.Argument(help="the new admin's user name")]
                    ) -> None:
    """Create the first admin account, where no enabled admin exists (a deployment not
    started by `bodycam up`): run where the server's secrets are, e.g. `docker compose exec
    api bodycam bootstrap-admin NAME`. Prints its token once; audited."""
    from bodycam.accounts import bootstrap_admin as create

    ctx = context()

    def run() -> str:
        with ctx.db() as conn:
            return create(conn, ctx.audit_key, name)

    token = guarded(run)
    err.print(f"admin {name} created; its token (shown once) is on stdout: `bodycam login`")
    typer.echo(token)


@app.command(name="worker-key")
def worker_key() -> None:
    """Print the workers' sealing key, derived from this server's audit key: what worker
    hosts are given as BODYCAM_AUDIT_KEY, never the audit key itself (infra/DEPLOY.md)."""
    from bodycam.audit import worker_key as derive

    typer.echo(derive(context().audit_key))


def _more_descriptors() -> None:
    """Raise this process's soft limit on open files to its hard limit: a connection, a
    spooled upload and a database socket each take one, and a default soft limit of 1,024
    is the first to run out under many clients."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class _AcceptErrors(logging.Filter):
    """One line in ten seconds of asyncio's "socket.accept() out of system resource": out of
    descriptors, it logs each retry with a traceback (91 MB of log in seconds, which a
    client flood turned into a full disk: bb14)."""

    def __init__(self) -> None:
        super().__init__()
        self.last = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if "out of system resource" not in record.getMessage():
            return True
        now = time.monotonic()
        if now - self.last < 10.0:
            return False
        self.last = now
        record.exc_info = None  # the reason, once, without the traceback each time
        return True


@app.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          unix_socket: Annotated[str | None, typer.Option(
              "--socket", help="also answer on this unix socket (0600), for this account's "
                               "CLI")] = None) -> None:
    """Serve the HTTP API (every action, S3 event notifications, health)."""
    import socket

    import uvicorn

    from bodycam.stack import undumpable

    undumpable()  # the workers cannot reach its view of the home's secrets through /proc
    _more_descriptors()
    logging.getLogger("asyncio").addFilter(_AcceptErrors())
    proxies = settings().server.trusted_proxies.strip()
    # uvicorn believes X-Forwarded-For from 127.0.0.1 by default: any local process could
    # then name any client in the audit log and spend another address's failed logins.
    config = uvicorn.Config("bodycam.api.app:app", host=host, port=port, log_level="warning",
                            proxy_headers=bool(proxies), forwarded_allow_ips=proxies or None)
    sockets = [config.bind_socket()]
    if unix_socket:
        path = Path(unix_socket)
        path.unlink(missing_ok=True)
        uds = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # 0600 from its first moment
        try:
            uds.bind(str(path))
        finally:
            os.umask(old)
        uds.listen(config.backlog)
        sockets.append(uds)
    uvicorn.Server(config).run(sockets=sockets)


@app.command()
def demo(
    testdata: Annotated[str, typer.Option(help="folder with video/ (the shared test data)",
                                          envvar="BODYCAM_TESTDATA")],
    case: str = "DEMO-1",
) -> None:
    """Start the stack, ingest the sample clips, process them and print what was found."""
    from bodycam.demo import run_demo

    guarded(lambda: run_demo(settings(), testdata, case, out))


@app.command()
def bench(
    testdata: Annotated[str, typer.Option(help="the shared test data folder",
                                          envvar="BODYCAM_TESTDATA")],
    clip_s: Annotated[float, typer.Option(help="length of the synthetic 720p30 clip")] = 120.0,
) -> None:
    """Measure the face pipeline per stage against the naive baseline; write BENCHMARKS figures."""
    from bodycam.bench import run_pipeline_bench

    guarded(lambda: run_pipeline_bench(settings(), testdata, clip_s, out))


@app.command(name="eval", context_settings={"allow_extra_args": True,
                                            "ignore_unknown_options": True,
                                            "help_option_names": []})
def eval_cmd(ctx: typer.Context) -> None:
    """Recognition on generated clips, on a temporary stack: `bodycam eval 7000-7029 --out
    eval.json [--benchmarks BENCHMARKS.md]` (all options: `bodycam eval --help`)."""
    from bodycam.evaluate import main

    raise typer.Exit(main(list(ctx.args), prog="bodycam eval"))
