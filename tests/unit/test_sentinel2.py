"""Sentinel-2 products to a 10 m stack: finding the bands of a .SAFE folder, its .zip, its MTD or a folder of
band files, the baseline offset, the product's cloud mask, the 20 m bands on the 10 m grid."""
import os
import shutil
import zipfile

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from landcover_plugin.core.errors import Cancelled, InputError
from landcover_plugin.core.io.sentinel2 import open_product
from landcover_plugin.core.io.sentinel2_stack import prepare

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "sentinel2")
L1C_CROP = os.path.join(DATA, "ssl4eo_l1c_crop")
N0509 = os.path.join(DATA, "products", "fake_l1c_processing_baseline_5_09",
                     "S2B_MSIL1C_20230823T095559_N0509_R122_T34UCF_20230823T120234.SAFE")
L2A = os.path.join(DATA, "products", "fake_l2a_MSIL2A",
                   "S2A_MSIL2A_20180818T094031_N0208_R036_T34VFJ_20180818T120345.SAFE")
L2A_60M_ONLY = os.path.join(DATA, "products", "fake_l2a", "S2A_USER_PRD_MSIL2A.SAFE")
DW_BANDS = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12")


def _bilinear_on_centres(path, dst_transform, shape):
    """The band at `path` sampled bilinearly at the pixel centres of another grid, from the georeferencing
    alone (an independent statement of what the warp must do), with edge pixels clamped."""
    with rasterio.open(path) as src:
        a, inverse = src.read(1).astype(np.float64), ~src.transform
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    x, y = dst_transform * (cols, rows)
    c, r = inverse * (x, y)
    c, r = np.clip(c - 0.5, 0, a.shape[1] - 1), np.clip(r - 0.5, 0, a.shape[0] - 1)
    c0, r0 = np.minimum(c.astype(int), a.shape[1] - 2), np.minimum(r.astype(int), a.shape[0] - 2)
    fc, fr = c - c0, r - r0
    top = a[r0, c0] * (1 - fc) + a[r0, c0 + 1] * fc
    bottom = a[r0 + 1, c0] * (1 - fc) + a[r0 + 1, c0 + 1] * fc
    return top * (1 - fr) + bottom * fr


def test_a_folder_of_band_files_stacks_the_model_bands_on_the_10m_grid(tmp_path):
    product = open_product(L1C_CROP)
    assert (product.level, product.baseline) == ("L1C", "02.09")  # from the Earth Engine metadata.json
    assert product.offsets == {} and product.cloud is None
    out = tmp_path / "stack.tif"
    result = prepare(product, DW_BANDS, str(out))
    with rasterio.open(out) as ds, rasterio.open(os.path.join(L1C_CROP, "B2.tif")) as b2:
        stack = ds.read().astype(np.float64)
        assert ds.descriptions == DW_BANDS and ds.nodata == 0 and ds.dtypes[0] == "uint16"
        assert ds.transform == b2.transform and ds.crs == b2.crs and ds.shape == b2.shape
        assert ds.tags()["S2_LEVEL"] == "L1C"
        transform, shape = ds.transform, ds.shape
    for band in ("B2", "B3", "B4", "B8"):
        with rasterio.open(os.path.join(L1C_CROP, f"{band}.tif")) as src:
            assert np.array_equal(stack[DW_BANDS.index(band), :-1, :-1], src.read(1)[:-1, :-1]), band  # not B8A
    # SSL4EO's 20 m grids lie half a 10 m pixel off its 10 m grids: the warp follows the georeferencing
    expected = _bilinear_on_centres(os.path.join(L1C_CROP, "B11.tif"), transform, shape)
    inner = (slice(1, -1), slice(1, -1))
    assert np.abs(stack[7][inner] - expected[inner]).max() <= 1.0
    # the last row and column lie beyond the 20 m bands' last pixel centres: nodata, not invented
    assert (stack[:, :-1, :-1] > 0).all() and result.nodata_fraction == pytest.approx(191 / 96 ** 2)


