"""Probe and validate a video file with PyAV (FFmpeg's libraries): container, codec, integrity.

Probing reads a file nobody has vetted yet, so it runs in a child process bounded in memory
and time (`limits.probe_memory_mib`, `limits.probe_timeout_s`): what FFmpeg allocates while
it opens a hostile file (a stream-info probe of many 8K streams took the API server to 4 GiB)
or how long it takes (an MP4 edit list repeated thousands of times lists millions of frames)
is the child's, and the caller gets one clean refusal. The child sees none of the caller's
`BODYCAM_` settings (which may hold keys) and gets the limits on its stdin. It costs an
interpreter start (about 0.4 s) per probe.
"""

from __future__ import annotations

import heapq
import json
import os
import resource
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import av

from bodycam.domain import MediaInfo
from bodycam.errors import InvalidMediaError, TransientError
from bodycam.media.limits import LimitsSettings
from bodycam.media.source import OpenVideo, check_frame, open_video, orientation, why


def probe(path: Path, limits: LimitsSettings, name: str | None = None,
          owner: str | None = None) -> MediaInfo:
    """Open a video, check it against the limits and that it decodes from start to end.

    Demuxes every packet (cheap: no decoding) to count frames and find truncation, decodes the
    first frames and the last group of pictures, in a child process bounded in memory and time
    (see the module). Raises InvalidMediaError with the reason. `owner` (the uploading
    account) probes one file at a time: its other uploads wait their turn without taking
    the turns of other accounts.
    """
    label = name or path.name
    size = path.stat().st_size
    if size == 0:
        raise InvalidMediaError(label, "empty file (0 bytes)")
    if size > limits.max_bytes:
        raise InvalidMediaError(label, f"{size} bytes is over the limit of {limits.max_bytes}")
    # Reading the file is part of probing it: a large file gets time for its bytes.
    timeout_s = limits.probe_timeout_s + size / PROBE_BYTES_PER_S
    request = json.dumps({"path": str(path.resolve()), "label": label,
                          "limits": limits.model_dump(mode="json")})
    env = {k: v for k, v in os.environ.items() if not k.startswith("BODYCAM_")}
    # A turn is waited for at most probe_timeout_s: six slow files at once were refused after
    # 66-99 s, and a plain clip behind them waited 68 s. Past it, try again later (503).
    with _turn(owner, label, limits.probe_timeout_s):
        try:
            done = subprocess.run([sys.executable, "-m", "bodycam.media.probe"],
                                  input=request, capture_output=True, text=True,
                                  timeout=timeout_s, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise InvalidMediaError(
                label, f"probing it took longer than {timeout_s:.0f} s: refused unread"
            ) from None
    try:
        answer = json.loads(done.stdout.strip().rsplit("\n", 1)[-1])
    except ValueError:  # the child died: a decoder crashed or the memory bound stopped it
        raise InvalidMediaError(
            label, f"probing it failed (it needs more than {limits.probe_memory_mib} MiB or "
                   f"crashed the decoder; exit {done.returncode})") from None
    if "refused" in answer:
        raise InvalidMediaError(label, str(answer["refused"]))
    return MediaInfo.from_json(answer["info"])


PROBE_BYTES_PER_S = 100e6  # time allowed per byte on top of probe_timeout_s: 100 MB/s
# Probes at once in one process: each may take probe_memory_mib, so twenty uploads at once
# must not take twenty times that. The others wait their turn, at most probe_timeout_s.
_PROBES = threading.BoundedSemaphore(2)
# One probe at a time per uploading account (per process), within the two: one account's
# six slow files held both turns, and every other account's uploads waited, then got a 503.
_OWNERS: weakref.WeakValueDictionary[str, threading.Semaphore] = weakref.WeakValueDictionary()
_OWNERS_LOCK = threading.Lock()


@contextmanager
def _turn(owner: str | None, label: str, wait_s: float) -> Iterator[None]:
    """Hold the owner's turn, then one of the process's, both waited for within wait_s in
    all; TransientError (503) past it."""
    deadline = time.monotonic() + wait_s
    mine: threading.Semaphore | None = None
    if owner is not None:
        with _OWNERS_LOCK:
            mine = _OWNERS.get(owner)
            if mine is None:
                mine = _OWNERS[owner] = threading.Semaphore(1)
        if not mine.acquire(timeout=wait_s):
            raise TransientError(f"{label}: your other uploads are being probed: try again")
    try:
        if not _PROBES.acquire(timeout=max(0.0, deadline - time.monotonic())):
            raise TransientError(f"{label}: the server is busy probing other files: try again")
        try:
            yield
        finally:
            _PROBES.release()
    finally:
        if mine is not None:
            mine.release()


RATE_SLACK_S = 10.0  # seconds of frames at max_fps a stretch may run ahead of the average
REPLAYED_PACKETS = 1000  # frames whose data was read before, allowed (edited QuickTime files)


def _child() -> None:
    """The child's side (`python -m bodycam.media.probe`, the request on stdin): bound its own
    memory, probe, print {"info": ...} or {"refused": reason} as one line."""
    request = json.loads(sys.stdin.read())
    limits = LimitsSettings(**request["limits"])
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * resource.getpagesize()
    budget = mapped + limits.probe_memory_mib * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    answer: dict[str, object]
    try:
        answer = {"info": _probe(Path(request["path"]), limits, request["label"]).as_json()}
    except InvalidMediaError as exc:
        answer = {"refused": exc.reason}
    except MemoryError:
        answer = {"refused": f"opening it needs more than {limits.probe_memory_mib} MiB"}
    print(json.dumps(answer), flush=True)


def _probe(path: Path, limits: LimitsSettings, label: str) -> MediaInfo:
    """What `probe` does, in the child."""
    # One decoding thread: the probe decodes a few frames, and its memory bound must not
    # depend on how many cores FFmpeg would give threads (and stacks) to.
    with open_video(path, limits, label, threads=1) as media:
        container, stream = media.container, media.stream
        codec = stream.codec_context.codec.canonical_name
        fmt = container.format.name
        width, height = stream.codec_context.width, stream.codec_context.height
        time_base = stream.time_base or Fraction(1, 90000)
        max_frames = int(limits.max_duration_s * limits.max_fps)
        declared_s = float(stream.duration * time_base) if stream.duration else 0.0
        if declared_s > limits.max_duration_s:
            raise InvalidMediaError(
                label, f"it declares {declared_s:.0f} s, longer than the limit of "
                       f"{limits.max_duration_s:.0f} s")
        if stream.frames > max_frames:
            raise InvalidMediaError(
                label, f"its index lists {stream.frames} frames, more than the limit's "
                       f"{max_frames} ({limits.max_duration_s:.0f} s at {limits.max_fps} fps)")
        found = _demux_pts(container, stream, label, time_base, limits)
        n, start_pts, keys, decoded = found.shown, found.first, found.keys, found.decoded
        if not n:
            raise InvalidMediaError(label, "no video frames (empty or truncated file)")
        rate = stream.average_rate or stream.guessed_rate or Fraction(30)
        duration_s = float((found.last - start_pts) * time_base) + float(1 / rate)
        decoded_s = float(found.decoded_ticks * time_base) + float(1 / rate)
        # An AVI's index also counts the empty chunks that stand for a dropped frame, or for
        # the wait before the picture starts: no demuxer yields them, and the frames present
        # still reach the end of the time the index spans. A valid file was refused as
        # truncated (bb35); a truncated one ends early.
        reaches_end = bool(declared_s) and duration_s >= 0.98 * declared_s
        if stream.frames and decoded < 0.98 * stream.frames and not reaches_end:
            raise InvalidMediaError(
                label, f"truncated: the index lists {stream.frames} frames but only "
                       f"{decoded} are present")
        if duration_s > limits.max_duration_s:
            raise InvalidMediaError(
                label,
                f"{duration_s:.0f} s is longer than the limit of {limits.max_duration_s:.0f} s")
        # The rate before the length: 65 frames stamped 0 are written one tick apart, which is
        # the real defect, not that their 5 ms are too short (bb35).
        if decoded > max(2, decoded_s * limits.max_fps):  # every one is decoded
            raise InvalidMediaError(
                label, f"{decoded} frames in {decoded_s:.3f} s, over the limit of "
                       f"{limits.max_fps} frames a second")
        if duration_s < limits.min_duration_s:
            raise InvalidMediaError(label, f"{duration_s:.3f} s is too short to process")
        turns, mirrored = _decode_ends(media, (width, height), keys)
        # Known once a frame is decoded for some codecs; the container's (an MP4 `pasp`
        # box) otherwise. One no camera gives is taken as square, as the release does.
        sar = stream.codec_context.sample_aspect_ratio or stream.sample_aspect_ratio
        aspect = Fraction(sar) if sar and PIXEL_ASPECT[0] <= sar <= PIXEL_ASPECT[1] \
            else Fraction(1)
    return MediaInfo(
        container=fmt, codec=codec, width_px=width, height_px=height, duration_s=duration_s,
        frame_rate=Fraction(rate), n_frames=n, rotation_deg=turns * 90,
        time_base=Fraction(time_base), start_pts=start_pts, mirrored=mirrored,
        pixel_aspect=aspect,
    )


PIXEL_ASPECT = (Fraction(1, 10), Fraction(10))  # pixel aspect ratios taken as they are


class _Demuxed(NamedTuple):
    shown: int  # packets with a PTS that an edit list does not discard
    first: int  # the first and last shown PTS
    last: int
    keys: list[int]  # the PTS of the last two keyframes (where the last GOPs start)
    decoded: int  # packets with a PTS, shown or not: each is decoded
    decoded_ticks: int  # the PTS they span


def _demux_pts(container: av.container.InputContainer, stream: av.VideoStream, label: str,
               time_base: Fraction, limits: LimitsSettings) -> _Demuxed:
    """Count the packets (`_Demuxed`). Stops, refusing, once the packets span more than
    the longest accepted video, or outnumber the highest frame rate over the time they span
    by RATE_SLACK_S of frames (an edit list repeated 43,300 times played 21.6 million frames
    of a 500-frame file: 80 s to count them all). Frames an edit list discards are decoded
    (later frames refer to them) but never shown: counted, they put the first frame 0.53 s
    before the one shown, and a manual region of a redaction landed that much early."""
    n, first, last, again, end = 0, 0, 0, 0, -1
    shown, first_shown, last_shown = 0, 0, 0
    keys: list[int] = []
    order = _TimeOrder(label, time_base)
    span = int(limits.max_duration_s / time_base)
    per_tick = float(time_base) * limits.max_fps  # frames allowed per PTS tick
    slack = RATE_SLACK_S * limits.max_fps
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue  # the flush packet
            if packet.is_corrupt:
                raise InvalidMediaError(label, "corrupt video data (damaged packet)")
            pts = packet.pts
            order.add(pts)
            if pts is None:
                continue
            if n == 0:
                first = last = pts
            first, last = min(first, pts), max(last, pts)
            n += 1
            if not packet.is_discard:
                if shown == 0:
                    first_shown = last_shown = pts
                first_shown, last_shown = min(first_shown, pts), max(last_shown, pts)
                shown += 1
            if packet.is_keyframe:
                keys = [*keys[-1:], pts]
            # A camera writes each frame once, on from the last: data read again is an edit
            # list playing it over (1 s of 240 fps 6,000 times: within the rate, and a
            # 620-kB file held the worker half an hour).
            pos = packet.pos if packet.pos is not None else -1
            if 0 <= pos <= end:
                again += 1
                if again > REPLAYED_PACKETS:
                    raise InvalidMediaError(
                        label, f"it plays the same data again ({again} frames read twice): an "
                               "edit list that repeats it, not a camera's recording")
            end = max(end, pos)
            if last - first > span:
                raise InvalidMediaError(
                    label, f"longer than the limit of {limits.max_duration_s:.0f} s")
            if n > slack + (last - first) * per_tick:
                raise InvalidMediaError(
                    label, f"{n} frames in {float((last - first) * time_base):.2f} s, over the "
                           f"limit of {limits.max_fps} frames a second")
    except av.FFmpegError as exc:
        raise InvalidMediaError(label, f"corrupt or truncated video ({why(exc)})") from None
    order.finish()
    return _Demuxed(shown, first_shown, last_shown, keys, n, last - first)


# Frames a decoder may hold back to show them in order (H.264 and HEVC allow 16).
REORDER_FRAMES = 16


class _TimeOrder:
    """Every frame is found, timed and masked by its presentation time (PTS), so each must
    have one, and once reordered as a decoder reorders them (REORDER_FRAMES at most) the
    times must rise. Refused otherwise, in one line naming the first offending frame:
    - a frame with no time (MPEG-TS needs one only every 0.7 s): it was never analysed, and
      a redaction released it unmasked;
    - two frames with the same time (each run of 150 frames of an MKV shared one): all but
      one were never analysed, and the first run was released unmasked;
    - times that go back (segments joined with their own times): the footage after the
      join was never analysed, the video recorded at half its length, and a redaction
      released it unmasked (black-box round bb16, 2026-12-06).
    Holds REORDER_FRAMES times at once, whatever the file's length."""

    def __init__(self, label: str, time_base: Fraction) -> None:
        self.label, self.time_base = label, time_base
        self.held: list[int] = []
        self.shown = -1  # frames released in order so far, less one
        self.last: int | None = None
        self.top: int | None = None  # the latest time seen

    def add(self, pts: int | None) -> None:
        if pts is None:
            raise InvalidMediaError(
                self.label, f"frame {self.shown + len(self.held) + 2} (in file order) carries "
                            "no time stamp (PTS): every frame needs its own; remux it with "
                            "time stamps (e.g. ffmpeg -fflags +genpts -i IN -c copy OUT.mp4)")
        self.top = pts if self.top is None else max(self.top, pts)
        heapq.heappush(self.held, pts)
        if len(self.held) > REORDER_FRAMES:
            self._release(heapq.heappop(self.held))

    def finish(self) -> None:
        while self.held:
            self._release(heapq.heappop(self.held))

    def _release(self, pts: int) -> None:
        self.shown += 1
        last, self.last = self.last, pts
        if last is None or pts > last:
            return
        at = f"{float(pts * self.time_base):.3f} s"
        if pts == last:
            raise InvalidMediaError(
                self.label, f"frames {self.shown} and {self.shown + 1} share the time stamp "
                            f"{at}: every frame needs a time of its own")
        top = self.top if self.top is not None else last
        raise InvalidMediaError(
            self.label, f"its time stamps go back by {float((top - pts) * self.time_base):.3f}"
                        f" s (from {float(top * self.time_base):.3f} s to {at}): segments "
                        "joined with their own times; ingest each segment alone, or remux "
                        "them into one timeline")


def _decode_ends(media: OpenVideo, size: tuple[int, int], keys: list[int]
                 ) -> tuple[int, bool]:
    """Decode the first frame and the last group of pictures; return the first's orientation
    (quarter turns counter-clockwise, mirrored)."""
    container, stream, limits, label = media.container, media.stream, media.limits, media.label
    try:
        # From the file's start, opened again: a seek to time 0 lands past the end of a file
        # whose times are all negative (MPEG-TS that began in the minute before its 33-bit
        # clock wrapped: FFmpeg takes 2^33 off every time), and a valid file was refused.
        with open_video(media.path, limits, label, threads=1) as again:
            first = next(again.container.decode(again.stream), None)
            if first is None:
                raise InvalidMediaError(label, "the first frame does not decode")
            check_frame(first, size, limits, label)
            turned = orientation(first) or (0, False)
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
    return turned


if __name__ == "__main__":
    _child()
