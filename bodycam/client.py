"""HTTP client of the Bodycam server: URL + bearer token in, JSON or typed errors out."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import httpx

from bodycam.errors import (
    BodycamError,
    InvalidInputError,
    NotFoundError,
    PermanentError,
    TransientError,
)

OPERATOR_TOKEN = "operator.token"
CLIENT_FILE = "client.json"
CHUNK_BYTES = 1 << 20
POLL_TIMEOUT_S = 15.0  # a poll of a job's state not answered in this long is asked again
OUTAGE_S = 600.0  # how long a command waiting on work rides out a server that does not answer
# What a call that got no answer raises (the server down, stopped, or its connection dropped).
_NO_ANSWER = (httpx.ConnectError, httpx.TimeoutException, httpx.RemoteProtocolError,
              httpx.ReadError, httpx.WriteError)
NO_SERVER = ("no server: set BODYCAM_URL (or run `bodycam up`) and log in with "
             "`bodycam login`")


class ServerError(BodycamError):
    """The server answered with an RFC 7807 problem; `detail` is the one-line message."""

    def __init__(self, detail: str, status: int = 500, slug: str = "internal") -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status
        self.slug = slug


class UnauthenticatedError(ServerError, PermanentError):
    """401: no, unknown, expired or revoked token."""


class ForbiddenError(ServerError, PermanentError):
    """403: the role, case, policy or four-eyes rule refuses the action."""


class ServerNotFoundError(ServerError, NotFoundError):
    """404: the id names nothing the caller may see."""


class ServerInvalidError(ServerError, InvalidInputError):
    """409, 413 or 422: the request itself is wrong."""


class ServerUnavailableError(ServerError, TransientError):
    """429, 503 or an unreachable server: retry later."""


class MalformedAnswerError(ServerError, PermanentError):
    """The server's answer lacks a field the client reads, or is not the shape it expects."""


class Answer(dict[str, Any]):
    """A JSON object the server sent: reading a field it lacks raises MalformedAnswerError
    (one line), not KeyError, wherever the CLI reads it."""

    def __missing__(self, key: str) -> Any:
        raise MalformedAnswerError(f"malformed answer from the server: no {key!r} field (a "
                                   "server of another version, or not a Bodycam server?)",
                                   502, "malformed")


def _problem_class(status: int) -> type[ServerError]:
    if status == 401:
        return UnauthenticatedError
    if status == 403:
        return ForbiddenError
    if status == 404:
        return ServerNotFoundError
    if status in (409, 413, 422, 400):
        return ServerInvalidError
    if status in (429, 502, 503, 504):
        return ServerUnavailableError
    return ServerError


