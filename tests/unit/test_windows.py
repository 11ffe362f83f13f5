import numpy as np
import pytest

from landcover_plugin.core.inference.windows import blend_weights, pad, taper, window_grid, window_starts
from landcover_plugin.core.io.reader import reflect_index

CASES = [(1, 64, 0), (50, 64, 16), (64, 64, 16), (65, 64, 16), (1000, 256, 32), (777, 128, 63), (513, 512, 64),
         (3000, 512, 100), (10, 32, 1)]


@pytest.mark.parametrize("length,tile,overlap", CASES)
def test_windows_cover_every_pixel(length, tile, overlap):
    starts = window_starts(length, tile, overlap)
    covered = np.zeros(length, int)
    for s in starts:
        covered[max(0, s):max(0, min(length, s + tile))] += 1
    assert covered.min() >= 1
    assert np.all(np.diff(starts) == tile - overlap)
    assert starts[0] == -pad(overlap)
    assert starts[-1] + tile >= length + pad(overlap)


@pytest.mark.parametrize("length,tile,overlap", CASES)
def test_weights_sum_to_one_on_every_image_pixel(length, tile, overlap):
    w = taper(tile, overlap)
    total = np.zeros(length)
    for s in window_starts(length, tile, overlap):
        lo, hi = max(0, s), min(length, s + tile)
        if hi > lo:
            total[lo:hi] += w[lo - s:hi - s]
    np.testing.assert_allclose(total, 1.0, atol=1e-12)


def test_2d_weights_sum_to_one():
    tile, overlap, h, w = 64, 16, 150, 97
    ys, xs = window_grid(h, w, tile, overlap)
    wt = blend_weights(tile, overlap).astype(np.float64)
    total = np.zeros((h, w))
    for y in ys:
        for x in xs:
            r0, r1, c0, c1 = max(0, y), min(h, y + tile), max(0, x), min(w, x + tile)
            if r1 > r0 and c1 > c0:
                total[r0:r1, c0:c1] += wt[r0 - y:r1 - y, c0 - x:c1 - x]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_taper_is_zero_in_margin_and_smooth():
    w = taper(128, 32)
    assert np.all(w[:8] == 0) and np.all(w[-8:] == 0)
    assert np.all(w[24:104] == 1)
    assert np.all(np.diff(w[:64]) >= 0)


@pytest.mark.parametrize("n", [1, 2, 5, 17])
def test_reflect_index_matches_numpy_reflect(n):
    padw = 3 * n + 4
    if n == 1:
        expected = np.zeros(n + 2 * padw, int)
    else:
        expected = np.pad(np.arange(n), padw, mode="reflect")
    np.testing.assert_array_equal(reflect_index(np.arange(-padw, n + padw), n), expected)


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError):
        window_starts(100, 64, 32)
    with pytest.raises(ValueError):
        window_starts(100, 64, -1)
