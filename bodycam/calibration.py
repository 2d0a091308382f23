"""Face-search threshold calibration: genuine and impostor similarities on the test photos.

Every identity photo (``faces/identities/pNN/*``) and every face in the stranger-only group
photos is detected with the pipeline's MTCNN detector and embedded with the pipeline's embedder,
through the same ``SampledFrame`` -> ``detect`` -> ``embed(image, faces, scale)`` path that video
frames take, so crops and alignment are exactly those of production. From the unit vectors come:

- genuine pairs: two different photos of the same identity;
- impostor pairs: photos of two different identities, and identity photos against strangers;
- FMR(t), the share of impostor pairs with similarity >= t (a false match), and FNMR(t), the share
  of genuine pairs with similarity < t (a false non-match);
- the lowest threshold on a grid whose FMR is at most a target, and rank-1 identification with
  photo ``01`` of each identity as the gallery and all other photos as probes.

Only identity codes (``pNN``) and photo paths relative to the test data are reported: never
vectors. Run ``python -m bodycam.calibration --testdata DIR --embedder dlib-resnet --out FILE``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bodycam.config import PipelineSettings
from bodycam.domain import FaceDetection, SampledFrame
from bodycam.errors import ModelUnavailableError

#: Group photos whose faces, apart from those in GROUP_LABELS, are strangers to the identity set:
#: each stranger pairs with every identity face as an impostor.
STRANGER_PHOTOS: tuple[str, ...] = ("couple.jpg", "multiface.jpg", "selfie_many_people.jpg")

#: Enrolled people who do appear in those photos, as a point (x, y in original pixels) inside
#: their face box. The test data README says these photos hold no enrolled identity; the first
#: calibration run found these faces scoring 0.92-0.99 against every photo of one identity, and
#: a look at the crops confirmed each is that person. Counted as strangers they made impostor
#: pairs of one person and pushed the 0.1% FMR threshold to 0.98. Here they are labelled and
#: join their identity's genuine pairs instead.
GROUP_LABELS: dict[str, tuple[tuple[float, float, str], ...]] = {
    "couple.jpg": ((658.0, 896.0, "p10"),),
    "selfie_many_people.jpg": ((145.0, 366.0, "p10"),),
    "multiface.jpg": ((266.0, 302.0, "p13"),),
}

#: The enrolment photo of every identity, by the test data's convention.
ENROLMENT_STEM = "01"

#: Thresholds published with each model, converted to cosine similarity, for comparison.
#: dlib documents "same person" as euclidean distance < 0.6 between its raw descriptors, which
#: are not unit vectors: their length is about 1.5 (1.32-1.64, mean 1.50, over the 82 identity
#: photos). With ``|a - b|^2 = |a|^2 + |b|^2 - 2|a||b| cos``, 0.6 is cosine
#: 1 - 0.36 / (2 * 1.5^2) = 0.92. Reading 0.6 as a distance between unit vectors gives
#: 1 - 0.6^2 / 2 = 0.82, far too low.
PUBLISHED_THRESHOLDS: dict[str, dict[str, float]] = {
    "dlib-resnet": {"dlib 0.6 euclidean (raw length 1.5)": 0.92,
                    "dlib 0.6 euclidean misread as unit vectors": 0.82},
}

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class EmbeddedFace:
    """One embedded face: who it is (``pNN`` or a stranger code), where it came from, its vector."""

    identity: str
    photo: str  # relative to the test data root
    height_px: float
    vector: np.ndarray  # unit length; never written to any report

    @property
    def is_stranger(self) -> bool:
        """True for faces from the stranger-only group photos."""
        return self.identity.startswith("stranger:")


@dataclass(frozen=True)
class EmbeddedSet:
    """The embedded test photos, plus the photos in which no face was found."""

    embedder: str
    embedder_version: str
    weights_sha256: str
    identities: tuple[EmbeddedFace, ...]
    strangers: tuple[EmbeddedFace, ...]
    no_face: tuple[str, ...]
    unmatched_labels: tuple[str, ...] = ()  # GROUP_LABELS entries no detected face contained


@dataclass(frozen=True)
class PairScores:
    """Similarities of genuine and impostor pairs."""

    genuine: np.ndarray
    impostor_identity: np.ndarray  # pNN vs pMM, N != M
    impostor_stranger: np.ndarray  # pNN vs a face from a stranger-only group photo

    @property
    def impostor(self) -> np.ndarray:
        """All impostor similarities."""
        return np.concatenate([self.impostor_identity, self.impostor_stranger])


@dataclass(frozen=True)
class RatePoint:
    """Error rates at one threshold (a match is similarity >= threshold)."""

    threshold: float
    false_matches: int
    impostor_pairs: int
    false_non_matches: int
    genuine_pairs: int

    @property
    def fmr(self) -> float:
        """False match rate: impostor pairs at or above the threshold."""
        return self.false_matches / self.impostor_pairs if self.impostor_pairs else 0.0

    @property
    def fnmr(self) -> float:
        """False non-match rate: genuine pairs below the threshold."""
        return self.false_non_matches / self.genuine_pairs if self.genuine_pairs else 0.0

    def as_json(self) -> dict[str, float | int]:
        """Plain JSON, with the 95% one-sided upper confidence bounds of both rates."""
        return {
            "threshold": self.threshold,
            "fmr": self.fmr,
            "fmr_upper95": binomial_upper_bound(self.false_matches, self.impostor_pairs),
            "false_matches": self.false_matches,
            "impostor_pairs": self.impostor_pairs,
            "fnmr": self.fnmr,
            "fnmr_upper95": binomial_upper_bound(self.false_non_matches, self.genuine_pairs),
            "false_non_matches": self.false_non_matches,
            "genuine_pairs": self.genuine_pairs,
        }


@dataclass(frozen=True)
class Rank1:
    """Closed-set identification: each probe against one enrolment photo per identity."""

    gallery: int
    probes: int
    correct: int
    correct_at_threshold: int  # top match right and similarity >= threshold
    wrong_at_threshold: int  # top match wrong yet similarity >= threshold: a false lead
    threshold: float | None

    @property
    def accuracy(self) -> float:
        """Share of probes whose most similar gallery face is their own identity."""
        return self.correct / self.probes if self.probes else 0.0

    def as_json(self) -> dict[str, float | int | None]:
        """Plain JSON."""
        return {
            "gallery": self.gallery,
            "probes": self.probes,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "threshold": self.threshold,
            "correct_at_threshold": self.correct_at_threshold,
            "wrong_at_threshold": self.wrong_at_threshold,
        }


def load_photo(path: Path, max_side_px: int) -> SampledFrame:
    """Read a still photo as the pipeline reads a video frame.

    Args:
        path: a JPEG or PNG file.
        max_side_px: the long side is downscaled to this, as sampled frames are.

    Returns:
        A ``SampledFrame`` (RGB uint8) whose ``scale`` maps original pixels to image pixels, so
        detections come back in the photo's own pixels.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as raw:
        img = ImageOps.exif_transpose(raw).convert("RGB")
    w, h = img.size
    scale = min(1.0, max_side_px / max(w, h))
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                         Image.Resampling.BILINEAR)
    return SampledFrame(frame_index=0, pts=0, t_s=0.0, scene_index=0,
                        image=np.asarray(img, dtype=np.uint8), scale=scale)


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)


