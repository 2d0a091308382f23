"""Investigator: cases, search by photo, subject or track, unknown persons, enrolment."""

from __future__ import annotations

from bodycam.web.core import Page

PAGES = [
    Page("case", "Case", "matches", "investigate/case.html", "investigate.js"),
    Page("search", "Search", "search", "investigate/search.html", "investigate.js"),
    Page("persons", "Persons", "persons", "investigate/persons.html", "investigate.js"),
    Page("enrol", "Enrol", "subjects.enroll", "investigate/enrol.html", "investigate.js"),
]
