"""Hostile media corpus: a seeded generator of bad, odd and malicious inputs, and its runner.

`python -m bodycam.hostile generate --seed N --out DIR [--count N]` writes the corpus and
`DIR/manifest.json`; `python -m bodycam.hostile run --corpus DIR --summary FILE` ingests every
file through the real `bodycam ingest` command against a running stack and checks the contract:
each file is processed to `done`, or refused within 60 s and 2 GiB with one clean line naming
the reason, leaving no row, object or job, and nothing outside the file is read (playlists point
at a canary FIFO: a reader on it is seen by a non-blocking open for writing).

Valid seed clips come from the ffmpeg binary (imageio-ffmpeg); every mutation is drawn from
`random.Random(seed)`, so a corpus is reproduced exactly from its seed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

FFMPEG_TIMEOUT_S = 120
INGEST_TIMEOUT_S = 60
MAX_RSS_BYTES = 2 * 1024**3
CASE = "HOSTILE"


@dataclass
class Item:
    """One corpus entry: where it is, what it is, and what the contract expects of it."""

    path: str  # relative to the corpus folder (may hold escapes as surrogates)
    category: str
    note: str
    expect: str  # "done", "refused" or "either"
    args_path: str | None = None  # what to pass to ingest when not the path itself


def ffmpeg_exe() -> str:
    """The ffmpeg binary: the venv's link, else imageio-ffmpeg's, else PATH."""
    local = Path(sys.executable).parent / "ffmpeg"
    if local.exists():
        return str(local)
    try:
        import imageio_ffmpeg

        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except ImportError:
        found = shutil.which("ffmpeg")
        if not found:
            raise SystemExit("ffmpeg not found: install imageio-ffmpeg") from None
        return found


def _ff(*args: str) -> None:
    """Run ffmpeg; outputs are bit-exact (one thread, no version or time stamps)."""
    *inputs, target = args
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-v", "error", "-y", *inputs, "-threads", "1",
                    "-fflags", "+bitexact", "-flags", "+bitexact", "-map_metadata", "-1",
                    target], check=True, timeout=FFMPEG_TIMEOUT_S, stdin=subprocess.DEVNULL)


def _src(size: str, rate: int, seconds: float, pattern: str = "testsrc2") -> list[str]:
    sep = ":" if "=" in pattern else "="
    return ["-f", "lavfi", "-i", f"{pattern}{sep}size={size}:rate={rate}", "-t", str(seconds)]


# --- seeds: small valid clips ---------------------------------------------------------------

def make_seeds(folder: Path) -> dict[str, Path]:
    """Valid small clips the mutations start from (H.264 MP4 with and without audio)."""
    folder.mkdir(parents=True, exist_ok=True)
    seeds = {
        "mp4": folder / "seed.mp4",
        "mp4_audio": folder / "seed_audio.mp4",
        "mp4_faststart": folder / "seed_fast.mp4",
    }
    _ff(*_src("192x144", 15, 1.0), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "5",
        str(seeds["mp4"]))
    _ff(*_src("192x144", 15, 1.0), "-f", "lavfi", "-i", "sine=duration=1", "-pix_fmt",
        "yuv420p", "-c:v", "libx264", "-g", "5", "-c:a", "aac", "-t", "1",
        str(seeds["mp4_audio"]))
    _ff(*_src("192x144", 15, 1.0), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-g", "5",
        "-movflags", "+faststart", str(seeds["mp4_faststart"]))
    return seeds


# --- MP4 boxes ------------------------------------------------------------------------------

def mp4_boxes(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, str]]:
    """(offset, size, type) of the boxes in data[start:end] (32-bit sizes only)."""
    end = len(data) if end is None else end
    boxes = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if size < 8 or pos + size > end:
            break
        boxes.append((pos, size, kind.decode("latin-1")))
        pos += size
    return boxes


def _children(data: bytes, box: tuple[int, int, str]) -> list[tuple[int, int, str]]:
    off, size, _ = box
    return mp4_boxes(data, off + 8, off + size)


def all_boxes(data: bytes) -> list[tuple[int, int, str]]:
    """Every box of the containers Bodycam's seeds use (moov, trak, mdia, minf, stbl, ...)."""
    found: list[tuple[int, int, str]] = []
    todo = mp4_boxes(data)
    while todo:
        box = todo.pop(0)
        found.append(box)
        if box[2] in ("moov", "trak", "mdia", "minf", "stbl", "edts", "udta", "dinf"):
            todo.extend(_children(data, box))
    return found


def _below(rng: random.Random, n: int) -> int:
    """A position below n drawn with exactly one random number, whatever n is: mutations of
    the next files do not shift when a seed clip's size differs on another ffmpeg build."""
    return min(n - 1, int(rng.random() * n)) if n > 0 else 0


