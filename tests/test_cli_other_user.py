"""The CLI run by another OS user with only a URL and a token: its role, its cases, no secret,
and none of the server's packages (each made to fail on import)."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import HAMILTON, REPO, TESTDATA, StackHandle

USER = "nobody"
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")
CASE_A, CASE_B = "T-CLI-A", "T-CLI-B"
P06 = TESTDATA / "faces" / "identities" / "p06" / "01.png"


@pytest.fixture(scope="module")
def client_home() -> Iterator[Path]:
    """A private HOME (config dir for `bodycam login`) owned by the other user."""
    if SYSTEM_PYTHON is None:
        pytest.skip("no system python3 the other user can execute")
    home = Path(tempfile.mkdtemp(prefix="bc-client-", dir="/tmp"))
    pw = pwd.getpwnam(USER)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    _server_only(home)
    yield home
    shutil.rmtree(home, ignore_errors=True)


def _site_packages() -> str:
    # The venv's interpreter may live where the other user cannot go (under /root, in a 0700
    # clone): it runs the system python 3.11 (same ABI) with the venv's packages.
    return sysconfig.get_paths()["purelib"]


# What the server, the workers and the stack need and a client never does: a CLI command that
# imports one of them fails here (a thin client installs without them and holds no secret).
SERVER_ONLY = ("psycopg", "psycopg_pool", "pgvector", "boto3", "botocore", "celery", "kombu",
               "redis", "numpy", "torch", "cv2", "av", "dlib", "scenedetect", "PIL", "fastapi",
               "starlette", "uvicorn")


SERVER_ONLY_DIR = ".server-only"


def _server_only(home: Path) -> None:
    """A folder in the other user's HOME, first on its path, where each server-only package
    fails to import, naming itself."""
    folder = home / SERVER_ONLY_DIR
    for name in SERVER_ONLY:
        pkg = folder / name
        pkg.mkdir(mode=0o755, parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(
            f"raise ImportError('the CLI is a client: it does not import {name}')\n")
    folder.chmod(0o755)


def _as_other(home: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the system python as the other user with the repository and the venv's packages
    on its path. They are bound (read-only) into its HOME in a mount namespace of its own,
    so it reaches them wherever the checkout lives (under /root, in a 0700 clone made by
    mktemp -d) and no folder above them is opened to anyone."""
    pw = pwd.getpwnam(USER)
    code, site = home / ".code", home / ".code-site"
    for target in (code / "bodycam", site):  # the package only: the checkout may be 0700
        target.mkdir(mode=0o755, parents=True, exist_ok=True)
    code.chmod(0o755)
    full = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "PYTHONPATH": f"{home / SERVER_ONLY_DIR}:{code}:{site}", **env}
    bind_then_run = ('mount --bind -o ro "$1" "$2" && mount --bind -o ro "$3" "$4" && shift 4'
                     ' && exec setpriv --reuid="$UID_OTHER" --regid="$GID_OTHER"'
                     ' --clear-groups -- "$@"')
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", bind_then_run,
         "sh", str(REPO / "bodycam"), str(code / "bodycam"), _site_packages(), str(site),
         # -S: the venv's packages only, never the system's dist-packages (Debian's pyOpenSSL
         # 23 warned on stderr against the venv's cryptography 51, under every command)
         str(SYSTEM_PYTHON), "-S", *argv],
        env={**full, "UID_OTHER": str(pw.pw_uid), "GID_OTHER": str(pw.pw_gid)},
        cwd=str(home), capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)


