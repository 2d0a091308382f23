"""Commands of the session with the server: login, logout, whoami."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from bodycam.cli.base import (
    JsonFlag,
    app,
    client_call,
    emit_json,
    err,
    fail,
    guarded,
    out,
)
from bodycam.errors import BodycamError


@app.command()
def login(
    url: Annotated[str | None, typer.Option("--url", help="server (default: BODYCAM_URL)")] = None,
    user: Annotated[str | None, typer.Option("--user", help="account name")] = None,
) -> None:
    """Log in with your account token (BODYCAM_TOKEN, else prompted); the session is stored
    0600 in your config dir."""
    import getpass
    import os

    from bodycam.client import Client, Target, resolve, write_credentials

    name = user or os.environ.get("BODYCAM_USER") or getpass.getuser()
    token = os.environ.get("BODYCAM_TOKEN")
    if not token:
        token = (getpass.getpass(f"token for {name}: ") if sys.stdin.isatty()
                 else sys.stdin.readline()).strip()
    if not token:
        fail("no token: set BODYCAM_TOKEN or type the account's token")
    target = guarded(lambda: resolve(url))
    c = Client(Target(target.url, None, None))
    try:
        session = guarded(lambda: c.post("/api/v1/auth/login", {"user": name, "token": token}))
    finally:
        c.close()
    path = write_credentials({"url": target.url, "user": session["user"],
                              "token": session["token"], "expires_at": session["expires_at"]})
    err.print(f"logged in to {target.url} as {session['user']} "
              f"({', '.join(session.get('roles', []))}); session until {session['expires_at']}"
              f" stored in {path}")


@app.command()
def logout() -> None:
    """Revoke the stored session on the server and delete it here."""
    from bodycam.client import Client, Target, delete_credentials, read_credentials

    creds = read_credentials()
    if not creds or not creds.get("token"):
        fail("not logged in")
    c = Client(Target(str(creds["url"]), str(creds["token"]), None))
    try:
        c.post("/api/v1/auth/logout")
    except BodycamError as exc:
        from bodycam.client import UnauthenticatedError

        if not isinstance(exc, UnauthenticatedError):  # an expired session is gone anyway
            delete_credentials()
            fail(f"{exc} (the local session was deleted)")
    finally:
        c.close()
    delete_credentials()
    err.print(f"logged out of {creds['url']}")


@app.command()
def whoami(as_json: JsonFlag = False) -> None:
    """The account the CLI acts as, its roles and cases."""
    me = client_call(lambda c: c.get("/api/v1/auth/me"))
    if as_json:
        emit_json(me)
        return
    cases = "all" if me.get("cases") is None else (", ".join(me["cases"]) or "-")
    out.print(f"{me['user']}  roles: {', '.join(me['roles'])}  cases: {cases}  "
              f"credential valid until {me.get('expires_at') or '-'}")
