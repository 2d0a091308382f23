"""Clerk: upload footage and follow its processing."""

from __future__ import annotations

from bodycam.web.core import Page

PAGES = [
    Page("upload", "Upload", "ingest", "clerk/upload.html", "clerk.js"),
    Page("videos", "Videos", "jobs", "clerk/videos.html", "clerk.js"),
]
