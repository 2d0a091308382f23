"""BENCHMARKS.md is shared by several benchmarks: each owns one marked section of it."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, section: str, start: str, end: str) -> None:
    """Replace (or append) the section between the markers `start` and `end` (which
    `section` itself begins and ends with); the rest of the file is kept as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
