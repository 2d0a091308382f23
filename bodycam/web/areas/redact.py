"""Redaction: a video's face tracks to keep or hide, manual boxes, render and report."""

from __future__ import annotations

from bodycam.web.core import Page

PAGES = [
    Page("redact", "Redaction", "redact", "redact/redact.html", "redact.js"),
]