def embed_testdata(testdata: Path, cfg: PipelineSettings) -> EmbeddedSet:
    """Detect and embed every identity photo (largest face) and every group-photo face.

    Group-photo faces at a GROUP_LABELS point join that identity; the others are strangers.

    Args:
        testdata: the test data root (holding ``faces/identities`` and ``faces/groups``).
        cfg: pipeline settings; ``cfg.embedder`` names the embedder to calibrate.

    Returns:
        The embedded faces and the identity photos in which MTCNN found no face.

    Raises:
        ModelUnavailableError: the embedder's weights cannot be loaded here.
        FileNotFoundError: ``testdata`` lacks the face folders.
    """
    from bodycam.pipeline.faces import Registry

    detector = Registry.detector(cfg)
    embedder = Registry.embedder(cfg)
    embedder.load()
    ident_root = testdata / "faces" / "identities"
    group_root = testdata / "faces" / "groups"
    if not ident_root.is_dir() or not group_root.is_dir():
        raise FileNotFoundError(f"{testdata} has no faces/identities and faces/groups folders: "
                                "pass the shared test data root with --testdata")

    def run(path: Path) -> tuple[list[FaceDetection], np.ndarray]:
        frame = load_photo(path, cfg.max_frame_side_px)
        faces = detector.detect([frame])[0]
        return faces, embedder.embed(frame.image, faces, frame.scale)

    identities: list[EmbeddedFace] = []
    no_face: list[str] = []
    for folder in sorted(p for p in ident_root.iterdir() if p.is_dir()):
        for path in _photos(folder):
            rel = str(path.relative_to(testdata))
            faces, vecs = run(path)
            if not faces:
                no_face.append(rel)
                continue
            # The person of the folder is the largest face; others are bystanders.
            i = max(range(len(faces)), key=lambda j: _area(faces[j]))
            identities.append(EmbeddedFace(folder.name, rel, faces[i].height_px, vecs[i]))

    strangers: list[EmbeddedFace] = []
    labelled: set[tuple[str, str]] = set()
    for name in STRANGER_PHOTOS:
        path = group_root / name
        rel = str(path.relative_to(testdata))
        faces, vecs = run(path)
        # Sorted by position so that stranger codes do not depend on detection order.
        order = sorted(range(len(faces)), key=lambda j: faces[j].box_px)
        for n, i in enumerate(order):
            face = faces[i]
            known = _label(face, GROUP_LABELS.get(name, ()))
            if known is not None:
                labelled.add((name, known))
                identities.append(EmbeddedFace(known, rel, face.height_px, vecs[i]))
            else:
                strangers.append(EmbeddedFace(f"stranger:{path.stem}:{n}", rel, face.height_px,
                                              vecs[i]))
    unmatched = tuple(f"{name}:{ident}" for name, labels in GROUP_LABELS.items()
                      for _, _, ident in labels if (name, ident) not in labelled)
    return EmbeddedSet(embedder.name, embedder.version, embedder.weights_sha256,
                       tuple(identities), tuple(strangers), tuple(no_face), unmatched)


