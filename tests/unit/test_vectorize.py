import numpy as np
import pytest
import rasterio
from conftest import write_raster
from rasterio.crs import CRS
from rasterio.transform import Affine, from_origin

from landcover_plugin.core.io.geo import ground_geometry, map_resolution
from landcover_plugin.core.model.classes import DEFAULT_CLASSES
from landcover_plugin.core.vector.areas import class_areas
from landcover_plugin.core.vector.vectorize import sieve, vectorize

shapely = pytest.importorskip("shapely")
ogr = pytest.importorskip("osgeo.ogr")  # polygons are GDAL's work; the GPU machine has no GDAL bindings

UTM = CRS.from_epsg(32640)


def _scene():
    labels = np.zeros((100, 120), np.uint8)
    labels[:, 60:] = 2
    labels[20:30, 10:20] = 1  # a building inside the background: background gets a hole
    labels[50:52, 30:32] = 4  # 4 pixels of road
    labels[90:, :] = 255  # nodata strip
    conf = np.where(labels == 2, 0.9, 0.6).astype(np.float32)
    conf[20:30, 10:20] = 0.8
    return labels, conf


def _write(tmp_path, labels, conf, crs=UTM, transform=from_origin(500000, 2800000, 2, 2)):
    c = write_raster(tmp_path / "c.tif", labels, crs=crs, transform=transform, nodata=255)
    p = write_raster(tmp_path / "p.tif", conf, crs=crs, transform=transform, nodata=-1)
    with rasterio.open(c) as ds:
        geom = ground_geometry(ds.crs, ds.transform, ds.height, ds.width)
    return c, p, geom


def _features(path):
    ds = ogr.Open(path)
    layer = ds.GetLayer("landcover")
    out = [dict(class_id=f.GetField("class_id"), class_name=f.GetField("class_name"), area=f.GetField("area"),
                confidence=f.GetField("confidence"), geom=shapely.from_wkb(bytes(f.GetGeometryRef().ExportToWkb())))
           for f in layer]
    srs = layer.GetSpatialRef()
    ds = None
    return out, srs


def test_polygons_carry_class_area_and_confidence(tmp_path):
    labels, conf = _scene()
    c, p, geom = _write(tmp_path, labels, conf)
    n = vectorize(c, p, str(tmp_path / "v.gpkg"), DEFAULT_CLASSES, geom)
    feats, srs = _features(str(tmp_path / "v.gpkg"))
    assert n == len(feats) == 4
    assert srs is not None and srs.GetAuthorityCode(None) == "32640"
    by_class = {f["class_id"]: f for f in feats}
    assert by_class[1]["class_name"] == "building" and by_class[1]["area"] == pytest.approx(100 * 4)
    assert by_class[4]["area"] == pytest.approx(4 * 4)
    assert by_class[0]["area"] == pytest.approx((90 * 60 - 100 - 4) * 4)
    assert by_class[2]["confidence"] == pytest.approx(0.9) and by_class[1]["confidence"] == pytest.approx(0.8)
    assert len(by_class[0]["geom"].interiors) == 2
    for f in feats:  # attribute area is ground area; polygons are in map units of 2 m pixels
        assert f["geom"].area == pytest.approx(f["area"])


def test_sieve_merges_small_regions_into_neighbours(tmp_path):
    labels, conf = _scene()
    c, p, geom = _write(tmp_path, labels, conf)
    sieve(c, geom.pixels_for_area(20.0))  # 5 pixels of 4 m2
    with rasterio.open(c) as ds:
        after = ds.read(1)
    assert np.all(after[50:52, 30:32] == 0) and np.all(after[20:30, 10:20] == 1)
    assert np.all(after[90:] == 255)
    vectorize(c, p, str(tmp_path / "v.gpkg"), DEFAULT_CLASSES, geom)
    feats, _ = _features(str(tmp_path / "v.gpkg"))
    assert sorted(f["class_id"] for f in feats) == [0, 1, 2]


