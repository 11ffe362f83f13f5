"""The sliding-window loop: read windows, run the network, blend, hand finished blocks to a sink."""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import Cancelled
from ..io.reader import reflect_index
from ..model.predictor import Crop
from ..stopwatch import Stopwatch
from .blend import StripBlender
from .strips import host_sink
from .windows import inside_starts, strips_for_rows, window_grid


def slide(reader, predictor, num_classes: int, tile: int, overlap: int, sink, progress=None, cancel=None,
          watch: Stopwatch | None = None, read_threads: int = 1, rows: tuple[int, int] | None = None) -> None:
    """Run `predictor` over every window of `reader` (model pixel space) and blend into `sink`.

    reader: .height, .width, .read(y, x, tile) -> (window array, any pixel valid), and
    .clone() -> a reader of its own for another thread (with .close()).
    sink: (put(row, col, scores tensor), done_until(row)).
    watch: stages "read" (in reader threads, overlapping the others, summed over them),
    "infer" (the network; on CUDA its kernels may finish during "blend", which waits
    for them), "blend".
    read_threads: batches read ahead at once, each by a thread with its own reader; a GPU
    consumes windows faster than one thread decodes them.
    rows: (first, end) image rows to finish, for one part of an image shared between processes; only
    the windows they need run, and the sink gets exactly those rows, equal to a whole run's.
    """
    watch = watch or Stopwatch()
    progress = progress or (lambda f: None)
    cancel = cancel or (lambda: False)
    put, done_until = sink
    ys, xs = window_grid(reader.height, reader.width, tile, overlap)
    first, end = (0, len(ys)) if rows is None else strips_for_rows(ys, *rows)
    if rows is not None:
        put, done_until = _only_rows(put, done_until, *rows)
    blender = StripBlender(reader.height, reader.width, num_classes, tile, overlap, ys, xs, put, done_until,
                           device=predictor.device, first_strip=first)
    order = [(k, j) for k in range(len(ys)) for j in range(len(xs))]
    # A part's batches are the whole image's, windows outside the part run and are dropped: kernels
    # chosen by batch size round differently, so a window's scores must not depend on where its
    # batch starts or ends, or the part's rows would not match a run over the whole image.
    b = predictor.batch_size
    batches = [order[i:i + b] for i in range(first * len(xs) // b * b, end * len(xs), b)]
    clip = getattr(predictor, "clip_edges", False)
    align = getattr(predictor, "alignment", 1)
    # moved inside, a window runs whole: faster where the network is compiled for whole windows, slower eagerly
    # (more pixels: 21 against 13 s for a 1068^2 scene's nine windows)
    read_ys, read_xs = ((inside_starts(ys, reader.height, tile, align), inside_starts(xs, reader.width, tile, align))
                        if clip and getattr(predictor, "compiled", None) is not None else (ys, xs))
    readers = _Readers(reader, max(1, min(read_threads, len(batches))), read_ys, read_xs, tile, watch)
    try:
        for done, items in enumerate(readers.ahead(batches, cancel), 1):
            valid = [data for _, _, data, ok in items if ok]
            with watch.stage("infer"):
                crops = _crops(items, (ys, xs), (read_ys, read_xs), tile, reader.height, reader.width) \
                    if clip else None
                scores = iter((predictor(np.stack(valid), crops) if crops else predictor(np.stack(valid)))
                              if valid else ())
            with watch.stage("blend"):
                for k, j, _, ok in items:
                    window_scores = next(scores) if ok else None
                    if first <= k < end:
                        blender.add(k, j, window_scores)
            progress(done / len(batches))
    finally:
        readers.close()


def _crops(items, starts, read_starts, tile: int, height: int, width: int) -> list:
    """Per valid window, None where it lies inside the image, else its Crop: the part inside the image, and
    where that lies in the window read in its place (windows.inside_starts)."""
    crops = []
    for k, j, _, ok in items:
        if ok:
            (y, x), (ry, rx) = (int(starts[0][k]), int(starts[1][j])), (int(read_starts[0][k]), int(read_starts[1][j]))
            part = (max(0, -y), min(tile, height - y), max(0, -x), min(tile, width - x))
            read = (max(0, -ry), min(tile, height - ry), max(0, -rx), min(tile, width - rx))
            crops.append(None if part == (0, tile, 0, tile) else Crop(part, (y - ry, x - rx), read))
    return crops


class _Readers:
    """Batches of windows read ahead by `threads` threads, each with a reader of its own, while the network
    runs on the batch before (GDAL releases the GIL)."""

    def __init__(self, reader, threads: int, ys, xs, tile: int, watch: Stopwatch):
        self.reader, self.threads, self.ys, self.xs, self.tile, self.watch = reader, threads, ys, xs, tile, watch
        self.local, self.clones, self.lock = threading.local(), [], threading.Lock()

    def _own(self):
        if self.threads == 1:
            return self.reader
        if not hasattr(self.local, "reader"):
            self.local.reader = self.reader.clone()
            with self.lock:
                self.clones.append(self.local.reader)
        return self.local.reader

    def _load(self, batch) -> list:
        with self.watch.stage("read"):
            r = self._own()
            return [(k, j, *r.read(int(self.ys[k]), int(self.xs[j]), self.tile)) for k, j in batch]

    def ahead(self, batches: list, cancel):
        """Each batch's (row, col, window, any valid) items, in order; Cancelled once cancel() says so."""
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            pending = deque(pool.submit(self._load, b) for b in batches[:self.threads])
            for i in range(len(batches)):
                items = pending.popleft().result()
                if i + self.threads < len(batches):
                    pending.append(pool.submit(self._load, batches[i + self.threads]))
                if cancel():
                    for f in pending:
                        f.cancel()
                    raise Cancelled("Cancelled; no output was written.")
                yield items

    def close(self) -> None:
        for c in self.clones:
            c.close()


def _only_rows(put, done_until, row0: int, row_end: int):
    def put_rows(r, c, scores):
        a, b = max(r, row0), min(r + scores.shape[-2], row_end)
        if b > a:
            put(a, c, scores[:, a - r:b - r])

    def done_rows(r):
        if r > row0:
            done_until(min(r, row_end))

    return put_rows, done_rows


class ArrayReader:
    """The WindowReader interface over an in-memory (bands, H, W) array, for validation during training."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.height, self.width = image.shape[1:]

    def read(self, y: int, x: int, tile: int):
        iy = reflect_index(np.arange(y, y + tile), self.height)
        ix = reflect_index(np.arange(x, x + tile), self.width)
        return self.image[:, iy][:, :, ix], True

    def clone(self):
        return self  # reading a numpy array is safe from several threads

    def close(self):
        pass


class _ArrayTarget:
    """The RowBuffer interface writing straight into a whole (bands, H, W) array: nothing to hold back."""

    def __init__(self, out: np.ndarray):
        self.out, self.height = out, out.shape[1]

    def put(self, row: int, col: int, values) -> None:
        v = values[0]
        self.out[:, row:row + v.shape[1], col:col + v.shape[2]] = v

    def done_until(self, row_end: int) -> None:
        pass


def predict_array(predictor, image: np.ndarray, num_classes: int, tile: int, overlap: int,
                  gather: bool | None = None) -> np.ndarray:
    """Class indices (H, W) for an in-memory image, blended exactly as the engine blends rasters."""
    import torch

    h, w = image.shape[1:]
    out = np.zeros((1, h, w), np.uint8)
    put_values, done_until = host_sink(_ArrayTarget(out), predictor.device, w, tile, [(1, torch.uint8)], gather)

    def put(r, c, scores):
        put_values(r, c, [scores.argmax(dim=0, keepdim=True).to(dtype=torch.uint8)])

    slide(ArrayReader(image), predictor, num_classes, tile, overlap, (put, done_until))
    return out[0]


def predict_probabilities(predictor, image: np.ndarray, num_classes: int, tile: int, overlap: int,
                          gather: bool | None = None) -> np.ndarray:
    """Blended class probabilities (classes, H, W), float32 summing to 1 per pixel, for an in-memory image:
    what the engine's labels are the argmax of."""
    import torch

    h, w = image.shape[1:]
    out = np.zeros((num_classes, h, w), np.float32)
    put_values, done_until = host_sink(_ArrayTarget(out), predictor.device, w, tile,
                                       [(num_classes, torch.float32)], gather)
    slide(ArrayReader(image), predictor, num_classes, tile, overlap,
          (lambda r, c, scores: put_values(r, c, [scores.float()]), done_until))
    out /= np.maximum(out.sum(axis=0, keepdims=True), 1e-12)
    return out
