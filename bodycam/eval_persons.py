"""How the grouping of unknown persons does at several thresholds, on generated clips.

`python -m bodycam.eval_persons 7500-7509` generates the clips of those seeds (as `make eval`
does), processes them into one case on a temporary stack with no one enrolled, and groups the
stored tracks (`matching._persons`) at each threshold. Per threshold: pairs of single-person
tracks grouped together that are one person and that are two, the share of one person's pairs
grouped (pair recall), groups holding two people, and groups per person. The figures are in
docs/thresholds.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import uuid
from collections import defaultdict
from typing import Any

from bodycam import evaluate as ev
from bodycam import matching

THRESHOLDS = (0.92, 0.93, 0.94, 0.95)


def score(persons: list[matching.Person], tracks: dict[str, dict[str, Any]]
          ) -> dict[str, Any]:
    """Pairwise figures of one grouping against the tracks' truth identities."""
    def ident(t: str) -> str | None:
        tr = tracks.get(t)
        return None if tr is None or tr["mixed"] else tr["identity"]

    same = wrong = mixed = 0
    groups_of: dict[str, set[str]] = defaultdict(set)
    for p in persons:
        ids = [i for i in map(ident, p.track_ids) if i is not None]
        mixed += len(set(ids)) > 1
        for a, b in itertools.combinations(ids, 2):
            same += a == b
            wrong += a != b
        for i in ids:
            groups_of[i].add(p.person_id)
    clean = [i for i in map(ident, tracks) if i is not None]
    total = sum(a == b for a, b in itertools.combinations(clean, 2))
    return {"groups": len(persons), "pairs_one_person": same, "pairs_two_people": wrong,
            "pairs_of_one_person_in_all": total,
            "pair_recall": round(same / total, 3) if total else None,
            "groups_with_two_people": mixed,
            "groups_per_person": round(sum(map(len, groups_of.values()))
                                       / max(1, len(groups_of)), 3),
            "tracks": len(tracks), "people": len(groups_of)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bodycam.eval_persons",
                                description=(__doc__ or "").split("\n")[0])
    p.add_argument("seeds", nargs="+", help="seeds or ranges: 7500-7509")
    ev.add_clip_arguments(p, 20.0, ".bodycam/eval-clips", "eval-persons.json")
    args = p.parse_args(argv)
    seeds = ev.parse_seeds(args.seeds)
    out: dict[str, Any] = {"seeds": seeds, "clip_s": args.clip_s}
    with ev.temporary_stack(ev.log) as h:
        specs = [ev.DRAWS["drawn"](s, args.clip_s) for s in seeds]
        made = ev.generate_all(specs, args.cache.resolve(), args.testdata.resolve(), ev.log)
        case = f"{ev.CASE_PREFIX}-persons-{uuid.uuid4().hex[:8]}"
        clips = ev.ingest_all(h, specs, made, case)
        model = h.ctx.settings.pipeline.embedder
        with h.ctx.db() as conn:
            tracks = ev.track_identities(conn, clips)
            for thr in THRESHOLDS:
                out[str(thr)] = score(matching._persons(conn, case, model, thr), tracks)
                ev.log(f"{thr}: {out[str(thr)]}")
    args.out.write_text(json.dumps(out, indent=1))
    ev.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
