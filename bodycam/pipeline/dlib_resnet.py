"""dlib's face descriptor network (dlib_face_recognition_resnet_model_v1) run by torch.

The same network and the same weights as `dlib.face_recognition_model_v1`: the weights are
read from dlib's own model file, and the layers are checked against the network that file
must hold (dlib's `anet_type`: a 29-layer ResNet on 150x150 RGB chips, 128 outputs). The
pip `dlib` build is made without BLAS, so its convolutions cost about 110 ms a face on this
machine's CPUs; torch's cost about 11 ms a face in batches (one thread). The descriptors
equal dlib's to within float rounding (about 1e-6; tests/test_pipeline.py compares them).

It runs in the caller's process and thread. torch releases the GIL while it computes, so the
pipeline's other threads go on meanwhile. dlib's binding held the GIL for its whole forward
pass, which is why the network used to run in child processes; a child importing torch would
hold about 350 MB of private memory, for no gain now.

What dlib does and torch must do alike:
- input: (pixel - channel mean) / 256, the means stored in the file;
- a convolution of stride 2 has no padding, of stride 1 has nr/2; pooling pads nothing;
- `affine_` (batch norm frozen at training's end) is folded into the convolution before it;
- `add_prev_` adds tensors of different sizes as if each were zero-padded to the larger
  (the shortcut of the 256-channel level is 4x4 where the block gives 3x3);
- the descriptor is the last layer's raw output; the caller normalises it.

dlib's serialisation (dlib/serialize.h, dlib/dnn/*.h): an integer is one byte of length (its
sign in bit 7) and that many little-endian bytes; a string its length, then its bytes; a
float a mantissa and an exponent (two integers); a tensor the version 2, four dimensions and
little-endian float32s; an alias tensor the version 1 and four dimensions. Each layer's
details follow its subnetwork's, so they appear from the input to the output.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bodycam.errors import ModelUnavailableError

CHIP_PX = 150  # the network's input: aligned face chips of 150 x 150 RGB pixels
CHIP_PADDING = 0.25  # dlib's `get_face_chip` padding for this network
BATCH = 32  # chips per forward pass: a crowd's activations stay under about 100 MB
# The residual levels, input first: (whether the first block halves the size, blocks). Their
# channels (32, 64, 128, 256, 256) come with the weights.
LEVELS = ((False, 3), (True, 4), (True, 3), (True, 3), (True, 1))
_LAYER = re.compile(rb"\x01([\x04-\x15])(input_rgb_image_sized|con_4|affine_|relu_|max_pool_2"
                    rb"|avg_pool_2|add_prev_|fc_2)")


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def integer(self) -> int:
        head = self.data[self.pos]
        n = head & 0x0F
        value = int.from_bytes(self.data[self.pos + 1:self.pos + 1 + n], "little")
        self.pos += 1 + n
        return -value if head & 0x80 else value

    def string(self) -> str:
        n = self.integer()
        value = self.data[self.pos:self.pos + n].decode("ascii")
        self.pos += n
        return value

    def real(self) -> float:
        mantissa = self.integer()
        return float(mantissa * 2.0 ** self.integer())

    def tensor(self) -> np.ndarray:
        if self.integer() != 2:
            raise ValueError("tensor version")
        shape = [self.integer() for _ in range(4)]
        n = int(np.prod(shape))
        values = np.frombuffer(self.data, "<f4", n, self.pos).astype(np.float32)
        self.pos += 4 * n
        return values

    def alias(self) -> tuple[int, ...]:
        if self.integer() != 1:
            raise ValueError("alias tensor version")
        return tuple(self.integer() for _ in range(4))


def _layers(data: bytes) -> list[tuple[str, Any]]:
    """(kind, what it holds) for each layer's details, input first."""
    out: list[tuple[str, Any]] = []
    pos = 0
    for m in _LAYER.finditer(data):
        if m.start() < pos or m.group(1)[0] != len(m.group(2)):
            continue  # inside a layer already read, or not a whole name
        r = _Reader(data, m.start())
        kind = r.string()
        if kind == "input_rgb_image_sized":
            held: Any = (r.real(), r.real(), r.real(), r.integer(), r.integer())
        elif kind == "con_4":
            params = r.tensor()
            r.integer()  # number of filters: the alias below has it too
            size, stride = (r.integer(), r.integer()), (r.integer(), r.integer())
            padding = (r.integer(), r.integer())
            filters, biases = r.alias(), r.alias()
            for _ in range(4):
                r.real()  # learning-rate and weight-decay multipliers
            nw = int(np.prod(filters))
            held = (params[:nw].reshape(filters), params[nw:nw + int(np.prod(biases))],
                    size, stride, padding)
        elif kind == "affine_":
            params = r.tensor()
            gamma, beta = r.alias(), r.alias()
            r.integer()  # mode
            k = int(np.prod(gamma))
            held = (params[:k], params[k:k + int(np.prod(beta))])
        elif kind in ("max_pool_2", "avg_pool_2"):
            held = tuple(r.integer() for _ in range(6))  # size, stride, padding (y, x each)
        elif kind == "fc_2":
            r.integer(), r.integer()  # outputs, inputs: the alias below has them
            params = r.tensor()
            weights = r.alias()
            held = params[:int(np.prod(weights))].reshape(weights[0], weights[1])
        else:
            held = None
        out.append((kind, held))
        pos = r.pos
    return out


