"""Collect finished rows and write them to rasters in whole block rows.

Writing each block of a compressed GeoTIFF exactly once keeps files compact and
avoids GDAL re-reading half-written blocks; the buffer holds at most one block row
plus one strip of rows, for the full width. A buffer may cover only rows start..height
of the image (a part run by another process): then start is a multiple of the block.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# write(row0, [array of shape (bands, rows, width) for each layer])
Writer = Callable[[int, list], None]


class RowBuffer:
    def __init__(self, width: int, height: int, block: int, max_rows: int,
                 layers: Sequence[tuple[int, object, object]], write: Writer, start: int = 0):
        """layers: (bands, dtype, fill) of each array kept, e.g. labels and confidence;
        rows start..height are buffered and written, `height` being the row they end before."""
        if start % block:
            raise ValueError("a buffer's first row must start a block")
        self.height, self.block = height, block
        self.bufs = [np.full((b, block + max_rows, width), fill, dtype) for b, dtype, fill in layers]
        self.fills = [fill for _, _, fill in layers]
        self.row0 = start  # image row held at index 0 of the buffers
        self.write = write

    def put(self, row: int, col: int, values: Sequence[np.ndarray]) -> None:
        r = row - self.row0
        for buf, v in zip(self.bufs, values):
            rows = v.shape[-2]
            if r < 0 or r + rows > buf.shape[1]:
                raise RuntimeError("rows put outside the buffered range")
            buf[:, r:r + rows, col:col + v.shape[-1]] = v

    def done_until(self, row_end: int) -> None:
        """Rows before row_end are final: write every complete block row among them."""
        upto = self.height if row_end >= self.height else (row_end // self.block) * self.block
        n = upto - self.row0
        if n <= 0:
            return
        self.write(self.row0, [buf[:, :n] for buf in self.bufs])
        keep = max(0, row_end - upto)
        for buf, fill in zip(self.bufs, self.fills):
            if keep:
                buf[:, :keep] = buf[:, n:n + keep]
            buf[:, keep:] = fill
        self.row0 = upto


class BackgroundWriter:
    """A Writer that writes in a thread of its own, at most `depth` block rows behind.

    On a GPU the thread that launches the network's kernels also writes the outputs; compressing
    GeoTIFF blocks (about 40 MP/s of labels per core here) held it up while the GPU waited. The
    rows are copied, as the buffer that handed them over moves on; an error in the thread is
    raised at the next call or by close().
    """

    def __init__(self, write: Writer, depth: int = 2):
        import queue
        import threading

        self._write, self._error = write, None
        self._queue = queue.Queue(maxsize=depth)
        self._thread = threading.Thread(target=self._loop, name="landcover-writer", daemon=True)
        self._thread.start()

    def __call__(self, row0: int, arrays) -> None:
        self._raise()
        self._queue.put((row0, [a.copy() for a in arrays]))

    def _loop(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:  # after an error, rows are drained unwritten so that put never blocks
                try:
                    self._write(*item)
                except BaseException as exc:  # noqa: BLE001 (raised in the caller's thread)
                    self._error = exc

    def close(self, raise_error: bool = True) -> None:
        """Wait for every row put to be written; raise_error=False when the caller is already failing."""
        self._queue.put(None)
        self._thread.join()
        if raise_error:
            self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error
