"""Hostile media: playlists, bombs, damaged files and hostile names against the real stack."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from bodycam import hostile
from bodycam.config import LimitsSettings, PipelineSettings
from bodycam.errors import InvalidMediaError
from bodycam.media.files import private_copy
from bodycam.media.probe import probe
from bodycam.media.source import open_options
from tests.conftest import HAMILTON, StackHandle

# A fast sample that still covers every category (the whole corpus: `make hostile`).
FAST = {
    "truncated/t000.mp4", "bitflip/b000.mp4", "boxes/x000.mp4", "boxes/x001.mp4",
    "bombs/res_mid.mp4", "bombs/res_end.mkv", "bombs/long_still.mp4", "bombs/huge_dims.mkv",
    "playlists/hls_fifo.m3u8", "playlists/hls_sibling.mp4", "playlists/ffconcat_fifo.ffconcat",
    "playlists/concatlist_rel.mp4", "playlists/dash_fifo.mpd", "playlists/sdp_url.sdp",
    "playlists/concat:a.mp4",
    "types/text.mp4", "types/jpeg.mp4", "types/audio_only.mp4",
    "valid/vp9.webm", "valid/h264.ts", "valid/rotated_90.mp4", "valid/vfr.mp4",
    "valid/ffv1.mkv", "decoys/small_first.mp4", "bombs/elst_repeat.mp4", "bombs/streams_20.mp4",
    "timestamps/joined_segments.ts", "timestamps/untimed_frames.ts", "bombs/mkv_9_streams.mkv",
    "timestamps/paused_10h.mp4",
    "fs/link.mp4", "fs/loopdir/x.mp4", "fs/fifo.mp4", "fs/dev_zero",
    "names/[/red]closing.mp4", "names/two\nlines.mp4",
}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The whole hostile corpus for seed 1 (about 15 s to generate)."""
    out = tmp_path_factory.mktemp("hostile") / "corpus"
    hostile.generate(out, seed=1)
    return out


def _item(corpus: Path, path: str) -> hostile.Item:
    return next(i for i in hostile.iter_items(corpus) if i.path == path)


def test_the_corpus_has_every_category_and_is_reproduced_from_its_seed(
        corpus: Path, tmp_path: Path) -> None:
    items = list(hostile.iter_items(corpus))
    assert len(items) >= 300
    cats = {i.category for i in items}
    assert cats >= {"truncation", "bitflip", "boxes", "bomb", "playlist", "wrong-type",
                    "valid-variant", "filesystem", "filename", "timestamps", "decoy"}
    again = hostile.generate(tmp_path / "again", seed=1, count=None)
    assert [(i.path, i.note.replace(str(tmp_path / "again"), "ROOT")) for i in again] == \
        [(i.path, i.note.replace(str(corpus), "ROOT")) for i in items]
    for rel in ("truncated/t005.mp4", "bitflip/b007.mp4", "boxes/x011.mp4"):
        assert (tmp_path / "again" / rel).read_bytes() == (corpus / rel).read_bytes()
    seed_clip = (corpus / "seeds" / "seed.mp4").read_bytes()
    one = [hostile.fuzz_boxes(seed_clip, random.Random(1)) for _ in range(5)]
    assert one == [hostile.fuzz_boxes(seed_clip, random.Random(1)) for _ in range(5)]
    assert one[0] != hostile.fuzz_boxes(seed_clip, random.Random(2))


def test_the_canary_fifo_sees_a_reader_and_ffmpeg_without_allow_lists_would_follow_it(
        corpus: Path) -> None:
    fifo = json.loads((corpus / "manifest.json").read_text())["canary_fifo"]
    assert not hostile._canary_open(fifo)
    opened = threading.Event()

    def reader() -> None:
        fd = os.open(fifo, os.O_RDONLY)  # blocks until a writer opens it: that is the check
        opened.set()
        os.close(fd)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    seen = False
    while time.monotonic() < deadline and not seen:
        seen = hostile._canary_open(fifo)
        time.sleep(0.02)
    t.join(5)
    assert seen and opened.is_set()
    # The corpus is really hostile: plain FFmpeg follows the ffconcat script to the canary clip.
    script = corpus / "playlists" / "ffconcat_sibling.ffconcat"
    with av.open(str(script)) as c:
        assert c.format.name == "concat"
        assert sum(1 for _ in c.decode(video=0)) > 0
    with pytest.raises(InvalidMediaError, match="concat script"):
        probe(script, LimitsSettings())