def _expected() -> list[str]:
    kinds = ["input_rgb_image_sized", "con_4", "affine_", "relu_", "max_pool_2"]
    for down, blocks in LEVELS:
        for b in range(blocks):
            kinds += ["con_4", "affine_", "relu_", "con_4", "affine_"]
            kinds += ["avg_pool_2"] if down and b == 0 else []
            kinds += ["add_prev_", "relu_"]
    return [*kinds, "avg_pool_2", "fc_2"]


@dataclass(frozen=True)
class Weights:
    """The network's weights, each convolution with its batch norm folded in."""

    means: tuple[float, float, float]  # R, G, B
    convs: list[tuple[np.ndarray, np.ndarray, int]]  # weight (out, in, kh, kw), bias, stride
    fc: np.ndarray  # (256, 128): descriptor = pooled features @ fc


def read_weights(path: Path) -> Weights:
    """The weights of dlib's face descriptor network from its model file.

    Raises ModelUnavailableError if the file does not hold exactly that network.
    """
    try:
        layers = _layers(path.read_bytes())
        if [k for k, _ in layers] != _expected():
            raise ValueError("the layers are not dlib_face_recognition_resnet_model_v1's")
        red, green, blue, nr, nc = layers[0][1]
        if (nr, nc) != (150, 150):
            raise ValueError(f"input {nr}x{nc}, not 150x150")
        convs = []
        for (kind, con), (_, affine) in itertools.pairwise(layers):
            if kind != "con_4":
                continue  # the expected order puts an affine_ after every con_4
            (weight, bias, size, stride, padding), (gamma, beta) = con, affine
            if stride[0] != stride[1] or padding != ((0, 0) if stride[0] == 2 else
                                                       (size[0] // 2, size[1] // 2)):
                raise ValueError(f"unexpected convolution {size} {stride} {padding}")
            convs.append((weight * gamma[:, None, None, None], bias * gamma + beta,
                          int(stride[0])))
        pools = [held for kind, held in layers if kind in ("max_pool_2", "avg_pool_2")]
        if pools[0] != (3, 3, 2, 2, 0, 0) or any(p != (2, 2, 2, 2, 0, 0) for p in pools[1:-1]) \
                or pools[-1][:2] != (0, 0):
            raise ValueError("unexpected pooling")
        fc = layers[-1][1]
        if fc.shape != (256, 128):
            raise ValueError(f"descriptor layer {fc.shape}")
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ModelUnavailableError(f"{path.name} is not dlib's face descriptor network as "
                                    f"Bodycam reads it: {exc}") from None
    return Weights((red, green, blue), convs, fc)


class DescriptorNet:
    """The network on torch's CPU ops; describe() takes 150x150 RGB uint8 chips."""

    def __init__(self, weights: Weights) -> None:
        import torch

        self.convs = [(torch.from_numpy(w), torch.from_numpy(b), s) for w, b, s in weights.convs]
        self.fc = torch.from_numpy(weights.fc)
        self.means = torch.tensor(weights.means, dtype=torch.float32).view(1, 3, 1, 1)
        self.blocks = [down and b == 0 for down, blocks in LEVELS for b in range(blocks)]

    def describe(self, chips: np.ndarray) -> np.ndarray:
        """Raw descriptors (n x 128 float32) of n x 150 x 150 x 3 uint8 RGB chips."""
        parts = [self._forward(chips[i:i + BATCH]) for i in range(0, len(chips), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)

    def _forward(self, chips: np.ndarray) -> np.ndarray:
        import torch

        f = torch.nn.functional
        x = torch.from_numpy(np.ascontiguousarray(chips, np.uint8)).permute(0, 3, 1, 2).float()
        with torch.inference_mode():
            x = (x - self.means) / 256.0
            w, b, s = self.convs[0]
            x = f.max_pool2d(torch.relu(f.conv2d(x, w, b, stride=s)), 3, 2)
            for i, down in enumerate(self.blocks):
                (w1, b1, s1), (w2, b2, _) = self.convs[1 + 2 * i], self.convs[2 + 2 * i]
                y = f.conv2d(x, w1, b1, stride=s1, padding=0 if down else 1)
                y = f.conv2d(torch.relu(y), w2, b2, padding=1)
                x = torch.relu(_add(f.avg_pool2d(x, 2, 2) if down else x, y))
            out = x.mean((2, 3)) @ self.fc
        return np.ascontiguousarray(out.numpy(), dtype=np.float32)


def _add(a: Any, b: Any) -> Any:
    """a + b, each zero-padded to the larger size in every dimension (dlib's add_prev_)."""
    if a.shape == b.shape:
        return a + b
    out = a.new_zeros([max(p, q) for p, q in zip(a.shape, b.shape, strict=True)])
    out[:, :a.shape[1], :a.shape[2], :a.shape[3]] += a
    out[:, :b.shape[1], :b.shape[2], :b.shape[3]] += b
    return out