def fuzz_boxes(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One structural mutation of an MP4: reorder, drop, duplicate, resize or scramble a box."""
    boxes = all_boxes(data)
    top = mp4_boxes(data)
    op = rng.choice(["swap_top", "drop", "dup", "size", "scramble", "type", "zero_size",
                     "huge_size", "nest"])
    buf = bytearray(data)
    if op == "swap_top" and len(top) >= 2:
        order = top[:]
        rng.shuffle(order)
        return b"".join(data[o:o + s] for o, s, _ in order), f"top-level boxes reordered " \
            f"({' '.join(k for _, _, k in order)})"
    box = boxes[_below(rng, len(boxes))]
    off, size, kind = box
    if op == "drop":
        return data[:off] + data[off + size:], f"box {kind} removed"
    if op == "dup":
        return data[:off + size] + data[off:off + size] + data[off + size:], \
            f"box {kind} duplicated"
    if op == "size":
        new = max(0, size + rng.randint(-64, 64))
        struct.pack_into(">I", buf, off, new)
        return bytes(buf), f"box {kind} size {size} -> {new}"
    if op == "zero_size":
        struct.pack_into(">I", buf, off, 0)
        return bytes(buf), f"box {kind} size 0 (to end of file)"
    if op == "huge_size":
        struct.pack_into(">I", buf, off, 0xFFFFFFF0)
        return bytes(buf), f"box {kind} size 0xFFFFFFF0"
    if op == "type":
        new_kind = rng.choice([b"moov", b"mdat", b"trak", b"free", b"uuid", b"\x00\x00\x00\x00"])
        buf[off + 4:off + 8] = new_kind
        return bytes(buf), f"box {kind} retyped {new_kind!r}"
    if op == "nest":  # a box that claims to contain itself, deeply
        inner = data[off:off + size]
        for _ in range(rng.randint(50, 400)):
            inner = struct.pack(">I4s", len(inner) + 8, kind.encode("latin-1")) + inner
        return data[:off] + inner + data[off + size:], f"box {kind} nested many times"
    # scramble: random bytes inside the box body
    body = max(0, size - 8)
    for _ in range(rng.randint(1, 16)):
        if body:
            buf[off + 8 + _below(rng, body)] = rng.randrange(256)
    return bytes(buf), f"box {kind} body scrambled"


def repeat_edit_list(data: bytes, times: int) -> bytes:
    """The MP4 (one track, moov last) with its edit list's one entry repeated `times` times:
    FFmpeg then lists the whole media once per entry, so a small file plays millions of
    frames. The movie's and the track's durations say so (capped at 32 bits)."""
    buf = bytearray(data)
    moov = mp4_boxes(data)[-1]
    assert moov[2] == "moov", "moov must be last"
    inner = _children(data, moov)
    mvhd = next(b for b in inner if b[2] == "mvhd")
    trak = next(b for b in inner if b[2] == "trak")
    in_trak = _children(data, trak)
    edts = next(b for b in in_trak if b[2] == "edts")
    tkhd = next(b for b in in_trak if b[2] == "tkhd")
    segment, media_time, rate = struct.unpack(">IiI", data[edts[0] + 24:edts[0] + 36])
    entries = struct.pack(">IiI", segment, media_time, rate) * times
    elst = struct.pack(">I4sII", 16 + len(entries), b"elst", 0, times) + entries
    new = struct.pack(">I4s", 8 + len(elst), b"edts") + elst
    grow = len(new) - edts[1]
    buf[edts[0]:edts[0] + edts[1]] = new
    struct.pack_into(">I", buf, trak[0], trak[1] + grow)
    struct.pack_into(">I", buf, moov[0], moov[1] + grow)
    total = min(times * segment, 0xFFFFFFFF)
    struct.pack_into(">I", buf, mvhd[0] + 24, total)
    struct.pack_into(">I", buf, tkhd[0] + 28, total)
    return bytes(buf)


def _patch_box_field(data: bytes, kind: str, rel: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    for off, _size, k in all_boxes(data):
        if k == kind:
            struct.pack_into(fmt, buf, off + rel, value)
    return bytes(buf)


# --- the corpus -----------------------------------------------------------------------------

@dataclass
class Corpus:
    """Builds the corpus in a folder, recording each item in the manifest."""

    root: Path
    rng: random.Random
    items: list[Item] = field(default_factory=list)

    def add(self, rel: str, category: str, note: str, expect: str,
            data: bytes | None = None, args_path: str | None = None) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if data is not None:
            path.write_bytes(data)
        self.items.append(Item(rel, category, note, expect, args_path))
        return path


def generate(out: Path, seed: int, count: int | None = None) -> list[Item]:
    """Write the corpus into `out` (emptied first) and its manifest; return its items.

    With `count`, a stratified sample of that many items (every category kept) is written.
    """
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    rng = random.Random(seed)
    seeds = make_seeds(out / "seeds")
    c = Corpus(out, rng)
    base = seeds["mp4"].read_bytes()
    audio = seeds["mp4_audio"].read_bytes()
    fast = seeds["mp4_faststart"].read_bytes()
    canary = _canaries(c)

    for i in range(60):  # truncations at seeded offsets, both box orders
        src = rng.choice([base, audio, fast])
        cut = 1 + _below(rng, len(src) - 1)
        c.add(f"truncated/t{i:03d}.mp4", "truncation", f"first {cut} of {len(src)} bytes",
              "either", src[:cut])
    for i in range(70):  # bit flips
        flipped = bytearray(rng.choice([base, audio, fast]))
        n = rng.choice([1, 1, 2, 8, 64])
        for _ in range(n):
            flipped[_below(rng, len(flipped))] ^= 1 << rng.randrange(8)
        c.add(f"bitflip/b{i:03d}.mp4", "bitflip", f"{n} bits flipped", "either",
              bytes(flipped))
    for i in range(80):  # fuzzed and reordered boxes
        mutated, note = fuzz_boxes(rng.choice([base, audio, fast]), rng)
        c.add(f"boxes/x{i:03d}.mp4", "boxes", note, "either", mutated)
    _bombs(c, base)
    _playlists(c, seeds["mp4"], canary)
    _wrong_types(c)
    _valid_variants(c)
    _timestamps(c)
    _filesystem(c, seeds["mp4"])
    _names(c, base)

    items = c.items
    if count is not None and count < len(items):
        items = _stratified(items, count, rng)
    (out / "manifest.json").write_text(json.dumps(
        {"seed": seed, "canary_fifo": canary["fifo"], "canary_file": canary["file"],
         "items": [asdict(i) for i in items]}, indent=1, ensure_ascii=True))
    return items


def _stratified(items: list[Item], count: int, rng: random.Random) -> list[Item]:
    by_cat: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_cat[it.category].append(it)
    picked: list[Item] = []
    per = max(1, count // len(by_cat))
    for cat in sorted(by_cat):
        group = by_cat[cat]
        picked.extend(rng.sample(group, min(per, len(group))))
    return picked


def _canaries(c: Corpus) -> dict[str, str]:
    """A canary FIFO and a canary clip outside the files that playlists point at."""
    folder = c.root / "canary"
    folder.mkdir()
    fifo = folder / "canary.fifo"
    os.mkfifo(fifo)
    clip = folder / "canary.mp4"
    _ff(*_src("160x120", 10, 1.0, "smptebars"), "-pix_fmt", "yuv420p", "-c:v", "libx264",
        str(clip))
    return {"fifo": str(fifo), "file": str(clip)}


def _bombs(c: Corpus, base: bytes) -> None:
    tmp = c.root / "work"
    tmp.mkdir(exist_ok=True)
    small, big, big_ok = tmp / "s.h264", tmp / "b.h264", tmp / "bo.h264"
    _ff(*_src("320x240", 15, 1.0), "-pix_fmt", "yuv420p", "-c:v", "libx264",
        "-bsf:v", "h264_mp4toannexb", "-f", "h264", str(small))
    _ff(*_src("7680x7680", 15, 0.4, "color=c=gray"), "-pix_fmt", "yuv420p", "-c:v", "libx264",
        "-preset", "ultrafast", "-x264-params", "level=6.2", "-f", "h264", str(big))
    _ff(*_src("1280x720", 15, 0.4, "color=c=gray"), "-pix_fmt", "yuv420p", "-c:v", "libx264",
        "-preset", "ultrafast", "-f", "h264", str(big_ok))
    s, b, bo = small.read_bytes(), big.read_bytes(), big_ok.read_bytes()
    for name, raw, note, expect in [
        ("res_end", s + b, "640x360 start, 7680x7680 frames at the end", "refused"),
        ("res_mid", s + b + s, "7680x7680 frames in the middle (probe sees start and end)",
         "refused"),
        ("res_grow_ok", s + bo + s, "320x240 grows to 1280x720 mid-stream (within limits)",
         "refused"),
        ("res_start", b, "7680x7680 from the first frame", "refused"),
    ]:
        raw_path = tmp / f"{name}.h264"
        raw_path.write_bytes(raw)
        mp4 = c.add(f"bombs/{name}.mp4", "bomb", note, expect)
        _ff("-r", "15", "-i", str(raw_path), "-c", "copy", str(mp4))
        mkv = c.add(f"bombs/{name}.mkv", "bomb", note + " (Matroska)", expect)
        _ff("-i", str(mp4), "-c", "copy", str(mkv))
    # duration bombs: headers that claim days, a frame claiming to last a week
    c.add("bombs/mvhd_duration.mp4", "bomb", "mvhd duration claims 2^31 ticks", "either",
          _patch_box_field(base, "mvhd", 24, ">I", 0x7FFFFFFF))
    c.add("bombs/mdhd_timescale.mp4", "bomb", "mdhd timescale 1 (seconds become days)",
          "either", _patch_box_field(base, "mdhd", 20, ">I", 1))
    c.add("bombs/long_still.mp4", "bomb", "stts: every frame lasts 2^31 ticks (days)",
          "refused", _patch_box_field(base, "stts", 20, ">I", 0x7FFFFFFF))
    dense = c.add("bombs/dense_fps.mp4", "bomb", "1000 frames per second for 3 s", "refused")
    _ff(*_src("64x64", 1000, 3.0), "-c:v", "libx264", "-preset", "ultrafast", str(dense))
    sizes = c.add("bombs/huge_dims.mkv", "bomb", "16384x64 frames (over the width limit)",
                  "refused")
    _ff(*_src("16384x64", 5, 0.4, "color=c=red"), "-c:v", "libx264", "-preset", "ultrafast",
        "-x264-params", "level=6.2", str(sizes))
    # An edit list that repeats its media (the probe counted 21.6 million frames for 80 s),
    # and more streams than a camera writes (a decoder each while probed): both refused.
    for name, rate, times, note in (
            ("elst_repeat", 500, 43300, "its 500 frames 43,300 times (21.6 million frames)"),
            ("elst_repeat_240", 240, 6000, "1 s of 240 fps 6,000 times (within the rate)")):
        src = tmp / f"{name}.src.mp4"
        _ff(*_src("320x240", rate, 1.0), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset",
            "ultrafast", "-bf", "0", "-g", str(rate), str(src))
        c.add(f"bombs/{name}.mp4", "bomb", f"an edit list plays {note}", "refused",
              repeat_edit_list(src.read_bytes(), times))
    seed = tmp / "seed.mp4"
    seed.write_bytes(base)
    many = c.add("bombs/streams_20.mp4", "bomb", "20 video streams", "refused")
    _ff("-i", str(seed), *(["-map", "0:v"] * 20), "-c", "copy", str(many))


def _playlists(c: Corpus, seed: Path, canary: dict[str, str]) -> None:
    fifo, clip = canary["fifo"], canary["file"]
    targets = {"fifo": fifo, "file": clip, "url": "http://127.0.0.1:9/x.mp4",
               "fileurl": f"file:{clip}", "rel": "../canary/canary.fifo",
               "relfile": "../canary/canary.mp4", "sibling": "canary-sibling.mp4"}
    # a plain name in the playlist's own folder: what FFmpeg's concat "safe" mode still allows
    (c.root / "playlists").mkdir(exist_ok=True)
    shutil.copy(clip, c.root / "playlists" / "canary-sibling.mp4")
    for tname, target in targets.items():
        hls = (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{target}\n"
               "#EXT-X-ENDLIST\n")
        concat = f"ffconcat version 1.0\nfile '{target}'\n"
        bare_concat = f"file '{target}'\nfile '{target}'\n"
        mpd = (f'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" '
               f'type="static" mediaPresentationDuration="PT1S"><Period><AdaptationSet>'
               f'<Representation id="1" bandwidth="1000"><BaseURL>{target}</BaseURL>'
               f'</Representation></AdaptationSet></Period></MPD>\n')
        mpd_noheader = mpd.split("\n", 1)[1]
        sdp = f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n" \
              f"m=video 9 RTP/AVP 96\na=rtpmap:96 H264/90000\na=x-target:{target}\n"
        for kind, text in [("hls", hls), ("ffconcat", concat), ("concatlist", bare_concat),
                           ("dash", mpd), ("dash_noxml", mpd_noheader), ("sdp", sdp)]:
            data = text.encode()
            native = {"hls": "m3u8", "ffconcat": "ffconcat", "concatlist": "txt",
                      "dash": "mpd", "dash_noxml": "mpd", "sdp": "sdp"}[kind]
            for ext in {native, "mp4"}:
                c.add(f"playlists/{kind}_{tname}.{ext}", "playlist",
                      f"{kind} pointing at {tname}", "refused", data)
    # names that are FFmpeg URLs: literal local files holding a valid clip
    for name in ("concat:a.mp4", f"concat:{seed.name}|{seed.name}", "file:x.mp4",
                 "subfile,,start,0,end,10,,:x.mp4"):
        c.add(f"playlists/{name}", "playlist", f"a valid clip named {name!r}", "done",
              seed.read_bytes())
    # the names themselves, not present as files: must not reach FFmpeg's protocols
    for url in (f"concat:{seed}|{seed}", f"file:{seed}", f"subfile,,start,0,end,100,,:{seed}",
                "http://127.0.0.1:9/x.mp4", "pipe:0", "-", f"async:file:{seed}"):
        c.items.append(Item(f"url/{len(c.items)}", "playlist", f"argument {url!r}",
                            "refused", url))


def _wrong_types(c: Corpus) -> None:
    tmp = c.root / "work"
    c.add("types/text.mp4", "wrong-type", "plain text", "refused",
          b"officer notes, not a video\n" * 10)
    c.add("types/empty.mp4", "wrong-type", "0 bytes", "refused", b"")
    c.add("types/zeros.mp4", "wrong-type", "64 KiB of zeros", "refused", bytes(65536))
    c.add("types/random.mp4", "wrong-type", "random bytes", "refused",
          c.rng.randbytes(50_000))
    c.add("types/pdf.mp4", "wrong-type", "a PDF", "refused",
          b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    import io
    import zipfile

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("video.mp4", c.rng.randbytes(1000))
    c.add("types/zip.mp4", "wrong-type", "a zip archive", "refused", zbuf.getvalue())
    for name, args in [
        ("jpeg.mp4", ["-frames:v", "1", "-f", "image2", "-c:v", "mjpeg"]),
        ("png.mp4", ["-frames:v", "1", "-f", "image2", "-c:v", "png"]),
        ("gif.mp4", ["-frames:v", "3", "-f", "gif"]),
        ("still_jpeg_in_mp4.mp4", ["-frames:v", "1", "-c:v", "mjpeg", "-f", "mp4"]),
        ("one_frame_h264.mp4", ["-frames:v", "1", "-c:v", "libx264", "-f", "mp4"]),
    ]:
        path = tmp / name
        _ff(*_src("160x120", 5, 1.0), *args, str(path))
        expect = "refused" if name == "jpeg.mp4" or "png" in name or "gif" in name \
            else "either"
        c.add(f"types/{name}", "wrong-type", name.split(".")[0], expect, path.read_bytes())
    audio = c.add("types/audio_only.mp4", "wrong-type", "AAC audio only", "refused")
    _ff("-f", "lavfi", "-i", "sine=duration=1", "-c:a", "aac", str(audio))
    wav = c.add("types/audio.wav.mp4", "wrong-type", "WAV audio renamed", "refused")
    _ff("-f", "lavfi", "-i", "sine=duration=1", "-f", "wav", str(wav))
    raw = c.add("types/raw.h264", "wrong-type", "raw H.264 elementary stream", "refused")
    _ff(*_src("160x120", 10, 1.0), "-c:v", "libx264", "-f", "h264", str(raw))
    y4m = c.add("types/video.y4m", "wrong-type", "raw YUV4MPEG", "refused")
    _ff(*_src("160x120", 10, 0.5), "-f", "yuv4mpegpipe", str(y4m))


def _valid_variants(c: Corpus) -> None:
    v: list[tuple[str, list[str], str, str]] = [
        ("h264.mkv", ["-c:v", "libx264"], "done", "H.264 in Matroska"),
        ("vp9.webm", ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"],
         "done", "VP9 in WebM"),
        ("vp8.webm", ["-c:v", "libvpx", "-deadline", "realtime"], "done", "VP8 in WebM"),
        ("mpeg4.avi", ["-c:v", "mpeg4"], "done", "MPEG-4 part 2 in AVI"),
        ("mjpeg.avi", ["-c:v", "mjpeg"], "done", "Motion JPEG in AVI"),
        ("h264.ts", ["-c:v", "libx264"], "done", "H.264 in MPEG-TS"),
        ("mpeg2.ts", ["-c:v", "mpeg2video"], "done", "MPEG-2 in MPEG-TS"),
        ("hevc.mp4", ["-c:v", "libx265", "-x265-params", "log-level=error", "-tag:v", "hvc1"],
         "done", "HEVC in MP4"),
        ("prores.mov", ["-c:v", "prores"], "done", "ProRes in QuickTime"),
        ("av1.mp4", ["-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1"], "either",
         "AV1 in MP4 (decoder availability)"),
        ("ffv1.mkv", ["-c:v", "ffv1"], "refused", "FFV1 (codec not accepted)"),
        ("theora.ogv", ["-c:v", "libtheora"], "refused", "Theora in Ogg (not accepted)"),
        ("h263.3gp", ["-c:v", "h263", "-s", "176x144"], "refused", "H.263 in 3GP"),
        ("wmv2.asf", ["-c:v", "wmv2"], "refused", "WMV2 in ASF"),
        ("flv1.flv", ["-c:v", "flv"], "refused", "Sorenson in FLV"),
        ("mpeg1.mpg", ["-c:v", "mpeg1video"], "refused", "MPEG-1 program stream"),
        ("h264_10bit.mp4", ["-c:v", "libx264", "-pix_fmt", "yuv420p10le"], "done",
         "H.264 High 10"),
        ("h264_444.mp4", ["-c:v", "libx264", "-pix_fmt", "yuv444p"], "done", "H.264 4:4:4"),
    ]
    for name, args, expect, note in v:
        path = c.add(f"valid/{name}", "valid-variant", note, expect)
        pix = [] if "-pix_fmt" in args else ["-pix_fmt", "yuv420p" if "mjpeg" not in args
                                              else "yuvj420p"]
        size = "176x144" if "h263" in args else "192x144"
        try:
            _ff(*_src(size, 25, 1.0), *pix, *args, str(path))
        except subprocess.CalledProcessError:  # an encoder this ffmpeg build lacks
            c.items.pop()
            print(f"skipped {name}: ffmpeg cannot encode it here", file=sys.stderr)
    shapes = [
        ("tiny_64.mp4", "64x64", [], "done", "64x64 (the smallest accepted)"),
        ("tiny_48.mp4", "48x48", [], "refused", "48x48 (too small)"),
        ("thin_2000x64.mp4", "2000x64", [], "done", "2000x64 extreme aspect"),
        ("odd_193x145.mp4", "193x145", ["-pix_fmt", "yuv444p"], "done", "odd dimensions"),
    ]
    for name, size, extra, expect, note in shapes:
        path = c.add(f"valid/{name}", "valid-variant", note, expect)
        pix = extra or ["-pix_fmt", "yuv420p"]
        _ff(*_src(size, 15, 1.0), *pix, "-c:v", "libx264", str(path))
    vfr = c.add("valid/vfr.mp4", "valid-variant", "variable frame rate (30 then 10 fps)",
                "done")
    _ff(*_src("192x144", 30, 2.0), "-vf", "select='lt(n\\,30)+not(mod(n\\,3))'",
        "-fps_mode", "vfr", "-pix_fmt", "yuv420p", "-c:v", "libx264", str(vfr))
    for deg in (90, 180, 270):
        tmp = c.root / "work" / f"r{deg}.mp4"
        _ff(*_src("192x144", 15, 1.0), "-pix_fmt", "yuv420p", "-c:v", "libx264", str(tmp))
        rot = c.add(f"valid/rotated_{deg}.mp4", "valid-variant", f"display matrix {deg} deg",
                    "done")
        _ff("-display_rotation", str(deg), "-i", str(tmp), "-c", "copy", str(rot))
    # The footage beside larger cover art, and behind a smaller video stream placed first.
    clip, small, cover = (c.root / "work" / n for n in ("face.mp4", "small.mp4", "cover.jpg"))
    _ff(*_src("320x240", 15, 1.0), "-pix_fmt", "yuv420p", "-c:v", "libx264", str(clip))
    _ff(*_src("64x64", 15, 1.0, "color=c=black"), "-pix_fmt", "yuv420p", "-c:v", "libx264",
        str(small))
    _ff(*_src("640x480", 1, 1.0, "color=c=blue"), "-frames:v", "1", str(cover))
    art = c.add("valid/cover_art.mp4", "valid-variant", "cover art larger than the footage",
                "done")
    _ff("-i", str(cover), "-i", str(clip), "-map", "0", "-map", "1", "-c", "copy",
        "-disposition:v:0", "attached_pic", str(art))
    hidden = c.add("decoys/small_first.mp4", "decoy",
                   "a 64x64 stream first, the footage second: which is footage?", "refused")
    _ff("-i", str(small), "-i", str(clip), "-map", "0:v", "-map", "1:v", "-c", "copy",
        str(hidden))
    fragmented = c.add("valid/fragmented.mp4", "valid-variant", "fragmented MP4", "done")
    _ff(*_src("192x144", 15, 1.0), "-pix_fmt", "yuv420p", "-c:v", "libx264", "-movflags",
        "frag_keyframe+empty_moov", str(fragmented))


def _timestamps(c: Corpus) -> None:
    """Files whose frames a player shows but whose times cannot place each frame once
    (black-box round bb16, 2026-12-06): each hid footage from the analysis and left faces
    unmasked in a redaction. And one video stream too many, where Matroska hid it."""
    import av

    work = c.root / "work"
    segs = [work / f"seg{i}.ts" for i in range(2)]
    for seg, pattern in zip(segs, ("testsrc2", "color=c=gray"), strict=True):
        _ff(*_src("192x144", 15, 2.0, pattern), "-pix_fmt", "yuv420p", "-c:v", "libx264",
            "-bf", "0", "-g", "15", str(seg))
    joined = c.add("timestamps/joined_segments.ts", "timestamps",
                   "two segments joined, each with its own times (they go back)", "refused")
    joined.write_bytes(ts_join([s.read_bytes() for s in segs]))
    untimed = c.add("timestamps/untimed_frames.ts", "timestamps",
                    "a time stamp on every 10th frame only (MPEG-TS allows 0.7 s)", "refused")
    untimed.write_bytes(ts_strip_pts(segs[0].read_bytes(), keep_every=10))
    shared = c.add("timestamps/shared_times.mkv", "timestamps",
                   "every 5 frames share one time stamp", "refused")
    with av.open(str(segs[0])) as src, av.open(str(shared), "w", format="matroska") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        out.time_base = Fraction(1, 1000)
        n = 0
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream, packet.time_base = out, Fraction(1, 1000)
                packet.pts = packet.dts = (n // 5) * 333
                dst.mux(packet)
                n += 1
    # A camera that pauses and resumes inside one file: the gap's frames never come (bb43:
    # detected on 5 frames of 90, and after a 10-hour pause the release could not be made).
    for name, gap_s in (("paused_5s", 5), ("paused_10h", 36000)):
        paused = c.add(f"timestamps/{name}.mp4", "timestamps",
                       f"the camera paused {gap_s} s after 1 s of frames", "done")
        _ff("-i", str(segs[0]), "-vf", f"setpts='if(gte(N,15),PTS+{gap_s}/TB,PTS)'",
            "-fps_mode", "passthrough", "-c:v", "libx264", str(paused))
    many = c.add("bombs/mkv_9_streams.mkv", "bomb", "a video and 8 audio tracks (Matroska)",
                 "refused")
    _ff("-i", str(segs[0]), "-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono",
        *itertools.chain.from_iterable(("-map", m) for m in ["0:v", *["1:a"] * 8]),
        "-c:v", "copy", "-c:a", "pcm_s16le", "-t", "2", str(many))


def ts_join(parts: list[bytes]) -> bytes:
    """MPEG-TS files joined byte for byte, each PID's continuity counter carried on (a
    recorder's segments written one after the other): no packet looks damaged, and each
    part keeps its own times."""
    last: dict[int, int] = {}
    out = bytearray()
    for data in parts:
        shift: dict[int, int] = {}
        for i in range(0, len(data) - 187, 188):
            pkt = bytearray(data[i:i + 188])
            pid = ((pkt[1] & 0x1F) << 8) | pkt[2]
            if pid != 0x1FFF and pkt[3] & 0x10:  # a payload: the counter counts it
                cc = pkt[3] & 0x0F
                shift.setdefault(pid, (last.get(pid, -1) + 1 - cc) % 16)
                cc = (cc + shift[pid]) % 16
                pkt[3] = (pkt[3] & 0xF0) | cc
                last[pid] = cc
            out += pkt
    return bytes(out)


def ts_strip_pts(data: bytes, keep_every: int, pid: int = 0x100) -> bytes:
    """MPEG-TS with the PTS (and DTS) taken out of the video PES headers but every
    `keep_every`-th (the bytes freed become adaptation-field stuffing)."""
    out = bytearray()
    seen = 0
    for i in range(0, len(data) - 187, 188):
        p = bytearray(data[i:i + 188])
        if ((p[1] & 0x1F) << 8 | p[2]) == pid and p[1] & 0x40:  # a PES starts here
            afc = (p[3] >> 4) & 3
            off = 5 + p[4] if afc & 2 else 4
            flags, header_len = p[off + 7] >> 6, p[off + 8]
            seen += 1
            if (seen - 1) % keep_every and flags:
                n = 5 if flags == 2 else 10
                pes_len = int.from_bytes(p[off + 4:off + 6], "big")
                if pes_len:
                    p[off + 4:off + 6] = (pes_len - n).to_bytes(2, "big")
                p[off + 7] &= 0x3F
                p[off + 8] = header_len - n
                del p[off + 9:off + 9 + n]
                if afc & 2:
                    p[4] += n
                    p[5 + p[4] - n:5 + p[4] - n] = b"\xff" * n
                else:
                    p[3] |= 0x20
                    p[4:4] = bytes([n - 1]) + b"\x00" + b"\xff" * (n - 2)
        out += p
    return bytes(out)


def _filesystem(c: Corpus, seed: Path) -> None:
    fs = c.root / "fs"
    fs.mkdir()
    (fs / "link.mp4").symlink_to(seed)
    c.items.append(Item("fs/link.mp4", "filesystem", "symlink to a valid clip", "refused"))
    (fs / "loop_a.mp4").symlink_to(fs / "loop_b.mp4")
    (fs / "loop_b.mp4").symlink_to(fs / "loop_a.mp4")
    c.items.append(Item("fs/loop_a.mp4", "filesystem", "symlink loop", "refused"))
    (fs / "loopdir").symlink_to(fs / "loopdir")
    c.items.append(Item("fs/loopdir/x.mp4", "filesystem", "loop in a folder of the path",
                        "refused"))
    (fs / "dangling.mp4").symlink_to(fs / "nowhere.mp4")
    c.items.append(Item("fs/dangling.mp4", "filesystem", "dangling symlink", "refused"))
    os.mkfifo(fs / "fifo.mp4")
    c.items.append(Item("fs/fifo.mp4", "filesystem", "a FIFO", "refused"))
    (fs / "dir.mp4").mkdir()
    c.items.append(Item("fs/dir.mp4", "filesystem", "a folder", "refused"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(fs / "sock.mp4"))
        c.items.append(Item("fs/sock.mp4", "filesystem", "a socket", "refused"))
    except OSError:
        pass
    finally:
        sock.close()
    c.items.append(Item("fs/missing.mp4", "filesystem", "no such file", "refused"))
    c.items.append(Item("fs/dev_zero", "filesystem", "/dev/zero", "refused", "/dev/zero"))
    c.items.append(Item("fs/dev_urandom", "filesystem", "/dev/urandom", "refused",
                        "/dev/urandom"))
    c.items.append(Item("fs/proc", "filesystem", "/proc/self/environ", "refused",
                        "/proc/self/environ"))
    c.add("fs/notdir.mp4", "filesystem", "a valid clip (used as a folder below)", "done",
          seed.read_bytes())
    c.items.append(Item("fs/notdir.mp4/x.mp4", "filesystem", "a file used as a folder",
                        "refused"))


def _names(c: Corpus, base: bytes) -> None:
    names = [
        ("markup", "[/red]closing.mp4"),
        ("markup", "[bold red]loud[/] name.mp4"),
        ("markup", "[link=http://x]click[/link].mp4"),
        ("escape", "esc\x1b[31mred\x1b[0m.mp4"),
        ("escape", "bell\x07\x1b]0;title\x07.mp4"),
        ("newline", "two\nlines.mp4"),
        ("newline", "carriage\rreturn.mp4"),
        ("tab", "tab\there.mp4"),
        ("unicode", "überwachung-監視-📹.mp4"),
        ("unicode", "rtl\u202eexe.mp4"),
        ("space", " leading and trailing .mp4"),
        ("dash", "-starts-with-dash.mp4"),
        ("quote", "quote'\"$(touch pwned)`id`.mp4"),
        ("percent", "%s%n%x%d.mp4"),
        ("long", "x" * 250 + ".mp4"),
    ]
    for kind, name in names:
        c.add(f"names/{name}", "filename", f"{kind} in the name", "done", base)
    raw = os.fsdecode(b"latin1-\xe9t\xe9-\xff\xfe.mp4")  # not UTF-8: surrogate escapes
    c.add(f"names/{raw}", "filename", "non-UTF-8 bytes in the name", "done", base)
    c.items.append(Item("names/" + "y" * 300 + ".mp4", "filename",
                        "a name over 255 bytes", "refused"))
    # a path over 4096 characters: nested folders (created relative, then linked)
    deep = c.root / "names" / "deep"
    deep.mkdir(parents=True)
    rel = "/".join(["d" * 200] * 22)
    fd = os.open(deep, os.O_RDONLY)
    try:
        cur = fd
        for _part in rel.split("/"):
            with contextlib.suppress(FileExistsError):
                os.mkdir("d" * 200, dir_fd=cur)
            nxt = os.open("d" * 200, os.O_RDONLY, dir_fd=cur)
            if cur != fd:
                os.close(cur)
            cur = nxt
        out = os.open("clip.mp4", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=cur)
        os.write(out, base)
        os.close(out)
        if cur != fd:
            os.close(cur)
    finally:
        os.close(fd)
    c.items.append(Item(f"names/deep/{rel}/clip.mp4", "filename",
                        f"a path of {len(rel) + 20}+ characters", "refused"))


# --- the runner -----------------------------------------------------------------------------

@dataclass
class Outcome:
    """What happened to one corpus item."""

    path: str
    category: str
    expect: str
    outcome: str  # done / refused / failed / timeout / violation
    seconds: float
    max_rss_bytes: int
    reason: str
    problems: list[str]


def _canary_open(fifo: str) -> bool:
    """Whether some process holds the canary FIFO open for reading right now."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return False
    os.close(fd)
    return True


# The peak RSS the kernel reports for a child includes the memory it had before exec: with
# vfork (what subprocess uses) that is its parent's, so a 2 GB test process made every
# ingest look 2 GB big. This small process forks and execs the command itself, so the
# command's own peak is measured, and writes it (KiB) to the descriptor it is given.
_PEAK_RSS_SHIM = """
import os, signal, sys
fd = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    os.close(fd)
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
os.write(fd, str(usage.ru_maxrss).encode())
if os.WIFSIGNALED(status):
    try:
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL and SIGSTOP keep their default
    os.kill(os.getpid(), os.WTERMSIG(status))
sys.exit(os.WEXITSTATUS(status))
"""


def run_ingest(cmd: list[str], env: dict[str, str], timeout_s: float, fifo: str | None
               ) -> tuple[int, str, str, float, int, bool]:
    """Run one ingest; returns (rc, stdout, stderr, seconds, peak RSS bytes, canary seen)."""
    import tempfile

    read_end, write_end = os.pipe()
    with tempfile.TemporaryFile() as so, tempfile.TemporaryFile() as se:
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", _PEAK_RSS_SHIM, str(write_end), *cmd],
                                env=env, stdout=so, stderr=se, stdin=subprocess.DEVNULL,
                                pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        seen = False
        killed = threading.Event()

        def watch() -> None:
            nonlocal seen
            while proc.returncode is None and not killed.is_set():
                if fifo and _canary_open(fifo):
                    seen = True
                if time.monotonic() - t0 > timeout_s:
                    killed.set()
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, 9)  # the command and the shim
                    return
                time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _pid, status, _usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - t0
        killed.set()
        watcher.join()
        with os.fdopen(read_end, "rb") as peak:
            kib = int(peak.read() or b"0")
        so.seek(0)
        se.seek(0)
        return (124 if seconds > timeout_s else proc.returncode,
                so.read().decode("utf-8", "replace"), se.read().decode("utf-8", "replace"),
                seconds, kib * 1024, seen)