def test_safe_product_zip_and_mtd_give_its_bands_offset_and_cloud_mask(tmp_path):
    folder = open_product(N0509)
    with zipfile.ZipFile(tmp_path / "product.zip", "w") as z:
        for root, _, files in os.walk(N0509):
            for f in files:
                full = os.path.join(root, f)
                z.write(full, os.path.relpath(full, os.path.dirname(N0509)))
    for product in (folder, open_product(str(tmp_path / "product.zip")),
                    open_product(os.path.join(N0509, "MTD_MSIL1C.xml"))):
        assert (product.level, product.baseline) == ("L1C", "05.09")
        assert set(DW_BANDS) <= set(product.bands) and "B8A" in product.bands
        assert product.offsets["B2"] == -1000 and len(product.offsets) == 13  # RADIO_ADD_OFFSET, band_id 0-12
        assert product.cloud is not None and product.cloud.kind == "classi"
    # every pixel of GDAL's fixture is 0 = nodata: the offset must leave it nodata, not make it -1000
    left, top = folder_grid_origin(folder)
    out = tmp_path / "crop.tif"
    result = prepare(folder, DW_BANDS, str(out), extent=(left + 1005, top - 905, left + 2000, top - 15))
    with rasterio.open(out) as ds:
        assert ds.shape == (91, 100) and ds.transform.c == left + 1000  # snapped out, on an even column
        assert not ds.read().any()
    assert result.nodata_fraction == 1.0 and "-1000" in result.notes[0]


def folder_grid_origin(product):
    with rasterio.open(product.bands["B2"].path) as ds:
        return ds.transform.c, ds.transform.f


def test_l2a_products_are_warned_about_and_a_missing_band_is_named(tmp_path):
    product = open_product(L2A)
    assert product.level == "L2A" and product.cloud.kind == "scl"
    left, top = folder_grid_origin(product)
    result = prepare(product, DW_BANDS, str(tmp_path / "l2a.tif"), extent=(left, top - 40, left + 40, top))
    assert any("Level-1C" in w for w in result.warnings)
    with pytest.raises(InputError, match=r"lacks the band\(s\) B8 "):
        prepare(open_product(L2A_60M_ONLY), DW_BANDS, str(tmp_path / "x.tif"))
    assert not os.path.exists(tmp_path / "x.tif")


