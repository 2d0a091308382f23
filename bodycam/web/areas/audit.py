"""Auditor: the audit log, its chain status, exports."""

from __future__ import annotations

from bodycam.web.core import Page

PAGES = [
    Page("audit", "Audit log", "audit.verify", "audit/audit.html", "audit.js"),
    Page("exports", "Exports", "audit.export", "audit/exports.html", "audit.js"),
]