def _noisy_labels(seed=3, shape=(160, 200)):
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 5, (shape[0] // 8, shape[1] // 8))
    labels = np.kron(small, np.ones((8, 8), int))
    flips = rng.random(shape) < 0.05
    labels[flips] = rng.integers(0, 5, flips.sum())
    return labels.astype(np.uint8)


def test_simplified_polygons_share_boundaries(tmp_path):
    # diagonal stripes (staircase edges that simplify well), discs, and speckle that cannot
    yy, xx = np.mgrid[:160, :200]
    labels = ((xx + 2 * yy) // 23 % 4).astype(np.uint8)
    for cy, cx, r in ((40, 50, 17), (110, 140, 25), (80, 30, 9)):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 4
    speckle = np.random.default_rng(0).random(labels.shape) < 0.01
    labels[speckle] = 1
    c, p, geom = _write(tmp_path, labels, np.full(labels.shape, 0.5, np.float32),
                        transform=from_origin(0, 0, 1, 1))
    plain = vectorize(c, p, str(tmp_path / "plain.gpkg"), DEFAULT_CLASSES, geom)
    n = vectorize(c, p, str(tmp_path / "v.gpkg"), DEFAULT_CLASSES, geom, simplify=1.5)
    feats, _ = _features(str(tmp_path / "v.gpkg"))
    plain_feats, _ = _features(str(tmp_path / "plain.gpkg"))
    geoms = [f["geom"] for f in feats]
    assert n == plain and all(g.is_valid for g in geoms)
    vertices = sum(shapely.get_num_coordinates(g) for g in geoms)
    assert vertices < 0.6 * sum(shapely.get_num_coordinates(f["geom"]) for f in plain_feats)
    union = shapely.union_all(geoms)
    total = sum(g.area for g in geoms)
    assert union.area == pytest.approx(labels.size, rel=1e-9), "no gaps"
    assert total == pytest.approx(union.area, rel=1e-9), "no overlaps"


def test_geographic_areas_are_square_metres(tmp_path):
    labels = np.zeros((40, 50), np.uint8)
    labels[:, 25:] = 3
    deg = 1e-4
    c, p, geom = _write(tmp_path, labels, np.ones(labels.shape, np.float32), crs=CRS.from_epsg(4326),
                        transform=Affine(deg, 0, 10.0, 0, -deg, 60.0))
    vectorize(c, p, str(tmp_path / "v.gpkg"), DEFAULT_CLASSES, geom)
    feats, _ = _features(str(tmp_path / "v.gpkg"))
    expected = _ellipsoid_cell_area(60 - 40 * deg, 60.0, 25 * deg)
    sphere = 25 * 40 * (deg * 111195.08) ** 2 * np.cos(np.radians(60 - 20 * deg))
    assert abs(sphere / expected - 1) > 0.005  # a sphere is off by 0.56% here: the check can tell
    for f in feats:
        assert f["area"] == pytest.approx(expected, rel=1e-5)
    areas = class_areas(c, DEFAULT_CLASSES, geom)
    assert areas[3].area == pytest.approx(expected, rel=1e-5) and areas[3].percent == pytest.approx(50)


def _ellipsoid_cell_area(lat1, lat2, dlon):
    """Area (m2) of the WGS84 cell between two latitudes over dlon degrees of longitude, in closed form
    (the ellipsoid's area from the equator to a latitude, through the authalic function q)."""
    a, f = 6378137.0, 1 / 298.257223563
    e = np.sqrt(f * (2 - f))

    def q(lat):
        s = np.sin(np.radians(lat))
        return s / (1 - e * e * s * s) + np.log((1 + e * s) / (1 - e * s)) / (2 * e)

    b2 = (a * (1 - f)) ** 2
    return np.radians(dlon) * b2 / 2 * (q(lat2) - q(lat1))


def test_cancel_during_polygonize(tmp_path):
    from landcover_plugin.core.errors import Cancelled

    labels = _noisy_labels(shape=(400, 400))
    c, p, geom = _write(tmp_path, labels, np.ones(labels.shape, np.float32), transform=from_origin(0, 0, 1, 1))
    with pytest.raises(Cancelled):
        vectorize(c, p, str(tmp_path / "v.gpkg"), DEFAULT_CLASSES, geom, cancel=lambda: True)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["c.tif", "p.tif"]


@pytest.mark.parametrize("tolerance", [0.7, 2.0])
def test_simplified_model_output_keeps_a_coverage(tmp_path, model_file, tolerance):
    """Speckly output of a random model: shared arcs keep the coverage, and arcs whose
    simplification would make a thin region cross itself stay as traced."""
    from conftest import FIXTURE

    from landcover_plugin.core.segment import SegmentOptions, segment

    res = segment(FIXTURE, str(tmp_path / "c.tif"), model_file, vector_path=str(tmp_path / "v.gpkg"),
                  options=SegmentOptions(min_area=6, simplify=tolerance))
    feats, _ = _features(res.vector_path)
    geoms = [f["geom"] for f in feats]
    assert all(g.is_valid for g in geoms)
    union = shapely.union_all(geoms)
    assert union.area == pytest.approx(768 * 768, rel=1e-9), "no gaps"
    assert sum(g.area for g in geoms) == pytest.approx(union.area, rel=1e-9), "no overlaps"
    plain = segment(FIXTURE, str(tmp_path / "c2.tif"), model_file, vector_path=str(tmp_path / "v2.gpkg"),
                    options=SegmentOptions(min_area=6))
    vertices = sum(shapely.get_num_coordinates(g) for g in geoms)
    assert vertices < 0.8 * sum(shapely.get_num_coordinates(f["geom"]) for f in _features(plain.vector_path)[0])


def test_arc_simplification_ignores_direction():
    from landcover_plugin.core.vector.simplify import simplify_arc

    rng = np.random.default_rng(4)
    steps = rng.integers(0, 2, 60)
    pts = [(0, 0)]
    for s in steps:  # a staircase
        x, y = pts[-1]
        pts.append((x + 1, y) if s else (x, y + 1))
    assert simplify_arc(pts, 1.2) == simplify_arc(pts[::-1], 1.2)[::-1]
    assert len(simplify_arc(pts, 1.2)) < len(pts) / 3
    loop = pts + [(pts[-1][0], 0), (0, 0)]
    assert simplify_arc(loop, 1.0) == simplify_arc(loop[::-1], 1.0)[::-1]
    assert len(set(simplify_arc(loop, 100.0))) >= 3


@pytest.mark.parametrize("crs,bounds,expected", [
    ("EPSG:32640", (300000, 2779000, 301000, 2780000), 0.5),  # metres on a ground-true projection
    # Web Mercator at 25.1 N: the sphere's 1 / cos(lat) stretch, within the ellipsoid's 0.3%
    ("EPSG:3857", (6124000, 2890000, 6125000, 2891000), 0.5 / np.cos(np.radians(25.105))),
])
def test_map_resolution_gives_the_ground_metres_asked(crs, bounds, expected):
    assert map_resolution(CRS.from_string(crs), bounds, 0.5) == pytest.approx(expected, rel=0.003)


def test_map_resolution_in_degrees_is_what_the_engine_reads_back():
    bounds = (55.0, 60.0, 55.02, 60.01)
    res = map_resolution(CRS.from_epsg(4326), bounds, 0.5)
    width, height = round(0.02 / res), round(0.01 / res)
    geometry = ground_geometry(CRS.from_epsg(4326), from_origin(55.0, 60.01, res, res), height, width)
    # a square pixel in degrees is 0.5 m on the ground as a mean of its sides (2:1 at 60 degrees)
    assert geometry.gsd == pytest.approx(0.5, rel=0.002)


def test_polygons_do_not_depend_on_the_arc_cache(tmp_path, model_file, monkeypatch):
    """The cache of simplified arcs is bounded (memory stays flat on any raster); an arc that fell out is
    simplified again to the same result, so a cache of ten arcs gives the very same polygons, the arcs kept as
    traced (found beside each other through the region-id raster) included."""
    from conftest import FIXTURE

    from landcover_plugin.core.segment import SegmentOptions, segment
    from landcover_plugin.core.vector import coverage

    kept = []
    settle = coverage.Coverage.settle

    def counting(self, layer, rounds=3):
        settle(self, layer, rounds)
        kept.append(len(self.keep))

    monkeypatch.setattr(coverage.Coverage, "settle", counting)
    opts = SegmentOptions(min_area=6, simplify=2.0, precision="fp32", device="cpu")
    big = segment(FIXTURE, str(tmp_path / "a.tif"), model_file, vector_path=str(tmp_path / "a.gpkg"), options=opts)
    monkeypatch.setattr(coverage, "CACHE_ARCS", 10)
    small = segment(FIXTURE, str(tmp_path / "b.tif"), model_file, vector_path=str(tmp_path / "b.gpkg"), options=opts)
    assert kept[0] == kept[1] > 0  # thin regions made some arcs stay as traced
    a, b = _features(big.vector_path)[0], _features(small.vector_path)[0]
    assert len(a) == len(b) and all(x["geom"].equals_exact(y["geom"], 0) for x, y in zip(a, b))
    cache = coverage.ArcCache(3)
    for k in range(5):
        cache[k] = [k]
    assert list(cache) == [2, 3, 4]
