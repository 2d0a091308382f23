"""The redaction benchmark's leakage counter on clips whose answer is known.

A generated clip with exact face boxes, scanned by the independent detector (CenterFace) in
every frame: re-encoded without redaction every face still leaks; with every truth box painted
over nothing leaks; with only odd frames painted over, the even frames leak and the odd ones
do not. The counter and the renderer are the benchmark's own code, run on real video.
"""

from __future__ import annotations

import json
from pathlib import Path

from bodycam import bench_redact as br

from .conftest import TOOLS


def test_leakage_counter_on_known_cases(make_clip: object, tmp_path: Path) -> None:
    # 2 s at 10 fps: 20 frames, one face of 80-200 px in most of them (seed 5); scanned at
    # 640 px wide to keep the test short on a shared 2-core machine.
    clip, truth_json = make_clip("--seed", "5", "--duration", "2", "--size", "960x540",  # type: ignore[operator]
                                 "--fps", "10", "--boxes")
    assert TOOLS.exists()
    info = br.video_info(clip)
    truth = br.truth_boxes(clip.with_suffix(".json"), info.frames)
    assert info.frames == 20 and sum(map(len, truth)) == len(truth_json["boxes"]) >= 10
    scanner = br.CenterFaceScanner(threshold=0.5, scan_width=640)
    original = br.scan_video(clip, scanner, tmp_path / "scans")
    assert sum(map(len, original)) >= 10  # the detector sees the generated faces

    same = tmp_path / "same.mp4"
    assert br.render(clip, same, lambda _i, _rgb: [], "box") == info.frames
    res = br.leakage(original, br.scan_video(same, scanner), truth)
    assert res["frames_output"] == info.frames
    assert res["faces_original"] > 0
    assert res["faces_leaked"] >= 0.9 * res["faces_original"]
    assert res["frames_leak_ge40"] > 0 and res["frames_leak_ge80"] > 0
    found = sum(b["found_output"] for b in res["truth"]["by_size"].values())
    assert found >= 0.9 * sum(b["found_original"] for b in res["truth"]["by_size"].values())

    boxed = tmp_path / "boxed.mp4"
    br.render(clip, boxed, lambda i, _rgb: truth[i], "box", pad=0.25)
    out = br.scan_video(boxed, scanner)
    res = br.leakage(original, out, truth)
    assert res["faces_original"] > 0
    assert res["faces_leaked"] == 0 and res["leak_share"] == 0
    assert res["frames_leak_ge40"] == res["frames_any_ge40"] == 0
    assert all(b["found_output"] == 0 for b in res["truth"]["by_size"].values())
    # Kept boxes: a face that must stay visible is counted as not found when it was hidden.
    hidden = br.leakage(original, out, truth, kept=truth)["kept"]
    assert hidden["boxes"] > 0 and hidden["found"] == 0 and hidden["found_original"] > 0

    half = tmp_path / "half.mp4"
    br.render(clip, half, lambda i, _rgb: truth[i] if i % 2 else [], "box", pad=0.25)
    out = br.scan_video(half, scanner)
    odd = br.leakage(original[1::2], out[1::2])
    even = br.leakage(original[0::2], out[0::2])
    assert odd["faces_original"] > 0 and odd["faces_leaked"] == 0
    assert even["faces_original"] > 0
    assert even["faces_leaked"] >= 0.9 * even["faces_original"]
    both = br.leakage(original, out, truth)
    assert both["faces_leaked"] == odd["faces_leaked"] + even["faces_leaked"]
    # Keeping the even frames' faces: they are found, and no longer count as leaks.
    keep_even = [boxes if i % 2 == 0 else [] for i, boxes in enumerate(truth)]
    kept = br.leakage(original, out, truth, kept=keep_even)
    assert kept["kept"]["found_original"] > 0
    assert kept["kept"]["found"] >= 0.9 * kept["kept"]["found_original"]
    assert kept["faces_leaked"] == 0 and kept["faces_original"] == odd["faces_original"]
    json.dumps(kept)  # the report is JSON as it stands


def test_benchmarks_section_is_replaced_not_duplicated(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\n<!-- other:start -->\nkept\n<!-- other:end -->\n")
    for n in (1, 2):
        br.write_benchmarks(f"{br.MD_START}\nrun {n}\n{br.MD_END}", md)
    text = md.read_text()
    assert text.count(br.MD_START) == 1 and "run 2" in text and "run 1" not in text
    assert "kept" in text


def test_kept_track_boxes_are_interpolated_between_detections() -> None:
    dets = [[2, 0, 0, 10, 10, 0.99], [4, 10, 0, 20, 10, 0.99], [5, 0, 0, 4, 4, 0.98]]
    boxes = br.interpolate_track(dets, 8)
    assert boxes[:2] == [[], []] and boxes[6:] == [[], []]
    assert boxes[2] == [(0, 0, 10, 10)] and boxes[3] == [(5, 0, 15, 10)]
    assert boxes[4] == [(10, 0, 20, 10)] and boxes[5] == [(0, 0, 4, 4)]
