"""What an upload may be (`limits` in the settings), apart from the settings loader: the probe's
child process reads it from its request without importing pydantic-settings or the other
sections (a quarter of a second of every ingest), and the settings use its Section base."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Section(BaseModel):
    """A settings section: unknown keys are rejected so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class LimitsSettings(Section):
    """What an upload may be. Anything outside is refused at ingest with a typed error."""

    max_bytes: int = Field(64 * 1024**3, gt=0, description="largest accepted file, bytes")
    max_duration_s: float = Field(12 * 3600, gt=0, description="longest accepted video, seconds")
    min_duration_s: float = Field(0.1, ge=0, description="shortest accepted video, seconds")
    max_width_px: int = Field(7680, gt=0, description="widest accepted frame, pixels")
    max_height_px: int = Field(4320, gt=0, description="tallest accepted frame, pixels")
    min_side_px: int = Field(64, gt=0, description="smallest accepted frame side, pixels")
    max_pixels: int = Field(
        7680 * 4320, gt=0,
        description="most pixels in one frame; every decoded frame is checked, and FFmpeg "
                    "refuses to allocate a larger picture")
    max_frame_bytes: int = Field(
        7680 * 4320 * 3 // 2, gt=0,
        description="largest decoded picture in bytes (8K at 8-bit 4:2:0 by default): 8K at "
                    "10-bit 4:4:4 is four times that, and took a worker past 3 GiB")
    max_fps: float = Field(
        240.0, gt=0, description="most frames a second, on average over the video (every "
        "frame is decoded: a 2-MB file of 1,000 frames a second held a worker for half an hour)")
    max_streams: int = Field(
        8, ge=1, le=1000, description="most streams (video, audio, data) in one file; FFmpeg "
        "opens a decoder for each while it probes")
    probe_timeout_s: float = Field(
        30.0, gt=0, le=600, description="longest a probe may take, plus 1 s per 100 MB")
    probe_memory_mib: int = Field(
        1024, ge=128, description="most memory FFmpeg may take while a file is probed")
    containers: tuple[str, ...] = Field(
        ("mov", "matroska", "avi", "mpegts"),
        description="accepted containers (FFmpeg demuxer names; `mov` covers MP4, `matroska` "
                    "WebM). Playlists and scripts (HLS, DASH, concat, SDP) are never accepted: "
                    "they make FFmpeg read other files",
    )

    codecs: tuple[str, ...] = Field(
        ("h264", "hevc", "mpeg4", "vp8", "vp9", "av1", "mjpeg", "prores", "mpeg2video"),
        description="video codecs accepted at ingest (ffmpeg codec names)",
    )

    @model_validator(mode="after")
    def _no_following_demuxers(self) -> LimitsSettings:
        following = {"concat", "hls", "applehttp", "dash", "sdp", "rtsp", "rtp", "image2",
                     "tee", "data", "lavfi"}
        bad = sorted(set(self.containers) & following)
        if bad:
            raise ValueError(f"limits.containers may not include {', '.join(bad)}: these "
                             "demuxers read other files or URLs")
        return self