def test_the_format_allow_list_alone_refuses_playlists_and_scripts(corpus: Path) -> None:
    """Below the signature check: FFmpeg itself, given our options, will not open them."""
    limits = LimitsSettings()
    for rel, demuxer in [("playlists/hls_relfile.m3u8", "hls"),
                         ("playlists/ffconcat_sibling.ffconcat", "concat"),
                         ("playlists/dash_relfile.mpd", "dash")]:
        url = f"file:{corpus / rel}"
        try:  # without the options FFmpeg recognises the playlist (the attack is real) ...
            with av.open(url) as c:
                assert demuxer in c.format.name
        except av.FFmpegError:
            assert demuxer == "dash"  # this FFmpeg build may lack the DASH demuxer
        with pytest.raises(av.FFmpegError):  # ... with them it refuses before reading on
            av.open(url, options=open_options(limits))


def test_a_resolution_bomb_in_the_middle_is_refused_by_the_decoder_before_memory_grows(
        corpus: Path) -> None:
    """Probe sees only the start and end; the worker's decoder must refuse the middle."""
    bomb = corpus / "bombs" / "res_mid.mp4"
    out = _decode_in_child(bomb)
    assert "REFUSED" in out, out
    assert "over the limit" in out["REFUSED"] and "res_mid.mp4" in out["REFUSED"]
    assert int(out["RSS"]) * 1024 < 1024**3, out["RSS"]
    # with room for the big frames, the change of size itself is refused
    out = _decode_in_child(bomb, "LimitsSettings(max_height_px=7680, max_pixels=7680 * 7680)")
    assert "frame size changes from 320x240 to 7680x7680" in out.get("REFUSED", ""), out
    assert int(out["RSS"]) * 1024 < 2 * 1024**3, out["RSS"]


def test_ingest_wait_says_why_a_video_failed_and_exits_1(stack: StackHandle,
                                                          corpus: Path) -> None:
    """`ingest --wait` printed "failed" on its progress line and exited 0: a script saw
    success (bb43). The bomb in the middle passes the probe and fails on the worker."""
    bomb = corpus / "bombs" / "res_mid.mp4"
    case = f"T-WAIT-{time.time_ns()}"
    proc = stack.cli.run("ingest", str(bomb), "--case", case, "--officer", "O", "--device",
                         "D", "--wait", timeout=300)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    [line] = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "res_mid.mp4: video " in line and " failed: " in line and "over the limit" in line, \
        line
    listed = stack.cli.run("ingest", str(bomb), "--case", case, "--officer", "O", "--device",
                           "D", "--wait", "--json", timeout=300)
    assert listed.returncode == 1 and json.loads(listed.stdout)[0]["status"] == "failed"


def test_frames_with_damaged_data_are_said_on_the_job_and_in_its_audit_row(
        stack: StackHandle, tmp_path: Path) -> None:
    """Bytes flipped through the middle of a file, its container intact: the decoder fills
    the damage in, and the video was `done` with its face lost, nothing said and nothing
    audited (bb43). The frames it marks corrupt are counted and said. (Denser damage, one byte
    in 997 here, fails decoding: refused in one line, as before.)"""
    data = bytearray(HAMILTON.read_bytes())
    for k in range(int(len(data) * 0.3), int(len(data) * 0.7), 4999):
        data[k] ^= 0xFF
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    case = f"T-DAMAGE-{time.time_ns()}"
    [res] = stack.cli.json("ingest", str(damaged), "--case", case, "--officer", "O",  # type: ignore[misc]
                           "--device", "D")
    job = stack.wait_status(str(res["video_id"]))
    assert job["status"] == "done", job
    assert "hold damaged data the decoder filled in" in str(job["notice"]), job
    with stack.ctx.db() as conn:
        [row] = conn.execute("SELECT details FROM audit_log WHERE action = 'processing.done'"
                             " AND details->>'video_id' = %s", (res["video_id"],)).fetchall()
    frames = row["details"]["damaged_frames"]
    assert 0 < frames < 275, row
    assert f"{frames} frames between " in str(job["notice"])
    # Breaking it: the clean file says nothing of the kind.
    [clean] = stack.cli.json("ingest", str(HAMILTON), "--case", case, "--officer", "O",  # type: ignore[misc]
                             "--device", "D")
    job = stack.wait_status(str(clean["video_id"]))
    assert job["status"] == "done" and "damaged" not in str(job["notice"]), job


def test_a_frame_size_the_decoder_would_not_keep_is_not_called_too_small() -> None:
    """A 16000x16000 MJPEG left the decoder at 0x0, refused as "0x0 is too small to hold
    faces" (bb43)."""
    from bodycam.media.source import check_size

    limits = LimitsSettings()
    with pytest.raises(InvalidMediaError, match="its frame size cannot be read"):
        check_size(0, 0, limits, "big.mov")
    with pytest.raises(InvalidMediaError, match="16x16 is too small to hold faces"):
        check_size(16, 16, limits, "small.mov")


