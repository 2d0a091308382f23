"""The end-to-end speed benchmark (issue 14, part 1): its clips and its report, by hand."""

from __future__ import annotations

import pytest

from bodycam import bench_e2e as e2e


def test_speed_seeds_give_a_720p_and_a_harsh_1080p_clip_and_no_other_seeds_run() -> None:
    plain, harsh = e2e.specs_for(9000, 45)
    assert plain == e2e.specs_for(9000, 45)[0] and harsh == e2e.specs_for(9000, 45)[1]
    assert (plain.size, plain.clip_s, plain.fps) == ("1280x720", 45, 30)
    assert (harsh.size, harsh.max_people, harsh.night_prob) == ("1920x1080", 4, 0.5)
    assert harsh.tilt > 0 and harsh.fisheye > 0
    assert e2e.specs_for(9001, 45) != [plain, harsh]
    for seed in (5000, 7000, 8999, 10000):  # tuning and test seeds stay out of benchmarks
        with pytest.raises(ValueError, match="not a speed seed"):
            e2e.specs_for(seed, 45)
    with pytest.raises(SystemExit):
        e2e.main(["7000"])


def test_the_report_reads_total_time_against_the_reference() -> None:
    spec = e2e.specs_for(9000, 45)[1]
    run = e2e.ClipRun("c.mp4", spec, 45.0, ingest_s=1.5, queued_s=0.5, processing_s=28.0,
                      units=1, tracks=7, reference_s=60.0)
    assert run.x_real_time == pytest.approx(1.5) and run.reference_x == pytest.approx(0.75)
    rep = {"measured_at": "2026-12-02T12:00:00+00:00", "clip_s": 45.0, "seeds": [9000],
           "model": "dlib-resnet", "chunk_s": 120.0, "machine": {"CPU": "x", "cores": "2"},
           "clips": [run.as_json()]}
    section = e2e.render_section(rep)
    assert section.startswith(e2e.MARK_START) and section.endswith(e2e.MARK_END)
    row = next(line for line in section.splitlines() if line.startswith("| seed 9000"))
    assert "| 45.0 | 30.0 | 1.50 | 1.5 | 0.5 | 28.0 | 1 | 7 | 60.0 | 0.75 |" in row
