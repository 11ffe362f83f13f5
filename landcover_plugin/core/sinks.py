"""Where blended class scores go: class ids and confidence on the raster grid, or probabilities
on the model's grid for resampling; both write whole block rows, masking invalid pixels."""
from __future__ import annotations

from typing import Callable

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from . import outputs
from .classes import NODATA_CLASS
from .device import torch_or_error
from .errors import Cancelled
from .rowbuffer import RowBuffer
from .stopwatch import Stopwatch
from .strips import host_sink


def prob_sink(ds, width, height, tile, device, gather=None):
    """Probabilities (0..255) on the model's grid, for resampling onto the raster's grid."""
    torch = torch_or_error()

    def write(row0, arrays):
        ds.write(arrays[0], window=Window(0, row0, width, arrays[0].shape[1]))

    buf = RowBuffer(width, height, outputs.BLOCK, tile, [(ds.count, np.uint8, 0)], write)
    put_values, done_until = host_sink(buf, device, width, tile, [(ds.count, torch.uint8)], gather)

    def put(r, c, scores):
        put_values(r, c, [(scores * 255).round_().clamp_(0, 255).to(dtype=torch.uint8)])

    return put, done_until


class LabelWriter:
    """Turns blended probabilities into class ids and confidence, masking invalid pixels."""

    def __init__(self, ids: np.ndarray, cls_ds, conf_ds, valid, watch: Stopwatch):
        self.ids, self.cls_ds, self.conf_ds, self.valid, self.watch = ids, cls_ds, conf_ds, valid, watch

    def write(self, row0: int, col0: int, labels: np.ndarray, conf: np.ndarray | None) -> None:
        with self.watch.stage("write"):
            self._write(row0, col0, labels, conf)

    def _write(self, row0: int, col0: int, labels: np.ndarray, conf: np.ndarray | None) -> None:
        rows, cols = labels.shape
        valid = self.valid(row0, rows)
        if valid is not None:
            valid = valid[:, col0:col0 + cols]
            labels = np.where(valid, labels, NODATA_CLASS).astype(np.uint8)
        win = Window(col0, row0, cols, rows)
        self.cls_ds.write(labels, 1, window=win)
        if self.conf_ds is not None:
            if valid is not None:
                conf = np.where(valid, conf, outputs.CONFIDENCE_NODATA)
            self.conf_ds.write(conf.astype(np.float32, copy=False), 1, window=win)

    def sink(self, width, height, tile, device, gather=None):
        torch = torch_or_error()
        with_conf = self.conf_ds is not None

        identity = np.array_equal(self.ids, np.arange(len(self.ids)))

        def write(row0, arrays):
            idx = arrays[0][0]
            # class ids are usually 0..n-1: then the argmax is the id, and no copy is needed
            self.write(row0, 0, idx if identity else self.ids[idx], arrays[1][0] if with_conf else None)

        layers = [(1, np.uint8, 0)] + ([(1, np.float32, 0.0)] if with_conf else [])
        buf = RowBuffer(width, height, outputs.BLOCK, tile, layers, write)
        put_values, done_until = host_sink(buf, device, width, tile,
                                           [(1, torch.uint8)] + ([(1, torch.float32)] if with_conf else []), gather)

        def put(r, c, scores):
            conf, idx = scores.max(dim=0, keepdim=True)
            put_values(r, c, [idx.to(dtype=torch.uint8)] + ([conf] if with_conf else []))

        return put, done_until

    def from_probabilities(self, prob_ds, width, height, scale, cancel: Callable[[], bool], chunk: int = 2048) -> None:
        """Resample model-grid probabilities bilinearly onto the raster grid, block by block."""
        n = prob_ds.count
        for r0 in range(0, height, outputs.BLOCK):
            if cancel():
                raise Cancelled("Cancelled; no output was written.")
            rows = min(outputs.BLOCK, height - r0)
            for c0 in range(0, width, chunk):
                cols = min(chunk, width - c0)
                # rounding of the model grid's size can put the last window a hair outside it
                x, y = c0 * scale, r0 * scale
                win = Window(x, y, min(cols * scale, prob_ds.width - x), min(rows * scale, prob_ds.height - y))
                p = prob_ds.read(window=win, out_shape=(n, rows, cols), resampling=Resampling.bilinear,
                                 boundless=False)
                conf = p.max(axis=0).astype(np.float32) / 255.0
                self.write(r0, c0, self.ids[p.argmax(axis=0)], conf)