def _label(face: FaceDetection, labels: Sequence[tuple[float, float, str]]) -> str | None:
    x1, y1, x2, y2 = face.box_px
    for x, y, identity in labels:
        if x1 <= x <= x2 and y1 <= y <= y2:
            return identity
    return None


def _area(face: FaceDetection) -> float:
    x1, y1, x2, y2 = face.box_px
    return (x2 - x1) * (y2 - y1)


def pair_scores(data: EmbeddedSet) -> PairScores:
    """Cosine similarity of every genuine and impostor pair.

    Args:
        data: embedded photos from :func:`embed_testdata`.

    Returns:
        Genuine similarities (same identity, different photos, each unordered pair once);
        identity impostors (different identities, each unordered pair once); and stranger
        impostors (every identity photo against every stranger face).
    """
    ids = np.array([f.identity for f in data.identities])
    vecs = np.stack([f.vector for f in data.identities]).astype(np.float64)
    sims = vecs @ vecs.T
    upper = np.triu(np.ones_like(sims, dtype=bool), k=1)
    same = ids[:, None] == ids[None, :]
    if data.strangers:
        others = np.stack([f.vector for f in data.strangers]).astype(np.float64)
        stranger = (vecs @ others.T).ravel()
    else:
        stranger = np.zeros(0)
    return PairScores(genuine=sims[upper & same], impostor_identity=sims[upper & ~same],
                      impostor_stranger=stranger)


