"""Hostile media: playlists, bombs, damaged files and hostile names against the real stack."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import pytest

from bodycam import hostile
from bodycam.config import LimitsSettings
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
    "valid/ffv1.mkv",
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
                    "valid-variant", "filesystem", "filename"}
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
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from bodycam.config import LimitsSettings, PipelineSettings\n"
        "from bodycam.errors import InvalidMediaError\n"
        "from bodycam.media.probe import probe\n"
        "from bodycam.pipeline.frames import ChunkDecoder\n"
        f"p = Path({str(bomb)!r}); limits = LimitsSettings()\n"
        "info = probe(p, limits)\n"
        "try:\n"
        "    n = sum(1 for _ in ChunkDecoder(p, info, 0.0, info.duration_s, PipelineSettings(),"
        " limits))\n"
        "    print('DECODED', n)\n"
        "except InvalidMediaError as e:\n"
        "    print('REFUSED', e)\n"
        # This process's own peak (kB): VmHWM belongs to the new address space, whereas
        # getrusage's ru_maxrss survives execve and so reports the parent's (pytest's) peak.
        "print('RSS', next(line.split()[1] for line in open('/proc/self/status')"
        " if line.startswith('VmHWM:')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    assert proc.returncode == 0, proc.stderr
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert "REFUSED" in out, proc.stdout
    assert "over the limit" in out["REFUSED"] and "res_mid.mp4" in out["REFUSED"]
    assert int(out["RSS"]) * 1024 < 1024**3, out["RSS"]
    # with room for the big frames, the change of size itself is refused
    code2 = code.replace("limits = LimitsSettings()",
                         "limits = LimitsSettings(max_height_px=7680, max_pixels=7680 * 7680)")
    proc = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    out = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert "frame size changes from 320x240 to 7680x7680" in out.get("REFUSED", ""), proc
    assert int(out["RSS"]) * 1024 < 2 * 1024**3, out["RSS"]


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
                 "playlists/concat:a.mp4", "names/two\nlines.mp4"):
        assert outcomes[path]["outcome"] == "done", outcomes[path]
    for path in ("playlists/hls_fifo.m3u8", "playlists/ffconcat_fifo.ffconcat",
                 "fs/loopdir/x.mp4", "bombs/huge_dims.mkv", "valid/ffv1.mkv"):
        assert outcomes[path]["outcome"] == "refused", outcomes[path]
    # The mid-stream bomb passes the probe; the worker refuses it once, permanently.
    mid = outcomes["bombs/res_mid.mp4"]
    assert mid["outcome"] in ("refused", "failed"), mid
    if mid["outcome"] == "failed":
        assert "over the limit" in mid["reason"], mid
    assert summary["max_seconds"] < hostile.INGEST_TIMEOUT_S
    assert summary["max_cli_rss_mib"] < 2048
    assert 0 < summary["max_worker_rss_mib"] < 2048
