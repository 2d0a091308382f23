"""The one way Bodycam opens media: a local file, allowed containers and codecs, bounded frames.

FFmpeg opens much more than files: `concat:` and `http:` names, ffconcat scripts, HLS and DASH
playlists and SDP descriptions all make it read other paths or URLs. An evidence file must be
decoded from its own bytes only, so every open here:

- names the file as an absolute `file:` URL and allows only the `file` protocol
  (`protocol_whitelist`), so a name like `concat:a.mp4` is a literal file name and no nested
  open can reach a network or another protocol;
- allows only real video containers (`format_whitelist`, checked by libavformat right after it
  has sniffed the format and before the demuxer reads the header), and checks the opened
  format's name again;
- allows only the accepted codecs (`codec_whitelist`, for the decoders stream-info probing opens
  and for ours) and bounds every picture a decoder may allocate (`max_pixels`), so a stream that
  changes to a huge resolution mid-way is refused by FFmpeg before it allocates the frame;
- and `check_frame` refuses, in Python, any decoded frame whose size differs from the size that
  was validated at ingest.
"""

from __future__ import annotations

import logging
import math
import os
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import av
import av.container
import av.logging
from av.codec.hwaccel import HWAccel
from av.sidedata.sidedata import SideData
from av.stream import Disposition

from bodycam.cpus import usable_cpus
from bodycam.errors import InvalidMediaError
from bodycam.media.limits import LimitsSettings

if TYPE_CHECKING:  # the probe's child loads this module without numpy
    import numpy as np

# First bytes of inputs that FFmpeg would follow to other files or URLs, or that are plainly
# not video: named so the refusal says what the file is. The format allow-list is what
# enforces the rule; this only gives the reason a name.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"#EXTM3U", "an HLS playlist (it names other files or URLs)"),
    (b"ffconcat", "an FFmpeg concat script (it names other files)"),
    (b"<?xml", "an XML document (e.g. a DASH manifest)"),
    (b"<MPD", "a DASH manifest (it names other files or URLs)"),
    (b"v=0", "an SDP session description (it names network streams)"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a zip archive"),
)
SNIFF_BYTES = 64


def describe_bytes(head: bytes) -> str | None:
    """What the first bytes of a file say it is when it is not a video container, or None."""
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for magic, what in _SIGNATURES:
        if stripped.startswith(magic):
            return what
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        if b"file " in head or b"file\t" in head:  # a concat script without its header line
            return "an FFmpeg concat script (it names other files)"
        return "a text file"
    return None


@lru_cache(maxsize=8)
def _decoder_names(codecs: tuple[str, ...]) -> str:
    """Every decoder of the accepted codecs (FFmpeg matches `codec_whitelist` on decoder
    names: AV1 may be decoded by `libdav1d`)."""
    names = set(codecs)
    for name in av.codecs_available:
        try:
            codec = av.codec.Codec(name, "r")
        except (ValueError, av.FFmpegError):
            continue
        if codec.type == "video" and codec.canonical_name in codecs:
            names.add(codec.name)
    return ",".join(sorted(names))


def _format_ok(format_name: str, limits: LimitsSettings) -> bool:
    return any(part in limits.containers for part in format_name.split(","))


def open_options(limits: LimitsSettings) -> dict[str, str]:
    """AVFormatContext options of every open: file protocol, accepted containers and codecs."""
    return {
        "protocol_whitelist": "file",
        "format_whitelist": ",".join(limits.containers),
        "codec_whitelist": _decoder_names(tuple(limits.codecs)),
        "max_pixels": str(limits.max_pixels),  # for the decoders stream-info probing opens
        # Each gets a decoder while it is probed. One over the limit, so that a file with
        # more is seen to have more: Matroska stops making streams at the bound without an
        # error, and then stopped returning the video's packets too (an 8-s video with eight
        # audio tracks was analysed as its first two frames).
        "max_streams": str(limits.max_streams + 1),
        "threads": "1",  # stream-info probing decodes on the calling thread
    }


def decoder_options(limits: LimitsSettings) -> dict[str, str]:
    """AVCodecContext options of our decoders: accepted codecs only, bounded picture size."""
    return {"codec_whitelist": _decoder_names(tuple(limits.codecs)),
            "max_pixels": str(limits.max_pixels)}