def config_dir() -> Path:
    """`$XDG_CONFIG_HOME/bodycam` (default `~/.config/bodycam`)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "bodycam"


def credentials_path() -> Path:
    """Where `bodycam login` keeps the session."""
    return config_dir() / "credentials.json"


def read_credentials() -> dict[str, Any] | None:
    """The stored session, or None when there is none (or it is unreadable)."""
    try:
        data = json.loads(credentials_path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_credentials(data: dict[str, Any]) -> Path:
    """Store the session atomically: dir 0700, file created 0600 before any byte is written."""
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=folder)  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, credentials_path())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return credentials_path()


def delete_credentials() -> bool:
    """Remove the stored session; whether there was one."""
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True


def _home() -> Path:
    return Path(os.environ.get("BODYCAM_HOME") or ".bodycam").expanduser()


@dataclass(frozen=True)
class StackHome:
    """What the CLI takes from this account's stack home: the server URL of its client.json
    (no secret in it), the server's unix socket in the home, and the bootstrap operator's
    token."""

    url: str | None
    operator_token: str | None
    socket: str | None = None


def stack_home() -> StackHome:
    """BODYCAM_HOME (default `.bodycam` in the working directory), read only when it is this
    account's own and private (0700, as `up` makes it): a home another account could have
    made or changed would name its server and its token. Nothing when there is no home.
    Raises InvalidInputError naming the home and why it is not used."""
    home = _home().absolute()
    refuse = (f"refusing to use {home}/{CLIENT_FILE} and {OPERATOR_TOKEN}: set BODYCAM_HOME "
              "to your own stack's home, or BODYCAM_URL")
    try:  # one open directory, checked and read: it cannot be swapped in between
        fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return StackHome(None, None)
    except OSError as exc:
        raise InvalidInputError(f"{home}: {exc.strerror or type(exc).__name__}; "
                                f"{refuse}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise InvalidInputError(f"{home}: owned by another account (uid {st.st_uid}); "
                                    f"{refuse}")
        if st.st_mode & 0o077:
            raise InvalidInputError(f"{home}: open to other accounts (mode "
                                    f"{stat.S_IMODE(st.st_mode):04o}; `bodycam up` makes it "
                                    f"0700); {refuse}")

        def read(name: str) -> str | None:
            try:
                with os.fdopen(os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=fd)) as f:
                    return f.read()
            except (OSError, ValueError):
                return None

        token = (read(OPERATOR_TOKEN) or "").strip() or None
        for name, key in ((CLIENT_FILE, "url"),
                          # a stack that predates client.json: stack.json's one public key
                          ("stack.json", "api_url")):
            try:
                data = json.loads(read(name) or "")
            except ValueError:
                continue
            if isinstance(data, dict) and data.get(key):
                # stack.json names the socket too (as api_socket): a home of the version
                # before client.json keeps reaching its stack through it.
                sock = data.get("socket" if name == CLIENT_FILE else "api_socket")
                path = None
                if isinstance(sock, str) and sock and not Path(sock).is_absolute() \
                        and ".." not in Path(sock).parts:  # in the home, nowhere else
                    path = str(home / sock)
                return StackHome(str(data[key]), token, path)
        return StackHome(None, token)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Target:
    """Which server to talk to, with which token, claiming which account."""

    url: str
    token: str | None
    user: str | None
    socket: str | None = None  # the home stack's unix socket: no other account can listen there
    bootstrap: bool = False  # the token is the stack home's bootstrap operator token


def resolve(url: str | None = None) -> Target:
    """URL: argument, BODYCAM_URL, the credentials file, the stack home's client.json. Token:
    BODYCAM_TOKEN, the credentials file (only for its own URL), else the bootstrap
    `operator.token` when BODYCAM_USER is unset or `operator` and the server is this home's
    stack, through the socket in the home (refused where its client.json names none). The
    home is read only when needed, and only when private to this account (`stack_home`).
    Raises InvalidInputError when no server is named anywhere, and for a plain http:// server
    not on this machine, wherever its URL came from (a token would cross the network in clear
    text), unless BODYCAM_INSECURE_HTTP=1."""
    creds = read_credentials() or {}
    user = os.environ.get("BODYCAM_USER") or None
    home: StackHome | None = None
    found = url or os.environ.get("BODYCAM_URL") or creds.get("url")
    if not found:
        home = stack_home()
        found = home.url
    if not found:
        raise InvalidInputError(NO_SERVER)
    found = str(found).rstrip("/")
    token = os.environ.get("BODYCAM_TOKEN") or None
    if token is None and creds.get("token") and str(creds.get("url", "")).rstrip("/") == found \
            and user in (None, creds.get("user")):
        token = str(creds["token"])
        user = user or (str(creds["user"]) if creds.get("user") else None)
    # The bootstrap operator's token is for this home's own stack (or another server on this
    # machine), never for a server elsewhere.
    if home is None and token is None and user in (None, "operator"):
        home = stack_home()
    own = home if home is not None and home.url is not None \
        and home.url.rstrip("/") == found else None  # this home's own stack
    # This home's own stack through its socket: nothing crosses a network.
    if urlsplit(found).scheme == "http" and not _on_this_machine(found) \
            and (own is None or own.socket is None) \
            and os.environ.get("BODYCAM_INSECURE_HTTP") != "1":
        # Every call sends a token (login sends the account's).
        raise InvalidInputError(f"refusing to send a token in clear text to {found}: use "
                                "https://, or set BODYCAM_INSECURE_HTTP=1 on a network you "
                                "trust")
    # To this home's stack through its socket only: a loopback port is no identity (another
    # account can listen on it once the server stops); a socket in the 0700 home is. A home
    # whose client.json names no socket (written before there was one, or by hand) sent the
    # token to whatever held the port (bb40).
    bootstrap = False
    if token is None and user in (None, "operator") and own is not None \
            and own.operator_token is not None:
        if own.socket is None:
            raise InvalidInputError(
                f"{_home().absolute()}/{CLIENT_FILE} names no server socket, and the operator "
                "token goes to the stack only through the socket in its home: restart the "
                "stack (`bodycam down`, `bodycam up`), or log in as your own account")
        token, bootstrap = own.operator_token, True
    return Target(found, token, user, own.socket if own is not None else None, bootstrap)


def _on_this_machine(url: str) -> bool:
    """Whether a URL names this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """A session with the server: every call sends the bearer token; errors become typed."""

    def __init__(self, target: Target, timeout_s: float = 600.0) -> None:
        self.target = target
        # Told once that a call has not been answered for ANSWER_NOTICE_S, and again when it
        # is (the CLI's stderr): a search held by a paused database was silent for 45 s (bb49).
        self.say: Callable[[str], None] | None = None
        headers = {"Accept": "application/json"}
        if target.token:
            headers["Authorization"] = f"Bearer {target.token}"
        if target.user:
            headers["X-Bodycam-User"] = target.user
        transport = httpx.HTTPTransport(uds=target.socket) if target.socket else None
        self._http = httpx.Client(base_url=target.url, headers=headers, transport=transport,
                                  timeout=httpx.Timeout(timeout_s, connect=10.0))

    @classmethod
    def connect(cls, url: str | None = None) -> Client:
        """A client for the resolved server and token."""
        return cls(resolve(url))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _unreachable(self, exc: Exception) -> ServerUnavailableError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc,
                                                                      httpx.ConnectTimeout):
            return ServerUnavailableError(
                f"the Bodycam server at {self.target.url} did not answer in time "
                f"({type(exc).__name__}): it may be overloaded or stopped; see `bodycam "
                "status`", 503, "unreachable")
        return ServerUnavailableError(
            f"cannot reach the Bodycam server at {self.target.url} ({type(exc).__name__}): "
            "start it with `bodycam up`, or check BODYCAM_URL", 503, "unreachable")

    def _check(self, resp: httpx.Response) -> httpx.Response:
        if resp.status_code < 400:
            return resp
        detail = ""
        slug = "internal"
        try:
            body = json.loads(resp.read())
            detail = str(body.get("detail") or body.get("title") or "")
            slug = str(body.get("type", "")).rsplit("/", 1)[-1] or slug
        except (ValueError, AttributeError):
            pass
        if not detail:
            detail = f"the server answered {resp.status_code} {resp.reason_phrase}"
        if resp.status_code == 401 and self.target.token is None:
            # The server's line asks for a header; this client sent none (after a logout, or
            # with no login): say what its user does (bb33).
            detail = (f"not logged in to {self.target.url}: run `bodycam login` (or set "
                      "BODYCAM_TOKEN)")
        elif resp.status_code == 401 and self.target.bootstrap:
            # No account was named: the home's bootstrap token was sent, and refused (disabled
            # or revoked by an admin): say how to name another account (bb33).
            detail += (" (the stack's bootstrap operator token was used: run `bodycam login`, "
                       "or set BODYCAM_USER and BODYCAM_TOKEN, to use your own account)")
        raise _problem_class(resp.status_code)(detail, resp.status_code, slug)

    def request(self, method: str, path: str, notice: bool = True,
                **kwargs: Any) -> httpx.Response:
        """One call; problems raise ServerError subclasses carrying `detail`. With `say` set
        and `notice`, a call not answered in ANSWER_NOTICE_S is said to be (Unanswered)."""
        try:
            with Unanswered(self.say if notice else None):
                resp = self._http.request(method, path, **kwargs)
        except _NO_ANSWER as exc:
            raise self._unreachable(exc) from None
        return self._check(resp)

    def json(self, method: str, path: str, notice: bool = True, **kwargs: Any) -> Any:
        """The JSON body of one call; its objects are `Answer`s."""
        resp = self.request(method, path, notice, **kwargs)
        try:
            return resp.json(object_hook=Answer)
        except ValueError:
            raise MalformedAnswerError("malformed answer from the server: not JSON (is "
                                       f"{self.target.url} a Bodycam server?)", 502,
                                       "malformed") from None

    def get(self, path: str, **params: Any) -> Any:
        """GET with query parameters (None values dropped)."""
        return self.json("GET", path, params=_clean(params))

    def poll(self, path: str) -> Any:
        """GET a job's state while waiting on it: a short read timeout (POLL_TIMEOUT_S), so
        that a server that stopped answering is noticed and asked again (Outage), rather
        than waited on for the whole timeout of a long call."""
        return self.json("GET", path, notice=False,  # its waits say it (Outage)
                         timeout=httpx.Timeout(POLL_TIMEOUT_S, connect=10.0))

    def post(self, path: str, body: dict[str, Any] | None = None, **params: Any) -> Any:
        """POST a JSON body."""
        return self.json("POST", path, json=body or {}, params=_clean(params))

    def put(self, path: str, body: dict[str, Any]) -> Any:
        """PUT a JSON body."""
        return self.json("PUT", path, json=body)

    def delete(self, path: str) -> Any:
        """DELETE."""
        return self.json("DELETE", path)

    def pages(self, path: str, **params: Any) -> list[Any]:
        """Every item of a paginated list, following `next_offset` to the end."""
        items: list[Any] = []
        offset: int | None = 0
        while offset is not None:
            page = self.get(path, **params, offset=offset, limit=1000)
            if not isinstance(page, dict) or not isinstance(page["items"], list) \
                    or not all(isinstance(i, dict) for i in page["items"]):
                raise MalformedAnswerError("malformed answer from the server: not a list of "
                                           "objects", 502, "malformed")
            items.extend(page["items"])
            offset = page.get("next_offset")
        return items

    def upload(self, path: str, stream: IO[bytes], sha256: str,
               say: Callable[[str], None] | None = None, **params: Any) -> Any:
        """POST a file's bytes streamed from an open file (never read whole), with the
        SHA-256 computed beforehand so that the server can refuse a changed body. With
        `say`, an upload that stalls is said once (Stalled)."""
        try:
            total: int | None = os.fstat(stream.fileno()).st_size
        except (OSError, ValueError):  # not a file: its size is not known beforehand
            total = None
        stalled = Stalled(say, total)

        def body() -> Iterator[bytes]:
            while True:
                stalled.moved()  # the chunk before this one is taken
                chunk = stream.read(CHUNK_BYTES)
                if not chunk:
                    return
                stalled.sent += len(chunk)
                yield chunk

        with stalled:
            return self.json("POST", path, notice=False, content=body(), params=_clean(params),
                             headers={"Content-Type": "application/octet-stream",
                                      "X-Content-SHA256": sha256})

    def multipart(self, path: str, fields: dict[str, Any], photos: list[str]) -> Any:
        """POST a multipart form with photo files (opened, streamed by httpx)."""
        handles = []
        try:
            files = []
            for p in photos:
                f = open(p, "rb")  # noqa: SIM115 - closed below
                handles.append(f)
                files.append(("photo", (Path(p).name, f, "application/octet-stream")))
            return self.json("POST", path, data={k: str(v) for k, v in _clean(fields).items()},
                             files=files or None)
        finally:
            for f in handles:
                f.close()

    def download(self, path: str, dest: Path) -> int:
        """Stream a file to dest; the byte count."""
        size = 0
        try:
            with self._http.stream("GET", path) as resp:
                self._check(resp)
                with open(dest, "wb") as f:
                    for chunk in resp.iter_bytes(CHUNK_BYTES):
                        f.write(chunk)
                        size += len(chunk)
        except _NO_ANSWER as exc:
            raise self._unreachable(exc) from None
        return size