def error_rates(scores: PairScores, thresholds: Iterable[float]) -> list[RatePoint]:
    """FMR and FNMR at each threshold; a pair matches when its similarity >= the threshold.

    Args:
        scores: genuine and impostor similarities.
        thresholds: cosine similarities to evaluate.

    Returns:
        One :class:`RatePoint` per threshold, in the order given.
    """
    imp = np.sort(scores.impostor)
    gen = np.sort(scores.genuine)
    out = []
    for t in thresholds:
        fm = int(imp.size - np.searchsorted(imp, t, side="left"))
        fnm = int(np.searchsorted(gen, t, side="left"))
        out.append(RatePoint(float(t), fm, int(imp.size), fnm, int(gen.size)))
    return out


def threshold_grid(step: float = 0.01, low: float = -1.0, high: float = 1.0) -> list[float]:
    """Thresholds from ``low`` to ``high`` in ``step`` increments, rounded to the step's digits."""
    digits = max(0, -math.floor(math.log10(step))) + 1
    n = round((high - low) / step)
    return [round(low + i * step, digits) for i in range(n + 1)]


def choose_threshold(scores: PairScores, fmr_target: float = 0.001, step: float = 0.01) -> float:
    """The lowest threshold on a ``step`` grid whose FMR on this data is at most ``fmr_target``.

    Lowest, because among thresholds that meet the false-match target it misses the fewest
    genuine matches. With n impostor pairs, a target below 1/n means "no false match observed".

    Args:
        scores: genuine and impostor similarities.
        fmr_target: the largest acceptable false match rate.
        step: grid spacing; a configured threshold is a round number.

    Returns:
        The threshold (cosine similarity).

    Raises:
        ValueError: there are no impostor pairs, or the target is not in [0, 1).
    """
    if scores.impostor.size == 0:
        raise ValueError("no impostor pairs: embed at least two identities")
    if not 0 <= fmr_target < 1:
        raise ValueError(f"fmr_target must be in [0, 1), not {fmr_target}")
    for point in error_rates(scores, threshold_grid(step)):
        if point.fmr <= fmr_target:
            return point.threshold
    return 1.0


def rank1(data: EmbeddedSet, threshold: float | None = None) -> Rank1:
    """Rank-1 identification with photo ``01`` of each identity as its single enrolment.

    Every identity with an embedded ``01`` photo is in the gallery (the single-photo identities
    act as distractors); every other embedded face of a gallery identity is a probe, the
    labelled group-photo faces included.

    Args:
        data: embedded photos from :func:`embed_testdata`.
        threshold: also count probes whose top match is above it (right and wrong).

    Returns:
        Counts and accuracy.
    """
    gallery = [f for f in data.identities if Path(f.photo).stem == ENROLMENT_STEM]
    enrolled = {f.identity for f in gallery}
    probes = [f for f in data.identities
              if Path(f.photo).stem != ENROLMENT_STEM and f.identity in enrolled]
    if not gallery or not probes:
        return Rank1(len(gallery), len(probes), 0, 0, 0, threshold)
    g = np.stack([f.vector for f in gallery]).astype(np.float64)
    p = np.stack([f.vector for f in probes]).astype(np.float64)
    sims = p @ g.T
    best = sims.argmax(axis=1)
    correct = right_above = wrong_above = 0
    for probe, j, row in zip(probes, best, sims, strict=True):
        hit = gallery[int(j)].identity == probe.identity
        correct += hit
        if threshold is not None and row[j] >= threshold:
            right_above += hit
            wrong_above += not hit
    return Rank1(len(gallery), len(probes), correct, right_above, wrong_above, threshold)