def _decode_in_child(clip: Path, limits: str = "LimitsSettings()") -> dict[str, str]:
    """Probe and decode a clip in a fresh process: DECODED (sampled frames) or REFUSED, and
    RSS, the process's own peak in kB (VmHWM belongs to the new address space, whereas
    getrusage's ru_maxrss survives execve and so reports the parent's, pytest's, peak)."""
    code = (
        "from pathlib import Path\n"
        "from bodycam.config import LimitsSettings, PipelineSettings\n"
        "from bodycam.errors import InvalidMediaError\n"
        "from bodycam.media.probe import probe\n"
        "from bodycam.pipeline.frames import ChunkDecoder\n"
        f"p = Path({str(clip)!r}); limits = {limits}\n"
        "info = probe(p, limits)\n"
        "try:\n"
        "    n = sum(1 for _ in ChunkDecoder(p, info, 0.0, info.duration_s, PipelineSettings(),"
        " limits))\n"
        "    print('DECODED', n)\n"
        "except InvalidMediaError as e:\n"
        "    print('REFUSED', e)\n"
        "print('RSS', next(line.split()[1] for line in open('/proc/self/status')"
        " if line.startswith('VmHWM:')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert proc.returncode == 0, proc.stderr
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines())


def test_the_probe_refuses_fast_what_would_hold_a_worker_or_the_server(corpus: Path) -> None:
    """Found by the black-box round of 2026-12-05 evening: an edit list repeated 43,300 times
    was counted frame by frame for 2 min 42 s before its refusal; 1,000 frames a second were
    accepted (a 2-MB file held the worker half an hour); 70 streams took the API to 4 GiB."""
    limits = LimitsSettings()
    for rel, reason in (("bombs/elst_repeat.mp4", "plays the same data again"),
                        ("bombs/elst_repeat_240.mp4", "plays the same data again"),
                        ("bombs/dense_fps.mp4", "over the limit of 240.0 frames a second"),
                        ("bombs/streams_20.mp4", "more than 8 streams")):
        t = time.monotonic()
        with pytest.raises(InvalidMediaError, match=reason):
            probe(corpus / rel, limits)
        assert time.monotonic() - t < 15, rel
    # the same files within raised limits: the bounds are what refused them
    with pytest.raises(InvalidMediaError, match=r"20 video streams \(192x144, 192x144, "
                                                r"192x144, 192x144, \.\.\.\): one is analysed"):
        probe(corpus / "bombs/streams_20.mp4", LimitsSettings(max_streams=32))
    assert probe(corpus / "bombs/dense_fps.mp4", LimitsSettings(max_fps=1000)).n_frames == 3000


def test_the_footage_is_the_one_video_stream_not_cover_art_and_two_are_refused(
        corpus: Path) -> None:
    """Cover art is never footage, even larger; the probe and the worker's decoder pick the
    same stream. Two video streams are refused: the largest was taken, and a one-frame
    still beside the footage, or an equal first stream while the default flag marked the
    other, was analysed instead (done, no face: black-box round bb16)."""
    from bodycam.config import PipelineSettings
    from bodycam.pipeline.frames import ChunkDecoder

    info = probe(corpus / "valid/cover_art.mp4", LimitsSettings())
    assert (info.codec, info.width_px, info.height_px, info.n_frames) == ("h264", 320, 240, 15)
    frames = list(ChunkDecoder(corpus / "valid/cover_art.mp4", info, 0.0, info.duration_s,
                               PipelineSettings()))
    assert frames and all(f.image.shape == (240, 320, 3) for f in frames)
    with av.open(str(corpus / "valid/cover_art.mp4")) as c:  # the file is what it says
        assert [s.width for s in c.streams.video] == [320, 640]
    with pytest.raises(InvalidMediaError, match=r"2 video streams \(64x64, 320x240\): one is "
                                                r"analysed, so split them"):
        probe(corpus / "decoys/small_first.mp4", LimitsSettings())


def test_attachments_are_not_counted_as_streams(corpus: Path, tmp_path: Path) -> None:
    """Fonts or pictures attached to a Matroska file get no decoder: ten of them beside the
    footage are no reason to refuse it (they were once the stream limit was enforced)."""
    args: list[str] = []
    for k in range(10):
        (tmp_path / f"a{k}.bin").write_bytes(bytes(range(256)) * 8)
        args += ["-attach", str(tmp_path / f"a{k}.bin"), f"-metadata:s:t:{k}",
                 "mimetype=application/octet-stream"]
    out = tmp_path / "attached.mkv"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-i",
                    str(corpus / "valid/cover_art.mp4"), "-map", "0:v:0", "-c", "copy", *args,
                    str(out)], check=True)
    with av.open(str(out)) as c:
        assert [st.type for st in c.streams].count("attachment") == 10
    assert probe(out, LimitsSettings()).n_frames == 15


