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


def test_windows_crossing_an_edge_are_read_inside_the_raster_where_alignment_allows():
    from landcover_plugin.core.inference.windows import inside_starts

    starts = window_starts(1000, 512, 96)  # -72, 344, 760
    assert list(inside_starts(starts, 1000, 512, 2)) == [0, 344, 488]
    assert list(inside_starts(starts, 1001, 512, 2)) == [0, 344, 760]  # 489 would be odd: it stays, cut
    assert list(inside_starts(starts, 1000, 512)) == [0, 344, 488]
    assert list(inside_starts(window_starts(300, 512, 96), 300, 512, 2)) == [-72]  # shorter than a tile


def test_nodata_of_integer_rasters_is_read_from_the_values_as_gdal_masks_it(tmp_path):
    import rasterio
    from rasterio.transform import from_origin

    from landcover_plugin.core.io.reader import Region, WindowReader

    data = np.random.default_rng(0).integers(1, 5000, (3, 40, 50)).astype(np.uint16)
    data[1, 5:9, 7:20] = 0  # nodata in one band makes the pixel nodata
    data[:, 30:, 40:] = 0
    path = tmp_path / "n.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=3, dtype="uint16", nodata=0,
                       crs="EPSG:32633", transform=from_origin(0, 0, 10, 10)) as ds:
        ds.write(data)
    with rasterio.open(path) as ds:
        reader = WindowReader(ds, [1, 2, 3], Region(0, 0, 50, 40), 1.0, np.full(3, 7.0))
        assert reader._nodata is not None
        fast = [reader.read(y, x, 32) for y, x in ((-8, -8), (20, 30), (4, 4))]
        reader._nodata = None  # GDAL's masks
        for (y, x), (window, ok) in zip(((-8, -8), (20, 30), (4, 4)), fast):
            masked, masked_ok = reader.read(y, x, 32)
            assert ok == masked_ok and np.array_equal(window, masked)
        assert (fast[2][0][:, 1:5, 3:16] == 7).all() and (fast[2][0][:, 0, :] != 7).all()