def binomial_upper_bound(k: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on a rate observed as k events in n trials.

    With k = 0 it is close to the "rule of three", 3/n at 95%: observing no false match in n
    pairs does not show a rate of zero, only one below about 3/n.
    """
    if n <= 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1.0 - confidence

    def cdf(p: float) -> float:
        # P(X <= k) for X ~ Binomial(n, p), summed in log space.
        if p <= 0:
            return 1.0
        if p >= 1:
            return 0.0
        lp, lq = math.log(p), math.log1p(-p)
        terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                 + i * lp + (n - i) * lq for i in range(k + 1)]
        top = max(terms)
        return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))

    lo, hi = k / n, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def summarize(values: np.ndarray) -> dict[str, float | int]:
    """Count, mean, standard deviation, extremes and percentiles of similarities."""
    if values.size == 0:
        return {"n": 0}
    q = np.percentile(values, [1, 5, 25, 50, 75, 95, 99])
    return {
        "n": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
        "min": float(values.min()), "p01": float(q[0]), "p05": float(q[1]),
        "p25": float(q[2]), "p50": float(q[3]), "p75": float(q[4]), "p95": float(q[5]),
        "p99": float(q[6]), "max": float(values.max()),
    }


def _round_json(obj: Any, digits: int = 6) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _round_json(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round_json(v, digits) for v in obj]
    return obj


def report(data: EmbeddedSet, fmr_target: float = 0.001, floor_fmr_target: float = 0.01,
           table: Sequence[float] | None = None) -> dict[str, Any]:
    """The calibration summary written to JSON: counts, distributions, rates, thresholds.

    Args:
        data: embedded photos from :func:`embed_testdata`.
        fmr_target: FMR the default threshold must meet on this data.
        floor_fmr_target: FMR the floor (the lowest threshold anyone may search with) must meet.
        table: thresholds for the FMR/FNMR table (the chosen thresholds and the model's
            published ones are always added); when omitted, 0.40-0.85 by 0.05 and 0.86-0.97
            by 0.01, where the rates change.

    Returns:
        Plain JSON: no vectors, no names beyond ``pNN`` codes.
    """
    scores = pair_scores(data)
    default = choose_threshold(scores, fmr_target)
    floor = choose_threshold(scores, floor_fmr_target)
    zero_fm = choose_threshold(scores, 0.0)
    published = PUBLISHED_THRESHOLDS.get(data.embedder, {})
    if table is None:
        table = threshold_grid(0.05, 0.40, 0.85) + threshold_grid(0.01, 0.86, 0.97)
    marks = [default, floor, zero_fm, *published.values()]
    grid = sorted(set(table) | set(marks))
    at = {p.threshold: p for p in error_rates(scores, grid)}
    identities = sorted({f.identity for f in data.identities})
    per_identity = {i: sum(f.identity == i for f in data.identities) for i in identities}
    return _round_json({
        "embedder": data.embedder,
        "embedder_version": data.embedder_version,
        "weights_sha256": data.weights_sha256,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "match_rule": "cosine similarity of unit vectors >= threshold",
        "counts": {
            "identities": len(identities),
            "identity_faces_embedded": len(data.identities),
            "identity_faces_from_group_photos": sum(
                "groups" in Path(f.photo).parts for f in data.identities),
            "group_labels_unmatched": list(data.unmatched_labels),
            "identity_photos_without_face": list(data.no_face),
            "faces_per_identity": per_identity,
            "stranger_photos": list(STRANGER_PHOTOS),
            "stranger_faces": len(data.strangers),
            "genuine_pairs": int(scores.genuine.size),
            "impostor_pairs_identity": int(scores.impostor_identity.size),
            "impostor_pairs_stranger": int(scores.impostor_stranger.size),
            "impostor_pairs": int(scores.impostor.size),
        },
        "distributions": {
            "genuine": summarize(scores.genuine),
            "impostor": summarize(scores.impostor),
            "impostor_identity": summarize(scores.impostor_identity),
            "impostor_stranger": summarize(scores.impostor_stranger),
        },
        "fmr_target": fmr_target,
        "chosen_threshold": default,
        "at_chosen": at[default].as_json(),
        "floor_fmr_target": floor_fmr_target,
        "floor_threshold": floor,
        "at_floor": at[floor].as_json(),
        "lowest_threshold_without_false_match": zero_fm,
        "at_lowest_without_false_match": at[zero_fm].as_json(),
        "published_thresholds": [{"source": k, **at[v].as_json()} for k, v in published.items()],
        "rank1": rank1(data, default).as_json(),
        "rank1_at_floor": rank1(data, floor).as_json(),
        "table": [at[t].as_json() for t in grid],
        "uncalibrated": {
            name: "weights not available where this file was made: calibrate by running "
                  f"python -m bodycam.calibration --embedder {name} on a machine that has them"
            for name in _embedder_names() if name != data.embedder
        },
    })


def _embedder_names() -> list[str]:
    from bodycam.pipeline.faces import Registry

    return sorted(Registry.embedders)


def format_table(summary: dict[str, Any]) -> str:
    """The FMR/FNMR table of a :func:`report` as fixed-width text, chosen rows marked."""
    marks: dict[float, list[str]] = {}
    for t, note in [(summary["chosen_threshold"], "default"),
                    (summary["floor_threshold"], "floor"),
                    (summary["lowest_threshold_without_false_match"], "no FM seen"),
                    *((r["threshold"], r["source"]) for r in summary["published_thresholds"])]:
        marks.setdefault(t, []).append(note)
    lines = [f"{'threshold':>9}  {'FMR':>8}  {'FM':>10}  {'FNMR':>7}  {'FNM':>9}  note"]
    for row in summary["table"]:
        lines.append(
            f"{row['threshold']:>9.2f}  {row['fmr']:>8.5f}  "
            f"{row['false_matches']:>4}/{row['impostor_pairs']:<5}  {row['fnmr']:>7.4f}  "
            f"{row['false_non_matches']:>3}/{row['genuine_pairs']:<5}  "
            f"{'; '.join(marks.get(row['threshold'], []))}")
    return "\n".join(lines)


def calibrate(testdata: Path, embedder: str, fmr_target: float = 0.001,
              floor_fmr_target: float = 0.01) -> dict[str, Any]:
    """Embed the test photos with ``embedder`` on the CPU and return :func:`report`'s summary.

    Raises:
        ModelUnavailableError: the embedder's weights cannot be loaded here.
    """
    cfg = PipelineSettings.model_validate({"embedder": embedder, "device": "cpu"})
    return report(embed_testdata(testdata, cfg), fmr_target, floor_fmr_target)


def main(argv: Sequence[str] | None = None) -> int:
    """Calibrate one embedder and write the summary JSON; prints the table and chosen values."""
    parser = argparse.ArgumentParser(prog="python -m bodycam.calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--testdata", type=Path, required=True, help="shared test data root")
    parser.add_argument("--embedder", required=True, choices=_embedder_names())
    parser.add_argument("--out", type=Path, required=True, help="summary JSON to write")
    parser.add_argument("--fmr-target", type=float, default=0.001, help="for the default")
    parser.add_argument("--floor-fmr-target", type=float, default=0.01, help="for the floor")
    args = parser.parse_args(argv)
    try:
        summary = calibrate(args.testdata, args.embedder, args.fmr_target, args.floor_fmr_target)
    except ModelUnavailableError as exc:
        print(f"cannot calibrate {args.embedder}: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(summary))
    chosen = summary["at_chosen"]
    print(f"default {summary['chosen_threshold']}: FMR {chosen['fmr']:.5f} "
          f"({chosen['false_matches']}/{chosen['impostor_pairs']}), FNMR {chosen['fnmr']:.4f} "
          f"({chosen['false_non_matches']}/{chosen['genuine_pairs']}); "
          f"rank-1 {summary['rank1']['accuracy']:.3f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