def test_every_frame_needs_a_time_of_its_own_and_times_never_go_back(corpus: Path) -> None:
    """Found by the black-box round bb16 (2026-12-06): frames without a time stamp, frames
    sharing one, and segments joined with their own times were never analysed (the video
    recorded at half its length, done with no face) and a redaction released them unmasked;
    a Matroska file with one stream over the limit was analysed as its first two frames.
    FFmpeg plays each of them whole (the files are what they say)."""
    limits = LimitsSettings()
    for rel, reason in (
            ("timestamps/joined_segments.ts", r"time stamps go back by 1\.933 s \(from "
                                              r"3\.333 s to 1\.400 s\): segments joined"),
            ("timestamps/untimed_frames.ts", r"frame 2 \(in file order\) carries no time stamp"),
            ("timestamps/shared_times.mkv", r"frames 1 and 2 share the time stamp 0\.000 s"),
            ("bombs/mkv_9_streams.mkv", r"more than 8 streams \(the limit\)")):
        with pytest.raises(InvalidMediaError, match=reason):
            probe(corpus / rel, limits)
        with av.open(str(corpus / rel)) as c:
            frames = sum(1 for _ in c.decode(video=0))
        assert frames == (60 if "joined" in rel else 30), (rel, frames)
    # The same pictures with times of their own are footage.
    with av.open(str(corpus / "timestamps/shared_times.mkv")) as c:
        assert len({p.pts for p in c.demux(video=0) if p.size}) == 6


@pytest.mark.parametrize("matrix", [["-display_hflip"], ["-display_vflip"],
                                    ["-display_rotation", "90"],
                                    ["-display_rotation", "90", "-display_hflip"],
                                    ["-display_rotation", "270", "-display_vflip"],
                                    ["-display_rotation", "180", "-display_hflip"]])
def test_frames_are_analysed_as_players_show_them_mirrored_or_turned(
        tmp_path: Path, matrix: list[str]) -> None:
    """A mirrored display matrix was read as a half turn: faces upside down, 0 tracks. The
    decoder's frames now equal FFmpeg's own autorotation of the same file."""
    from bodycam.config import PipelineSettings
    from bodycam.pipeline.frames import ChunkDecoder

    ff = hostile.ffmpeg_exe()
    plain, tagged = tmp_path / "plain.mp4", tmp_path / "tagged.mp4"
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=5",
                    "-t", "0.4", "-pix_fmt", "yuv444p", "-c:v", "libx264", "-qp", "0",
                    str(plain)], check=True)
    subprocess.run([ff, "-v", "error", *matrix, "-i", str(plain), "-c", "copy", str(tagged)],
                   check=True)
    shown = subprocess.run([ff, "-v", "error", "-i", str(tagged), "-frames:v", "1", "-f",
                            "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True,
                           check=True).stdout
    info = probe(tagged, LimitsSettings())
    first = next(iter(ChunkDecoder(tagged, info, 0.0, info.duration_s, PipelineSettings())))
    assert first.image.tobytes() == shown, (matrix, info.rotation_deg, info.mirrored)


def test_the_probe_runs_in_a_child_bounded_in_time_and_memory(tmp_path: Path) -> None:
    """Whatever FFmpeg takes to open a file is a child's: past the bounds, one refusal."""
    with pytest.raises(InvalidMediaError, match="took longer than 0 s"):
        probe(HAMILTON, LimitsSettings(probe_timeout_s=0.001))
    big = tmp_path / "8k.mp4"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "color=c=gray:size=7680x4320:rate=10", "-t", "0.3", "-pix_fmt", "yuv420p",
                    "-c:v", "libx264", "-preset", "ultrafast", "-x264-params", "level=6.2",
                    str(big)], check=True)
    with pytest.raises(InvalidMediaError):  # too little for FFmpeg's 8K decoder
        probe(big, LimitsSettings(probe_memory_mib=128))
    assert probe(big, LimitsSettings(probe_memory_mib=512)).width_px == 7680
    # an 8K picture is decoded on few frame threads, whatever the cores (16 took 1.6 GiB)
    from bodycam.cpus import usable_cpus
    from bodycam.media.source import frame_threads, open_video

    with open_video(big, LimitsSettings(), "8k.mp4") as media:
        frame_threads(media.stream)
        assert media.stream.codec_context.thread_count <= 2
    with open_video(HAMILTON, LimitsSettings(), "hamilton") as media:
        frame_threads(media.stream)
        assert media.stream.codec_context.thread_count == usable_cpus()


