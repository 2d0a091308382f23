"""Probe and validate a video file with PyAV (FFmpeg's libraries): container, codec, integrity."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av

from bodycam.config import LimitsSettings
from bodycam.domain import MediaInfo
from bodycam.errors import InvalidMediaError
from bodycam.media.source import OpenVideo, check_frame, open_video, why


def probe(path: Path, limits: LimitsSettings, name: str | None = None) -> MediaInfo:
    """Open a video, check it against the limits and that it decodes from start to end.

    Demuxes every packet (cheap: no decoding) to count frames and find truncation, decodes the
    first frames and the last group of pictures. Raises InvalidMediaError with the reason.
    """
    label = name or path.name
    size = path.stat().st_size
    if size == 0:
        raise InvalidMediaError(label, "empty file (0 bytes)")
    if size > limits.max_bytes:
        raise InvalidMediaError(label, f"{size} bytes is over the limit of {limits.max_bytes}")
    with open_video(path, limits, label) as media:
        container, stream = media.container, media.stream
        codec = stream.codec_context.codec.canonical_name
        fmt = container.format.name
        width, height = stream.codec_context.width, stream.codec_context.height
        time_base = stream.time_base or Fraction(1, 90000)
        pts_list, keys = _demux_pts(container, stream, label)
        if not pts_list:
            raise InvalidMediaError(label, "no video frames (empty or truncated file)")
        start_pts = min(pts_list)
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        last = max(pts_list)
        duration_s = float((last - start_pts) * time_base) + float(1 / rate)
        if stream.frames and len(pts_list) < 0.98 * stream.frames:
            raise InvalidMediaError(
                label, f"truncated: the index lists {stream.frames} frames but only "
                       f"{len(pts_list)} are present")
        if duration_s > limits.max_duration_s:
            raise InvalidMediaError(
                label,
                f"{duration_s:.0f} s is longer than the limit of {limits.max_duration_s:.0f} s")
        if duration_s < limits.min_duration_s:
            raise InvalidMediaError(label, f"{duration_s:.3f} s is too short to process")
        rotation = _decode_ends(media, (width, height), keys)
    return MediaInfo(
        container=fmt, codec=codec, width_px=width, height_px=height, duration_s=duration_s,
        frame_rate=Fraction(rate), n_frames=len(pts_list), rotation_deg=rotation,
        time_base=Fraction(time_base), start_pts=start_pts,
    )


def _demux_pts(container: av.container.InputContainer, stream: av.VideoStream,
               label: str) -> tuple[list[int], list[int]]:
    """Every packet's PTS, and the PTS of the last two keyframes (where the last GOPs start)."""
    pts: list[int] = []
    keys: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet
            if packet.is_corrupt:
                raise InvalidMediaError(label, "corrupt video data (damaged packet)")
            if packet.pts is not None:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys = [*keys[-1:], packet.pts]
    except av.FFmpegError as exc:
        raise InvalidMediaError(label, f"corrupt or truncated video ({why(exc)})") from None
    return pts, keys


def _decode_ends(media: OpenVideo, size: tuple[int, int], keys: list[int]) -> int:
    """Decode the first frame and the last group of pictures; return the rotation in degrees."""
    container, stream, limits, label = media.container, media.stream, media.limits, media.label
    try:
        container.seek(0, stream=stream)
        first = next(container.decode(stream), None)
        if first is None:
            raise InvalidMediaError(label, "the first frame does not decode")
        check_frame(first, size, limits, label)
        rotation = int(first.rotation or 0)
        if keys:
            # Seek to the last keyframe; some demuxers (MPEG-TS) land after it, so earlier
            # starting points follow. Only frames of the last group of pictures count.
            last = keys[-1]
            decoded = 0
            for start in dict.fromkeys([last, *keys[:-1], int(stream.start_time or 0), 0]):
                container.seek(start, stream=stream, backward=True, any_frame=False)
                for frame in container.decode(stream):
                    check_frame(frame, size, limits, label)
                    if frame.pts is not None and frame.pts >= last:
                        decoded += 1
                if decoded:
                    break
            if decoded == 0:
                raise InvalidMediaError(label, "truncated: the end of the video does not decode")
    except av.FFmpegError as exc:
        raise media.refusal(exc, "corrupt video data") from None
    return rotation % 360
