"""Text people type into the record (purposes, reasons, notes, names): one rule for each.

Such text is read later by auditors, reviewers and courts, in the web app, in exports and in
terminals. A purpose made only of a zero-width space is no stated purpose, and an escape
sequence in a subject's name would act on the terminal of whoever lists it. So a required
field must hold a letter or a digit, and no field may hold a control character (tabs and line
breaks aside) or a bidirectional override, which can make a line read other than it is stored.
A refusal names the field as the API and the web app's forms name it (`purpose`, `note`), never
a CLI flag: the server answers the CLI, the web app and agencies' systems alike.
"""

from __future__ import annotations

import unicodedata

from bodycam.errors import InvalidInputError

_ALLOWED_CONTROLS = frozenset("\t\n\r")
# Embeddings, overrides and isolates: they reorder what a reader sees.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def refuse_controls(value: str, field: str) -> str:
    """The value unchanged; InvalidInputError naming the first control character (other than
    a tab or a line break) or bidirectional override it holds."""
    for ch in value:
        if (unicodedata.category(ch) == "Cc" and ch not in _ALLOWED_CONTROLS) or ch in _BIDI:
            raise InvalidInputError(f"{field} holds the control character U+{ord(ch):04X}, "
                                    "which no text field accepts")
    return value


def required(value: str | None, field: str, why: str) -> str:
    """The value stripped; `missing FIELD: WHY` unless it holds a letter or a digit (spaces,
    punctuation alone, and invisible characters such as U+200B are not a stated reason), and
    refused if it holds a control character (see refuse_controls)."""
    text = (value or "").strip()
    if not any(unicodedata.category(ch)[0] in "LN" for ch in text):
        raise InvalidInputError(f"missing {field}: {why}")
    return refuse_controls(text, field)
