"""Face detection (MTCNN) and embedding (FaceNet, dlib ResNet) behind protocols and a registry.

Each model class declares its name and version, loads lazily once, warms up and works in
batches; every output records which model made it. facenet-pytorch and dlib shapes stay here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from bodycam.config import PipelineSettings
from bodycam.cpus import usable_cpus
from bodycam.domain import FaceDetection, SampledFrame
from bodycam.errors import ModelUnavailableError
from bodycam.media.files import sha256_file
from bodycam.pipeline.dlib_resnet import CHIP_PADDING, CHIP_PX, DescriptorNet, read_weights
from bodycam.pipeline.mtcnn import MtcnnCascade, search_regions

log = logging.getLogger(__name__)

# Share of min_face_px the MTCNN pyramid searches down to (see MtcnnDetector.detect).
SEARCH_MARGIN = 0.9

# One frame's share of an embedding call: the RGB image, its faces, and the image's scale
# against the original (the faces' boxes are in original pixels).
FrameFaces = tuple[np.ndarray, Sequence[FaceDetection], float]

FACENET_URL = ("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
               "20180402-114759-vggface2.pt")


def torch_device(choice: str) -> str:
    """'cuda' when asked or when 'auto' finds a GPU, else 'cpu'."""
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise ModelUnavailableError("BODYCAM_PIPELINE__DEVICE=cuda but no CUDA device is visible")
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return choice


def sharpness(gray: np.ndarray) -> float:
    """Variance of the Laplacian of a grayscale crop area-resized to 64 px high (higher: sharper).

    Resizing first makes the figure comparable across face sizes: a large blurred face and a
    small sharp one are told apart.
    """
    import cv2

    if gray.shape[0] < 3 or gray.shape[1] < 3:
        return 0.0
    width = max(3, round(gray.shape[1] * 64 / gray.shape[0]))
    g = cv2.resize(np.ascontiguousarray(gray, dtype=np.float32), (width, 64),
                   interpolation=cv2.INTER_AREA)
    lap = (g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1])
    return float(lap.var())


class FaceDetector(Protocol):
    """Finds faces in frames."""

    name: str
    version: str

    @property
    def compute(self) -> str:
        """What the model runs on and in what precision, e.g. 'cuda float32' (once loaded)."""

    @property
    def concurrency(self) -> int:
        """How many batches may be detected at once (threads calling detect)."""

    def load(self) -> None:
        """Load weights once."""

    def detect(self, frames: Sequence[SampledFrame]) -> list[list[FaceDetection]]:
        """Faces per frame, boxes in original display pixels; safe to call from threads."""


class FaceEmbedder(Protocol):
    """Turns aligned faces into L2-normalised vectors."""

    name: str
    version: str
    dim: int

    @property
    def compute(self) -> str:
        """What the model runs on and in what precision, e.g. 'cuda float16' (once loaded)."""

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights actually loaded."""

    def load(self) -> None:
        """Load weights once; raises ModelUnavailableError saying how to provide them."""

    def embed(self, image: np.ndarray, faces: Sequence[FaceDetection],
              scale: float = 1.0) -> np.ndarray:
        """One unit vector per face (n x dim float32); image is RGB at `scale` x original."""

    def embed_frames(self, frames: Sequence[FrameFaces]) -> list[np.ndarray]:
        """`embed` for the faces of several frames at once (one network call): a vector
        array per (image, faces, scale), in order."""


def scan_plan(scenes: Sequence[int], due: Sequence[bool]) -> list[tuple[int, int] | None]:
    """How each sample of a batch (in time order) is searched: None where the whole frame
    is scanned, else the two samples around whose faces it is searched.

    Samples `due` a whole scan get one, with the pyramid's finest level. A sample between
    two of them of its own scene, the nearest before and after it in the batch, is searched
    only around the faces those found. Any other sample (the first or last of a batch, or
    next to a scene cut) is scanned whole without the finest level.
    """
    out: list[tuple[int, int] | None] = []
    for j, scene in enumerate(scenes):
        before = next((k for k in range(j - 1, -1, -1) if due[k]), None)
        after = next((k for k in range(j + 1, len(due)) if due[k]), None)
        if due[j] or before is None or after is None or not (
                scenes[before] == scene == scenes[after]):
            out.append(None)
        else:
            out.append((before, after))
    return out


