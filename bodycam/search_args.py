"""What a search is asked with, and the check of a similarity typed by a user: no database,
no model, nothing of the server's, so the CLI checks them before it sends anything, the same
way the server checks them again (`bodycam.search`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from bodycam.errors import InvalidInputError


@dataclass(frozen=True)
class Probe:
    """What a user searches with, as given: a photo (and face index), an enrolled subject's
    id or a stored track's id. `search` checks the policy and the threshold before any
    face in a photo is detected or embedded, and resolves ids only inside the search's case."""

    photo: str | None = None
    face: int | None = None
    subject_id: str | None = None
    track_id: str | None = None

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.photo, self.subject_id, self.track_id)) != 1:
            raise InvalidInputError("give exactly one of photo, subject or track")
        if self.face is not None and self.photo is None:  # was ignored without a word: bb32
            raise InvalidInputError("face picks a face of a photo: a subject or a track has one"
                                    " face")


@dataclass(frozen=True)
class Filters:
    """Optional limits on where to look."""

    video_id: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None

    def as_json(self) -> dict[str, str | None]:
        """For the search record."""
        return {"video_id": self.video_id,
                "from": self.date_from.isoformat() if self.date_from else None,
                "to": self.date_to.isoformat() if self.date_to else None}


def check_similarity(value: float, flag: str) -> float:
    """A finite cosine similarity in [-1, 1]; raises InvalidInputError otherwise (NaN and
    infinities compare false with every bound, so they are refused by name first)."""
    if not math.isfinite(value):
        raise InvalidInputError(f"{flag} {value} is not a number: give a cosine similarity"
                                " between the floor and 1.0")
    if not -1.0 <= value <= 1.0:
        raise InvalidInputError(f"{flag} {value} is a cosine similarity: between -1.0 and 1.0")
    return value