def clean_line_problems(stderr: str) -> list[str]:
    """Why an error output is not one clean line (empty when it is)."""
    problems = []
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    if "Traceback" in stderr:
        problems.append("a traceback")
    if any(ord(ch) < 32 and ch not in "\n" for ch in stderr) or "\x7f" in stderr:
        problems.append("raw control characters")
    if lines and not lines[0].startswith("error: "):
        problems.append("does not start with 'error: '")
    return problems


def _worker_pids(home: str) -> list[str]:
    """The Celery processes of the stack in this home."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes()
            if f"BODYCAM_HOME={home}".encode() + b"\x00" not in env:
                continue
            if b"celery" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        pids.append(pid)
    return pids


def _reset_worker_peak_rss(home: str) -> None:
    """Start the workers' peak RSS afresh, so it speaks of this run only (clear_refs 5)."""
    for pid in _worker_pids(home):
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def _worker_peak_rss(home: str) -> int:
    """The highest VmHWM of this stack's Celery processes since the run began, bytes."""
    peak = 0
    for pid in _worker_pids(home):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
    return peak


def _evidence_counts(ctx: Any) -> tuple[int, int, int]:
    with ctx.db() as conn:
        videos = conn.execute("SELECT count(*) AS n FROM videos").fetchone()["n"]
        units = conn.execute("SELECT count(*) AS n FROM work_units").fetchone()["n"]
    objects = sum(1 for o in ctx.store.list("") if o.key.startswith("originals/"))
    return int(videos), int(units), objects


