"""Faults while clips are processed: every video ends done, exactly as without faults.

A short run of the fault-injection suite (bodycam.faults): one fault of each kind, on a stack
of its own. The long run (`make faults`, at least 40 faults) is in RELIABILITY.md.
"""

from __future__ import annotations

import json

from bodycam import faults
from tests.conftest import TESTDATA


def test_one_fault_of_each_kind_loses_nothing_changes_nothing_and_hangs_nothing() -> None:
    report = faults.run(n_faults=len(faults.KINDS), n_clips=2, duration_s=30, seed=7,
                        testdata=TESTDATA)
    detail = json.dumps(report, indent=1)
    assert report["faults"] == len(faults.KINDS)
    assert report["reference_tracks"] > 0, "the clips have faces to compare"
    assert report["not_done"] == {}, detail
    assert report["tracks_differ"] == [], detail
    assert report["duplicate_rows"] == 0, detail
    assert report["units_left_running"] == 0, detail
    assert report["workers_alive"], detail
    assert report["audit_verifies"], detail
    assert report["unrecovered"] == [], detail
    assert set(report["recovery"]) == set(faults.KINDS)
    assert report["ok"]