class MtcnnDetector:
    """MTCNN (three cascaded CNNs, five landmarks per face) with facenet-pytorch's weights.

    The networks run under our own cascade driver (bodycam.pipeline.mtcnn): same weights,
    thresholds and suppression as facenet-pytorch's `detect`, about twice as fast on CPU.
    """

    name = "mtcnn"
    version = "facenet-pytorch-2.5.3"

    def __init__(self, cfg: PipelineSettings) -> None:
        self.cfg = cfg
        self._model: Any = None
        self._cascade: MtcnnCascade | None = None
        self._lock = threading.Lock()
        self._concurrency = 1

    @property
    def compute(self) -> str:
        """'cpu float32' or 'cuda float32' (its pyramid then resampled there too)."""
        self.load()
        assert self._cascade is not None
        return f"{self._cascade.device.type} float32"

    @property
    def concurrency(self) -> int:
        """Parallel detection batches: 1 on a GPU; on CPU `detect_threads` (auto: 2 with 2+
        cores), each batch's torch ops then get an equal share of the cores (see load)."""
        self.load()
        return self._concurrency

    def load(self) -> None:
        """Load the three networks (weights ship inside facenet-pytorch).

        On CPU this sets torch's intra-op threads to cores / concurrency for the process:
        one batch per core keeps both cores of a small machine busy while decoding and
        embedding run beside it (torch's own threads idle-spin between PNet's small ops).
        """
        with self._lock:
            if self._model is not None:
                return
            import torch
            from facenet_pytorch import MTCNN

            device = torch_device(self.cfg.device)
            if device == "cpu":
                cores = usable_cpus()
                self._concurrency = self.cfg.detect_threads or max(1, min(2, cores))
                torch.set_num_threads(max(1, cores // self._concurrency))
            model = MTCNN(
                keep_all=True, min_face_size=20,
                thresholds=[0.6, 0.7, self.cfg.detector_threshold],
                device=device, select_largest=False,
            )
            self._cascade = MtcnnCascade(model.pnet, model.rnet, model.onet, model.thresholds,
                                         model.factor)
            self._model = model

    def detect(self, frames: Sequence[SampledFrame]) -> list[list[FaceDetection]]:
        """Detect faces in batches of equal-size frames.

        The pyramid starts where min_face_px (in the frame's pixels) becomes PNet's 12 px
        cell: faces below the configured minimum are neither searched for nor paid for.
        Whole frames, with that finest level, are scanned on the samples due for it
        (`scan_every`, counted in samples of the video's time: every frame of a still photo
        is due). On CPU a sample between two such scans of its scene is searched, from the
        next level up as any sample not due, only around the faces they found (scan_plan,
        search_regions): near them it finds what a whole scan finds. A face that appears between
        two scans is found from the sample after, and that scan's regions find it on the
        sample before. A face that neither scan found (the detector misses one now and then)
        is not looked for between them; that is why batch edges stay whole scans (measured,
        BENCHMARKS.md). Redaction scans every frame (scan_every 1).
        """
        self.load()
        assert self._cascade is not None
        out: list[list[FaceDetection]] = [[] for _ in frames]
        groups: dict[tuple[tuple[int, ...], float], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault((frame.image.shape, frame.scale), []).append(i)
        for (shape, scale), idx in groups.items():
            # Search a little below the minimum: box regression moves borderline faces by
            # a few pixels either way, and _convert applies the exact minimum afterwards.
            min_px = max(12.0, SEARCH_MARGIN * self.cfg.min_face_px * scale)
            every = self.cfg.scan_every
            due = [round(frames[i].t_s * self.cfg.sample_fps) % every == 0 for i in idx]
            # On a GPU whole batches are cheap and many small calls are not: scan them all.
            plan = (scan_plan([frames[i].scene_index for i in idx], due)
                    if self._cascade.device.type == "cpu" else [None] * len(idx))
            whole = [j for j, p in enumerate(plan) if p is None]
            raw = dict(zip(whole, self._cascade.detect(
                [frames[idx[j]].image for j in whole], min_px, [due[j] for j in whole]),
                strict=True))
            between = {j: p for j, p in enumerate(plan) if p is not None}
            if between:
                h, w = shape[:2]
                regions = [search_regions(np.concatenate([raw[k].boxes for k in p]), w, h)
                           for p in between.values()]
                raw.update(zip(between, self._cascade.detect(
                    [frames[idx[j]].image for j in between], min_px, [False] * len(between),
                    regions), strict=True))
            for j, i in enumerate(idx):
                out[i] = self._convert(frames[i], raw[j].boxes, raw[j].probs, raw[j].points)
        return out

    def _convert(self, frame: SampledFrame, boxes: Any, probs: Any,
                 points: Any) -> list[FaceDetection]:
        if boxes is None:
            return []
        found = []
        h, w = frame.image.shape[:2]
        for box, prob, pts in zip(boxes, probs, points, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            x1, y1, x2, y2 = max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2)
            if x2 - x1 < 4 or y2 - y1 < 4:
                continue
            if (y2 - y1) / frame.scale < self.cfg.min_face_px:
                continue
            crop = frame.image[int(y1):int(y2), int(x1):int(x2)].mean(axis=2)
            inv = 1.0 / frame.scale
            found.append(FaceDetection(
                frame_index=frame.frame_index, t_s=frame.t_s, scene_index=frame.scene_index,
                box_px=(x1 * inv, y1 * inv, x2 * inv, y2 * inv), probability=float(prob),
                landmarks_px=tuple((float(px) * inv, float(py) * inv) for px, py in pts),
                sharpness=sharpness(crop), detector=self.name,
            ))
        return found


class DlibResnetEmbedder:
    """dlib's ResNet face descriptor (128-d); weights ship in face_recognition_models.

    Faces are aligned here with dlib's 5-point model into 150x150 chips (dlib's own
    `get_face_chip`, padding 0.25, as `compute_face_descriptor` does); the network runs on
    torch with dlib's weights, in this process (see dlib_resnet: why, and how it equals
    dlib's own).
    """

    name = "dlib-resnet"
    version = "dlib_face_recognition_resnet_model_v1"
    dim = 128

    def __init__(self, cfg: PipelineSettings) -> None:
        self.cfg = cfg
        self._net: DescriptorNet | None = None
        self._shapes: Any = None
        self._sha = ""
        self._lock = threading.Lock()

    @property
    def compute(self) -> str:
        """Always 'cpu float32': dlib's network runs on torch on the CPU, as dlib's own."""
        return "cpu float32"

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the descriptor network file (the network is not loaded for it)."""
        with self._lock:
            self._load_files()
        return self._sha

    @staticmethod
    def _model_dir() -> Path:
        import importlib.util

        spec = importlib.util.find_spec("face_recognition_models")
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailableError(
                "dlib-resnet needs the face_recognition_models package: "
                "pip install face_recognition_models dlib-bin")
        return Path(next(iter(spec.submodule_search_locations))) / "models"

    def _load_files(self) -> Path:
        """The aligner loaded and the network file hashed (under self._lock); its path."""
        models = self._model_dir()
        rec = models / "dlib_face_recognition_resnet_model_v1.dat"
        if self._shapes is None:
            import dlib

            # Read the files' paths directly: the package's own helper needs pkg_resources.
            if not rec.exists():
                raise ModelUnavailableError(f"{rec} is missing: reinstall face_recognition_models")
            self._sha = sha256_file(rec)
            self._shapes = dlib.shape_predictor(
                str(models / "shape_predictor_5_face_landmarks.dat"))
        return rec

    def load(self) -> None:
        """Load the 5-point aligner; hash the descriptor network's file and read its weights."""
        with self._lock:
            if self._net is None:
                self._net = DescriptorNet(read_weights(self._load_files()))

    def embed(self, image: np.ndarray, faces: Sequence[FaceDetection],
              scale: float = 1.0) -> np.ndarray:
        """Align each face with dlib's 5-point model, then describe it."""
        return self.embed_frames([(image, faces, scale)])[0]

    def embed_frames(self, frames: Sequence[FrameFaces]) -> list[np.ndarray]:
        """Align every face of every frame, then describe them all in one network call."""
        self.load()
        assert self._net is not None
        import dlib

        chips = []
        for image, faces, scale in frames:
            if not faces:
                continue
            # dlib takes only C-contiguous arrays: PyAV hands back frames whose rows are
            # padded (an 854-px-wide frame is a strided view), and dlib raised TypeError.
            image = np.ascontiguousarray(image)
            for f in faces:
                x1, y1, x2, y2 = (v * scale for v in f.box_px)
                shape = self._shapes(image, dlib.rectangle(int(x1), int(y1), int(x2), int(y2)))
                chips.append(dlib.get_face_chip(image, shape, CHIP_PX, CHIP_PADDING))
        vecs = (_l2(self._net.describe(np.stack(chips))) if chips
                else np.zeros((0, self.dim), np.float32))
        return _split(vecs, frames)


class FacenetEmbedder:
    """FaceNet InceptionResnetV1 trained on VGGFace2 (512-d), the production default.

    On CUDA the network runs in fp16 (half the memory traffic, tensor cores); on CPU in fp32.
    Vectors come back as float32 either way.
    """

    name = "facenet-vggface2"
    version = "20180402-114759"
    dim = 512

    def __init__(self, cfg: PipelineSettings) -> None:
        self.cfg = cfg
        self._model: Any = None
        self._sha = ""
        self._device = "cpu"
        self._half = False
        self._untrained = False
        self._lock = threading.Lock()

    @classmethod
    def untrained(cls, cfg: PipelineSettings) -> FacenetEmbedder:
        """The same network and code path with random weights, for timing only.

        For benchmarks on machines the weights cannot reach (speed does not depend on the
        weights' values). Its vectors identify nobody: its version says so, and every output
        records the version.
        """
        emb = cls(cfg)
        emb.version = "untrained-random-weights"
        emb._untrained = True
        return emb

    @property
    def device(self) -> str:
        """The torch device the network runs on ('cpu' or 'cuda'), once loaded."""
        self.load()
        return self._device

    @property
    def compute(self) -> str:
        """The device and precision, e.g. 'cuda float16' (fp16 on a GPU only)."""
        self.load()
        return f"{self._device} {self.dtype}"

    @property
    def dtype(self) -> str:
        """'float16' on CUDA, 'float32' on CPU, once loaded."""
        self.load()
        return "float16" if self._half else "float32"

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file loaded."""
        self.load()
        return self._sha

    def _how_to(self, why: str) -> ModelUnavailableError:
        return ModelUnavailableError(
            f"FaceNet weights unavailable ({why}). On a connected machine download {FACENET_URL}, "
            "copy it to this worker, and set BODYCAM_PIPELINE__FACENET_WEIGHTS=/path/to/"
            "20180402-114759-vggface2.pt and BODYCAM_PIPELINE__FACENET_WEIGHTS_SHA256=<its "
            "sha256sum>; or choose the offline embedder explicitly with "
            "BODYCAM_PIPELINE__EMBEDDER=dlib-resnet (see infra/weights/README.md)")

    def load(self) -> None:
        """Load a configured, hash-checked file, else facenet-pytorch's download and cache."""
        with self._lock:
            if self._model is not None:
                return
            import torch
            from facenet_pytorch import InceptionResnetV1

            self._device = torch_device(self.cfg.device)
            path = self.cfg.facenet_weights
            if self._untrained:
                model = InceptionResnetV1(pretrained=None, classify=False)
                self._sha = "untrained"
            elif path is not None:
                if not path.exists():
                    raise self._how_to(f"{path} does not exist")
                digest = sha256_file(path)
                expected = (self.cfg.facenet_weights_sha256 or "").lower()
                if not expected:
                    raise self._how_to("BODYCAM_PIPELINE__FACENET_WEIGHTS_SHA256 is not set")
                if digest != expected:
                    raise ModelUnavailableError(
                        f"{path} has SHA-256 {digest}, not the configured {expected}: "
                        "refusing to load a different model")
                model = InceptionResnetV1(pretrained=None, classify=False)
                state = torch.load(path, map_location="cpu", weights_only=True)
                state = {k: v for k, v in state.items() if not k.startswith("logits.")}
                model.load_state_dict(state)
                self._sha = digest
            else:
                try:
                    model = InceptionResnetV1(pretrained="vggface2")
                except Exception as exc:  # noqa: BLE001 - any download failure ends the same
                    raise self._how_to(f"download failed: {type(exc).__name__}") from None
                cache = Path(torch.hub.get_dir()) / "checkpoints" / FACENET_URL.rsplit("/", 1)[1]
                self._sha = sha256_file(cache) if cache.exists() else "unknown"
            model = model.eval().to(self._device)
            # fp16 on the GPU only: CPU convolutions gain nothing from it.
            self._half = self._device != "cpu"
            self._model = model.half() if self._half else model

    def embed(self, image: np.ndarray, faces: Sequence[FaceDetection],
              scale: float = 1.0) -> np.ndarray:
        """Crop each face with a margin, resize to 160 px, standardise, embed."""
        return self.embed_frames([(image, faces, scale)])[0]

    def embed_frames(self, frames: Sequence[FrameFaces]) -> list[np.ndarray]:
        """Every face of every frame cropped and resized, then embedded in one network call
        (one upload and one download: on a GPU the per-call cost dominates small batches)."""
        self.load()
        import torch
        import torch.nn.functional as F  # noqa: N812

        crops = []
        for image, faces, scale in frames:
            h, w = image.shape[:2]
            for f in faces:
                x1, y1, x2, y2 = (v * scale for v in f.box_px)
                m = 0.1 * max(x2 - x1, y2 - y1)
                box = [max(0, int(x1 - m)), max(0, int(y1 - m)), min(w, int(x2 + m)),
                       min(h, int(y2 + m))]
                crop = torch.from_numpy(
                    np.ascontiguousarray(image[box[1]:box[3], box[0]:box[2]]))
                crop = crop.permute(2, 0, 1).float().unsqueeze(0)
                crops.append(F.interpolate(crop, size=(160, 160), mode="area"))
        if not crops:
            return _split(np.zeros((0, self.dim), np.float32), frames)
        batch = (torch.cat(crops) - 127.5) / 128.0
        with torch.inference_mode():
            x = batch.to(self._device, torch.float16 if self._half else torch.float32)
            vecs = self._model(x).float().cpu().numpy()
        return _split(_l2(vecs), frames)


def _split(vecs: np.ndarray, frames: Sequence[FrameFaces]) -> list[np.ndarray]:
    """The rows of one embedding call, handed back per frame."""
    out, at = [], 0
    for _image, faces, _scale in frames:
        out.append(vecs[at:at + len(faces)])
        at += len(faces)
    return out


def _l2(vecs: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    return (vecs / np.maximum(norms, 1e-12)).astype(np.float32)


class Registry:
    """Maps configuration to model classes; instances are loaded once per process."""

    embedders: ClassVar[dict[str, type[DlibResnetEmbedder] | type[FacenetEmbedder]]] = {
        DlibResnetEmbedder.name: DlibResnetEmbedder,
        FacenetEmbedder.name: FacenetEmbedder,
    }
    # Keyed by the settings' JSON: PipelineSettings holds dicts, so it is not hashable.
    _cache: ClassVar[dict[tuple[str, str], Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def embedder(cls, cfg: PipelineSettings) -> FaceEmbedder:
        """The configured embedder; never a silent substitute."""
        with cls._lock:
            key = ("embedder", cfg.model_dump_json())
            if key not in cls._cache:
                kind = cls.embedders.get(cfg.embedder)
                if kind is None:
                    raise ModelUnavailableError(f"unknown embedder {cfg.embedder!r}")
                cls._cache[key] = kind(cfg)
            emb: FaceEmbedder = cls._cache[key]
            return emb

    @classmethod
    def detector(cls, cfg: PipelineSettings) -> FaceDetector:
        """The face detector."""
        with cls._lock:
            key = ("detector", cfg.model_dump_json())
            if key not in cls._cache:
                cls._cache[key] = MtcnnDetector(cfg)
            det: FaceDetector = cls._cache[key]
            return det
