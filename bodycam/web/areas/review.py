"""Review: pending matches confirmed or rejected with a note; decided ones reopened by a
supervisor with a reason."""

from __future__ import annotations

from bodycam.web.core import Page

PAGES = [
    Page("review", "Review", "review", "review/review.html", "review.js"),
]