def _cli(home: Path, url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _as_other(home, ["-m", "bodycam", *args], {"BODYCAM_URL": url, "BODYCAM_TOKEN": token})


@pytest.fixture(scope="module")
def accounts(stack: StackHandle, api_url: str, operator_token: str) -> dict[str, str]:
    """Tokens of an investigator and a clerk on case A, and the videos of A and B."""
    op = {"Authorization": f"Bearer {operator_token}"}
    out: dict[str, str] = {}
    with httpx.Client(timeout=300, headers=op) as http:
        for role in ("investigator", "clerk"):
            name = f"cli-{role}-{secrets.token_hex(3)}"
            r = http.post(api_url + "/api/v1/users", json={"name": name, "roles": [role]})
            assert r.status_code == 201, r.text
            out[role] = str(r.json()["token"])
            assert http.post(f"{api_url}/api/v1/users/{name}/cases",
                             json={"case": CASE_A}).status_code == 200
        for case in (CASE_A, CASE_B):
            r = http.post(api_url + "/api/v1/videos", content=HAMILTON.read_bytes(),
                          params={"case": case, "officer": "O", "device": "D",
                                  "filename": "h.mp4"},
                          headers={"Content-Type": "application/octet-stream"})
            assert r.status_code in (200, 201), r.text
            out[case] = str(r.json()["video_id"])
        deadline = time.monotonic() + 600
        for case in (CASE_A, CASE_B):
            while http.get(f"{api_url}/api/v1/videos/{out[case]}").json()["status"] not in (
                    "done", "failed", "quarantined"):
                assert time.monotonic() < deadline, "clip not processed"
                time.sleep(1)
    return out


def _one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode != 0, (proc.stdout, err)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_an_investigator_as_another_os_user_does_exactly_what_the_role_allows(
        stack: StackHandle, api_url: str, accounts: dict[str, str], client_home: Path) -> None:
    tok = accounts["investigator"]
    me = _cli(client_home, api_url, tok, "whoami")
    assert me.returncode == 0 and "investigator" in me.stdout + me.stderr, me
    found = _cli(client_home, api_url, tok, "search", "--case", CASE_A, "--purpose", "cli test",
                 "--photo", str(P06), "--json")
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["results"], "p06 is found in case A"
    tracks = _cli(client_home, api_url, tok, "tracks", accounts[CASE_A], "--json")
    assert tracks.returncode == 0 and json.loads(tracks.stdout), tracks.stderr
    # Breaking it: another case, another role's commands.
    _one_line_error(_cli(client_home, api_url, tok, "search", "--case", CASE_B, "--purpose",
                         "probe", "--photo", str(P06)), CASE_B)
    _one_line_error(_cli(client_home, api_url, tok, "tracks", accounts[CASE_B]))
    _one_line_error(_cli(client_home, api_url, tok, "users", "list"), "admin")
    _one_line_error(_cli(client_home, api_url, tok, "jobs"), "clerk")
    _one_line_error(_cli(client_home, api_url, tok, "audit", "verify"), "auditor")
    _one_line_error(_cli(client_home, api_url, "bct_" + secrets.token_urlsafe(32), "whoami"))


def test_a_clerk_as_another_os_user_ingests_and_lists_jobs_and_cannot_search(
        stack: StackHandle, api_url: str, accounts: dict[str, str], client_home: Path) -> None:
    tok = accounts["clerk"]
    jobs = _cli(client_home, api_url, tok, "jobs", "--json")
    assert jobs.returncode == 0, jobs.stderr
    ids = {j["video_id"] for j in json.loads(jobs.stdout)}
    assert accounts[CASE_A] in ids and accounts[CASE_B] not in ids, ids
    ing = _cli(client_home, api_url, tok, "ingest", str(HAMILTON), "--case", CASE_A,
               "--officer", "O", "--device", "D", "--json")
    assert ing.returncode == 0, ing.stderr
    assert json.loads(ing.stdout)[0]["video_id"] == accounts[CASE_A], ing.stdout
    _one_line_error(_cli(client_home, api_url, tok, "search", "--case", CASE_A, "--purpose",
                         "probe", "--photo", str(P06)), "investigator")


def test_the_other_user_reaches_no_secret_of_the_stack_and_no_database(
        stack: StackHandle, client_home: Path) -> None:
    # Not only the folders above it: the home itself shuts other accounts out.
    assert stack.home.stat().st_mode & 0o077 == 0, oct(stack.home.stat().st_mode)
    files = [p for p in stack.home.rglob("*") if p.is_file()][:200]
    assert files, "the home has files"
    secrets_text = [str(v) for k, v in json.loads((stack.home / "stack.json").read_text()).items()
                    if isinstance(v, str) and any(s in k for s in ("password", "key", "url"))]
    code = ("import json, sys\n"
            "opened = []\n"
            f"for p in {[str(f) for f in files]!r}:\n"
            "    try:\n"
            "        open(p, 'rb').read(1); opened.append(p)\n"
            "    except OSError:\n"
            "        pass\n"
            "print(json.dumps(opened))\n"
            "try:\n"
            "    from bodycam.context import Context\n"
            "    ctx = Context.load()\n"
            "    print('LOADED', ctx.audit_key)\n"
            "except Exception as exc:\n"
            "    print('REFUSED', type(exc).__name__)\n")
    proc = _as_other(client_home, ["-c", code], {"BODYCAM_HOME": str(stack.home)})
    lines = proc.stdout.strip().splitlines()
    assert lines and json.loads(lines[0]) == [], f"readable by {USER}: {lines[:1]} {proc.stderr}"
    assert "LOADED" not in proc.stdout and "REFUSED" in proc.stdout, proc.stdout + proc.stderr
    for s in secrets_text:
        assert s not in proc.stdout + proc.stderr, "a secret reached the other user"


def test_the_watchlist_and_governance_commands_of_another_os_user_go_through_the_server(
        stack: StackHandle, api_url: str, operator_token: str, accounts: dict[str, str],
        client_home: Path) -> None:
    tok = accounts["investigator"]
    enrolled = _cli(client_home, api_url, tok, "subjects", "enroll", "--name", "cli subject",
                    "--photo", str(P06), "--case", CASE_A, "--reason", "cli test", "--json")
    assert enrolled.returncode == 0, enrolled.stderr
    sid = json.loads(enrolled.stdout)["subject_id"]
    assert set(json.loads(enrolled.stdout)) == {"subject_id", "pending_matches", "notes",
                                                "awaiting_approval"}
    assert json.loads(enrolled.stdout)["awaiting_approval"] is False
    listed = _cli(client_home, api_url, tok, "subjects", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert sid in {r["subject_id"] for r in rows} and {r["case"] for r in rows} == {CASE_A}
    matches = _cli(client_home, api_url, tok, "matches", "--json")
    assert matches.returncode == 0, matches.stderr
    assert {m["case"] for m in json.loads(matches.stdout)} <= {CASE_A}
    persons = _cli(client_home, api_url, tok, "persons", "--case", CASE_A, "--purpose", "p",
                   "--json")
    assert persons.returncode == 0 and isinstance(json.loads(persons.stdout), list), persons
    # Breaking it: the other case, and every command of another role.
    _one_line_error(_cli(client_home, api_url, tok, "subjects", "enroll", "--name", "n",
                         "--photo", str(P06), "--case", CASE_B, "--reason", "r"), CASE_B)
    _one_line_error(_cli(client_home, api_url, tok, "persons", "--case", CASE_B, "--purpose",
                         "p"), CASE_B)
    out = client_home / "m.jsonl"
    for argv, role in ((["subjects", "approve", sid], "supervisor"),
                       (["matches", "export", "-o", str(out)], "auditor"),
                       (["audit", "export", "-o", str(out)], "auditor"),
                       (["audit", "export-key"], "auditor"),
                       (["users", "add", "intruder", "--role", "admin"], "admin"),
                       (["users", "disable", "operator"], "admin"),
                       (["users", "assign", "cli-x", "--case", CASE_B], "supervisor"),
                       (["cases", "hold", CASE_A, "--reason", "r"], "supervisor"),
                       (["cases", "release", CASE_A, "--reason", "r"], "supervisor"),
                       (["policy", "set", "--reason", "r", "--reviewers", "2"], "admin"),
                       (["thresholds", "set", "--model", "dlib-resnet", "--default", "0.9",
                         "--floor", "0.8", "--reason", "r"], "supervisor"),
                       (["purge", "--dry-run"], "admin"),
                       (["fixity"], "auditor"),
                       (["events-token"], "admin")):
        _one_line_error(_cli(client_home, api_url, tok, *argv), role)
    assert not out.exists(), "a refused export leaves no file"
    removed = _cli(client_home, api_url, tok, "subjects", "remove", sid)
    assert removed.returncode == 0 and "removed" in removed.stderr, removed.stderr
    # An auditor (same OS user, only URL + token) exports, fetches the key and verifies.
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {operator_token}"}) as h:
        r = h.post(api_url + "/api/v1/users",
                   json={"name": f"cli-auditor-{secrets.token_hex(3)}", "roles": ["auditor"]})
        assert r.status_code == 201, r.text
        aud = str(r.json()["token"])
    made = _cli(client_home, api_url, aud, "audit", "export", "-o", str(out))
    assert made.returncode == 0 and "audit rows" in made.stderr, made.stderr
    assert out.is_file() and (client_home / "m.jsonl.manifest.json").is_file()
    checked = _cli(client_home, api_url, aud, "audit", "verify-export", str(out))
    assert checked.returncode == 0 and "intact" in checked.stdout, checked.stderr
    key = _cli(client_home, api_url, aud, "audit", "export-key")
    assert key.returncode == 0 and len(key.stdout.strip()) >= 32, key.stderr
    (client_home / "k").write_text(key.stdout)
    offline = _as_other(client_home, ["-m", "bodycam", "audit", "verify-export", str(out),
                                      "--key-file", str(client_home / "k")], {})
    assert offline.returncode == 0 and "intact" in offline.stdout, offline.stderr
    out.write_bytes(out.read_bytes().replace(b"}\n", b"} \n", 1))
    _one_line_error(_cli(client_home, api_url, aud, "audit", "verify-export", str(out)),
                    "NOT intact")
    fix = _cli(client_home, api_url, aud, "fixity", "--json")
    report = json.loads(fix.stdout)
    assert fix.returncode == (0 if report["ok"] else 1) and report["originals"] >= 2, report