@dataclass
class OpenVideo:
    """An opened video: its container and footage stream, and how to explain a failure."""

    path: Path
    container: av.container.InputContainer
    stream: av.VideoStream
    label: str
    limits: LimitsSettings
    decoded_on: str = "cpu"  # the hardware decoder's device ('cuda') where one decodes it

    def refusal(self, exc: av.FFmpegError, what: str,
                start_pts: int | None = None) -> InvalidMediaError:
        """The clean error for an FFmpeg failure, naming the frame-size bound when it was hit.

        FFmpeg says why only in its log, and its log cannot stay on while frame threads run
        (PyAV's log callback takes the GIL from FFmpeg's threads, which deadlocks a decode
        that holds it). So the failing stretch is decoded again on one thread with the log
        captured; the frame-size bound still holds, so nothing large is allocated.
        """
        self.container.close()  # its decoder threads must be gone before the log is on

        def again() -> None:
            with open_video(self.path, self.limits, self.label, threads=1) as media:
                if start_pts is not None:
                    media.container.seek(start_pts, stream=media.stream, backward=True,
                                         any_frame=False)
                for _frame in media.container.decode(media.stream):
                    pass

        for message in reversed(_logged(again)[-50:]):
            found = _PIXELS.search(message)
            if found and found[3] == "is invalid":  # 0x0, or a side over FFmpeg's bound
                return InvalidMediaError(
                    self.label, f"a frame has an invalid size, {found[1]}x{found[2]}")
            if found:
                return InvalidMediaError(
                    self.label, f"a frame is {found[1]}x{found[2]}, over the limit of "
                                f"{self.limits.max_pixels} pixels (the resolution changes "
                                "mid-stream): refused before decoding it")
        return InvalidMediaError(self.label, f"{what} ({why(exc)})")


# FFmpeg lines that PyAV hands to Python logging after a capture has ended go nowhere by
# default: without a handler Python would print them to stderr under the CLI's one error line.
logging.getLogger("libav").addHandler(logging.NullHandler())
log = logging.getLogger(__name__)
_PIXELS = re.compile(r"Picture size (\d+)x(\d+) (exceeds|is invalid)")


@cache
def hardware_decoding(device_type: str) -> bool:
    """Whether FFmpeg can open a `device_type` decoding device here (once per process).

    Where it cannot (no GPU, no driver), decoding stays on the CPU, with one warning."""
    try:
        HWAccel(device_type=device_type, allow_software_fallback=True).create(
            av.Codec("h264", "r"))
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.warning("no %s video decoder is usable here (%s): decoding on the CPU",
                    device_type, why(exc))
        return False
    return True


@contextmanager
def open_video(path: Path, limits: LimitsSettings, label: str, threads: int | None = None,
               hw_device: str | None = None) -> Iterator[OpenVideo]:
    """Open a local video file for decoding its footage (its largest video stream, cover art
    aside); closes it on exit.

    Raises InvalidMediaError (permanent) when the file is not an accepted container, has no
    video stream, or its codec or frame size is outside the limits. `threads` 1 decodes on
    the calling thread only. `hw_device` ('cuda') decodes on that device where FFmpeg can
    (frames come back to the host as usual), else on the CPU: a stream the device's decoder
    cannot take falls back inside FFmpeg.
    """
    hwaccel = (HWAccel(device_type=hw_device, allow_software_fallback=True)
               if hw_device is not None and hardware_decoding(hw_device) else None)
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    what = describe_bytes(head)
    if what is not None:
        raise InvalidMediaError(label, f"not a readable video: {what}")
    url = "file:" + os.path.abspath(path)
    try:
        container = av.open(url, options=open_options(limits), metadata_errors="ignore",
                            hwaccel=hwaccel)
    except av.ArgumentError:
        raise InvalidMediaError(
            label, "not an accepted video container (accepted: "
                   f"{', '.join(limits.containers)})") from None
    except MemoryError:  # FFmpeg's ENOMEM, which its bound on streams gives too
        raise InvalidMediaError(label, _out_of_memory(url, limits)) from None
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        raise InvalidMediaError(
            label, f"not a readable video container ({why(exc)})") from None
    try:
        stream = _video_stream(container, limits, label)
        # The picture the file shows: H.264/HEVC crop their coded frame, and FFmpeg skips a
        # left or top crop that would leave planes unaligned unless told it may. Such a file
        # (400x226 shown, 430x226 coded) was refused as changing size (bb44).
        stream.codec_context.flags |= av.codec.context.Flags.unaligned
        if threads is not None:
            stream.codec_context.thread_count = threads
        yield OpenVideo(path, container, stream, label, limits,
                        hw_device if hw_device is not None and hwaccel is not None else "cpu")
    finally:
        container.close()