def _band_folder(folder, name, values, cloud=None):
    """A folder of single-band files as a user unzips them: 10 m bands of `values`, 20 m bands of 2500, and
    a cloud mask at 10 m."""
    folder = folder / name
    folder.mkdir()
    for band in DW_BANDS:
        coarse = band in ("B5", "B6", "B7", "B11", "B12")
        data = np.full((values.shape[0] // 2, values.shape[1] // 2), 2500, np.uint16) if coarse else values
        res = 20 if coarse else 10
        with rasterio.open(folder / f"T33NZA_20220706T085611_{band.replace('B', 'B0') if len(band) == 2 else band}"
                           f"_{res}m.tif", "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                           dtype="uint16", crs="EPSG:32633", transform=from_origin(500000, 100000, res, res)) as ds:
            ds.write(data, 1)
    if cloud is not None:
        with rasterio.open(folder / "cloud_mask.tif", "w", driver="GTiff", width=cloud.shape[1],
                           height=cloud.shape[0], count=1, dtype="uint8", crs="EPSG:32633",
                           transform=from_origin(500000, 100000, 10, 10)) as ds:
            ds.write(cloud, 1)
    return str(folder)


def test_baseline_offset_by_convention_and_clouds_become_nodata(tmp_path):
    values = np.full((40, 40), 2500, np.uint16)
    values[0, :4] = (0, 500, 1000, 1001)  # nodata, darker than the offset, on it, just above
    cloud = np.zeros((40, 40), np.uint8)
    cloud[20:30, 20:30] = 1
    name = "S2A_MSIL2A_20220706T085611_N0400_R007_T33NZA_20220706T153419"
    product = open_product(_band_folder(tmp_path, name, values, cloud))
    assert product.baseline == "04.00" and product.offsets["B8"] == -1000 and product.cloud.kind == "binary"
    result = prepare(product, DW_BANDS, str(tmp_path / "out.tif"))
    with rasterio.open(tmp_path / "out.tif") as ds:
        out = ds.read()
    assert out[6, 0, :4].tolist() == [0, 1, 1, 1]  # DN 0 stays nodata; the offset never makes one
    assert (out[:, 20:30, 20:30] == 0).all() and (out[:, 30:, 30:] == 1500).all()
    assert result.cloud_fraction == pytest.approx(100 / (1600 - 1))
    # OFFSET given by the user wins over the convention; MASK_CLOUDS off keeps the cloudy pixels
    prepare(open_product(product_path := _band_folder(tmp_path, "plain", values, cloud), offset=0), DW_BANDS,
            str(tmp_path / "kept.tif"), mask_clouds=False)
    with rasterio.open(tmp_path / "kept.tif") as ds:
        assert (ds.read(1)[20:30, 20:30] == 2500).all()
    assert os.path.isdir(product_path)


def test_what_is_not_a_product_gets_an_error_that_says_what_to_give(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "broken.zip").write_text("not a zip")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "x")
    cases = (("empty", "no MTD XML and no band files"), ("notes.txt", "not a Sentinel-2 product"),
             ("broken.zip", "not a readable .zip"), ("other.zip", "holds no Sentinel-2 product"),
             ("gone", "does not exist"))
    for name, message in cases:
        path = tmp_path / name
        with pytest.raises(InputError, match=message):
            open_product(str(path))


def test_a_cancelled_prepare_leaves_no_file(tmp_path):
    shutil.copytree(L1C_CROP, tmp_path / "crop")
    with pytest.raises(Cancelled):
        prepare(open_product(str(tmp_path / "crop")), DW_BANDS, str(tmp_path / "out.tif"), cancel=lambda: True)
    assert os.listdir(tmp_path) == ["crop"]


def test_segment_warns_when_a_l1c_model_is_given_l2a(tmp_path):
    from landcover_plugin.core.inference.plan import SegmentOptions, plan
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import read_spec

    spec = read_spec(resolve_model_path("dynamic_world"))
    assert spec.level == "L1C"
    product = open_product(L2A)
    left, top = folder_grid_origin(product)
    prepare(product, DW_BANDS, str(tmp_path / "l2a.tif"), extent=(left, top - 40, left + 40, top))
    prepare(open_product(L1C_CROP), DW_BANDS, str(tmp_path / "l1c.tif"))
    with rasterio.open(tmp_path / "l2a.tif") as l2a, rasterio.open(tmp_path / "l1c.tif") as l1c:
        assert any("Sentinel-2 L2A" in w for w in plan(l2a, spec, SegmentOptions()).warnings)
        assert not any("L2A" in w for w in plan(l1c, spec, SegmentOptions()).warnings)
    unnamed = tmp_path / "stack12.tif"  # sen2cor's 12 bands without names: read as L2A by the standard order
    with rasterio.open(unnamed, "w", driver="GTiff", width=8, height=8, count=12, dtype="uint16", crs="EPSG:32633",
                       transform=from_origin(500000, 100000, 10, 10)) as ds:
        ds.write(np.full((12, 8, 8), 1000, np.uint16))
    with rasterio.open(unnamed) as ds:
        assert any("Sentinel-2 L2A" in w for w in plan(ds, spec, SegmentOptions()).warnings)


def test_bench_dynamic_world_runs_ours_alone_on_a_band_folder(tmp_path):
    """scripts/bench.py dynamic_world without TensorFlow: it prepares the folder, runs the engine --repeat times
    and reports every run (the first may include compiling) with the stages; the speed is measured elsewhere."""
    import json
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(HERE))
    done = subprocess.run([sys.executable, os.path.join(root, "scripts", "bench.py"), "dynamic_world", L1C_CROP,
                           "--saved-model", str(tmp_path), "--no-tensorflow", "--repeat", "2", "--size", "200",
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": root})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["megapixels"] == pytest.approx(0.04) and len(result["ours_runs_s"]) == 2
    assert result["ours_s"] == min(result["ours_runs_s"]) and result["stages"]["infer"] > 0
    assert "ours, every run:" in done.stdout