def test_the_probe_s_child_starts_without_the_settings_loader_or_numpy() -> None:
    """Every ingest starts one: pydantic-settings and numpy took half of its 0.45 s start."""
    code = ("import sys; import bodycam.media.probe; print(sorted(m for m in ('numpy', "
            "'pydantic_settings', 'bodycam.config', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_a_picture_is_bounded_in_bytes_not_only_in_pixels(tmp_path: Path) -> None:
    """8K at 10-bit 4:4:4 passed the pixel bound at four times the bytes of 8K 4:2:0 and took
    a worker past 3 GiB; limits.max_frame_bytes bounds the picture in its own format."""
    deep = tmp_path / "deep.mp4"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=5", "-t", "0.6", "-pix_fmt", "yuv444p10le",
                    "-c:v", "libx264", str(deep)], check=True)
    bound = LimitsSettings(max_frame_bytes=320 * 240 * 3)  # what 8-bit 4:4:4 takes
    with pytest.raises(InvalidMediaError, match="in yuv444p10le is 460800 bytes a picture"):
        probe(deep, bound)
    assert probe(HAMILTON, LimitsSettings(max_frame_bytes=640 * 360 * 3 // 2)).n_frames > 0
    assert probe(deep, LimitsSettings()).n_frames == 3


def test_a_turn_for_a_probe_is_waited_for_a_bounded_time() -> None:
    """Two slow files took both turns and six at once were refused after 66-99 s (a plain
    clip behind them waited 68 s): a turn is waited for at most probe_timeout_s, then 503."""
    from bodycam.errors import TransientError
    from bodycam.media import probe as probe_module

    held = [probe_module._PROBES.acquire(timeout=60) for _ in range(2)]
    try:
        assert all(held)
        t = time.monotonic()
        with pytest.raises(TransientError, match="busy probing other files"):
            probe(HAMILTON, LimitsSettings(probe_timeout_s=0.5))
        assert time.monotonic() - t < 5
    finally:
        for _ in held:
            probe_module._PROBES.release()
    assert probe(HAMILTON, LimitsSettings(probe_timeout_s=0.5 + 5)).n_frames > 0


def test_one_account_s_uploads_take_one_probe_turn_not_every_other_account_s(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One account's slow files held both turns, and every other account's upload waited,
    then got a 503: an account probes one file at a time, and the others keep a turn."""
    from bodycam.errors import TransientError
    from bodycam.media import probe as probe_module

    real = subprocess.run

    def slow(*args: object, **kwargs: object) -> object:
        time.sleep(3)  # a file that takes long to probe
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(probe_module.subprocess, "run", slow)
    limits = LimitsSettings(probe_timeout_s=2.0)
    outcome: dict[str, str] = {}

    def upload(key: str, owner: str) -> None:
        try:
            probe(HAMILTON, limits, owner=owner)
            outcome[key] = "probed"
        except TransientError as exc:
            outcome[key] = str(exc)

    flood = [threading.Thread(target=upload, args=(f"flood{i}", "flooder")) for i in range(4)]
    for t in flood:
        t.start()
    time.sleep(0.5)
    upload("other", "someone-else")
    for t in flood:
        t.join()
    assert outcome.pop("other") == "probed"
    assert sorted(outcome.values()).count("probed") == 1, outcome
    assert all("your other uploads are being probed" in v for v in outcome.values()
               if v != "probed"), outcome


def test_a_cropped_picture_is_decoded_as_players_show_it(tmp_path: Path) -> None:
    """An H.264 picture cropped 30 px at the left and 14 at the top: FFmpeg's decoder skips
    a crop that leaves planes unaligned unless allowed to, so the valid file (400x226 shown)
    was refused as changing size to 430x226 (bb44). The frames now equal FFmpeg's own."""
    from bodycam.config import PipelineSettings
    from bodycam.pipeline.frames import ChunkDecoder

    ff = hostile.ffmpeg_exe()
    path = tmp_path / "cropped.mp4"
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=432x240:rate=5",
                    "-t", "1", "-pix_fmt", "yuv444p", "-c:v", "libx264", "-qp", "0", "-bsf:v",
                    "h264_metadata=crop_left=30:crop_top=14:crop_right=2", str(path)],
                   check=True)
    shown = subprocess.run([ff, "-v", "error", "-i", str(path), "-frames:v", "1", "-f",
                            "rawvideo", "-pix_fmt", "rgb24", "-"], capture_output=True,
                           check=True).stdout
    info = probe(path, LimitsSettings())
    assert (info.width_px, info.height_px) == (400, 226)
    first = next(iter(ChunkDecoder(path, info, 0.0, info.duration_s, PipelineSettings())))
    assert first.image.shape[:2] == (226, 400) and first.image.tobytes() == shown


@pytest.mark.parametrize("before_wrap_s", [30.0, 1000.0])
def test_mpeg_ts_is_probed_and_each_chunk_decoded_from_its_start(tmp_path: Path,
                                                                 before_wrap_s: float) -> None:
    """MPEG-TS that began 30 s before its 33-bit clock wrapped has only negative times in
    FFmpeg: a seek to 0 for the first frame landed past the end, and the valid file was
    refused ("the first frame does not decode"). And a seek in MPEG-TS lands up to a group
    of pictures after its target: a chunk from 2 s began at 3.8 s, so every chunk but the
    first lost its first frames to the analysis (black-box round bb18)."""
    from bodycam.config import PipelineSettings
    from bodycam.pipeline.frames import ChunkDecoder

    path = tmp_path / "camera.ts"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=15", "-t", "8", "-c:v", "libx264", "-bf", "3",
                    "-g", "30", "-pix_fmt", "yuv420p", "-output_ts_offset",
                    str(2**33 / 90000 - before_wrap_s), str(path)], check=True)
    info = probe(path, LimitsSettings())
    assert (info.n_frames, round(info.duration_s, 3)) == (120, 8.0)
    for start in (2.0, 4.0, 6.0):
        decoder = ChunkDecoder(path, info, start, info.duration_s, PipelineSettings())
        frames = list(decoder)
        assert frames[0].t_s == start and decoder.frames_decoded == round((8 - start) * 15)