STALL_NOTICE_S = 15.0  # an upload neither taking bytes nor answered this long is said to be
ANSWER_NOTICE_S = 15.0  # a call not answered this long is said to be (Unanswered)


class Unanswered:
    """Says once that a call has had no answer for ANSWER_NOTICE_S, and again when it has
    one; with `say` None, nothing."""

    def __init__(self, say: Callable[[str], None] | None) -> None:
        self.say, self.said, self.since = say, False, time.monotonic()
        self._timer: threading.Timer | None = None

    def _tell(self) -> None:
        if self.say is not None:
            self.said = True
            self.say(f"the server has not answered for {ANSWER_NOTICE_S:.0f} s; still waiting "
                     "(it may be busy, or a paused database, broker or object store holds "
                     "it; see `bodycam status`)")

    def __enter__(self) -> Unanswered:
        if self.say is not None:
            self._timer = threading.Timer(ANSWER_NOTICE_S, self._tell)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.said and self.say is not None and exc_type is None:  # else its error says
            self.say(f"the server answered after {time.monotonic() - self.since:.0f} s")


class Stalled:
    """Says once that an upload has stalled: the server has taken no byte and given no
    answer for STALL_NOTICE_S, and again when it answers. The server streams what it
    receives into the object store, so a paused or full store holds the upload; it was
    held for the whole pause without a word (144 s: bb41, bb45). A paused database or broker
    holds its answer after the last byte (bb49: the notice named the store alone)."""

    def __init__(self, say: Callable[[str], None] | None, total: int | None) -> None:
        self.say, self.total, self.sent = say, total, 0
        self.last = self.since = time.monotonic()
        self.said = False
        self._done = threading.Event()
        self._watch = threading.Thread(target=self._run, name="upload-stall", daemon=True)

    def moved(self) -> None:
        """The server took the bytes sent so far."""
        self.last = time.monotonic()

    def _run(self) -> None:
        while not self._done.wait(1.0):
            quiet = time.monotonic() - self.last
            if self.say is not None and not self.said and quiet >= STALL_NOTICE_S:
                self.said = True
                of = f" of {self.total / 2**20:.1f}" if self.total is not None else ""
                self.say(f"the server has taken no byte and given no answer for {quiet:.0f} s"
                         f" ({self.sent / 2**20:.1f}{of} MiB sent); "
                         "still waiting (it stores the file as it arrives and then records "
                         "and queues it: a paused or full object store, or a paused database"
                         " or broker, holds it; see `bodycam status`)")

    def __enter__(self) -> Stalled:
        if self.say is not None:
            self._watch.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_exc: object) -> None:
        self._done.set()
        if self._watch.is_alive():
            self._watch.join()
        if self.said and self.say is not None and exc_type is None:  # else its error says
            self.say(f"the server answered after {time.monotonic() - self.since:.0f} s")