def _logged(action: Callable[[], object]) -> list[str]:
    """FFmpeg's error lines while `action` runs on this thread alone (no frame threads: see
    OpenVideo.refusal), its failure ignored: FFmpeg gives its reasons only in its log."""
    level = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR)
    try:
        with av.logging.Capture(local=True) as logs, \
                suppress(av.FFmpegError, InvalidMediaError, MemoryError, UnicodeDecodeError):
            action()
    finally:
        av.logging.set_level(level)
    return [message for _level, _name, message in logs]


def _out_of_memory(url: str, limits: LimitsSettings) -> str:
    """Why opening `url` ran out of memory: more streams than max_streams (which FFmpeg says
    only in its log, so the open is tried again with the log captured; stream-info probing
    decodes on the calling thread), or the memory itself."""
    logs = _logged(lambda: av.open(url, options=open_options(limits),
                                   metadata_errors="ignore").close())
    if any("max_streams" in message for message in logs):
        return too_many_streams(limits)
    return "opening it takes more memory than it is allowed"


def too_many_streams(limits: LimitsSettings) -> str:
    """Why a file with more streams than the limit is refused."""
    return f"more than {limits.max_streams} streams (the limit): not a camera's recording"


def _video_stream(container: av.container.InputContainer, limits: LimitsSettings,
                  label: str) -> av.VideoStream:
    fmt = container.format.name
    if not _format_ok(fmt, limits):  # libavformat enforces this; a second look is cheap
        raise InvalidMediaError(label, f"container '{fmt}' is not accepted")
    # Attachments (fonts, a picture) get no decoder: streams that decode count.
    if sum(1 for st in container.streams if st.type != "attachment") > limits.max_streams:
        raise InvalidMediaError(label, too_many_streams(limits))
    # Cover art and thumbnails are video streams of one picture: never the footage.
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        raise InvalidMediaError(label, f"no video stream in this {fmt.split(',')[0]} file")
    # One footage stream: which of two a player shows is not the file's to decide for
    # Bodycam (the largest picture was taken, and a one-frame still beside the footage, or
    # a first stream of equal size while the default flag marked the other, was analysed
    # instead: done, no face). The clerk splits them and each is analysed.
    if len(videos) > 1:
        sizes = ", ".join([f"{v.codec_context.width}x{v.codec_context.height}"
                           if v.codec_context is not None else "?" for v in videos[:4]]
                          + ["..."] * (len(videos) > 4))
        raise InvalidMediaError(
            label, f"{len(videos)} video streams ({sizes}): one is analysed, so split them "
                   "and ingest each (ffmpeg -i IN -map 0:v:N -c copy OUT_N.mp4)")
    stream = videos[0]
    ctx = stream.codec_context
    # The codec's canonical name (`av1`), not its decoder's (`libdav1d`).
    name = ctx.codec.canonical_name if ctx is not None else "unknown"
    if ctx is None or name not in limits.codecs:
        raise InvalidMediaError(
            label, f"unsupported video codec '{name}' (accepted: {', '.join(limits.codecs)})")
    check_size(ctx.width, ctx.height, limits, label)
    check_bytes(ctx.format, ctx.width, ctx.height, limits, label)
    ctx.options = decoder_options(limits)
    return stream


def frame_bytes(fmt: av.VideoFormat, width: int, height: int) -> int:
    """A decoded picture's bytes in its pixel format (padded: 10 bits take 16)."""
    return width * height * fmt.padded_bits_per_pixel // 8


def check_bytes(fmt: av.VideoFormat | None, width: int, height: int, limits: LimitsSettings,
                label: str) -> None:
    """Refuse a pixel format that makes a picture larger than limits.max_frame_bytes."""
    size = 0 if fmt is None else frame_bytes(fmt, width, height)
    if size > limits.max_frame_bytes:
        raise InvalidMediaError(
            label, f"{width}x{height} in {fmt.name if fmt else '?'} is {size} bytes a picture, "
                   f"over the limit of {limits.max_frame_bytes}")


