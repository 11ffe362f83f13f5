"""Streaming blend of weighted window scores into finished image blocks.

Windows arrive in row-major order. Only two buffers are kept, on the device that ran
the network: the scores of the current window column (classes x tile x tile) and the
bottom overlap rows of the previous strip (classes x overlap x canvas width). As soon
as no later window can touch a block of pixels, the block is handed to `emit`, so
memory depends on the tile size and the raster width, never on the raster height,
and on a GPU only class ids and confidences ever travel back to the host.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

# emit(row0, col0, scores) with scores a torch tensor (classes, rows, cols) in image pixels.
Emit = Callable[[int, int, object], None]


class StripBlender:
    def __init__(self, height: int, width: int, classes: int, tile: int, overlap: int,
                 ys: np.ndarray, xs: np.ndarray, emit: Emit, end_strip: Callable[[int], None], device="cpu",
                 first_strip: int = 0):
        """first_strip: the window row that arrives first; the rows it shares with the strip above
        lack that strip's scores, so a caller starting below the top discards them."""
        import torch

        self.h, self.w, self.tile, self.overlap = height, width, tile, overlap
        self.ys, self.xs = ys, xs
        self.emit, self.end_strip = emit, end_strip
        self.col = torch.zeros((classes, tile, tile), dtype=torch.float32, device=device)
        self.carry = torch.zeros((classes, overlap, int(xs[-1] + tile - xs[0])), dtype=torch.float32, device=device)
        self._next = (first_strip, 0)

    def add(self, k: int, j: int, scores) -> None:
        """Add the weighted scores (tensor) of window (strip k, column j); None for a skipped window."""
        if (k, j) != self._next:
            raise RuntimeError(f"window {(k, j)} arrived out of order, expected {self._next}")
        ys, xs, t, o = self.ys, self.xs, self.tile, self.overlap
        if scores is not None:
            self.col += scores
        last_col = j + 1 == len(xs)
        last_row = k + 1 == len(ys)
        ncols = t if last_col else int(xs[j + 1] - xs[j])
        nrows = t if last_row else int(ys[k + 1] - ys[k])
        block = self.col[:, :, :ncols]
        c = int(xs[j] - xs[0])
        if k > 0 and o:
            block[:, :o] += self.carry[:, :, c:c + ncols]
        self._emit_clipped(int(ys[k]), int(xs[j]), block[:, :nrows])
        if not last_row and o:
            self.carry[:, :, c:c + ncols] = block[:, nrows:]
        if last_col:
            self.col.zero_()
            self.end_strip(min(self.h, int(ys[k]) + nrows))
            self._next = (k + 1, 0)
        else:
            self.col[:, :, : t - ncols] = self.col[:, :, ncols:].clone()
            self.col[:, :, t - ncols:] = 0
            self._next = (k, j + 1)

    def _emit_clipped(self, y: int, x: int, block) -> None:
        r0, r1 = max(y, 0), min(y + block.shape[1], self.h)
        c0, c1 = max(x, 0), min(x + block.shape[2], self.w)
        if r1 > r0 and c1 > c0:
            self.emit(r0, c0, block[:, r0 - y:r1 - y, c0 - x:c1 - x])
