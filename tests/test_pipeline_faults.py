"""The pipeline ends on every path: a failed stage, a lost lease or a dead model process."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from bodycam.config import LimitsSettings, PipelineSettings
from bodycam.errors import InvalidMediaError, LeaseLostError
from bodycam.media.probe import probe
from bodycam.pipeline.analyze import ChunkResult, analyze_chunk
from bodycam.pipeline.faces import MtcnnDetector, Registry
from tests.conftest import HAMILTON

# Each case failed by hanging for ever before the fix; a generous bound tells a hang from a
# slow machine.
ENDS_WITHIN_S = 120


def _run(fn: object) -> BaseException | ChunkResult:
    """Run fn in a thread; fail the test if it does not end in time (daemon: a hang is left)."""
    box: list[BaseException | ChunkResult] = []

    def target() -> None:
        try:
            box.append(fn())  # type: ignore[operator]
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            box.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(ENDS_WITHIN_S)
    assert not t.is_alive(), "analyze_chunk hung"
    return box[0]


def _cfg() -> PipelineSettings:
    return PipelineSettings(embedder="dlib-resnet", batch_size=4)


def test_a_lost_lease_mid_chunk_ends_the_chunk_with_lease_lost() -> None:
    info = probe(HAMILTON, LimitsSettings())
    cfg = _cfg()
    calls = []

    def progress(_f: float) -> None:
        calls.append(_f)
        if len(calls) == 2:
            raise LeaseLostError("lease lost")

    got = _run(lambda: analyze_chunk(HAMILTON, info, 0.0, info.duration_s, cfg,
                                     MtcnnDetector(cfg), Registry.embedder(cfg), progress))
    assert isinstance(got, LeaseLostError)


def test_a_decode_error_while_processing_ends_the_chunk_with_its_reason(tmp_path: Path) -> None:
    info = probe(HAMILTON, LimitsSettings())
    broken = tmp_path / "changed.mp4"
    data = HAMILTON.read_bytes()
    broken.write_bytes(data[: len(data) // 3])  # the file the worker holds no longer decodes
    cfg = _cfg()
    got = _run(lambda: analyze_chunk(broken, info, 0.0, info.duration_s, cfg,
                                     MtcnnDetector(cfg), Registry.embedder(cfg)))
    assert isinstance(got, InvalidMediaError | ChunkResult), got
    if isinstance(got, ChunkResult):  # FFmpeg may end a truncated stream quietly
        assert got.frames_decoded < info.n_frames


def test_the_chunk_still_processes_after_a_failed_one(tmp_path: Path) -> None:
    """The same models serve the next chunk after a failure (a worker takes the next unit)."""
    info = probe(HAMILTON, LimitsSettings())
    cfg = _cfg()
    embedder = Registry.embedder(cfg)
    detector = MtcnnDetector(cfg)

    def lose(_f: float) -> None:
        raise LeaseLostError("lease lost")

    assert isinstance(_run(lambda: analyze_chunk(HAMILTON, info, 0.0, 4.0, cfg, detector,
                                                 embedder, lose)), LeaseLostError)
    copy = tmp_path / "again.mp4"
    shutil.copy(HAMILTON, copy)
    res = _run(lambda: analyze_chunk(copy, info, 0.0, 4.0, cfg, detector, embedder))
    assert isinstance(res, ChunkResult) and res.tracks