# What a decoder's frame threads may hold at once, counted as four pictures a thread.
DECODE_BYTES = 512 * 2**20


def frame_threads(stream: av.VideoStream) -> None:
    """Decode on frame threads, as many as the CPUs this process may use but no more than
    DECODE_BYTES allows for the picture's size: 8K on sixteen threads took 1.6 GiB before any
    model loaded."""
    ctx = stream.codec_context
    fmt = ctx.format or av.VideoFormat("yuv420p")
    stream.thread_type = "AUTO"
    ctx.thread_count = max(1, min(usable_cpus(),
                                  DECODE_BYTES // (4 * frame_bytes(fmt, ctx.width, ctx.height))))


def check_size(width: int, height: int, limits: LimitsSettings, label: str) -> None:
    """Refuse a frame size outside the limits (per side and in total pixels)."""
    if width > limits.max_width_px or height > limits.max_height_px \
            or width * height > limits.max_pixels:
        raise InvalidMediaError(
            label, f"{width}x{height} is larger than the limit "
                   f"{limits.max_width_px}x{limits.max_height_px}")
    if min(width, height) <= 0:  # the decoder kept none: a size it refuses (16000x16000
        # MJPEG) or a damaged header; "0x0 is too small to hold faces" named no cause (bb43)
        raise InvalidMediaError(label, "its frame size cannot be read (the decoder refuses"
                                " the size the file gives, or the header is damaged)")
    if min(width, height) < limits.min_side_px:
        raise InvalidMediaError(label, f"{width}x{height} is too small to hold faces")


def check_frame(frame: av.VideoFrame, expected: tuple[int, int], limits: LimitsSettings,
                label: str) -> None:
    """Refuse a decoded frame whose size is not the validated one (a mid-stream change), or
    whose pixel format makes it larger than limits.max_frame_bytes."""
    size = (frame.width, frame.height)
    if size != expected:
        # "by": a unit that seeks in past the change meets it first, later than it happened
        t = f" by {float(frame.time):.2f} s" if frame.time is not None else ""
        check_size(frame.width, frame.height, limits, label)
        raise InvalidMediaError(
            label, f"the frame size changes from {expected[0]}x{expected[1]} to "
                   f"{size[0]}x{size[1]}{t}: videos that change resolution are not accepted")
    check_bytes(frame.format, frame.width, frame.height, limits, label)


def orientation(frame: av.VideoFrame) -> tuple[int, bool] | None:
    """How a player shows the frame, from its display matrix: (quarter turns counter-clockwise,
    then mirrored left to right), as FFmpeg's own autorotation does; None without a matrix or
    with one that is no quarter turn (all zeros, say). A mirrored matrix was read as a half
    turn (PyAV's `rotation` ignores the flip), and the faces came out upside down."""
    side = frame.side_data.get("DISPLAYMATRIX")
    if not isinstance(side, SideData):
        return None
    raw = bytes(side)
    if len(raw) < 36:  # nine 32-bit numbers
        return None
    m = struct.unpack("<9i", raw[:36])
    a, b, c, d = m[0], m[1], m[3], m[4]
    mirrored = a * d - b * c < 0
    if mirrored:  # undo the flip (FFmpeg's av_display_matrix_flip) to read the turn
        a, c = -a, -c
    if a == b == 0:
        return None
    return round(-math.degrees(math.atan2(b, a)) / 90) % 4, mirrored


def upright(img: np.ndarray, turns: int, mirrored: bool) -> np.ndarray:
    """An image as `orientation` says a player shows it."""
    import numpy as np  # not at the top: the probe's child loads this module without numpy

    if turns:
        img = np.rot90(img, k=turns)
    if mirrored:
        img = img[:, ::-1]
    return np.ascontiguousarray(img) if turns or mirrored else img


def why(exc: BaseException) -> str:
    """A short reason from an FFmpeg error, without the file name it quotes."""
    text = str(exc).split(":")[0] if isinstance(exc, av.FFmpegError) else type(exc).__name__
    text = text.split("]")[-1]  # drop a leading "[Errno N]"
    return text.strip() or type(exc).__name__
