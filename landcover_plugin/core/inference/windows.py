"""Window arithmetic for sliding-window inference: pure numpy, no I/O.

The image is treated as a canvas padded by `pad(overlap)` pixels of mirrored image
on every side. Windows sit on a regular grid over that canvas, so every window has
the same size and every overlap between neighbours is exactly `overlap` pixels.
Each window is weighted by the same separable taper: zero in a thin margin at its
edges (where a network sees its zero padding), a sin^2 ramp across the rest of the
overlap, one inside. Because the ramps of two neighbours are complementary, the
weights of all windows covering an image pixel sum to exactly one; so blended
class scores stay probabilities and the result does not depend on where window
borders fall, as long as the network's receptive field is smaller than the margin.
"""
from __future__ import annotations

import math

import numpy as np


def margin(overlap: int) -> int:
    """Pixels at each window edge that get zero weight."""
    return overlap // 4


def pad(overlap: int) -> int:
    """Mirrored pixels around the image, so that image pixels are never in a first or last ramp."""
    return overlap - margin(overlap)


def window_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Canvas start of every window along one axis (the first is negative when overlap > 0)."""
    if not 0 <= overlap < tile / 2:
        raise ValueError(f"overlap ({overlap}) must be at least 0 and less than half the tile ({tile})")
    if length < 1:
        raise ValueError("length must be positive")
    p = pad(overlap)
    stride = tile - overlap
    n = max(1, math.ceil((length + 2 * p - tile) / stride) + 1)
    return -p + stride * np.arange(n, dtype=np.int64)


def taper(tile: int, overlap: int) -> np.ndarray:
    """1-D weight of a window: 0 in the margin, sin^2 ramp, 1 in the middle; float64."""
    d = np.minimum(np.arange(tile) + 0.5, tile - np.arange(tile) - 0.5)  # distance of pixel centre to edge
    m = margin(overlap)
    ramp = overlap - 2 * m
    if ramp <= 0:
        return np.ones(tile)
    t = np.clip((d - m) / ramp, 0.0, 1.0)
    return np.sin(0.5 * np.pi * t) ** 2


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """2-D weight shared by every window (outer product of the 1-D taper), float32."""
    w = taper(tile, overlap)
    return np.outer(w, w).astype(np.float32)


def window_grid(height: int, width: int, tile: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column starts of the window grid covering a height x width image."""
    return window_starts(height, tile, overlap), window_starts(width, tile, overlap)


def strips_for_rows(ys: np.ndarray, row0: int, row_end: int) -> tuple[int, int]:
    """(first, end) window rows whose blending finishes image rows row0..row_end exactly as a run
    over the whole image does. Strip k finishes rows ys[k]..ys[k+1] from its own windows and the
    bottom overlap of strip k-1, so one strip above the first is run as well."""
    if not 0 <= row0 < row_end:
        raise ValueError("rows must be a non-empty range from 0")
    first = int(np.searchsorted(ys, row0, side="right")) - 1
    last = int(np.searchsorted(ys, row_end - 1, side="right")) - 1
    return max(0, first - 1), last + 1


def inside_starts(starts: np.ndarray, length: int, tile: int, alignment: int = 1) -> np.ndarray:
    """Where the windows at `starts` are read for a network that treats the raster's edges as its own (a
    model's edges "network"): a window crossing an edge moves inside the raster, so that it runs at the full
    size (compiled, in a batch) and not cut to its part inside. Its scores there are the same: its edge is
    then the raster's, and its other side lies further inside. Windows stay where the raster is shorter than
    a tile, or where moving would break the model's alignment."""
    if tile > length:
        return starts.copy()
    moved = np.clip(starts, 0, length - tile)
    return np.where((moved - starts) % alignment == 0, moved, starts)
