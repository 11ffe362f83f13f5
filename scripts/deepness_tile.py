"""The network as Deepness runs it: one tile at a time, with the raster's edges treated as our engine treats them.

Our engine mirrors the raster at its edges (core/io/reader.reflect_index); Deepness reads
zeros beyond the raster's top and right edges and feeds each tile to the network alone,
whose convolutions then pad with zeros at every tile border. Both make labels near the
edges differ from ours, so the exported network does what our engine's canvas does,
inside the tile: rows above and columns right of the tile's last pixels that are 0 in
every band are filled with the image mirrored, then the tile is mirrored by `pad` px
on every side and the prediction cropped back.
"""
from __future__ import annotations

import math

import torch


def reflect(q: torch.Tensor, start: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """numpy 'reflect' of positions q onto the n positions from start (any distance, any n >= 1)."""
    period = torch.clamp(2 * (n - 1), min=1)
    t = torch.remainder(q - start, period)
    return start + torch.where(t >= n, period - t, t)


def edge_pad(overlap: int, multiple: int) -> int:
    """Mirrored pixels around a tile: our engine's canvas pad, kept on the network's grid."""
    from landcover_plugin.core.inference.windows import pad

    return math.ceil(pad(overlap) / multiple) * multiple


class DeepnessTile(torch.nn.Module):
    """Softmax of `net` on a standardised tile, with Deepness's zero fill and the tile edges mirrored.
    Deepness's input (x/255 - m/255) / (s/255) equals our (x - m) / s, so the network takes it as it is."""

    def __init__(self, net, spec, tile: int, pad: int):
        super().__init__()
        self.net, self.tile, self.pad = net, tile, pad
        mean, std = torch.tensor(spec.mean), torch.tensor(spec.std)
        self.register_buffer("zero", (-mean / std).view(1, -1, 1, 1))  # a raw 0 after standardising
        self.register_buffer("tolerance", (0.5 / std).view(1, -1, 1, 1))  # half a raw step

    def fill_beyond_raster(self, x):
        t = self.tile
        n, c = x.shape[0], x.shape[1]
        empty = (torch.abs(x - self.zero) < self.tolerance).all(dim=1)  # (N, T, T)
        pos = torch.arange(t).view(1, t)
        width = torch.where(~empty.all(dim=1), pos + 1, 0).amax(dim=1, keepdim=True)  # to the last column with data
        top = torch.where(~empty.all(dim=2), pos, t).amin(dim=1, keepdim=True)  # first row with data
        width = torch.where(width == 0, t, width)  # a tile with no data at all stays as it is
        top = torch.where(top == t, 0, top)
        cols = torch.where(pos < width, pos, reflect(pos, torch.zeros_like(width), width))
        rows = torch.where(pos >= top, pos, reflect(pos, top, t - top))
        x = x.gather(3, cols.view(n, 1, 1, t).expand(n, c, t, t))
        return x.gather(2, rows.view(n, 1, t, 1).expand(n, c, t, t))

    def forward(self, x):
        x = self.fill_beyond_raster(x)
        p = self.pad
        if p:
            x = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
        y = torch.softmax(self.net(x), dim=1)
        return y[:, :, p:p + self.tile, p:p + self.tile] if p else y
