"""Reading evidence back: videos and their face tracks."""

from __future__ import annotations

from dataclasses import dataclass

from bodycam.db import Conn, uid
from bodycam.errors import NotFoundError


@dataclass(frozen=True)
class TrackRow:
    """A stored face track (the `tracks --json` contract)."""

    track_id: str
    video_id: str
    start_s: float
    end_s: float
    n_detections: int
    quality: float
    thumbnail: str | None
    model: str | None
    computed_on: str | None  # the decoder and each model's device and precision

    def as_json(self) -> dict[str, object]:
        """JSON object for the CLI."""
        return {"track_id": self.track_id, "video_id": self.video_id,
                "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "n_detections": self.n_detections, "quality": round(self.quality, 4),
                "thumbnail": self.thumbnail, "model": self.model,
                "computed_on": self.computed_on}


def list_tracks(conn: Conn, video_id: str) -> list[TrackRow]:
    """A video's tracks in time order; raises NotFoundError for an unknown video."""
    if conn.execute("SELECT 1 FROM videos WHERE id = %s", (uid(video_id),)).fetchone() is None:
        raise NotFoundError(f"no video {video_id}")
    rows = conn.execute(
        "SELECT t.id::text AS id, t.video_id::text AS video_id, t.start_s, t.end_s,"
        " t.n_detections, t.quality, t.thumbnail_key, t.model, u.computed_on FROM tracks t"
        " LEFT JOIN work_units u ON u.video_id = t.video_id AND u.idx = t.chunk_idx"
        " WHERE t.video_id = %s ORDER BY t.start_s, t.id", (uid(video_id),)).fetchall()
    return [TrackRow(r["id"], r["video_id"], float(r["start_s"]), float(r["end_s"]),
                     int(r["n_detections"]), float(r["quality"]), r["thumbnail_key"], r["model"],
                     r["computed_on"])
            for r in rows]
