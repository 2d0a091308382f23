"""Shared pieces of the `bodycam` command: the app, consoles, one-line errors, server calls."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import quote

import typer
from rich.console import Console

from bodycam.config import Settings, get_settings
from bodycam.errors import BodycamError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Bodycam: batch body-camera footage in, auditable face evidence out.")


class PlainConsole(Console):
    """A console for lines that carry server text (names, reasons, errors, file names): every
    str argument is shown through `printable()`, so control characters and terminal escapes are
    written out rather than sent to the terminal, and none is read as rich markup or emoji
    codes (`[link=...]` stays text). A line is never wrapped by rich (one record, one line).
    Rich objects (Text, tables, progress) pass unchanged."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, emoji=False, highlight=False, soft_wrap=True,
                         **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        from bodycam.media.files import printable

        kwargs.update(markup=False, emoji=False)
        super().print(*(printable(o) if isinstance(o, str) else o for o in objects), **kwargs)


err = PlainConsole(stderr=True)


out = PlainConsole()


T = TypeVar("T")


TERMINAL = ("done", "failed", "quarantined")


def error_line(message: str) -> None:
    """Print `error: message` as one line: control characters and terminal escapes in the
    message are shown escaped and rich markup in it (e.g. from a file name) is not applied."""
    from rich.text import Text

    from bodycam.media.files import printable

    err.print(Text.assemble(("error:", "red"), " ", printable(str(message))))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print a one-line error and exit non-zero."""
    error_line(message)
    raise typer.Exit(code)


def settings() -> Settings:
    """Settings, or one line naming the refused setting (config.get_settings)."""
    return guarded(get_settings)


def guarded(fn: Callable[[], T]) -> T:
    """Run fn, turning Bodycam's typed errors into one-line messages and exit code 1."""
    try:
        return fn()
    except BodycamError as exc:
        fail(str(exc))


def context() -> Any:
    """The resolved runtime context."""
    from bodycam.context import Context

    return guarded(lambda: Context.load(settings()))


# The one `--json` flag of every command that prints results.
JsonFlag = Annotated[bool, typer.Option("--json", help="machine-readable: JSON on stdout")]


def print_rows(rows: list[Any], as_json: bool, line: Callable[[Any], str]) -> None:
    """A listing: JSON on stdout, or one line a row."""
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        out.print(line(r))


def plain(value: object) -> str:
    """A value as text for people: a mapping as `key value, ...` (nested in parentheses), a
    list comma-separated (not a Python repr: bb33)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {f'({plain(v)})' if isinstance(v, dict) else plain(v)}"
                         for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(plain(v) for v in value) or "-"
    return "-" if value is None else str(value)


def emit_json(data: object) -> None:
    """JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def client_call(fn: Callable[[Any], T], url: str | None = None) -> T:
    """Run fn with a client of the resolved server; typed errors become one line, exit 1."""
    from bodycam.client import Client

    c = guarded(lambda: Client.connect(url))
    c.say = lambda text: err.print(text, markup=False, highlight=False)
    try:
        return guarded(lambda: fn(c))
    finally:
        c.close()


def date_option(text: str | None, flag: str) -> Any:
    """A typed date checked before the server is asked (the server checks it again)."""
    from bodycam.timeparse import parse_when

    return guarded(lambda: parse_when(text, flag))


def export_to(route: str, output: str, fmt: str, body: dict[str, Any]) -> dict[str, Any]:
    """Have the server write an export, then fetch the file and its signed manifest beside
    `output`; the manifest."""
    from pathlib import Path

    from bodycam.audit import manifest_path
    from bodycam.errors import InvalidInputError

    if fmt not in ("jsonl", "csv"):
        fail(f"--format {fmt}: choose jsonl or csv")
    dest = Path(output)

    def run(c: Any) -> dict[str, Any]:
        made = c.post(route, {k: v for k, v in body.items() if v is not None})
        eid = quote(str(made["export_id"]), safe="")
        try:
            c.download(f"/api/v1/exports/{eid}", dest)
            c.download(f"/api/v1/exports/{eid}/manifest", manifest_path(dest))
        except OSError as exc:
            raise InvalidInputError(f"{output}: cannot write the export "
                                    f"({exc.strerror or type(exc).__name__})") from None
        except BaseException:  # a half-fetched export is no export
            dest.unlink(missing_ok=True)
            manifest_path(dest).unlink(missing_ok=True)
            raise
        return dict(made["manifest"])

    return client_call(run)


def photos_or_server_refusal(route: str, fields: dict[str, Any], photos: list[str]) -> None:
    """Photos the client cannot read are refused here, but only after the server has had its
    say on role, case and policy: it gets an empty stand-in for each (refused there as no
    image, nothing stored), so the rule is named first and the file's problem second."""
    import os
    import tempfile
    from pathlib import Path

    from bodycam.client import ForbiddenError, ServerUnavailableError, UnauthenticatedError

    unreadable = [p for p in photos if not Path(p).is_file() or not os.access(p, os.R_OK)]
    if not unreadable:
        return
    with tempfile.TemporaryDirectory() as tmp:
        sent = []
        for i, p in enumerate(photos):
            if p in unreadable:
                stand_in = Path(tmp, str(i), Path(p).name or "photo")
                stand_in.parent.mkdir()
                stand_in.write_bytes(b"")
                p = str(stand_in)
            sent.append(p)

        def probe(c: Any) -> None:
            try:
                c.multipart(route, fields, sent)
            except (ForbiddenError, UnauthenticatedError, ServerUnavailableError):
                raise
            except BodycamError:  # the stand-in itself was refused: the file's problem is next
                return

        client_call(probe)
    missing = unreadable[0]
    fail(f"{missing}: no such file" if not Path(missing).exists()
         else f"{Path(missing).name}: cannot read the file")
