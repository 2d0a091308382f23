"""Every page of the web app, by area (each area's module lists its own)."""

from __future__ import annotations

from bodycam.web.areas import audit, clerk, govern, investigate, redact, review
from bodycam.web.core import Page

PAGES: list[Page] = [*clerk.PAGES, *investigate.PAGES, *review.PAGES, *redact.PAGES,
                     *govern.PAGES, *audit.PAGES]
