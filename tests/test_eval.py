"""The recognition evaluation harness (issue 12): its scoring by hand, and a small test split
through the real pipeline and searches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bodycam import evaluate as ev
from tests.conftest import TESTDATA, StackHandle


def test_time_overlap_arithmetic_on_hand_made_intervals() -> None:
    assert ev.union([(3, 4), (0, 1), (0.5, 2), (5, 5)]) == [(0.0, 2.0), (3.0, 4.0)]
    assert ev.intersect([(0, 2), (3, 4)], [(1, 3.5)]) == [(1, 2), (3, 3.5)]
    assert ev.subtract([(0, 10)], [(1, 2), (4, 5), (9, 12)]) == [(0, 1), (2, 4), (5, 9)]
    assert ev.subtract([(0, 1)], [(-1, 2)]) == []
    assert ev.dilate([(1, 2), (2.3, 3)], 0.2) == [(0.8, 3.2)]
    assert ev.frames_to_intervals([0, 1, 2, 10], 10) == [(0.0, 0.3), (1.0, 1.1)]

    # The person shows a 40 px+ face for 0-4 s and 10-12 s, and is visible (smaller) 4-6 s.
    truth = [(0.0, 4.0), (10.0, 12.0)]
    visible = [(0.0, 6.0), (10.0, 12.0)]
    returned = [(1.0, 5.0), (5.5, 6.3), (20.0, 21.0), (11.0, 12.0)]
    t = ev.score_ranges(returned, truth, visible, [(0.0, 30.0)], tolerance_s=0.1)
    assert t.truth_s == pytest.approx(6.0)
    assert t.covered_s == pytest.approx(3.0 + 1.0)  # 1-4 s and 11-12 s
    assert t.returned_s == pytest.approx(4.0 + 0.8 + 1.0 + 1.0)
    # 6.1-6.3 s overhangs the tolerance; 20-21 s is a range with no trace of the person.
    assert t.wrong_s == pytest.approx(0.2 + 1.0)
    assert (t.false_ranges, t.ranges) == (1, 4)
    f = t.figures()
    assert f["recall"] == pytest.approx(4 / 6, abs=1e-4)
    assert f["precision"] == pytest.approx(5.6 / 6.8, abs=1e-4)

    # A condition mask limits where precision is measured; no mask: recall only.
    night = ev.score_ranges(returned, ev.intersect(truth, [(0.0, 2.0)]), visible, [(0.0, 2.0)],
                            0.1)
    assert (night.truth_s, night.covered_s, night.returned_s, night.wrong_s) == (2, 1, 1, 0)
    size = ev.score_ranges(returned, truth, visible, None, 0.1)
    assert size.returned_s == 0 and size.figures()["precision"] is None
    # Nothing returned: recall 0 with a real interval, precision unmeasured.
    none = ev.score_ranges([], truth, visible, [(0.0, 30.0)], 0.1).figures()
    assert none["recall"] == 0 and none["precision"] is None and none["recall_ci95"][1] > 0


def test_face_checked_scoring_counts_only_the_persons_own_tracks() -> None:
    # Tracks returned at 0-4 s (the person's), 3-6 s (someone else beside them) and 8-9 s
    # (someone else, alone): time-only scoring would credit 3-4 s of the stranger's track.
    spans = [(0.0, 4.0), (3.0, 6.0), (8.0, 9.0)]
    right = [(0.0, 4.0)]
    truth = [(0.0, 5.0)]
    t = ev.score_checked(spans, right, truth, [(0.0, 10.0)])
    assert (t.truth_s, t.covered_s) == (5.0, 4.0)
    assert (t.returned_s, t.wrong_s) == (7.0, 3.0)
    assert (t.false_ranges, t.ranges) == (1, 2)  # 0-6 s holds right time; 8-9 s does not
    assert ev.score_checked(spans, right, truth, None).returned_s == 0



def test_the_track_search_probe_does_not_depend_on_random_track_ids() -> None:
    """A track search starts from the person's unmixed track with most of their detections;
    on a tie, from the one that starts first, whatever the (random) track ids."""
    from collections import Counter

    def track(vid: str, start: float, ids: dict[str | None, int], identity: str | None,
              mixed: bool = False) -> dict[str, object]:
        return {"video_id": vid, "start_s": start, "ids": Counter(ids), "identity": identity,
                "mixed": mixed}

    for first, second in (("0f", "f0"), ("f0", "0f")):  # either id order
        tracks = {
            second: track("v1", 5.0, {"ann": 9}, "ann"),
            first: track("v1", 1.0, {"ann": 9, None: 3}, "ann"),
            "ff": track("v1", 0.0, {"ann": 12, "bob": 11}, "ann", mixed=True),
            "fe": track("v2", 0.0, {"ann": 30}, "ann"),
            "fd": track("v1", 0.0, {"bob": 20, "ann": 2}, "bob"),
        }
        assert ev.probe_track(tracks, "v1", "ann") == first
    tracks["fc"] = track("v1", 7.0, {"ann": 10}, "ann")
    assert ev.probe_track(tracks, "v1", "ann") == "fc", "most detections first"
    assert ev.probe_track(tracks, "v1", "cy") is None

def test_wilson_interval_against_hand_computed_values() -> None:
    lo, hi = ev.wilson(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert ev.wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert ev.wilson(10, 10) == (pytest.approx(0.7225, abs=1e-4), 1.0)
    assert ev.wilson(0, 0) == (0.0, 1.0)
    # More units, narrower interval around the same proportion.
    wide, narrow = ev.wilson(80, 100), ev.wilson(800, 1000)
    assert narrow[1] - narrow[0] < wide[1] - wide[0] and math.isclose(sum(narrow) / 2, 0.8,
                                                                      abs_tol=0.01)


def test_seeds_and_splits_are_kept_apart(capsys: pytest.CaptureFixture[str]) -> None:
    assert ev.parse_seeds(["7000-7002", "7010,7001"]) == [7000, 7001, 7002, 7010]
    assert ev.split_of([7000, 7999]) == "test"
    assert ev.split_of([5000], "tuning") == "tuning"
    with pytest.raises(ValueError, match="test run takes seeds 7000-7999"):
        ev.split_of([5000, 5001], "test")
    with pytest.raises(ValueError, match="tuning and test"):
        ev.split_of([5000, 7000])
    with pytest.raises(ValueError, match="neither split"):
        ev.split_of([6500])
    with pytest.raises(ValueError, match="end is before"):
        ev.parse_seeds(["7003-7000"])
    # Conditions come from the seed alone.
    assert ev.draw_conditions(7001, 12) == ev.draw_conditions(7001, 12)
    assert len({ev.draw_conditions(s, 12) for s in range(7000, 7020)}) == 20
    # Harsh draws too, and they go past the harness's own range on every clip.
    harsh = [ev.draw_harsh(s, 12) for s in range(7000, 7020)]
    assert harsh == [ev.draw_harsh(s, 12) for s in range(7000, 7020)]
    assert all(c.max_people >= 3 and c.tilt >= 20 and c.night_prob >= 0.5
               and c.fisheye >= 0.35 and c.crf >= 28 for c in harsh)
    assert {c.fps for c in harsh} > {30}
    # ... and never reach the recognition section or the calibration.
    for out in (["--benchmarks", "BENCHMARKS.md"], ["--thresholds", "docs/thresholds.md"]):
        with pytest.raises(SystemExit):
            ev.main(["7000", "--conditions", "harsh", *out])
        assert "the harness's own conditions only" in capsys.readouterr().err


def test_truth_conditions_from_a_hand_made_truth_file() -> None:
    spec = ev.ClipSpec(1, 4.0, "1280x720", 2, 10.0, 0.5, 0.0, 23, fps=10)
    truth = {"fps": 10, "duration": 4.0,
             "scenes": [{"start": 0.0, "end": 2.0, "night": False},
                        {"start": 2.0, "end": 4.0, "night": True}],
             "enroll": {}, "appearances": [],
             "boxes": [[f, "p01", 0, 0, 50, 50 + (40 if f >= 15 else 0)] for f in range(10, 30)]
             + [[f, "p02", 0, 0, 30, 30] for f in range(0, 40)]}
    clip = ev.ClipTruth.from_json(spec, truth)
    assert clip.identities() == ["p01"]  # p02 is never 40 px tall
    by = clip.truth_by_condition("p01")
    assert by["all"] == [(1.0, 3.0)]
    assert by["night"] == [(2.0, 3.0)] and by["day"] == [(1.0, 2.0)]
    assert by["small"] == [(1.0, 1.5)] and by["large"] == [(1.5, 3.0)]
    assert by["tilt"] == [(1.0, 3.0)] and by["fisheye"] == [] and by["plain"] == []
    assert by["profile"] == [] and not clip.has_yaw
    assert clip.visible["p02"] == [(0.0, 4.0)]


def test_calibration_counts_genuine_and_impostor_pairs_per_condition() -> None:
    """Pure: hand-made tracks and vectors with known similarities."""
    import numpy as np

    spec = ev.ClipSpec(1, 4.0, "1280x720", 2, 10.0, 0.5, 0.0, 23, fps=10)
    truth = {"fps": 10, "duration": 4.0, "enroll": {}, "appearances": [],
             "scenes": [{"start": 0.0, "end": 2.0, "night": False},
                        {"start": 2.0, "end": 4.0, "night": True}],
             "boxes": [[10, "p01", 0, 0, 50, 90]]}
    clips = {"v": ev.ClipTruth.from_json(spec, truth)}
    e = np.eye(3, dtype=np.float32)
    gallery = {"p01": e[:1], "p02": e[1:2]}

    def track(ident: str | None, t: float, h: float) -> dict[str, object]:
        return {"video_id": "v", "identity": ident, "mixed": False, "times": [t, t],
                "heights": [h, h]}

    tracks = {"a": track("p01", 1.0, 120), "b": track("p02", 3.0, 50), "c": track("p09", 1.0, 50),
              "d": track(None, 1.0, 50)}
    # a: p01 at 0.99 (a match), p02 at 0.1; b: p02 at 0.5 (a miss), p01 at 0.95 (a false
    # match); c (not enrolled): 0.2 and 0.97 (a false match); d has no truth identity.
    vectors = {"a": np.array([0.99, 0.1, 0.0], np.float32),
               "b": np.array([0.95, 0.5, 0.0], np.float32),
               "c": np.array([0.2, 0.97, 0.0], np.float32), "d": e[0]}
    cal = ev.calibration(tracks, vectors, clips, gallery, 0.93)["conditions"]
    assert (cal["all"]["genuine"], cal["all"]["false_non_match"]) == (2, 1)
    assert (cal["all"]["impostor"], cal["all"]["false_match"]) == (4, 2)
    assert (cal["day"]["genuine"], cal["night"]["genuine"]) == (1, 1)
    assert cal["night"]["fnmr"] == 1.0 and cal["day"]["fnmr"] == 0.0
    assert (cal["large"]["genuine"], cal["small"]["genuine"]) == (1, 1)
    assert cal["small"]["fmr"] == 2 / 3 and cal["large"]["fmr"] == 0.0
    assert cal["tilted"]["genuine"] == 2 and cal["frontal"]["genuine"] == 0
    assert cal["frontal"]["fnmr"] is None
    # Breaking it: thresholds outside the scale flip every pair.
    low = ev.calibration(tracks, vectors, clips, gallery, -1.0)["conditions"]["all"]
    high = ev.calibration(tracks, vectors, clips, gallery, 1.01)["conditions"]["all"]
    assert (low["fnmr"], low["fmr"], high["fnmr"], high["fmr"]) == (0.0, 1.0, 1.0, 0.0)


# The small fixed TEST split: two 12-s 720p clips, one plain with up to 2 people, one with up
# to 3 people, 10 degrees of tilt, night scenes and a fisheye lens (conditions drawn from the
# seeds, printed by the harness).
CI_SEEDS = [7004, 7010]
CI_CLIP_S = 12.0
# Floors at what this split measured (2026-12-01, after the tracker's per-embedder link gates,
# commit 2e6bada), minus a margin, so that a regression shows: (recall, precision) of time, and
# the same face-checked. Measured: photo and subject 0.625 / 1.000 (checked 0.620 / 1.000),
# track 0.985 / 1.000 (0.981 / 1.000), reference 0.921 / 1.000. Before that fix the same split
# gave photo 0.538 / 1.000 and track 0.626 / 0.686 (one track mixed two people). The night,
# tilted, fisheye clip 7010 is where photo and subject searches fail (recall 0.319 there, the
# reference 0.924): its tracks are found and pure (track search 0.976) but score under 0.93
# against photo 01. These are NOT the targets (recall >= 0.95 and precision >= 0.99
# for photo and subject searches): those are not met yet. Raise the floors when recognition
# improves; never lower them to make a change pass.
FLOORS = {
    "photo": {"time": (0.58, 0.97), "checked": (0.58, 0.97)},
    "subject": {"time": (0.58, 0.97), "checked": (0.58, 0.97)},
    "track": {"time": (0.93, 0.97), "checked": (0.93, 0.97)},
    "reference": {"time": (0.88, 0.97), "checked": (0.88, 0.97)},
}


@pytest.mark.slow
def test_harness_on_a_small_test_split(stack: StackHandle,
                                       tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = tmp_path_factory.mktemp("eval-clips")
    h = ev.Harness(stack.cli.env, stack.ctx)
    rep = ev.evaluate(h, CI_SEEDS, ev.split_of(CI_SEEDS, "test"), CI_CLIP_S, cache,
                      TESTDATA, log=print)
    print(ev.render_section(rep))
    assert rep["split"] == "test" and rep["seeds"] == CI_SEEDS
    assert [c["status"] for c in rep["clips"]] == ["done", "done"]
    assert rep["identities_present"] and rep["enrolled"] >= len(rep["identities_present"])
    # The thresholds the searches used are reported with the figures.
    assert set(rep["thresholds"]) == {"photo", "subject", "track", "reference"}
    for path, floors in FLOORS.items():
        for kind, (recall, precision) in floors.items():
            a = rep["paths" if kind == "time" else "face_checked"][path]["all"]
            assert a["truth_s"] > 10, f"{path}: the clips should show faces of 40 px or more"
            assert a["recall"] >= recall, f"{path} {kind} recall {a['recall']} < {recall}"
            assert a["precision"] >= precision, (f"{path} {kind} precision {a['precision']}"
                                                 f" < {precision}")
        # Every condition that holds in the split is reported with an interval.
        for cond in ("day", "night", "tilt", "fisheye", "plain", "small", "large"):
            f = rep["paths"][path][cond]
            assert f["truth_s"] > 0 and f["recall_ci95"][0] <= f["recall"] <= f["recall_ci95"][1]
        assert rep["paths"][path]["profile"]["recall"] is None  # the truth has no yaw
    # Calibration by condition: conditions partition the pairs, rates are rates.
    cal = rep["calibration"]["conditions"]
    assert cal["all"]["genuine"] > 0 and cal["all"]["impostor"] > 0
    for a, b in (("day", "night"), ("frontal", "tilted"), ("small", "large")):
        for kind in ("genuine", "impostor"):
            assert cal[a][kind] + cal[b][kind] == cal["all"][kind], (a, b, kind)
    assert all(0 <= (r["fmr"] or 0) <= 1 and 0 <= (r["fnmr"] or 0) <= 1 for r in cal.values())
    assert rep["calibration"]["threshold"] == rep["thresholds"]["subject"]
    tracks = rep["tracks"]
    # Tracks covered 0.980 of the truth time, none mixing two identities (purity 1.000); before
    # the link-gate fix 0.897, and 1 of 7 mixed two identities (purity 0.910).
    assert tracks["tracks"] > 0 and tracks["coverage"] >= 0.93
    assert tracks["mixed_tracks"] == 0 and tracks["purity"] >= 0.99
    # The clips are in the cache for the next run, keyed by seed and settings.
    assert len(list(Path(cache).glob("eval-70*.mp4"))) == 2
