"""Supervisor and admin: accounts, case assignments and holds, thresholds, policy."""

from __future__ import annotations

from bodycam.web.core import Page

PAGES = [
    Page("accounts", "Accounts", "users", "govern/accounts.html", "govern.js"),
    Page("cases", "Cases", "cases.assign", "govern/cases.html", "govern.js"),
    Page("thresholds", "Thresholds", "thresholds.set", "govern/thresholds.html", "govern.js"),
    Page("policy", "Policy", "policy.set", "govern/policy.html", "govern.js"),
]