class Outage:
    """How a command that waits on work rides out a server that stops answering (restarted
    by `bodycam up`, paused, or its connection dropped): the work goes on on the workers, so
    a poll that fails for such a reason is tried again. The first failure is said once
    (`say`), and the return of answers too; after OUTAGE_S without an answer the wait gives
    up with the last error. (`ingest --wait` failed after a 5-s pause of the server though
    the video went on to `done`, and a paused server held it silent for the whole read
    timeout: bb31.)"""

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.since: float | None = None

    def poll(self, client: Client, path: str) -> Any | None:
        """The answer to `client.poll(path)`, or None while the server does not answer."""
        try:
            answer = client.poll(path)
        except TransientError as exc:
            now = time.monotonic()
            if self.since is None:
                self.since = now
                self.say(f"{exc}; still waiting (the work goes on on the workers)")
            elif now - self.since > OUTAGE_S:
                raise
            return None
        if self.since is not None:
            self.say(f"the server answers again after {time.monotonic() - self.since:.0f} s")
            self.since = None
        return answer


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def sha256_of(f: IO[bytes]) -> tuple[str, int]:
    """SHA-256 and size of an open file in one streaming pass; rewinds it after."""
    digest = hashlib.sha256()
    size = 0
    while chunk := f.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    f.seek(0)
    return digest.hexdigest(), size
