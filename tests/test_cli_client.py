"""The CLI as a client of the server: login/logout/whoami, clean errors, URL + token only."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import pytest

from tests.conftest import StackHandle


def _server_url(stack: StackHandle) -> str:
    client = stack.home / "client.json"
    if client.exists():
        return str(json.loads(client.read_text())["url"])
    return str(json.loads((stack.home / "stack.json").read_text())["api_url"])


def _account(stack: StackHandle, name: str, role: str) -> str:
    proc = stack.cli.run("users", "add", name, "--role", role, check=True)
    return proc.stdout.strip()


def _client_env(stack: StackHandle, tmp: Path, **extra: str) -> dict[str, str]:
    """An environment with no BODYCAM_HOME and a private config dir."""
    env = {k: v for k, v in stack.cli.env.items() if not k.startswith("BODYCAM_")}
    env["XDG_CONFIG_HOME"] = str(tmp / "config")
    env["HOME"] = str(tmp)
    env.update(extra)
    return env


def _run(stack: StackHandle, env: dict[str, str], *args: str,
         stdin: str | None = None) -> tuple[int, str, str]:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "bodycam", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=120, cwd=env["HOME"])
    return proc.returncode, proc.stdout, proc.stderr


def test_login_stores_a_0600_session_whoami_uses_it_and_logout_revokes_it(
        stack: StackHandle, tmp_path: Path) -> None:
    token = _account(stack, "cli-ann", "investigator")
    env = _client_env(stack, tmp_path)
    url = _server_url(stack)
    rc, _, errs = _run(stack, env, "login", "--url", url, "--user", "cli-ann", stdin=token + "\n")
    assert rc == 0, errs
    creds = tmp_path / "config" / "bodycam" / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700
    stored = json.loads(creds.read_text())
    assert stored["user"] == "cli-ann" and stored["url"] == url
    assert stored["token"] != token, "a session token, not the account token"
    rc, out, errs = _run(stack, env, "whoami", "--json")
    assert rc == 0, errs
    me = json.loads(out)
    assert me["user"] == "cli-ann" and me["roles"] == ["investigator"]
    rc, _, errs = _run(stack, env, "logout")
    assert rc == 0, errs
    assert not creds.exists()
    # with no session left, the server's refusal is put as what to do (it asked for a header)
    rc, _, errs = _run(stack, {**env, "BODYCAM_URL": url}, "whoami")
    assert rc == 1 and errs.strip() == (
        f"error: not logged in to {url}: run `bodycam login` (or set BODYCAM_TOKEN)")
    # the revoked session no longer works, even when someone kept a copy of it
    rc, _, errs = _run(stack, {**env, "BODYCAM_URL": url, "BODYCAM_TOKEN": stored["token"]},
                       "whoami")
    assert rc == 1 and errs.startswith("error:") and len(errs.strip().splitlines()) == 1


def test_a_refused_bootstrap_token_says_how_to_name_another_account(
        stack: StackHandle, tmp_path: Path) -> None:
    """With no account named, the CLI sends the stack home's bootstrap operator token; once an
    admin disables that account, the refusal said only "account operator is disabled" (bb33)."""
    token = _account(stack, "cli-boot", "auditor")
    stack.cli.run("users", "disable", "cli-boot", check=True)
    home = _plant_home(tmp_path, _server_url(stack), 0o700)
    (home / "operator.token").write_text(token + "\n")  # this home's bootstrap account
    _give_socket(home, stack)
    rc, out, errs = _run(stack, _client_env(stack, tmp_path), "whoami")
    assert rc == 1 and out == "" and errs.strip() == (
        "error: account cli-boot is disabled (the stack's bootstrap operator token was used: "
        "run `bodycam login`, or set BODYCAM_USER and BODYCAM_TOKEN, to use your own account)")
    # a token the user named gets the server's line alone
    rc, _, errs = _run(stack, _client_env(stack, tmp_path, BODYCAM_TOKEN=token), "whoami")
    assert rc == 1 and errs.strip() == "error: account cli-boot is disabled"


def test_a_wrong_token_at_login_is_refused_and_stores_nothing(
        stack: StackHandle, tmp_path: Path) -> None:
    _account(stack, "cli-bob", "clerk")
    env = _client_env(stack, tmp_path)
    rc, _, errs = _run(stack, env, "login", "--url", _server_url(stack), "--user", "cli-bob",
                       stdin="bct_not-the-token\n")
    assert rc == 1 and errs.startswith("error:") and len(errs.strip().splitlines()) == 1
    assert not (tmp_path / "config" / "bodycam" / "credentials.json").exists()


def test_an_unreachable_server_gives_one_line_naming_the_url_and_what_to_do(
        stack: StackHandle, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"http://127.0.0.1:{port}"
    env = _client_env(stack, tmp_path, BODYCAM_URL=url, BODYCAM_TOKEN="bct_x")
    rc, out, errs = _run(stack, env, "whoami")
    lines = errs.strip().splitlines()
    assert rc == 1 and out == "" and len(lines) == 1, errs
    assert lines[0].startswith("error:") and url in lines[0] and "bodycam up" in lines[0]


def test_no_server_named_anywhere_says_how_to_name_one(
        stack: StackHandle, tmp_path: Path) -> None:
    rc, _, errs = _run(stack, _client_env(stack, tmp_path), "whoami")
    assert rc == 1 and errs.strip() == (
        "error: no server: set BODYCAM_URL (or run `bodycam up`) and log in with "
        "`bodycam login`")


def test_the_cli_works_with_only_url_and_token_and_no_stack_home(
        stack: StackHandle, tmp_path: Path) -> None:
    token = _account(stack, "cli-aud", "auditor")
    env = _client_env(stack, tmp_path, BODYCAM_URL=_server_url(stack), BODYCAM_TOKEN=token,
                      BODYCAM_USER="cli-aud")
    assert "BODYCAM_HOME" not in env and not (tmp_path / ".bodycam").exists()
    rc, out, errs = _run(stack, env, "whoami", "--json")
    assert rc == 0, errs
    assert json.loads(out)["user"] == "cli-aud"
    # claiming another account with this token is refused like a wrong token
    rc, _, errs = _run(stack, {**env, "BODYCAM_USER": "operator"}, "whoami")
    assert rc == 1 and errs.startswith("error:")
    assert os.environ.get("BODYCAM_HOME"), "the session stack itself keeps its home"


def test_a_token_never_crosses_the_network_in_clear_text_nor_leaves_for_another_server(
        stack: StackHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI sent whatever token it had to any BODYCAM_URL, plain http:// to another host
    included, and with no login the stack's bootstrap operator token (every role)."""
    env = _client_env(stack, tmp_path, BODYCAM_URL="http://bodycam.example.invalid:8080",
                      BODYCAM_TOKEN="bct_not-to-be-sent")
    for args in (["whoami"], ["login", "--user", "ann"]):
        rc, out, errs = _run(stack, env, *args)
        lines = errs.strip().splitlines()
        assert rc == 1 and out == "" and len(lines) == 1, errs
        assert "refusing to send a token in clear text to http://bodycam.example.invalid" \
            in lines[0] and "bct_not-to-be-sent" not in errs
    # The operator token of a home goes to its own stack only, through the home's socket:
    # not to another port of this machine, which any account can listen on.
    from bodycam.client import resolve

    monkeypatch.setenv("BODYCAM_HOME", str(stack.home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("BODYCAM_TOKEN", "BODYCAM_USER", "BODYCAM_URL"):
        monkeypatch.delenv(name, raising=False)
    operator = (stack.home / "operator.token").read_text().strip()
    assert resolve().token == operator
    assert resolve().socket == str((stack.home / "run" / "api.sock").absolute())
    assert resolve("http://127.0.0.1:9").token is None
    assert resolve("https://bodycam.example.invalid").token is None
    monkeypatch.setenv("BODYCAM_INSECURE_HTTP", "1")  # a network the user trusts
    assert resolve("http://bodycam.example.invalid").token is None


HOSTILE = "Eve\x1b]0;T\x07\x1b[2J[link=https://evil.example/]x[/link]"
HOSTILE_REASON = "warrant \x1b[8mhidden\x1b[0m [bold red]RED[/] :smile:"


def _inert(text: str, *hostile: str) -> None:
    """Each hostile string shows as printable text: no ESC or BEL byte reaches the terminal,
    and rich markup and emoji codes stay as typed."""
    from bodycam.media.files import printable

    assert "\x1b" not in text and "\x07" not in text, repr(text)
    for h in hostile:
        assert printable(h) in text, (h, text)


def test_server_text_with_terminal_escapes_and_markup_is_printed_inert(
        stack: StackHandle, tmp_path: Path) -> None:
    """A subject's name and reason stored with OSC/CSI escapes and rich markup reached the
    lister's terminal raw (window title set, screen cleared, a hyperlink made from
    `[link=...]`): they must print as text, even on a terminal that takes colour."""
    from tests.conftest import TESTDATA

    case = "CLI-ESC-1"
    photo = TESTDATA / "faces" / "identities" / "p06" / "01.png"
    sid = str(stack.cli.json("subjects", "enroll", "--name", "plain", "--photo", str(photo),
                             "--case", case, "--reason", "plain")["subject_id"])  # type: ignore[index]
    with stack.ctx.db() as conn:  # as stored by another client, or before any server check
        conn.execute("UPDATE subjects SET name = %s, reason = %s WHERE id = %s",
                     (HOSTILE, HOSTILE_REASON, sid))
    proc = stack.cli.run("subjects", "list", "--case", case, extra_env={"FORCE_COLOR": "1"})
    assert proc.returncode == 0, proc.stderr
    _inert(proc.stdout, HOSTILE, HOSTILE_REASON)
    assert sid in proc.stdout


class _FakeServer:
    """A hostile or broken server on loopback: answers each GET path with a fixed JSON body."""

    def __init__(self, answers: dict[str, object], delay_s: float = 0.0) -> None:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.tokens: list[str] = []  # the Authorization header of each request
        tokens = self.tokens

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                tokens.append(self.headers.get("Authorization", ""))
                time.sleep(delay_s)
                body = json.dumps(answers.get(self.path.split("?")[0], {})).encode()
                self.send_response(200 if self.path.split("?")[0] in answers else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_call_the_server_holds_is_said_once_and_again_when_answered(
        monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    """A search held by a paused database printed nothing for the 45 s of the pause (bb49):
    a call not answered in ANSWER_NOTICE_S is said once, on stderr, and again when it is
    answered; a prompt answer says nothing."""
    from bodycam import client
    from bodycam.cli.base import client_call

    monkeypatch.setattr(client, "ANSWER_NOTICE_S", 0.3)
    monkeypatch.delenv("BODYCAM_USER", raising=False)
    me = {"user": "ann", "roles": ["auditor"], "cases": None, "expires_at": None}
    for delay, said in ((1.2, 2), (0.0, 0)):
        fake = _FakeServer({"/api/v1/auth/me": me}, delay_s=delay)
        monkeypatch.setenv("BODYCAM_URL", fake.url)
        monkeypatch.setenv("BODYCAM_TOKEN", "bct_x")
        monkeypatch.setenv("BODYCAM_HOME", str(tmp_path))
        try:
            got = client_call(lambda c: c.get("/api/v1/auth/me"))
        finally:
            fake.close()
        assert got["user"] == "ann"
        lines = capfd.readouterr().err.strip().splitlines()
        assert len(lines) == said, lines
        if said:
            assert lines[0].startswith("the server has not answered for 0 s; still waiting ("
                                       "it may be busy, or a paused database"), lines
            assert lines[1] == "the server answered after 1 s", lines


def test_a_hostile_or_broken_server_gets_inert_text_and_one_error_line(
        stack: StackHandle, tmp_path: Path) -> None:
    """Strings a server sends are never terminal escapes or markup, and an answer missing a
    field (or with items that are not objects) ends in one error line, not a traceback."""
    fake = _FakeServer({
        "/api/v1/auth/me": {"user": HOSTILE, "roles": [HOSTILE_REASON], "cases": [HOSTILE]},
        "/api/v1/jobs": {"items": [{"video_id": HOSTILE, "status": "done", "stage": HOSTILE,
                                    "progress": 1.0, "attempts": 1, "filename": HOSTILE,
                                    "error": HOSTILE_REASON}], "next_offset": None},
        "/api/v1/subjects": {"items": [{"subject_id": "s1", "case": "C", "name": "n",
                                        "faces": 1, "approved": True, "created_by": "x"}],
                             "next_offset": None},
        "/api/v1/videos/v1/tracks": {"items": ["not an object"], "next_offset": None},
        "/api/v1/users": {"no_items": []},
        "/api/v1/audit/export-key": {"key": HOSTILE},
        "/api/v1/events-token": {"token": HOSTILE},
    })
    try:
        env = _client_env(stack, tmp_path, BODYCAM_URL=fake.url, BODYCAM_TOKEN="bct_x",
                          FORCE_COLOR="1")
        both = (HOSTILE, HOSTILE_REASON)
        for args, shown in ((["whoami"], both), (["jobs"], both),
                            (["audit", "export-key"], both[:1]), (["events-token"], both[:1])):
            rc, out, errs = _run(stack, env, *args)
            assert rc == 0, errs
            _inert(out, *shown)
        for args, why in ((["subjects", "list"], "no 'reason' field"),
                          (["tracks", "v1"], "not a list of objects"),
                          (["users", "list"], "no 'items' field")):
            rc, out, errs = _run(stack, {**env, "FORCE_COLOR": ""}, *args)
            lines = errs.strip().splitlines()
            assert rc == 1 and out == "" and len(lines) == 1, errs
            assert lines[0].startswith("error:") and "malformed answer" in lines[0] \
                and why in lines[0], lines[0]
    finally:
        fake.close()


def _give_socket(home: Path, stack: StackHandle) -> None:
    """`home`'s client.json names the socket run/api.sock, a link to `stack`'s server's."""
    (home / "client.json").write_text(json.dumps({
        **json.loads((home / "client.json").read_text()), "socket": "run/api.sock"}))
    (home / "run").mkdir(mode=0o700)
    (home / "run" / "api.sock").symlink_to(stack.home / "run" / "api.sock")


def _plant_home(where: Path, url: str, mode: int, uid: int | None = None) -> Path:
    """A `.bodycam` with client.json naming `url` and an operator.token, as another account
    (or a cloned repository) could leave it in a working directory."""
    home = where / ".bodycam"
    home.mkdir(parents=True)
    (home / "client.json").write_text(json.dumps({"url": url}))
    (home / "operator.token").write_text("bct_PLANTED\n")
    home.chmod(mode)
    if uid is not None:
        os.chown(home, uid, -1)
    return home


def test_a_stack_home_another_account_could_have_planted_is_refused(
        stack: StackHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A `.bodycam/client.json` planted in the working directory redirected the CLI, counted
    as "this home's stack" (lifting the plain-http refusal) and got BODYCAM_TOKEN; its
    operator.token made the caller act as the planter's account."""
    import pwd

    from bodycam.client import resolve
    from bodycam.errors import InvalidInputError

    fake = _FakeServer({"/api/v1/auth/me": {"user": "eve", "roles": ["admin"], "cases": None}})
    try:
        # An open home (the planter's or the caller's own): whoami with the caller's token.
        planted = _plant_home(tmp_path, fake.url, 0o755)
        env = _client_env(stack, tmp_path, BODYCAM_TOKEN="bct_VICTIM")
        rc, out, errs = _run(stack, env, "whoami")
        lines = errs.strip().splitlines()
        assert rc == 1 and out == "" and len(lines) == 1, errs
        assert lines[0].startswith(f"error: {planted}: open to other accounts (mode 0755;")
        assert "bct_" not in errs
        # with a server named but no token, its operator.token is not taken either
        rc, _, errs = _run(stack, {**env, "BODYCAM_TOKEN": "", "BODYCAM_URL": fake.url},
                           "whoami")
        assert rc == 1 and "open to other accounts" in errs
        assert fake.tokens == [], "a planted home reached the server"
        # Every way of opening it to others, and a home of another uid though 0700.
        monkeypatch.chdir(tmp_path)
        monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
        for name in ("BODYCAM_HOME", "BODYCAM_TOKEN", "BODYCAM_USER", "BODYCAM_URL"):
            monkeypatch.delenv(name, raising=False)
        for mode in (0o750, 0o705, 0o701, 0o770):
            planted.chmod(mode)
            with pytest.raises(InvalidInputError, match=f"mode {mode:04o}"):
                resolve()
        planted.chmod(0o700)
        os.chown(planted, pwd.getpwnam("nobody").pw_uid, -1)
        with pytest.raises(InvalidInputError, match=r"owned by another account \(uid \d+\)"):
            resolve(fake.url)
        # a link to a private home of another account is that account's home
        os.chown(planted, os.geteuid(), -1)
        other = _plant_home(tmp_path / "other", fake.url, 0o700,
                            uid=pwd.getpwnam("nobody").pw_uid)
        monkeypatch.setenv("BODYCAM_HOME", str(tmp_path / "link"))
        (tmp_path / "link").symlink_to(other)
        with pytest.raises(InvalidInputError, match="owned by another account"):
            resolve()
        # The caller's own private home is used: its URL, and its operator token only
        # through the socket in the home. One whose client.json names none (written before
        # there was one, or by hand) sent the token to whatever held the port (bb40).
        monkeypatch.delenv("BODYCAM_HOME")
        for _ in (resolve, lambda: resolve(fake.url)):
            with pytest.raises(InvalidInputError, match="names no server socket"):
                _()
        rc, out, errs = _run(stack, {**env, "BODYCAM_TOKEN": ""}, "whoami")
        assert rc == 1 and out == "" and "names no server socket" in errs, errs
        assert len(errs.strip().splitlines()) == 1 and "bct_" not in errs
        assert fake.tokens == [], "the port's listener got the operator token"
        rc, out, errs = _run(stack, env, "whoami")  # the caller's own token still goes
        assert rc == 0 and out.startswith("eve"), errs
        assert fake.tokens == ["Bearer bct_VICTIM"]
    finally:
        fake.close()


def test_the_operator_token_goes_through_the_homes_socket_not_whatever_has_the_port(
        stack: StackHandle, tmp_path: Path) -> None:
    """Another account listening on the server's loopback port after a crash (or `down`)
    received the operator's token, which is every role's. The CLI now talks to its home's
    stack through the server's unix socket in the 0700 home, where no other account can
    listen."""
    real = stack.home / "run" / "api.sock"
    assert stat.S_IMODE(real.stat().st_mode) == 0o600 and real.is_socket()
    assert json.loads((stack.home / "client.json").read_text())["socket"] == "run/api.sock"
    squatter = _FakeServer({"/api/v1/auth/me": {"user": "eve", "roles": [], "cases": None}})
    try:
        home = _plant_home(tmp_path, squatter.url, 0o700)  # the squatter has the port
        _give_socket(home, stack)
        (home / "operator.token").write_text((stack.home / "operator.token").read_text())
        env = {k: v for k, v in _client_env(stack, tmp_path).items()
               if k not in ("BODYCAM_TOKEN", "BODYCAM_URL")}
        rc, out, errs = _run(stack, env, "whoami")
        assert rc == 0 and out.startswith("operator"), errs
        # A network-bound stack's own home: plain http to its address is no concern, since
        # nothing crosses the network.
        (home / "client.json").write_text(json.dumps({"url": "http://10.77.0.2:8080",
                                                      "socket": "run/api.sock"}))
        rc, out, errs = _run(stack, env, "whoami")
        assert rc == 0 and out.startswith("operator"), errs
        (home / "client.json").write_text(json.dumps({"url": squatter.url,
                                                      "socket": "run/api.sock"}))
        # The server gone: the CLI says so, and the port's listener still gets nothing.
        (home / "run" / "api.sock").unlink()
        (home / "run" / "api.sock").symlink_to(tmp_path / "no-such.sock")
        rc, out, errs = _run(stack, env, "whoami")
        assert rc == 1 and "cannot reach the Bodycam server" in errs, errs
        assert squatter.tokens == [], "the port's listener got a request"
    finally:
        squatter.close()


def test_a_homes_plain_http_url_elsewhere_never_gets_a_token(
        stack: StackHandle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plain-http rule is about the URL: a client.json naming another host over http://
    is refused like BODYCAM_URL, even in the caller's own private home."""
    from bodycam.client import resolve
    from bodycam.errors import InvalidInputError

    _plant_home(tmp_path, "http://10.77.0.2:8080", 0o700)
    env = _client_env(stack, tmp_path, BODYCAM_TOKEN="bct_VICTIM")
    for token in ("bct_VICTIM", ""):  # the caller's token, or the home's operator token
        rc, out, errs = _run(stack, {**env, "BODYCAM_TOKEN": token}, "whoami")
        lines = errs.strip().splitlines()
        assert rc == 1 and out == "" and len(lines) == 1, errs
        assert "refusing to send a token in clear text to http://10.77.0.2:8080" in lines[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for name in ("BODYCAM_HOME", "BODYCAM_TOKEN", "BODYCAM_USER", "BODYCAM_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InvalidInputError, match="clear text"):
        resolve()
    monkeypatch.setenv("BODYCAM_INSECURE_HTTP", "1")  # a network the user trusts
    with pytest.raises(InvalidInputError, match="names no server socket"):
        resolve()  # still, the operator token goes only through a socket in the home


def test_a_wait_on_work_rides_out_a_server_that_stops_answering(stack: StackHandle) -> None:
    """`ingest --wait` while the server is paused for 20 s: the wait says once that the
    server does not answer, then ends with the video done. It failed after a 5-s pause
    ("cannot reach the Bodycam server", ReadError: the server closed the kept connection it
    had found idle), and a paused server held it silent for the whole read timeout of 600 s
    (bb31). The workers are held until the server answers again, so that the video cannot
    be done before the pause."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.conftest import HAMILTON, stack_pids

    def signal_all(pids: list[int], sig: signal.Signals) -> None:
        for pid in pids:
            psutil.Process(pid).send_signal(sig)

    case = f"T-PAUSE-{os.getpid()}"
    workers, server = stack_pids(stack, "worker-"), stack_pids(stack, "api")
    signal_all(workers, signal.SIGSTOP)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bodycam", "ingest", str(HAMILTON),
                                 "--case", case, "--officer", "O", "--device", "D", "--wait",
                                 "--json"], env=stack.cli.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        deadline = time.monotonic() + 120
        with stack.ctx.db() as conn:  # the upload is recorded
            while conn.execute("SELECT 1 FROM videos WHERE case_id = %s",
                               (case,)).fetchone() is None:
                assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
                time.sleep(0.2)
        # The row is written before the upload's answer is sent: the command polls once it
        # has the answer (a pause before that held the upload, not the wait). The workers
        # are held, so nothing ends meanwhile.
        time.sleep(3)
        assert proc.poll() is None
        signal_all(server, signal.SIGSTOP)
        try:
            time.sleep(20)
        finally:
            signal_all(server, signal.SIGCONT)
        time.sleep(3)  # the next poll finds the server again, the video still queued
    finally:
        signal_all(workers, signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    [res] = json.loads(out)
    assert res["status"] == "done", res
    assert "still waiting" in err and "the server answers again" in err, err


def test_an_upload_held_by_a_paused_object_store_is_said_and_then_lands(
        stack: StackHandle) -> None:
    """The server streams an upload into the object store: with the store paused, `ingest`
    waited for the whole pause without a word (144 s: bb41, bb45). It now says once that the
    server has taken no byte and given no answer, and again when it answers; nothing is
    lost."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from bodycam.client import STALL_NOTICE_S
    from tests.conftest import HAMILTON, stack_pids

    store = stack_pids(stack, "s3")
    case = f"T-STORE-PAUSE-{os.getpid()}"
    for pid in store:
        psutil.Process(pid).send_signal(signal.SIGSTOP)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "bodycam", "ingest", str(HAMILTON),
                                 "--case", case, "--officer", "O", "--device", "D", "--json"],
                                env=stack.cli.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        time.sleep(STALL_NOTICE_S + 5)
        assert proc.poll() is None, proc.communicate()
    finally:
        for pid in store:
            psutil.Process(pid).send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    [res] = json.loads(out)
    assert res["status"] == "queued" and not res["duplicate"], res
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith(f"{HAMILTON}: the server has taken no byte and given no "
                               "answer for 1"), err
    assert "MiB sent); still waiting" in lines[0], err
    assert "a paused or full object store, or a paused database or broker, holds it" in \
        lines[0], err
    assert lines[1].startswith(f"{HAMILTON}: the server answered after "), err


def test_a_render_wait_says_a_stall_and_an_attempt_that_failed_while_it_was_running(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Pure (the job's states as the server gives them): a render held by a paused store,
    its attempt then failed and taken again before the next poll, waited without a word for
    115 s (bb45): the error was said only while the job was queued, and a running job that
    did not move was never said. Each is said once; a queued job's notice names the broker
    and the store beside the workers (it blamed the workers while the broker was down)."""
    import time

    from bodycam.cli import redaction

    monkeypatch.setattr(redaction, "STALL_NOTICE_S", 0.0)
    monkeypatch.setattr(redaction, "QUEUED_NOTICE_S", 0.0)
    monkeypatch.setattr(time, "sleep", lambda _s: None)
    lost = "object store (S3) at http://127.0.0.1:1 unreachable (EndpointConnectionError)"

    def job(state: str, progress: float, attempts: int, error: str | None) -> dict[str, object]:
        return {"job_id": "j1", "kind": "render", "state": state, "progress": progress,
                "attempts": attempts, "error": error}

    states = iter([job("queued", 0, 0, None), job("running", 0.66, 1, None),
                   job("running", 0.66, 1, None), job("running", 0.66, 1, None),
                   job("running", 0.1, 2, lost), job("running", 0.5, 2, lost),
                   job("done", 1.0, 2, None)])

    class Server:
        def poll(self, _path: str) -> object:
            return next(states)

    done = redaction.wait_for_job(Server(), next(states))
    assert done["state"] == "done"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        "redaction job j1: no worker has taken it for 0 s; still waiting (`bodycam status` "
        "says whether the GPU-queue workers, the broker and the object store are up)",
        "redaction job j1: no progress for 0 s at 66 % (attempt 1); still waiting (a paused "
        "object store or database holds its worker; a stopped worker's lease runs out and "
        "another takes the job over: `bodycam status`)",
        f"redaction job j1: attempt 2 running; the one before failed: {lost}"], lines