def _jobs(env: dict[str, str]) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "bodycam", "jobs", "--json"], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def run_corpus(corpus: Path, env: dict[str, str] | None = None,
               only: Callable[[Item], bool] | None = None,
               wait_s: float = 600, progress: bool = False) -> dict[str, Any]:
    """Ingest every item of a generated corpus through `bodycam ingest`; check the contract.

    Needs a running stack (BODYCAM_HOME in env). Returns the summary (also per-item outcomes).
    """
    from bodycam.config import reload_settings
    from bodycam.context import Context

    env = dict(env or os.environ)
    manifest = json.loads((corpus / "manifest.json").read_text())
    fifo = manifest["canary_fifo"]
    items = [Item(**i) for i in manifest["items"]]
    if only:
        items = [i for i in items if only(i)]
    ctx = Context.load(reload_settings())
    _reset_worker_peak_rss(env.get("BODYCAM_HOME", ""))
    outcomes: list[Outcome] = []
    accepted: dict[str, list[Outcome]] = defaultdict(list)
    for n, item in enumerate(items, 1):
        if progress:
            print(f"[{n}/{len(items)}] {item.path!a:.120}", file=sys.stderr, flush=True)
        target = item.args_path if item.args_path is not None else str(corpus / item.path)
        before = _evidence_counts(ctx)
        cmd = [sys.executable, "-m", "bodycam", "ingest", "--case", CASE, "--officer", "O",
               "--device", "D", "--json", "--", target]
        rc, out, err, secs, rss, seen = run_ingest(cmd, env, INGEST_TIMEOUT_S, fifo)
        problems = []
        if seen or _canary_open(fifo):
            problems.append("the canary FIFO was opened")
        if rss > MAX_RSS_BYTES:
            problems.append(f"peak RSS {rss >> 20} MiB")
        if rc == 124:
            outcomes.append(Outcome(item.path, item.category, item.expect, "timeout", secs, rss,
                                    "", [*problems, "over 60 s"]))
            continue
        if rc == 0:
            res = json.loads(out)[0]
            if os.path.isfile(target):
                digest = hashlib.sha256(Path(target).read_bytes()).hexdigest()
                if res["sha256"] != digest:
                    problems.append("stored SHA-256 is not the file's")
            o = Outcome(item.path, item.category, item.expect, "accepted", secs, rss, "",
                        problems)
            outcomes.append(o)
            accepted[res["video_id"]].append(o)
            continue
        problems += clean_line_problems(err)
        if _evidence_counts(ctx) != before:
            problems.append("left a row, object or job behind")
        reason = err.strip().removeprefix("error: ")
        outcomes.append(Outcome(item.path, item.category, item.expect, "refused", secs, rss,
                                reason, problems))
    deadline = time.monotonic() + wait_s
    pending = set(accepted)
    while pending and time.monotonic() < deadline:
        for job in _jobs(env):
            if job["video_id"] in pending and job["status"] in ("done", "failed", "quarantined"):
                for o in accepted[job["video_id"]]:
                    o.outcome = job["status"]
                    if job["status"] != "done":
                        o.reason = str(job.get("error") or "")
                        if o.expect == "done":
                            o.problems.append(f"valid file ended {job['status']}: {o.reason}")
                        if job["status"] == "quarantined":
                            o.problems.append("quarantined (crashed a worker) instead of a "
                                              "clean permanent error")
                pending.discard(job["video_id"])
        time.sleep(1)
    for vid in pending:
        for o in accepted[vid]:
            o.problems.append("did not finish processing")
    for o in outcomes:
        if o.expect == "done" and o.outcome != "done":
            o.problems.append(f"expected done, got {o.outcome}")
        if o.expect == "refused" and o.outcome not in ("refused", "failed"):
            o.problems.append(f"expected a refusal, got {o.outcome}")
    return summarize(outcomes, worker_rss=_worker_peak_rss(env.get("BODYCAM_HOME", "")))


