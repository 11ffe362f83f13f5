import os

import numpy as np
import pytest
import rasterio
import torch
from conftest import FIXTURE, cuda, fixture_pixels, make_model, needs_gdal, write_raster
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from landcover_plugin.core.errors import Cancelled, InputError
from landcover_plugin.core.io.outputs import CONFIDENCE_NODATA
from landcover_plugin.core.segment import SegmentOptions, segment

UTM = CRS.from_epsg(32640)
WGS84 = CRS.from_epsg(4326)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def utm_raster(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "utm.tif"
    return write_raster(path, fixture_pixels()[:, :300, :260], crs=UTM,
                        transform=from_origin(300000, 2780000, 0.5, 0.5))


def test_outputs_share_the_input_grid(tmp_path, utm_raster, model_file):
    res = segment(utm_raster, str(tmp_path / "c.tif"), model_file, confidence_path=str(tmp_path / "p.tif"),
                  options=SegmentOptions(device="cpu"))
    with rasterio.open(utm_raster) as src, rasterio.open(res.class_path) as c, rasterio.open(res.confidence_path) as p:
        for ds in (c, p):
            assert (ds.width, ds.height) == (src.width, src.height)
            assert ds.crs == src.crs and ds.transform == src.transform
        assert c.dtypes[0] == "uint8" and c.nodata == 255
        assert c.profile["tiled"] and c.compression.value == "DEFLATE"
        cmap = c.colormap(1)
        assert cmap[1][:3] == (0xd7, 0x30, 0x1f)
        labels, conf = c.read(1), p.read(1)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    assert len(np.unique(labels)) >= 2, "a calibrated random model varies across the image"
    assert conf.min() >= 0.2 - 1e-6 and conf.max() <= 1 + 1e-6
    gdal = pytest.importorskip("osgeo.gdal")

    ds = gdal.Open(res.class_path)
    band = ds.GetRasterBand(1)
    band.GetMetadata()  # GDAL's GeoTIFF driver loads the .aux.xml lazily, not on GetCategoryNames
    assert band.GetCategoryNames()[:5] == ["background", "building", "woodland/vegetation", "water",
                                                          "road"]
    assert abs(sum(a.area for a in res.areas) - 300 * 260 * 0.25) < 1e-6
    assert res.device.startswith("cpu") and res.mp_per_s > 0


def test_labels_do_not_depend_on_tile_size(tmp_path):
    # depth 1 U-Net: receptive field ~10 px, smaller than the zero-weight margin (overlap // 4 = 16)
    net, spec = make_model(depth=1, base_width=4, tile=160, overlap=64)
    img = write_raster(tmp_path / "in.tif", fixture_pixels()[:, :300, :350])
    labels, confs = [], []
    for tile in (160, 256, 1024):  # strides stay even, as the network's pooling needs
        res = segment(img, str(tmp_path / f"c{tile}.tif"), (net, spec), confidence_path=str(tmp_path / f"p{tile}.tif"),
                      options=SegmentOptions(tile_size=tile, overlap=64, device="cpu", precision="fp32"))
        labels.append(_read(res.class_path))
        confs.append(_read(res.confidence_path))
    assert len(np.unique(labels[0])) >= 2
    for other, conf in zip(labels[1:], confs[1:]):
        np.testing.assert_array_equal(labels[0], other)
        np.testing.assert_allclose(confs[0], conf, atol=1e-4)


@needs_gdal
def test_alpha_band_masks_every_output(tmp_path, model_file):
    px = fixture_pixels()[:, :200, :200]
    alpha = np.full((1, 200, 200), 255, np.uint8)
    alpha[0, :, :80] = 0
    alpha[0, 150:, :] = 0
    img = write_raster(tmp_path / "rgba.tif", np.concatenate([px, alpha]), crs=UTM,
                       transform=from_origin(0, 0, 1, 1), alpha=True)
    res = segment(img, str(tmp_path / "c.tif"), model_file, confidence_path=str(tmp_path / "p.tif"),
                  vector_path=str(tmp_path / "v.gpkg"))
    labels, conf = _read(res.class_path), _read(res.confidence_path)
    masked = alpha[0] == 0
    assert np.all(labels[masked] == 255) and np.all(labels[~masked] < 5)
    assert np.all(conf[masked] == CONFIDENCE_NODATA) and np.all(conf[~masked] > 0)
    ogr = pytest.importorskip("osgeo.ogr")

    ds = ogr.Open(res.vector_path)
    layer = ds.GetLayer(0)
    assert sum(f.GetField("area") for f in layer) == pytest.approx((~masked).sum())
    ds = None


def test_nodata_value_is_respected(tmp_path, model_file):
    px = fixture_pixels()[:, :100, :150].copy()
    px[:, 10:30, 20:60] = 0
    img = write_raster(tmp_path / "nd.tif", px, nodata=0)
    labels = _read(segment(img, str(tmp_path / "c.tif"), model_file).class_path)
    # GDAL masks each band's own nodata pixels; a pixel is classified only where every band is valid
    np.testing.assert_array_equal(labels == 255, (px == 0).any(axis=0))
    assert np.all(labels[10:30, 20:60] == 255)


def test_fully_masked_windows_are_not_computed(tmp_path, monkeypatch):
    net, spec = make_model(tile=64, overlap=16)
    px = fixture_pixels()[:, :256, :256].copy()
    px[:, :, 128:] = 0
    img = write_raster(tmp_path / "half.tif", px, nodata=0)
    seen = []
    from landcover_plugin.core.model import predictor

    original = predictor.Predictor.__call__

    def counting(self, batch):
        seen.append(len(batch))
        return original(self, batch)

    monkeypatch.setattr(predictor.Predictor, "__call__", counting)
    segment(img, str(tmp_path / "c.tif"), (net, spec), options=SegmentOptions(batch_size=4))
    from landcover_plugin.core.inference.windows import window_grid

    ys, xs = window_grid(256, 256, 64, 16)
    assert sum(seen) < len(ys) * len(xs) * 0.75


def test_raster_without_crs_runs_with_a_warning(tmp_path, model_file):
    logs = []
    res = segment(FIXTURE, str(tmp_path / "c.tif"), model_file, log=logs.append,
                  options=SegmentOptions(extent=(0, 0, 200, 100)))
    assert any("no CRS" in w for w in res.warnings) and any("no CRS" in m for m in logs)
    assert _read(res.class_path).shape == (100, 200)
    assert res.areas[0].area == res.areas[0].pixels  # pixel units
    gdal = pytest.importorskip("osgeo.gdal")
    ds = gdal.Open(res.class_path)
    assert ds.GetGeoTransform(can_return_null=True) is None, "no invented georeferencing"
    ds = None


@needs_gdal
def _brightness_model(gsd):
    """A network whose classes are known: class 1 where band 1 is brighter than the model's mean, else 0
    (a 1x1 convolution), so a test can tell where the labels must lie."""
    from landcover_plugin.core.model.classes import DEFAULT_CLASSES
    from landcover_plugin.core.model.spec import ModelSpec

    net = torch.nn.Conv2d(3, len(DEFAULT_CLASSES), 1)
    with torch.no_grad():
        net.weight.zero_()
        net.bias.zero_()
        net.weight[1, 0] = 1.0
    spec = ModelSpec(classes=DEFAULT_CLASSES, bands=(1, 2, 3), mean=(110.0,) * 3, std=(50.0,) * 3, gsd=gsd,
                     tile_size=64, overlap=16)
    return net.eval(), spec


def test_geographic_raster_and_model_gsd_resample(tmp_path):
    # ~0.5 m pixels at 25 N expressed in degrees; the model says it works at 1 m: windows are halved, and the
    # classes brought back onto the raster's grid must lie where the bright rectangle is, to a pixel
    px = np.full((3, 240, 260), 100, np.uint8)
    px[0] = 20
    px[0, 60:141, 80:201] = 200
    deg = 0.5 / 111195.0
    img = write_raster(tmp_path / "geo.tif", px, crs=WGS84, transform=Affine(deg / 0.906, 0, 55.0, 0, -deg, 25.0))
    logs = []
    res = segment(img, str(tmp_path / "c.tif"), _brightness_model(gsd=1.0), confidence_path=str(tmp_path / "p.tif"),
                  vector_path=str(tmp_path / "v.gpkg"), log=logs.append, options=SegmentOptions(precision="fp32"))
    assert res.scale == pytest.approx(0.5, rel=0.02)
    assert any("resampled" in m for m in logs)
    with rasterio.open(res.class_path) as c, rasterio.open(img) as src:
        assert c.shape == src.shape and c.transform == src.transform and c.crs == src.crs
        labels = c.read(1)
    inside = np.zeros(labels.shape, bool)
    inside[60:141, 80:201] = True
    assert (labels[61:140, 81:200] == 1).all()  # the rectangle, but for its edge pixels
    near = np.zeros(labels.shape, bool)
    near[59:142, 79:202] = True
    assert (labels[~near] == 0).all()  # and nothing a pixel beyond it
    assert abs(int((labels == 1).sum()) - int(inside.sum())) < 2 * (81 + 121)
    total = sum(a.area for a in res.areas)
    assert total == pytest.approx(240 * 260 * 0.25, rel=0.02)  # square metres, not degrees
    # at the raster's own resolution the same network puts the rectangle in the same place exactly
    same = segment(img, str(tmp_path / "c2.tif"), _brightness_model(gsd=None), options=SegmentOptions(precision="fp32"))
    assert same.scale == 1.0
    np.testing.assert_array_equal(_read(same.class_path), inside.astype(np.uint8))


@needs_gdal
def test_raster_smaller_than_one_tile(tmp_path, model_file):
    img = write_raster(tmp_path / "tiny.tif", fixture_pixels()[:, :7, :13], crs=UTM,
                       transform=from_origin(0, 0, 1, 1))
    res = segment(img, str(tmp_path / "c.tif"), model_file, confidence_path=str(tmp_path / "p.tif"),
                  vector_path=str(tmp_path / "v.gpkg"))
    assert _read(res.class_path).shape == (7, 13)
    assert _read(res.class_path).max() < 5


def test_tall_narrow_raster_and_odd_sizes(tmp_path, model_file):
    px = np.concatenate([fixture_pixels()[:, :, :37]] * 3, axis=1)  # 2304 x 37
    img = write_raster(tmp_path / "tall.tif", px)
    labels = _read(segment(img, str(tmp_path / "c.tif"), model_file).class_path)
    assert labels.shape == (2304, 37) and labels.max() < 5


def test_extent_gives_the_subgrid(tmp_path, utm_raster, model_file):
    extent = (300000 + 10.2, 2780000 - 60.0, 300000 + 50.0, 2780000 - 20.3)
    res = segment(utm_raster, str(tmp_path / "c.tif"), model_file, options=SegmentOptions(extent=extent))
    with rasterio.open(res.class_path) as c:
        assert c.transform.c == pytest.approx(300010.0) and c.transform.f == pytest.approx(2780000 - 20.0)
        assert c.shape == (80, 80)
    with pytest.raises(InputError, match="does not overlap"):
        segment(utm_raster, str(tmp_path / "x.tif"), model_file, options=SegmentOptions(extent=(0, 0, 10, 10)))
    assert not os.path.exists(tmp_path / "x.tif")


@pytest.mark.parametrize("bands,message", [((1, 2), "expects 3 input bands"), ((1, 2, 9), "Band 9 does not exist")])
def test_bands_that_do_not_fit_the_model(tmp_path, utm_raster, model_file, bands, message):
    with pytest.raises(InputError, match=message):
        segment(utm_raster, str(tmp_path / "c.tif"), model_file, options=SegmentOptions(bands=bands))
    assert os.listdir(tmp_path) == []


def test_band_order_is_honoured(tmp_path, utm_raster, model_file):
    a = _read(segment(utm_raster, str(tmp_path / "a.tif"), model_file).class_path)
    b = _read(segment(utm_raster, str(tmp_path / "b.tif"), model_file,
                      options=SegmentOptions(bands=(3, 2, 1))).class_path)
    assert (a != b).mean() > 0.01


def test_bad_tiling_options(tmp_path, utm_raster, model_file):
    with pytest.raises(InputError, match="less than half"):
        segment(utm_raster, str(tmp_path / "c.tif"), model_file, options=SegmentOptions(tile_size=64, overlap=32))
    with pytest.raises(InputError, match="at least 32"):
        segment(utm_raster, str(tmp_path / "c.tif"), model_file, options=SegmentOptions(tile_size=8, overlap=0))


@needs_gdal
def test_cancel_leaves_no_output(tmp_path, utm_raster, model_file):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 1

    existing = tmp_path / "keep.tif"
    existing.write_bytes(b"an earlier result")
    with pytest.raises(Cancelled):
        segment(utm_raster, str(existing), model_file, confidence_path=str(tmp_path / "p.tif"),
                vector_path=str(tmp_path / "v.gpkg"), cancel=cancel, options=SegmentOptions(tile_size=64, overlap=16))
    assert sorted(os.listdir(tmp_path)) == ["keep.tif"]
    assert existing.read_bytes() == b"an earlier result"


def test_failure_midway_leaves_no_output(tmp_path, utm_raster, model_file, monkeypatch):
    from landcover_plugin.core.model import predictor

    def boom(self, batch, *args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(predictor.Predictor, "_run", boom)
    with pytest.raises(RuntimeError):
        segment(utm_raster, str(tmp_path / "c.tif"), model_file, confidence_path=str(tmp_path / "p.tif"))
    assert os.listdir(tmp_path) == []


@needs_gdal
def test_progress_rises_to_one(tmp_path, utm_raster, model_file):
    seen = []
    segment(utm_raster, str(tmp_path / "c.tif"), model_file, vector_path=str(tmp_path / "v.gpkg"),
            progress=seen.append, options=SegmentOptions(tile_size=64, overlap=16))
    assert seen[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(seen, seen[1:])) and len(seen) > 5


def test_tta_of_a_turned_raster_is_the_turned_tta(tmp_path):
    """Test-time augmentation averages the network over the eight flips and turns of each window, each undone
    before averaging: classifying a turned or mirrored raster then gives the turned or mirrored classes, pixel
    for pixel, where the windows fall alike (a square of whole tiles). A wrong inverse turn breaks this; the
    network alone is far from it."""
    model = make_model(tile=64, overlap=0)
    px = fixture_pixels()[:, 100:228, 200:328]

    def classes(pixels, name, tta):
        path = write_raster(tmp_path / f"{name}.tif", np.ascontiguousarray(pixels), crs=UTM,
                            transform=from_origin(0, 0, 0.5, 0.5))
        return _read(segment(path, str(tmp_path / f"{name}_c.tif"), model, log=lambda m: None,
                             options=SegmentOptions(tta=tta, precision="fp32", device="cpu")).class_path)

    for tta in (True, False):
        ref = classes(px, f"ref{tta}", tta)
        agree = [(np.rot90(ref, k) == classes(np.rot90(px, k, axes=(1, 2)), f"r{k}{tta}", tta)).mean()
                 for k in (1, 2, 3)]
        agree.append((ref[:, ::-1] == classes(px[:, :, ::-1], f"m{tta}", tta)).mean())
        if tta:
            assert agree == [1.0, 1.0, 1.0, 1.0]
        else:
            assert max(agree) < 0.9, agree  # 0.55-0.75 when written


def test_out_of_memory_halves_the_batch(tmp_path, utm_raster, model_file, monkeypatch):
    from landcover_plugin.core.model import predictor

    original = predictor.Predictor._run

    def picky(self, part, *args):
        if len(part) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(self, part, *args)

    monkeypatch.setattr(predictor.Predictor, "_run", picky)
    ref = _read(segment(utm_raster, str(tmp_path / "a.tif"), model_file,
                        options=SegmentOptions(tile_size=64, overlap=16, batch_size=2)).class_path)
    res = segment(utm_raster, str(tmp_path / "b.tif"), model_file,
                  options=SegmentOptions(tile_size=64, overlap=16, batch_size=16))
    assert res.batch_size == 2
    np.testing.assert_array_equal(_read(res.class_path), ref)


def test_cuda_asked_without_cuda_is_explained(tmp_path, utm_raster, model_file):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(InputError, match="no CUDA GPU"):
        segment(utm_raster, str(tmp_path / "c.tif"), model_file, options=SegmentOptions(device="cuda"))
    assert os.listdir(tmp_path) == []


@cuda
def test_cuda_matches_cpu(tmp_path, utm_raster, model_file):
    cpu = _read(segment(utm_raster, str(tmp_path / "a.tif"), model_file, options=SegmentOptions(device="cpu"))
                .class_path)
    res = segment(utm_raster, str(tmp_path / "b.tif"), model_file, options=SegmentOptions(device="cuda"))
    assert res.device.startswith("cuda")
    assert (_read(res.class_path) == cpu).mean() > 0.98


@cuda
def test_cuda_tta_and_auto_batch(tmp_path, utm_raster, model_file):
    """On a GPU the automatic batch fills more than a few windows, and TTA there gives the CPU's classes."""
    res = segment(utm_raster, str(tmp_path / "b.tif"), model_file, options=SegmentOptions(device="auto", tta=True))
    assert res.device.startswith("cuda") and res.batch_size >= 4
    cpu = segment(utm_raster, str(tmp_path / "c.tif"), model_file,
                  options=SegmentOptions(device="cpu", tta=True, precision="fp32"))
    assert (_read(res.class_path) == _read(cpu.class_path)).mean() > 0.99


def test_bad_paths_are_refused_before_any_work(tmp_path, utm_raster, model_file):
    with pytest.raises(InputError, match="input raster itself"):
        segment(utm_raster, utm_raster, model_file)
    with pytest.raises(InputError, match="same path"):
        segment(utm_raster, str(tmp_path / "a.tif"), model_file, confidence_path=str(tmp_path / "a.tif"))
    with pytest.raises(InputError, match="folder .* does not exist"):
        segment(utm_raster, str(tmp_path / "nope" / "a.tif"), model_file)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a raster")
    with pytest.raises(InputError, match="cannot be opened as a raster"):
        segment(str(junk), str(tmp_path / "b.tif"), model_file)
    assert sorted(os.listdir(tmp_path)) == ["junk.tif"]


@needs_gdal
def test_polygons_of_a_raster_without_georeferencing_match_qgis_display(tmp_path, model_file):
    """QGIS shows such rasters with row r at y = -r: polygons must sit on them, not upside down."""
    from osgeo import ogr

    res = segment(FIXTURE, str(tmp_path / "c.tif"), model_file, vector_path=str(tmp_path / "v.gpkg"),
                  options=SegmentOptions(extent=(0, 0, 300, 200)))
    ds = ogr.Open(res.vector_path)
    xmin, xmax, ymin, ymax = ds.GetLayer(0).GetExtent()
    assert (xmin, xmax, ymin, ymax) == (0, 300, -200, 0)
    ds = None


def test_web_mercator_gives_ground_metres(tmp_path):
    """Web Mercator stretches the ground by 1/cos(latitude): 2 map units at 60 N are 1 m."""
    from rasterio.warp import transform as warp

    x, y = warp("EPSG:4326", "EPSG:3857", [10.0], [60.0])
    img = write_raster(tmp_path / "merc.tif", fixture_pixels()[:, :200, :160], crs="EPSG:3857",
                       transform=from_origin(x[0], y[0], 2.0, 2.0))
    net, spec = make_model(gsd=1.0, tile=64, overlap=16)
    res = segment(img, str(tmp_path / "c.tif"), (net, spec))
    assert res.scale == 1.0, "the raster's ground resolution matches the model's 1 m"
    assert sum(a.area for a in res.areas) == pytest.approx(200 * 160 * 1.0, rel=0.01)


@needs_gdal
@pytest.mark.parametrize("gsd", [None, 1.0])
def test_gpu_host_path_on_the_cpu_writes_the_same_outputs(tmp_path, monkeypatch, gsd):
    """Several reader threads with their own handles, strips gathered and handed on late, outputs
    written by a thread of their own (the CUDA path), run on the CPU: labels and confidence equal
    the plain path's, masks included."""
    from landcover_plugin.core.inference import run as run_module
    from landcover_plugin.core.inference import sinks, strips

    px = fixture_pixels()[:, :230, :250]
    alpha = np.full((1, 230, 250), 255, np.uint8)
    alpha[0, :40, :] = 0
    transform = from_origin(0, 0, 0.5, 0.5)
    img = write_raster(tmp_path / "rgba.tif", np.concatenate([px, alpha]), crs=UTM, transform=transform, alpha=True)
    model = make_model(gsd=gsd, tile=64, overlap=16)
    opts = SegmentOptions(device="cpu", precision="fp32", batch_size=3)
    plain = segment(img, str(tmp_path / "a.tif"), model, confidence_path=str(tmp_path / "pa.tif"), options=opts)
    monkeypatch.setattr(run_module, "read_threads", lambda device: 3)
    monkeypatch.setattr(run_module, "write_in_background", lambda device: True)
    monkeypatch.setattr(sinks, "host_sink", lambda *a: strips.host_sink(*a[:5], True))
    gpu_like = segment(img, str(tmp_path / "b.tif"), model, confidence_path=str(tmp_path / "pb.tif"), options=opts)
    assert gpu_like.scale == plain.scale == (0.5 if gsd else 1.0)
    np.testing.assert_array_equal(_read(gpu_like.class_path), _read(plain.class_path))
    np.testing.assert_array_equal(_read(gpu_like.confidence_path), _read(plain.confidence_path))
    assert (_read(plain.class_path)[:40] == 255).all()


@needs_gdal
def test_cancel_during_the_sieve_leaves_no_output(tmp_path, utm_raster, model_file, monkeypatch):
    """A cancel that comes while GDAL sieves (a long step on a large raster) stops it there."""
    from landcover_plugin.core.vector import vectorize

    in_sieve = []
    sieve = vectorize.sieve

    def watched(path, pixels, cancel=None):
        in_sieve.append(True)
        return sieve(path, pixels, cancel)

    def polygons(*args, **kwargs):
        raise AssertionError("the run went on to the polygons after a cancel in the sieve")

    monkeypatch.setattr(vectorize, "sieve", watched)
    monkeypatch.setattr(vectorize, "regions", polygons)
    with pytest.raises(Cancelled):
        segment(utm_raster, str(tmp_path / "c.tif"), model_file, confidence_path=str(tmp_path / "p.tif"),
                vector_path=str(tmp_path / "v.gpkg"), cancel=lambda: bool(in_sieve),
                options=SegmentOptions(tile_size=64, overlap=16, min_area=2.0))
    assert in_sieve and os.listdir(tmp_path) == []


def test_extent_partly_outside_the_raster_is_cut_to_it(tmp_path, utm_raster, model_file):
    with rasterio.open(utm_raster) as src:
        left, top, width, height = src.bounds.left, src.bounds.top, src.width, src.height
    # from column 100 and row 50 to well beyond the raster's right and bottom edges (0.5 m pixels)
    extent = (left + 50.0, top - 0.5 * height - 500.0, left + 0.5 * width + 500.0, top - 25.0)
    res = segment(utm_raster, str(tmp_path / "c.tif"), model_file, options=SegmentOptions(extent=extent))
    with rasterio.open(res.class_path) as c:
        assert (c.width, c.height) == (width - 100, height - 50)
        assert (c.transform.c, c.transform.f) == (left + 50.0, top - 25.0)
        assert (c.read(1) < 5).all()


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_uint16_and_float_rasters_with_nodata(tmp_path, model_file, dtype):
    """Nodata pixels (0 in a uint16 raster, NaN in a float one) are nodata in every output and do not spread
    into their neighbours' classes: the rest equals a run on the same pixels in uint8."""
    px = np.maximum(fixture_pixels()[:, :200, :240], 1)  # no pixel is 0 but the hole's
    hole = np.zeros(px.shape[1:], bool)
    hole[60:90, 100:170] = True
    data = px.astype(dtype)
    data[:, hole] = 0 if dtype == "uint16" else np.nan
    nodata = 0 if dtype == "uint16" else float("nan")
    img = write_raster(tmp_path / "in.tif", data, crs=UTM, transform=from_origin(0, 0, 0.5, 0.5), nodata=nodata)
    ref_px = px.copy()
    ref_px[:, hole] = 0
    ref = write_raster(tmp_path / "ref.tif", ref_px, crs=UTM, transform=from_origin(0, 0, 0.5, 0.5), nodata=0)
    opts = SegmentOptions(tile_size=64, overlap=16, precision="fp32", device="cpu")
    res = segment(img, str(tmp_path / "c.tif"), model_file, confidence_path=str(tmp_path / "p.tif"), options=opts)
    labels, conf = _read(res.class_path), _read(res.confidence_path)
    assert (labels[hole] == 255).all() and (labels[~hole] < 5).all()
    assert (conf[hole] == CONFIDENCE_NODATA).all() and np.isfinite(conf[~hole]).all()
    same = segment(ref, str(tmp_path / "r.tif"), model_file, options=opts)
    assert (_read(same.class_path) == labels).mean() > 0.999


@needs_gdal
def test_rotated_geotransform(tmp_path, model_file):
    """A raster whose grid is turned against its CRS: outputs on the same grid, areas from the pixel's true
    size (the transform's determinant), polygons on the turned grid."""
    from osgeo import ogr

    px = fixture_pixels()[:, :120, :160]
    turn = np.radians(30)
    transform = Affine(0.5 * np.cos(turn), -0.5 * np.sin(turn), 300000.0, -0.5 * np.sin(turn), -0.5 * np.cos(turn),
                       2780000.0)
    img = write_raster(tmp_path / "turned.tif", px, crs=UTM, transform=transform)
    res = segment(img, str(tmp_path / "c.tif"), model_file, vector_path=str(tmp_path / "v.gpkg"),
                  options=SegmentOptions(tile_size=64, overlap=16))
    with rasterio.open(res.class_path) as c:
        assert c.transform.almost_equals(transform) and c.crs == UTM
    assert sum(a.area for a in res.areas) == pytest.approx(120 * 160 * 0.25, rel=1e-6)
    ds = ogr.Open(res.vector_path)
    polygons = sum(f.GetGeometryRef().GetArea() for f in ds.GetLayer(0))
    assert polygons == pytest.approx(120 * 160 * 0.25, rel=1e-6)
    xmin, xmax, ymin, ymax = ds.GetLayer(0).GetExtent()
    corners = [transform * (c, r) for c in (0, 160) for r in (0, 120)]
    assert xmin == pytest.approx(min(x for x, _ in corners)) and ymax == pytest.approx(max(y for _, y in corners))
    ds = None


@cuda
def test_a_real_cuda_out_of_memory_halves_the_batch(tmp_path, model_file):
    """With the GPU's memory all but full, a batch far too large runs out of memory for real: the batch is
    halved until it fits, and the classes are the CPU's."""
    px = np.tile(fixture_pixels(), (1, 2, 2))[:, :1024, :1024]
    img = write_raster(tmp_path / "big.tif", px, crs=UTM, transform=from_origin(0, 0, 0.5, 0.5))
    opts = dict(tile_size=128, overlap=16, precision="fp32")
    free, _ = torch.cuda.mem_get_info()
    hog = torch.empty(max(0, free - 256 * 2 ** 20), dtype=torch.uint8, device="cuda")
    try:
        res = segment(img, str(tmp_path / "g.tif"), model_file, options=SegmentOptions(device="cuda", batch_size=512,
                                                                                       **opts))
    finally:
        del hog
        torch.cuda.empty_cache()
    assert res.batch_size < 512
    cpu = segment(img, str(tmp_path / "c.tif"), model_file, options=SegmentOptions(device="cpu", **opts))
    assert (_read(res.class_path) == _read(cpu.class_path)).mean() > 0.999
