"""A faster MTCNN cascade driver over facenet-pytorch's PNet, RNet and ONet weights.

facenet-pytorch's `detect_face` builds its image pyramid with `interpolate(mode="area")` on the
full float image (adaptive average pooling, slow on CPU) and cuts every RNet/ONet candidate in
a Python loop, one `interpolate` per box. This driver keeps the same three networks, thresholds,
box regression and non-maximum suppression, but:

- builds the pyramid with OpenCV's INTER_AREA resize on uint8 frames (several times faster),
  starting at the scale where `min_face_px` becomes the 12 px PNet cell, so faces below the
  configured minimum are never searched for;
- runs PNet per pyramid level over the batch of frames, and cuts the RNet (24x24) and ONet
  (48x48) candidates of the whole batch with OpenCV on uint8 crops, each network in calls
  sized for the device (small on CPU, where they stay in cache; large on a GPU).
- can run PNet only on windows of each level around faces already known (found on nearby
  samples), with the outputs a whole level gives there (see `detect`).
- on CPU, gives PNet a pooling layer and a first PReLU that compute the same values to the
  bit in less time (`ceil_max_pool_2x2`, `row_prelu`).

The networks run on whichever device their weights are on (CUDA when present); candidate
boxes are handled on the CPU between stages. On a GPU the frames are uploaded once a batch and
the pyramid levels are resampled there (`device_resize`, `area_resize`: OpenCV's INTER_AREA
weights as two matrix products): on an H200, OpenCV's resizes on the host took 70% of the
detector's time and left the GPU idle (BENCHMARKS.md). The levels match OpenCV's to within one
level on a few pixels in a million, and the same faces are found (tests/test_pipeline.py).
The RNet and ONet crops stay on the host: resampled on the device (`roi_align`), they moved
boxes by 0.4% of the face's height at the median and lost faces near the threshold. Inputs
are permuted from N x H x W x C arrays, so on CPU they are already channels-last in memory,
the layout torch's CPU convolutions and pooling run fastest in.

Boxes, probabilities and landmarks come back in the input image's pixels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# The most input pixels one network call sees (frames of a pyramid level for PNet, candidate
# crops for RNet and ONet). On CPU, small calls keep each layer's output in the core's cache:
# measured on 801x451 PNet inputs, one frame a call took 20-28 ms a frame against 48 ms in
# calls of eight, RNet in slices of 113 crops half the time of slices of 1024, and the
# outputs are the same. On a GPU, large calls keep it busy; the bound is its memory.
CPU_PIXELS_PER_CALL = 1 << 16
GPU_PIXELS_PER_CALL = 1 << 22

# How far around a face found on a nearby sample search_regions looks, in face sizes on
# every side (a face of 60 px: a region of 180 x 180 px).
REGION_MARGIN = 1.0


Regions = list[tuple[float, float, float, float]]  # (x1, y1, x2, y2) in an image's pixels


def search_regions(boxes: np.ndarray, width: int, height: int,
                   margin: float = REGION_MARGIN) -> Regions:
    """Where to look for faces near `boxes` (n x 4+, pixels): each box widened by `margin`
    times its size on every side and clipped to the image, overlapping regions merged."""
    regions: Regions = []
    for x1, y1, x2, y2 in boxes[:, :4].tolist():
        s = max(x2 - x1, y2 - y1)
        r = (max(0.0, x1 - margin * s), max(0.0, y1 - margin * s),
             min(float(width), x2 + margin * s), min(float(height), y2 + margin * s))
        k = 0
        while k < len(regions):  # merge r with every region it overlaps, transitively
            o = regions[k]
            if o[0] < r[2] and r[0] < o[2] and o[1] < r[3] and r[1] < o[3]:
                r = (min(o[0], r[0]), min(o[1], r[1]), max(o[2], r[2]), max(o[3], r[3]))
                del regions[k]
                k = 0
            else:
                k += 1
        regions.append(r)
    return regions


def level_windows(regions: Regions, width: int, height: int,
                  size: tuple[int, int]) -> list[tuple[int, int, int, int]]:
    """`regions` of a width x height image as windows (x0, y0, x1, y1) of its pyramid level
    of `size`: widened to even offsets and sizes (PNet's stride), at least PNet's 12 px."""
    lw, lh = size
    out = []
    for x1, y1, x2, y2 in regions:
        x0 = math.floor(x1 * lw / width) // 2 * 2
        y0 = math.floor(y1 * lh / height) // 2 * 2
        xe = min(lw, -(-math.ceil(x2 * lw / width) // 2) * 2)
        ye = min(lh, -(-math.ceil(y2 * lh / height) // 2) * 2)
        if xe - x0 >= 12 and ye - y0 >= 12:
            out.append((x0, y0, xe, ye))
    return out


def pnet_cells(reg: Any, probs: Any, scale: float, threshold: float,
               offset: tuple[int, int] = (0, 0)) -> tuple[Any, Any]:
    """PNet's output cells over `threshold` as candidate boxes in the image's pixels (n x 9:
    box, score, regression) and the index of each one's input, as facenet-pytorch's
    `generateBoundingBox` computes them; `offset` is that of the input's output cells
    within its whole level (a window cut at even pixel offsets x0, y0: x0 / 2, y0 / 2)."""
    import torch

    reg = reg.permute(1, 0, 2, 3)
    mask = probs >= threshold
    mask_inds = mask.nonzero()
    score = probs[mask]
    reg = reg[:, mask].permute(1, 0)
    cells = mask_inds[:, 1:].flip(1) + torch.tensor(offset, dtype=mask_inds.dtype)
    cells = cells.type(reg.dtype)
    q1 = ((2 * cells + 1) / scale).floor()
    q2 = ((2 * cells + 12) / scale).floor()
    return torch.cat([q1, q2, score.unsqueeze(1), reg], dim=1), mask_inds[:, 0]


def area_weights(src: int, dst: int) -> np.ndarray:
    """The dst x src matrix of OpenCV's INTER_AREA downscaling along one axis: each output
    pixel the average of the input span it covers, pixels cut by the span's ends weighted by
    the part inside (OpenCV's computeResizeAreaTab)."""
    scale = src / dst
    out = np.zeros((dst, src), np.float64)
    for d in range(dst):
        f1 = d * scale
        f2 = f1 + scale
        cell = min(scale, src - f1)
        s2 = min(math.floor(f2), src - 1)
        s1 = min(math.ceil(f1), s2)
        if s1 - f1 > 1e-3:
            out[d, s1 - 1] = (s1 - f1) / cell
        out[d, s1:s2] = 1.0 / cell
        if f2 - s2 > 1e-3:
            out[d, s2] = min(f2 - s2, 1.0, cell) / cell
    return out


def area_resize(x: Any, size: tuple[int, int]) -> Any:
    """N x C x H x W pixel values (float, on any device) resized down to size (width,
    height) as OpenCV's INTER_AREA resizes uint8 images: the same weights, two matrix
    products, rounded to whole levels (halves up, as OpenCV's whole-factor path does). Float
    sums in another order can round a value next to a half the other way: on random 1080p
    frames, 4 pixels in a million differ by one level. A size larger than the input (a
    pyramid whose first level is the frame plus a pixel) is bilinear, as INTER_AREA's
    enlarging is, but not to OpenCV's fixed-point rounding."""
    import torch

    if size[0] > x.shape[3] or size[1] > x.shape[2]:
        import torch.nn.functional as F  # noqa: N812

        return F.interpolate(x, size=(size[1], size[0]), mode="bilinear").round_()
    wy = _area_weights_on(x.shape[2], size[1], str(x.device))
    wx = _area_weights_on(x.shape[3], size[0], str(x.device)).T
    return torch.matmul(torch.matmul(wy, x), wx).add_(0.5).floor_()


@functools.lru_cache(maxsize=32)
def _area_weights_on(src: int, dst: int, device: str) -> Any:
    """area_weights as float32 on a torch device, kept for the next batch of that size."""
    import torch

    return torch.from_numpy(area_weights(src, dst).astype(np.float32)).to(device)


def ceil_max_pool_2x2() -> Any:
    """`MaxPool2d(2, 2, ceil_mode=True)` (PNet's only pooling) as three elementwise maxima of
    strided views, written into a channels-last output.

    The same values to the bit (a maximum picks one of its inputs). torch's CPU max pooling
    also computes the index of every maximum, which this network never reads: on PNet's
    first layer for an 801x451 input it took 4.5 ms against 1.5 ms for this, and PNet as a
    whole 12% less time over a 1080p pyramid (one thread).
    """
    import torch

    class CeilMaxPool2x2(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            n, c, h, w = x.shape
            h2, w2 = h // 2, w // 2
            out = torch.empty((n, c, h - h2, w - w2), dtype=x.dtype, device=x.device,
                              memory_format=torch.channels_last)
            even = x[:, :, :2 * h2, :2 * w2]
            core = out[:, :, :h2, :w2]
            torch.maximum(even[:, :, 0::2, 0::2], even[:, :, 0::2, 1::2], out=core)
            torch.maximum(core, even[:, :, 1::2, 0::2], out=core)
            torch.maximum(core, even[:, :, 1::2, 1::2], out=core)
            if h % 2:  # ceil mode: a last window of one row
                row = x[:, :, h - 1, :2 * w2]
                torch.maximum(row[:, :, 0::2], row[:, :, 1::2], out=out[:, :, h2, :w2])
            if w % 2:  # and of one column
                col = x[:, :, :2 * h2, w - 1]
                torch.maximum(col[:, :, 0::2], col[:, :, 1::2], out=out[:, :, :h2, w2])
            if h % 2 and w % 2:
                out[:, :, h2, w2] = x[:, :, h - 1, w - 1]
            return out

    return CeilMaxPool2x2()


def row_prelu(weight: Any) -> Any:
    """`PReLU` over a channels-last input, each image row taken as one vector of width x
    channels values with the weights repeated across it.

    The same operation on every value (x if x > 0 else weight * x), so the same values to
    the bit. torch's CPU PReLU walks the channels innermost, in steps of eight: PNet's first
    layer has ten channels, so most of its work ran in the scalar remainder. Measured on that
    layer for an 801x451 input: 1.0 against 4.1-4.8 ms, PNet as a whole 16.2 against 19.0 ms
    (one thread). Inputs not channels-last go to torch's PReLU as they are.
    """
    import torch

    class RowPReLU(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = weight

        def forward(self, x: Any) -> Any:
            n, c, h, w = x.shape
            nhwc = x.permute(0, 2, 3, 1)
            if not nhwc.is_contiguous():
                return torch.prelu(x, self.weight)
            out = torch.prelu(nhwc.reshape(n * h, w * c), self.weight.repeat(w))
            return out.view(n, h, w, c).permute(0, 3, 1, 2)

    return RowPReLU()


@dataclass(frozen=True)
class RawFaces:
    """One frame's MTCNN output: boxes (n x 4), probabilities (n), landmarks (n x 5 x 2)."""

    boxes: np.ndarray
    probs: np.ndarray
    points: np.ndarray


NO_FACES = RawFaces(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                     np.zeros((0, 5, 2), np.float32))


class MtcnnCascade:
    """The three-stage cascade over a batch of equal-size RGB uint8 frames."""

    def __init__(self, pnet: Any, rnet: Any, onet: Any, thresholds: Sequence[float],
                 factor: float = 0.709, device_resize: bool | None = None) -> None:
        self.pnet, self.rnet, self.onet = pnet, rnet, onet
        self.device = next(pnet.parameters()).device
        # Pyramid levels resampled by torch on the networks' device (None: on a GPU), else by
        # OpenCV on the host (the fastest on CPU).
        self.device_resize = (self.device.type != "cpu" if device_resize is None
                              else device_resize)
        self.pixels_per_call = (CPU_PIXELS_PER_CALL if self.device.type == "cpu"
                                else GPU_PIXELS_PER_CALL)
        if self.device.type == "cpu":
            pnet.pool1 = ceil_max_pool_2x2()
            pnet.prelu1 = row_prelu(pnet.prelu1.weight)
        self.thresholds = tuple(thresholds)
        self.factor = factor

    def _input(self, batch: Any) -> Any:
        """uint8 N x H x W x 3 (or pixel values N x 3 x H x W already on the device) -> the
        networks' normalised float input on their device."""
        import torch

        x = (torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()
             if isinstance(batch, np.ndarray) else batch)
        return (x - 127.5) * 0.0078125

    def scales(self, height_px: int, width_px: int, min_face_px: float) -> list[float]:
        """Pyramid scales, as in facenet-pytorch: first maps min_face_px to 12 px."""
        m = 12.0 / min_face_px
        minl = min(height_px, width_px) * m
        out: list[float] = []
        s = m
        while minl >= 12:
            out.append(s)
            s *= self.factor
            minl *= self.factor
        return out

    def detect(self, images: Sequence[np.ndarray], min_face_px: float,
               finest: Sequence[bool] | None = None,
               regions: Sequence[Regions | None] | None = None) -> list[RawFaces]:
        """Faces in each image (all the same size), in that image's pixels.

        With `finest`, the pyramid's first level (faces from min_face_px to 1/factor times
        that) runs only on the images marked True; the others start one level coarser.
        With `regions`, PNet sees only those parts of an image that has some (see
        search_regions), cut from each pyramid level at even offsets: PNet has no padding
        and a stride of two, so its outputs there are those of the whole level, and the
        faces found in a region are the ones a whole scan finds there.
        """
        import torch

        with torch.inference_mode():
            return self._detect(images, min_face_px, finest, regions)

    def _detect(self, images: Sequence[np.ndarray], min_face_px: float,
                finest: Sequence[bool] | None = None,
                regions: Sequence[Regions | None] | None = None) -> list[RawFaces]:
        import cv2
        import torch
        from facenet_pytorch.models.utils.detect_face import batched_nms_numpy, bbreg, rerec
        from torchvision.ops import batched_nms

        n = len(images)
        if n == 0:
            return []
        h, w = images[0].shape[:2]

        # Stage 1: PNet over the pyramid, one batched call per level. The first level is
        # an INTER_AREA resize of the frame; each later level is resized from the previous
        # one (the same area average, at a fraction of the cost).
        boxes_l, inds_l = [], []
        levels = list(images)
        # On the device: the frames go up once, each level is resampled from the previous one
        # there, as OpenCV does it on the host.
        on_device = self.device_resize and regions is None
        level_t = (torch.from_numpy(np.stack(images)).to(self.device).permute(0, 3, 1, 2)
                   .float() if on_device else None)
        for level, scale in enumerate(self.scales(h, w, min_face_px)):
            size = (int(w * scale + 1), int(h * scale + 1))
            if level_t is not None:
                level_t = area_resize(level_t, size)
            else:
                levels = [cv2.resize(img, size, interpolation=cv2.INTER_AREA) for img in levels]
            run: list[int] = (list(range(n)) if level > 0 or finest is None
                              else np.flatnonzero(np.asarray(finest, bool)).tolist())
            parts = [None if regions is None else regions[k] for k in run]
            whole = [k for k, part in zip(run, parts, strict=True) if part is None]
            found: list[tuple[Any, Any]] = []
            if whole:
                reg, probs = self._sliced(self.pnet, level_t[whole] if level_t is not None
                                          else np.stack([levels[k] for k in whole]))
                b, i = pnet_cells(reg, probs[:, 1], scale, self.thresholds[0])
                found.append((b, torch.from_numpy(np.asarray(whole))[i]))
            for k, part in zip(run, parts, strict=True):
                for x0, y0, x1, y1 in level_windows(part or [], w, h, size):
                    cut = np.ascontiguousarray(levels[k][y0:y1, x0:x1])[None]
                    reg, probs = self._sliced(self.pnet, cut)
                    b, _ = pnet_cells(reg, probs[:, 1], scale, self.thresholds[0],
                                      (x0 // 2, y0 // 2))
                    found.append((b, torch.full((len(b),), k, dtype=torch.int64)))
            if not found:
                continue
            b = torch.cat([f[0] for f in found])
            i = torch.cat([f[1] for f in found])
            if len(b):
                pick = batched_nms(b[:, :4], b[:, 4], i, 0.5)
                boxes_l.append(b[pick])
                inds_l.append(i[pick])
        if not boxes_l:
            return [NO_FACES] * n
        boxes = torch.cat(boxes_l)
        inds = torch.cat(inds_l)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds = boxes[pick], inds[pick]
        regw = boxes[:, 2] - boxes[:, 0]
        regh = boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([
            boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
            boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4],
        ], dim=1)
        boxes = rerec(boxes)

        # Stage 2: RNet on 24x24 crops.
        boxes, inds, crops = self._crops(images, boxes, inds, 24, w, h)
        if len(boxes):
            reg, score = self._sliced(self.rnet, crops)
            keep = score[:, 1] > self.thresholds[1]
            boxes = torch.cat((boxes[keep, :4], score[keep, 1:2]), dim=1)
            inds, reg = inds[keep], reg[keep]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes = rerec(bbreg(boxes[pick], reg[pick]))
            inds = inds[pick]

        # Stage 3: ONet on 48x48 crops: final score, box regression, landmarks.
        if not len(boxes):
            return [NO_FACES] * n
        boxes, inds, crops = self._crops(images, boxes, inds, 48, w, h)
        if not len(boxes):
            return [NO_FACES] * n
        reg, pts, score = self._sliced(self.onet, crops)
        keep = score[:, 1] > self.thresholds[2]
        boxes = torch.cat((boxes[keep, :4], score[keep, 1:2]), dim=1)
        inds, reg, pts = inds[keep], reg[keep], pts[keep]
        bw = (boxes[:, 2] - boxes[:, 0] + 1).unsqueeze(1)
        bh = (boxes[:, 3] - boxes[:, 1] + 1).unsqueeze(1)
        px = bw * pts[:, :5] + boxes[:, 0:1] - 1
        py = bh * pts[:, 5:10] + boxes[:, 1:2] - 1
        points = torch.stack((px, py), dim=2)
        boxes = bbreg(boxes, reg)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
        boxes_np = boxes[pick].numpy()
        points_np = points[pick].numpy()
        inds_np = inds[pick].numpy()
        out = []
        for k in range(n):
            sel = inds_np == k
            out.append(RawFaces(boxes_np[sel, :4].astype(np.float32),
                                boxes_np[sel, 4].astype(np.float32),
                                points_np[sel].astype(np.float32)))
        return out

    def _sliced(self, net: Any, batch: Any) -> tuple[Any, ...]:
        """`net` over a uint8 N x H x W x 3 batch (or an N x 3 x H x W one on the device) in
        calls of at most `pixels_per_call` input pixels (at least one image a call), outputs
        joined on the CPU.

        Besides speed on CPU (see CPU_PIXELS_PER_CALL), this bounds memory: a batch of 1080p
        frames with faces from 32 px gives tens of thousands of PNet candidates, and RNet
        over all of them at once held about 80 MB of activations per frame in the batch."""
        import torch

        pixels = (batch.shape[1] * batch.shape[2] if isinstance(batch, np.ndarray)
                  else batch.shape[2] * batch.shape[3])
        step = max(1, self.pixels_per_call // pixels)
        outs = [net(self._input(batch[k:k + step])) for k in range(0, len(batch), step)]
        return tuple(torch.cat([o[j] for o in outs]).cpu() for j in range(len(outs[0])))

    @staticmethod
    def _crops(images: Sequence[np.ndarray], boxes: Any, inds: Any, size: int, w: int,
               h: int) -> tuple[Any, Any, np.ndarray]:
        """Square candidates clipped to the frame (as facenet-pytorch does), area-resized.

        OpenCV's INTER_AREA on the uint8 crop is the same resampling as facenet-pytorch's
        `interpolate(mode="area")` and, measured here, several times faster than one batched
        `roi_align` over the float frames (whose cost grows with the box size).
        """
        import cv2
        import torch

        b = boxes[:, :4].trunc().int().numpy()
        x1 = np.maximum(b[:, 0], 1) - 1
        y1 = np.maximum(b[:, 1], 1) - 1
        x2 = np.minimum(b[:, 2], w)
        y2 = np.minimum(b[:, 3], h)
        valid = (x2 > x1) & (y2 > y1)
        idx = inds.numpy()
        crops = np.stack([cv2.resize(images[idx[k]][y1[k]:y2[k], x1[k]:x2[k]], (size, size),
                                     interpolation=cv2.INTER_AREA)
                          for k in np.flatnonzero(valid)] or [np.zeros((size, size, 3), np.uint8)])
        keep = torch.from_numpy(valid)
        return boxes[keep], inds[keep], crops[:int(valid.sum())]
