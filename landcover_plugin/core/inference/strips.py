"""Bring finished values from the network's device to a RowBuffer on the host.

On the CPU each block goes straight into the buffer. On a GPU, copying every block
back as it is blended would make the host wait for the GPU once per window, and
the GPU wait for the host in between (it was busy under 30% of the time on an H200).
Instead a strip's blocks are gathered on the device, the whole strip is copied to
pinned host memory without waiting, and it is handed to the buffer only when the
next strip is finished: one wait per strip, by which time the copy is long done.
"""
from __future__ import annotations

from typing import Callable, Sequence

from ..model.device import torch_or_error
from .rowbuffer import RowBuffer

# put(row, col, [tensor (bands, rows, cols) on the device for each layer])
Put = Callable[[int, int, Sequence[object]], None]


class DeviceStrips:
    """Per layer: one strip-sized buffer on the device and two in (pinned) host memory."""

    def __init__(self, buf: RowBuffer, device, width: int, tile: int, layers: Sequence[tuple[int, object]]):
        torch = torch_or_error()
        self.torch, self.buf, self.device = torch, buf, device
        pinned = device.type == "cuda"
        # rows first, so that the first rows of a strip are one contiguous block to copy
        self.on_device = [torch.empty((tile, b, width), dtype=dt, device=device) for b, dt in layers]
        self.host = [[torch.empty((tile, b, width), dtype=dt, pin_memory=pinned) for b, dt in layers]
                     for _ in range(2)]
        self.slot = 0
        self.row0 = None  # first image row of the strip being gathered
        self.pending = None  # (host slot, first row, end row, copy-finished event or None)

    def put(self, row: int, col: int, values) -> None:
        if self.row0 is None:
            self.row0 = row
        r = row - self.row0
        if r < 0:
            raise RuntimeError("a block arrived above the strip being gathered")
        for dst, v in zip(self.on_device, values):
            dst[r:r + v.shape[-2], :, col:col + v.shape[-1]] = v.transpose(0, 1)

    def done_until(self, row_end: int) -> None:
        if self.row0 is not None:
            rows = row_end - self.row0
            host = self.host[self.slot]
            # Stream order makes the copy see this strip's blocks, and the next strip's
            # writes to the device buffer wait for the copy: no explicit synchronisation.
            for h, d in zip(host, self.on_device):
                h[:rows].copy_(d[:rows], non_blocking=True)
            event = None
            if self.device.type == "cuda":
                event = self.torch.cuda.Event()
                event.record()
            self._hand_on()
            self.pending = (self.slot, self.row0, row_end, event)
            self.slot = 1 - self.slot
            self.row0 = None
        if row_end >= self.buf.height:
            self._hand_on()

    def _hand_on(self) -> None:
        if self.pending is None:
            return
        slot, row0, row_end, event = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        self.buf.put(row0, 0, [h[:row_end - row0].numpy().transpose(1, 0, 2) for h in self.host[slot]])
        self.buf.done_until(row_end)


def host_sink(buf: RowBuffer, device, width: int, tile: int, layers: Sequence[tuple[int, object]],
              gather: bool | None = None) -> tuple[Put, Callable[[int], None]]:
    """(put, done_until) feeding `buf` from tensors on `device`.

    layers: (bands, torch dtype) of each value put, matching the buffer's layers.
    gather: strips gathered on the device (default: on GPUs only; the CPU path avoids
    the extra strip of memory, which would count against flat memory use).
    """
    if gather is None:
        gather = device.type == "cuda"
    if gather:
        strips = DeviceStrips(buf, device, width, tile, layers)
        return strips.put, strips.done_until

    def put(row, col, values):
        buf.put(row, col, [v.cpu().numpy() for v in values])

    return put, buf.done_until