def test_an_avi_s_empty_frames_are_gaps_not_a_truncation(tmp_path: Path) -> None:
    """An AVI whose picture starts after its sound (or that dropped frames) holds empty chunks
    that its index counts and no demuxer yields: the valid file was refused "truncated: the
    index lists 90 frames but only 65 are present" (bb35). A file cut short still is."""
    path = tmp_path / "late.avi"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=30", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=4", "-filter_complex",
                    "[0:v]trim=duration=3,setpts=PTS-STARTPTS+1/TB[v]", "-map", "[v]", "-map",
                    "1:a", "-c:v", "mjpeg", "-q:v", "5", "-c:a", "pcm_s16le", str(path)],
                   check=True)
    with av.open(str(path)) as c:  # the file is what the case is about
        listed = c.streams.video[0].frames
        present = sum(1 for p in c.demux(c.streams.video[0]) if p.size)
    assert present == 90 and listed > 110, (present, listed)
    info = probe(path, LimitsSettings())
    assert info.n_frames == 90
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(InvalidMediaError):
        probe(cut, LimitsSettings())


def test_frames_stamped_all_at_once_are_refused_for_their_rate(tmp_path: Path) -> None:
    """Every frame stamped 0: the MP4 writer puts them a tick apart, and the refusal said the
    video was too short, not what is wrong with it (bb35)."""
    path = tmp_path / "zero.mp4"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=30", "-t", "2", "-c:v", "libx264", "-bsf:v",
                    "setts=pts=0:dts=0", str(path)], check=True)
    with pytest.raises(InvalidMediaError, match=r"60 frames in 0\.\d+ s, over the limit of"):
        probe(path, LimitsSettings())


def test_a_frame_that_turns_mid_way_keeps_the_video_s_orientation(tmp_path: Path) -> None:
    """An H.264 display-orientation SEI from frame 60 on turned the later frames to another
    size under the tracks; the video keeps its first frame's orientation throughout."""
    from bodycam.config import PipelineSettings
    from bodycam.pipeline.frames import ChunkDecoder

    ff = hostile.ffmpeg_exe()
    raw, turned, clip = tmp_path / "a.h264", tmp_path / "b.h264", tmp_path / "turns.mp4"
    subprocess.run([ff, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=160x96:rate=30",
                    "-t", "4", "-pix_fmt", "yuv420p", "-c:v", "libx264", "-bf", "0",
                    "-f", "h264", str(raw)], check=True)
    # display orientation SEI (payload 47): 90 degrees, persistent, before each frame from 60
    rot = format(round(90 / 360 * 65536) & 0xFFFF, "016b")
    payload = int("000" + rot + "010" + "0" + "1", 2).to_bytes(3, "big")
    sei = b"\x00\x00\x00\x01\x06" + bytes([47, len(payload)]) + payload + b"\x80"
    data, out, frame, prev = raw.read_bytes(), bytearray(), -1, 0
    for m in re.finditer(b"\x00\x00\x01", data):
        s = m.start()
        z = s - 1 if s > 0 and data[s - 1] == 0 else s
        if data[s + 3] & 0x1F in (1, 5) and data[s + 4] & 0x80:  # a frame's first slice
            frame += 1
            if frame >= 60:
                out += data[prev:z] + sei
                prev = z
    turned.write_bytes(bytes(out + data[prev:]))
    subprocess.run([ff, "-v", "error", "-r", "30", "-f", "h264", "-i", str(turned), "-c",
                    "copy", str(clip)], check=True)
    with av.open(str(clip)) as c:  # the file turns mid-way as built
        rotations = {int(f.rotation or 0) for f in c.decode(video=0)}
    assert len(rotations) == 2, rotations
    info = probe(clip, LimitsSettings())
    shapes = {f.image.shape for f in ChunkDecoder(clip, info, 0.0, info.duration_s,
                                                  PipelineSettings())}
    assert shapes == {(96, 160, 3)}, shapes


