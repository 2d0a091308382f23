"""dlib's face descriptor network in a child process.

dlib's Python binding holds the GIL for the whole forward pass (about 100 ms per face on a
CPU without BLAS). In-process, every other thread of the pipeline (decoding, scene cuts,
detection's Python glue) stops while a face is described; measured here, a pure-Python loop
ran at 5% of its speed beside it. The parent aligns faces itself (dlib's 5-point model and
`get_face_chip`, about 1 ms a face) and sends only the 150x150 chips here, so the network runs
beside the pipeline instead of in front of it. The descriptors are bit-identical to
`compute_face_descriptor(image, shapes)` in-process (that call cuts the same chips).

Protocol on stdin/stdout, native byte order: the child writes one byte b"R" once the model is
loaded; then each request is a uint32 count n followed by n x 150 x 150 x 3 uint8 RGB chips,
answered by n x 128 float32. EOF on stdin ends the child. Nothing else is written to stdout;
errors go to stderr. Run as `python -m bodycam.pipeline.dlib_child MODEL_FILE`.
"""

from __future__ import annotations

import struct
import sys
from typing import IO

from bodycam.streams import read_full

CHIP_PX = 150
CHIP_PADDING = 0.25
CHIP_BYTES = CHIP_PX * CHIP_PX * 3
DIM = 128
READY = b"R"
COUNT = struct.Struct("=I")


def serve(model_file: str, inp: IO[bytes], out: IO[bytes]) -> None:
    """Answer requests until inp ends."""
    import dlib
    import numpy as np

    encoder = dlib.face_recognition_model_v1(model_file)
    out.write(READY)
    out.flush()
    while True:
        head = read_full(inp, COUNT.size)
        if len(head) < COUNT.size:
            return
        (n,) = COUNT.unpack(head)
        body = read_full(inp, n * CHIP_BYTES)
        if len(body) < n * CHIP_BYTES:
            return
        chips = np.frombuffer(body, np.uint8).reshape(n, CHIP_PX, CHIP_PX, 3)
        vecs = np.asarray(encoder.compute_face_descriptor(list(chips), 0), np.float32)
        out.write(vecs.reshape(n, DIM).tobytes())
        out.flush()


if __name__ == "__main__":
    serve(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer)
