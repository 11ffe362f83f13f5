"""Where blended class scores go: class ids and confidence on the raster grid, or probabilities
on the model's grid for resampling; both write whole block rows, masking invalid pixels."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..errors import Cancelled
from ..io import outputs
from ..model.classes import NODATA_CLASS
from ..model.device import torch_or_error
from ..stopwatch import Stopwatch
from .rowbuffer import RowBuffer, Writer
from .strips import host_sink


@dataclass(frozen=True)
class SinkPlan:
    """What the blended scores of an image become, in whole block rows handed to
    write(row0, [array (bands, rows, width) per layer]): "labels" (class indices, and
    confidence when `confidence`) or "probabilities" (0..255 per class, for resampling).
    Plain data, so that a process running part of the image can build the same sink."""

    kind: str
    width: int
    height: int
    classes: int
    confidence: bool = False

    def build(self, write: Writer, tile: int, device, rows: tuple[int, int] | None = None, gather=None):
        """(put, done_until) for slide(); rows: the part of the image this sink receives."""
        torch = torch_or_error()
        start, end = rows or (0, self.height)
        if self.kind == "probabilities":
            layers = [(self.classes, np.uint8, 0, torch.uint8)]

            def values(scores):
                return [(scores * 255).round_().clamp_(0, 255).to(dtype=torch.uint8)]
        else:
            layers = [(1, np.uint8, 0, torch.uint8)]
            if self.confidence:
                layers.append((1, np.float32, 0.0, torch.float32))

            def values(scores):
                conf, idx = scores.max(dim=0, keepdim=True)
                return [idx.to(dtype=torch.uint8)] + ([conf] if self.confidence else [])

        buf = RowBuffer(self.width, end, outputs.BLOCK, tile, [lay[:3] for lay in layers], write, start)
        put_values, done_until = host_sink(buf, device, self.width, tile, [(b, t) for b, _, _, t in layers], gather)
        return (lambda r, c, scores: put_values(r, c, values(scores))), done_until


def probability_writer(ds) -> Writer:
    """Writes a probabilities plan's rows into `ds` (one band per class, the model's grid)."""
    def write(row0, arrays):
        ds.write(arrays[0], window=Window(0, row0, ds.width, arrays[0].shape[1]))

    return write


class LabelWriter:
    """Turns blended probabilities into class ids and confidence, masking invalid pixels."""

    def __init__(self, ids: np.ndarray, cls_ds, conf_ds, valid, watch: Stopwatch):
        self.ids, self.cls_ds, self.conf_ds, self.valid, self.watch = ids, cls_ds, conf_ds, valid, watch
        # class ids are usually 0..n-1: then the argmax is the id, and no copy is needed
        self._identity = np.array_equal(ids, np.arange(len(ids)))

    def plan(self, width: int, height: int) -> SinkPlan:
        return SinkPlan("labels", width, height, len(self.ids), self.conf_ds is not None)

    def write_rows(self, row0: int, arrays) -> None:
        """The writer of this writer's plan: class indices (and confidence) of whole rows."""
        idx = arrays[0][0]
        self.write(row0, 0, idx if self._identity else self.ids[idx], arrays[1][0] if len(arrays) > 1 else None)

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