def test_at_most_two_probes_run_at_once_in_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each probe may take probe_memory_mib: twenty uploads at once must not take twenty."""
    from bodycam.media import probe as probe_module

    real, lock = subprocess.run, threading.Lock()
    running, peak = [0], [0]

    def counted(*args: object, **kwargs: object) -> object:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.3)
            return real(*args, **kwargs)  # type: ignore[call-overload]
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(probe_module.subprocess, "run", counted)
    got: list[int] = []
    threads = [threading.Thread(target=lambda: got.append(probe(HAMILTON, LimitsSettings())
                                                          .n_frames)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and len(set(got)) == 1
    assert peak[0] == 2, peak


def test_a_young_scene_holds_few_frames_of_a_fast_large_video(tmp_path: Path) -> None:
    """A scene's first frames are held until its samples can be planned: 0.8 s of 8K at
    60 fps took a worker to 3.1 GiB, 1,000 fps of 1080p to 2.6 GiB. Now at most
    frames.HOLD_BYTES of them, every second one of the rest dropped, the grid kept."""
    from bodycam.pipeline import frames

    clip = tmp_path / "k4_120.mp4"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "color=c=gray:size=3840x2160:rate=120", "-t", "0.6", "-pix_fmt", "yuv420p",
                    "-c:v", "libx264", "-preset", "ultrafast", str(clip)], check=True)
    out = _decode_in_child(clip)
    assert out["DECODED"] == "3", out
    # 72 held 4K frames were 1,014 MiB here; at most ten now (344 MiB)
    assert int(out["RSS"]) * 1024 < 600 * 2**20, out["RSS"]
    # Thinning keeps the grid: a scene that grows old samples what it would have sampled.
    for fps in (120, 240, 1000):
        times = [i / fps for i in range(int(0.8 * fps))]
        held: list[frames._Pending] = []
        for i, t in enumerate(times):
            held.append(frames._Pending(i, i, t, None))  # type: ignore[arg-type]
            if len(held) > 10:
                held = frames.thin(held, 5.0)
        kept = [h.t_s for h in held]
        assert len(kept) <= 11
        assert [kept[i] for i in frames.plan_samples(kept, 5.0, 3)] == \
            [times[i] for i in frames.plan_samples(times, 5.0, 3)], fps


def test_a_redaction_plan_of_8k_footage_pins_no_decoded_frame(tmp_path: Path) -> None:
    """A plan (no embedder) of a 3-s 8K clip took a worker from 1.1 to 5.5 GB (bb48): each
    sampled frame, scaled down for detection, kept its decoded 8K picture for crops at full
    size that only an analysis that embeds cuts, eight frames a batch and six batches in
    flight. Now only frames an embedder will cut keep it, at most frames.BATCH_BYTES a
    batch."""
    from bodycam.pipeline import frames

    clip = tmp_path / "k8.mp4"
    subprocess.run([hostile.ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=7680x4320:rate=25", "-t", "4", "-pix_fmt", "yuv420p",
                    "-c:v", "libx264", "-preset", "ultrafast", "-crf", "35", str(clip)],
                   check=True)
    code = (
        "from pathlib import Path\n"
        "from bodycam.config import Settings\n"
        "from bodycam.media.probe import probe\n"
        "from bodycam.pipeline.analyze import analyze_chunk\n"
        "from bodycam.pipeline.faces import MtcnnDetector\n"
        "from bodycam.redaction import dense_pipeline\n"
        f"p = Path({str(clip)!r}); s = Settings(); info = probe(p, s.limits)\n"
        "cfg = dense_pipeline(s.pipeline, s.redaction, info)\n"
        "r = analyze_chunk(p, info, 0.0, info.duration_s, cfg, MtcnnDetector(cfg), None)\n"
        "print('SAMPLED', r.frames_sampled)\n"
        "print('RSS', next(line.split()[1] for line in open('/proc/self/status')"
        " if line.startswith('VmHWM:')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert int(out["SAMPLED"]) >= 48, out
    # 4.4 GiB here when each frame pinned its picture; 2.4 GiB now (MTCNN, the decoder's
    # frame threads and the frames a scene cut waits on)
    assert int(out["RSS"]) * 1024 < 3 * 2**30, out["RSS"]
    eight_k = probe(clip, LimitsSettings())
    four_k = dataclasses.replace(eight_k, width_px=3840, height_px=2160)
    assert frames.batch_frames(PipelineSettings(), eight_k, keep_full=True) == 2
    assert frames.batch_frames(PipelineSettings(), eight_k, keep_full=False) == 8
    assert frames.batch_frames(PipelineSettings(), four_k, keep_full=True) == 8


def test_the_private_copy_is_what_is_probed_even_if_the_path_is_swapped(tmp_path: Path) -> None:
    src = tmp_path / "clip.mp4"
    src.write_bytes(HAMILTON.read_bytes())
    with private_copy(str(src), 10**9) as copy:
        src.write_text("ffconcat version 1.0\nfile '/etc/passwd'\n")  # swapped after the read
        assert oct(copy.path.stat().st_mode & 0o777) == "0o600"
        assert oct(copy.path.parent.stat().st_mode & 0o777) == "0o700"
        info = probe(copy.path, LimitsSettings())
        assert info.codec == "h264"
        import hashlib

        assert hashlib.sha256(copy.path.read_bytes()).hexdigest() == copy.sha256
        folder = copy.path.parent
    assert not folder.exists()
    with pytest.raises(InvalidMediaError, match=r"larger than the limit"), \
            private_copy(str(tmp_path / "clip.mp4"), 10):
        pass


def test_hostile_names_and_paths_give_one_clean_line_without_markup_or_escapes(
        stack: StackHandle, tmp_path: Path) -> None:
    raw = os.fsdecode(b"notes[bold]\x1b[31m\n\xff.mp4")
    (tmp_path / raw).write_text("not a video\n")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    long_path = "/" + "/".join(["d" * 200] * 25) + "/x.mp4"
    for arg, want in [(str(tmp_path / raw), "notes[bold]\\x1b[31m\\n\\udcff.mp4"),
                      (str(loop / "x.mp4"), "symbolic links"),
                      (long_path, "too long"),
                      (str(tmp_path / "[/red]"), "no such file")]:
        before = stack.counts()
        proc = stack.cli.run("ingest", "--case", "T-NAMES", "--officer", "O", "--device", "D",
                             "--", arg)
        assert proc.returncode == 1, proc.stderr
        assert hostile.clean_line_problems(proc.stderr) == [], repr(proc.stderr)
        assert want in proc.stderr, repr(proc.stderr)
        assert stack.counts() == before


def test_a_fast_sample_of_the_corpus_is_done_or_refused_cleanly_and_reads_nothing_outside(
        stack: StackHandle, corpus: Path) -> None:
    items = {i.path for i in hostile.iter_items(corpus)}
    missing = FAST - items
    assert not missing, missing
    summary = hostile.run_corpus(corpus, env=stack.cli.env,
                                 only=lambda i: i.path in FAST or (i.path.startswith("url/")
                                                                   and "concat:" in i.note),
                                 wait_s=240)
    assert summary["problems"] == [], json.dumps(summary["problems"], indent=1)
    outcomes = {o["path"]: o for o in summary["outcomes"]}
    for path in ("valid/vp9.webm", "valid/h264.ts", "valid/rotated_90.mp4", "valid/vfr.mp4",
                 "playlists/concat:a.mp4", "names/two\nlines.mp4", "timestamps/paused_10h.mp4"):
        assert outcomes[path]["outcome"] == "done", outcomes[path]
    for path in ("playlists/hls_fifo.m3u8", "playlists/ffconcat_fifo.ffconcat",
                 "fs/loopdir/x.mp4", "bombs/huge_dims.mkv", "valid/ffv1.mkv",
                 "bombs/elst_repeat.mp4", "bombs/streams_20.mp4", "decoys/small_first.mp4",
                 "timestamps/joined_segments.ts", "timestamps/untimed_frames.ts",
                 "bombs/mkv_9_streams.mkv"):
        assert outcomes[path]["outcome"] == "refused", outcomes[path]
    # The mid-stream bomb passes the probe; the worker refuses it once, permanently.
    mid = outcomes["bombs/res_mid.mp4"]
    assert mid["outcome"] in ("refused", "failed"), mid
    if mid["outcome"] == "failed":
        assert "over the limit" in mid["reason"], mid
    assert summary["max_seconds"] < hostile.INGEST_TIMEOUT_S
    assert summary["max_cli_rss_mib"] < 2048
    assert 0 < summary["max_worker_rss_mib"] < 2048
