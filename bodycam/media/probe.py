"""Probe and validate a video file with PyAV (FFmpeg's libraries): container, codec, integrity."""

from __future__ import annotations

import os
import stat
from fractions import Fraction
from pathlib import Path

import av

from bodycam.config import LimitsSettings
from bodycam.domain import MediaInfo
from bodycam.errors import InvalidMediaError

# Inputs that name a stream rather than a file: Bodycam is batch-only, there is no live mode.
STREAM_PREFIXES = ("rtsp://", "rtmp://", "rtp://", "udp://", "tcp://", "srt://", "http://",
                   "https://", "ftp://", "s3://", "pipe:", "-")


def check_is_batch_file(name: str) -> Path:
    """Refuse URLs, pipes, devices and missing paths; return the path of a regular file.

    Raises InvalidMediaError naming the input and why it is refused.
    """
    lowered = name.lower()
    if lowered == "-" or any(lowered.startswith(p) for p in STREAM_PREFIXES if p != "-"):
        raise InvalidMediaError(
            name, "streams and URLs are not accepted: Bodycam ingests recorded files only "
            "(there is no live mode); download the recording and ingest the file")
    path = Path(name)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise InvalidMediaError(name, "no such file") from None
    if not stat.S_ISREG(mode):
        raise InvalidMediaError(name, "not a regular file (device, pipe or folder): "
                                      "only recorded files are accepted")
    if not os.access(path, os.R_OK):
        raise InvalidMediaError(name, "file is not readable")
    return path


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
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidMediaError(label, f"not a readable video container ({_why(exc)})") from None
    with container:
        if not container.streams.video:
            raise InvalidMediaError(label, f"no video stream in this {container.format.name} file")
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        fmt = container.format.name
        if fmt in ("image2", "png_pipe", "jpeg_pipe", "gif", "webp_pipe", "bmp_pipe", "tty"):
            raise InvalidMediaError(label, f"an image or text file ({fmt}), not a video")
        if codec not in limits.codecs:
            raise InvalidMediaError(
                label, f"unsupported video codec '{codec}' (accepted: {', '.join(limits.codecs)})")
        width, height = stream.codec_context.width, stream.codec_context.height
        if width > limits.max_width_px or height > limits.max_height_px:
            raise InvalidMediaError(
                label, f"{width}x{height} is larger than the limit "
                       f"{limits.max_width_px}x{limits.max_height_px}")
        if min(width, height) < limits.min_side_px:
            raise InvalidMediaError(label, f"{width}x{height} is too small to hold faces")
        time_base = stream.time_base or Fraction(1, 90000)
        pts_list = _demux_pts(container, stream, label)
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
        rotation = _decode_ends(container, stream, label)
    return MediaInfo(
        container=fmt, codec=codec, width_px=width, height_px=height, duration_s=duration_s,
        frame_rate=Fraction(rate), n_frames=len(pts_list), rotation_deg=rotation,
        time_base=Fraction(time_base), start_pts=start_pts,
    )


def _demux_pts(container: av.container.InputContainer, stream: av.VideoStream,
               label: str) -> list[int]:
    pts: list[int] = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet
            if packet.is_corrupt:
                raise InvalidMediaError(label, "corrupt video data (damaged packet)")
            if packet.pts is not None:
                pts.append(packet.pts)
    except av.FFmpegError as exc:
        raise InvalidMediaError(label, f"corrupt or truncated video ({_why(exc)})") from None
    return pts


def _decode_ends(container: av.container.InputContainer, stream: av.VideoStream,
                 label: str) -> int:
    """Decode the first frame and the last group of pictures; return the rotation in degrees."""
    try:
        container.seek(0, stream=stream)
        first = next(container.decode(stream), None)
        if first is None:
            raise InvalidMediaError(label, "the first frame does not decode")
        rotation = int(first.rotation or 0)
        if stream.duration:
            container.seek(int(stream.start_time or 0) + int(stream.duration), stream=stream,
                           backward=True, any_frame=False)
            decoded = sum(1 for _ in container.decode(stream))
            if decoded == 0:
                raise InvalidMediaError(label, "truncated: the end of the video does not decode")
    except av.FFmpegError as exc:
        raise InvalidMediaError(label, f"corrupt video data ({_why(exc)})") from None
    return rotation % 360


def _why(exc: BaseException) -> str:
    text = str(exc).split(":")[0] if isinstance(exc, av.FFmpegError) else type(exc).__name__
    return text.strip() or type(exc).__name__
