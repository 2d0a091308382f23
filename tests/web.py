"""Browser-test helpers: Debian's chromium driven by Playwright, accounts made through the API,
sign-in through the login form, and screenshots kept as CI artefacts."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright

ARTIFACTS = Path(os.environ.get("BODYCAM_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))
SHOTS = ARTIFACTS / "screenshots"


def chromium_path() -> str:
    """Debian's chromium (Playwright's own download cannot work here); BODYCAM_CHROMIUM wins."""
    found = os.environ.get("BODYCAM_CHROMIUM") or shutil.which("chromium") \
        or shutil.which("chromium-browser")
    if not found:
        pytest.fail("no chromium: `apt-get install -y chromium` (make test installs it)")
    return found


@dataclass
class Account:
    """An account made for a browser test: its name, roles and API token."""

    name: str
    roles: list[str]
    token: str


def make_account(api_url: str, operator_token: str, roles: list[str],
                 cases: tuple[str, ...] = ()) -> Account:
    """A new account with these roles, assigned to these cases, through the API."""
    name = f"web-{'-'.join(roles)}-{secrets.token_hex(3)}"
    h = {"Authorization": f"Bearer {operator_token}"}
    r = httpx.post(api_url + "/api/v1/users", json={"name": name, "roles": roles}, headers=h,
                   timeout=60)
    assert r.status_code == 201, r.text
    for case in cases:
        a = httpx.post(f"{api_url}/api/v1/users/{name}/cases", json={"case": case}, headers=h,
                       timeout=60)
        assert a.status_code < 300, a.text
    return Account(name, roles, str(r.json()["token"]))


def sign_in(page: Page, api_url: str, account: Account) -> None:
    """Sign in through the login form, as a person would."""
    page.goto(api_url + "/")
    page.get_by_label("Account name").fill(account.name)
    page.get_by_label("Token").fill(account.token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(api_url + "/app")


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot under artifacts/screenshots (kept by CI, shown in the README)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless chromium for the session."""
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium_path(), headless=True,
                               args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no cookies) at 1280x720 with one page."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 720})
    p = ctx.new_page()
    try:
        yield p
    finally:
        ctx.close()