def summarize(outcomes: list[Outcome], worker_rss: int = 0) -> dict[str, Any]:
    """Counts by category and outcome, the slowest and largest ingest, reasons, problems."""
    by_cat: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: Counter[str] = Counter()
    for o in outcomes:
        by_cat[o.category][o.outcome] += 1
        if o.reason:
            reasons[_reason_kind(o.reason)] += 1
    return {
        "files": len(outcomes),
        "by_category": {k: dict(v) for k, v in sorted(by_cat.items())},
        "max_seconds": round(max((o.seconds for o in outcomes), default=0.0), 2),
        "max_cli_rss_mib": round(max((o.max_rss_bytes for o in outcomes), default=0) / 2**20),
        "max_worker_rss_mib": round(worker_rss / 2**20),
        "reasons": dict(reasons.most_common()),
        "problems": [{"path": o.path, "problems": o.problems} for o in outcomes if o.problems],
        "outcomes": [asdict(o) for o in outcomes],
    }


def _reason_kind(reason: str) -> str:
    """A reason without the file name and numbers, to count reasons by kind."""
    text = reason.split(": ", 1)[1] if ": " in reason else reason
    text = "".join("#" if ch.isdigit() else ch for ch in text)
    return text.split(" (")[0][:90]


def iter_items(corpus: Path) -> Iterator[Item]:
    """The items of a generated corpus."""
    for i in json.loads((corpus / "manifest.json").read_text())["items"]:
        yield Item(**i)


def main(argv: list[str] | None = None) -> int:
    """Command line: `generate` a corpus, or `run` one against the running stack."""
    ap = argparse.ArgumentParser(prog="python -m bodycam.hostile", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write the corpus")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--count", type=int, default=None)
    r = sub.add_parser("run", help="ingest the corpus into the running stack")
    r.add_argument("--corpus", type=Path, required=True)
    r.add_argument("--summary", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "generate":
        items = generate(args.out, args.seed, args.count)
        print(f"{len(items)} files in {args.out} (seed {args.seed})")
        return 0
    summary = run_corpus(args.corpus, progress=True)
    args.summary.write_text(json.dumps(summary, indent=1))
    brief = {k: v for k, v in summary.items() if k != "outcomes"}
    print(json.dumps(brief, indent=1))
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
