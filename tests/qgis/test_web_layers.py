"""landcover:segment on layers that are not local files: XYZ tiles and a COG over HTTP, served on 127.0.0.1."""
import os

import numpy as np
import pytest
import rasterio
from conftest import fixture_pixels, make_model, write_raster
from loopback import LoopbackServer, cut_tiles
from qgis.core import QgsProcessingException, QgsRasterLayer
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject
from test_plugin import run

ZOOM = 18  # 0.6 Web Mercator units a pixel: 0.54 m at Dubai's latitude, like the fixture's 0.5 m


@pytest.fixture(scope="module")
def ortho(tmp_path_factory):
    path = tmp_path_factory.mktemp("web") / "ortho.tif"
    return write_raster(path, fixture_pixels()[:, :400, :400], crs="EPSG:32640",
                        transform=from_origin(300000, 2780000, 0.5, 0.5), tiled=True, blockxsize=128,
                        blockysize=128)


@pytest.fixture(scope="module")
def xyz(ortho, tmp_path_factory):
    """(layer, the ortho's bounds in EPSG:3857, server) for tiles cut from the ortho."""
    folder = tmp_path_factory.mktemp("tiles")
    bounds = cut_tiles(ortho, str(folder), ZOOM)
    server = LoopbackServer(str(folder))
    layer = QgsRasterLayer(f"type=xyz&url={server.url}/%7Bz%7D/%7Bx%7D/%7By%7D.png&zmin=0&zmax={ZOOM}", "tiles",
                           "wms")
    assert layer.isValid()
    yield layer, bounds, server
    server.close()


def _extent(bounds, crs="EPSG:3857"):
    left, bottom, right, top = bounds
    return f"{left},{right},{bottom},{top} [{crs}]"


def _classes(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds


def _reference(ortho, grid_ds, model, tmp_path):
    """The engine's classes for the ortho warped by GDAL onto the output's grid: where the tiles should land."""
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import segment

    with rasterio.open(ortho) as src:
        warped = np.zeros((3, grid_ds.height, grid_ds.width), np.uint8)
        for b in range(3):
            reproject(rasterio.band(src, b + 1), warped[b], dst_transform=grid_ds.transform, dst_crs=grid_ds.crs,
                      resampling=Resampling.bilinear)
    path = write_raster(tmp_path / "warped.tif", warped, crs=grid_ds.crs, transform=grid_ds.transform)
    segment(path, str(tmp_path / "ref.tif"), load_model(model))
    return _classes(str(tmp_path / "ref.tif"))[0]


def test_xyz_layer_read_at_the_resolution_asked(provider, xyz, ortho, small_model, tmp_path):
    layer, (left, bottom, right, top), server = xyz
    asked = server.requests.copy()
    # 40 units of the extent lie east of the imagery: transparent tiles there, nodata in the outputs
    extent = (left + 30, bottom + 30, right + 40, top - 30)
    out = run("landcover:segment", {"INPUT": layer, "MODEL": small_model, "EXTENT": _extent(extent),
                                    "RESOLUTION": 0.6, "OUTPUT_RASTER": str(tmp_path / "c.tif"),
                                    "OUTPUT_VECTOR": str(tmp_path / "p.gpkg")})
    classes, ds = _classes(out["OUTPUT_RASTER"])
    assert ds.crs.to_epsg() == 3857 and ds.res == pytest.approx((0.6, 0.6))
    assert ds.bounds.left == pytest.approx(extent[0]) and ds.bounds.top == pytest.approx(extent[3])
    assert ds.width == int(np.ceil((extent[2] - extent[0]) / 0.6 - 1e-9))
    assert len(server.requests) > len(asked)  # read from the server, not from a cache of another test
    # the UTM imagery's east edge leans by 0.85 degrees in Web Mercator: 6 pixels over its height
    outside = int((right - extent[0]) / 0.6) + 2  # first whole column east of the imagery
    inside = outside - 10
    assert (classes[:, outside:] == 255).all() and (classes[:, :inside] != 255).all()
    # the tiles land where GDAL puts the imagery, to the pixel: the classes agree best with a run on the
    # ortho warped onto the same grid, clearly better than with it moved by one pixel any way (measured:
    # 0.82 against at most 0.66; twice-resampled tiles and a random-weight model keep it below 1)
    ref = _reference(ortho, ds, small_model, tmp_path)[:, :inside]
    got = classes[:, :inside]
    agree = (got == ref).mean()
    moved = [(got[1:] == ref[:-1]).mean(), (got[:-1] == ref[1:]).mean(), (got[:, 1:] == ref[:, :-1]).mean(),
             (got[:, :-1] == ref[:, 1:]).mean()]
    assert agree > 0.75 and agree > max(moved) + 0.1, (agree, moved)
    assert os.path.getsize(out["OUTPUT_VECTOR"]) > 0


def test_xyz_resolution_defaults_to_the_models_ground_resolution(provider, xyz, tmp_path):
    from landcover_plugin.core.model.model_file import save_model

    net, spec = make_model(tile=64, overlap=16, gsd=0.5)
    model = str(tmp_path / "gsd.safetensors")
    save_model(model, net, spec)
    layer, (left, bottom, right, top), _ = xyz
    extent = (left + 20, bottom + 20, left + 120, bottom + 120)
    out = run("landcover:segment", {"INPUT": layer, "MODEL": model, "EXTENT": _extent(extent),
                                    "OUTPUT_RASTER": str(tmp_path / "c.tif")})
    _, ds = _classes(out["OUTPUT_RASTER"])
    # half a metre on the ground at latitude 25.1: 0.5 / cos(25.1 degrees) Web Mercator units
    assert ds.res[0] == pytest.approx(0.5 / np.cos(np.radians(25.11)), rel=0.005)


@pytest.mark.parametrize("params,message", [
    ({"RESOLUTION": 0.6}, "give EXTENT"),
    ({"EXTENT": "6124400,6124500,2890400,2890500 [EPSG:3857]"}, "Give RESOLUTION"),
    ({"EXTENT": "0,20000000,0,20000000 [EPSG:3857]", "RESOLUTION": 0.1}, "too many"),
])
def test_xyz_layer_needs_an_extent_and_a_resolution(provider, xyz, small_model, tmp_path, params, message):
    with pytest.raises(QgsProcessingException, match=message):
        run("landcover:segment", {"INPUT": xyz[0], "MODEL": small_model, "OUTPUT_RASTER": str(tmp_path / "c.tif"),
                                  **params})
    assert os.listdir(tmp_path) == []


def test_cog_over_http_equals_the_local_file(provider, ortho, small_model, tmp_path):
    cog = tmp_path / "served" / "ortho_cog.tif"
    cog.parent.mkdir()
    with rasterio.open(ortho) as src:
        with rasterio.open(cog, "w", driver="COG", width=src.width, height=src.height, count=3, dtype="uint8",
                           crs=src.crs, transform=src.transform, blocksize=128) as dst:
            dst.write(src.read())
    server = LoopbackServer(str(cog.parent))
    try:
        layer = QgsRasterLayer(f"/vsicurl/{server.url}/ortho_cog.tif", "cog", "gdal")
        assert layer.isValid()
        remote = run("landcover:segment", {"INPUT": layer, "MODEL": small_model,
                                           "OUTPUT_RASTER": str(tmp_path / "remote.tif")})
    finally:
        server.close()
    local = run("landcover:segment", {"INPUT": ortho, "MODEL": small_model,
                                      "OUTPUT_RASTER": str(tmp_path / "local.tif")})
    assert any("ortho_cog.tif" in r for r in server.requests)
    got, ds = _classes(remote["OUTPUT_RASTER"])
    want, ref = _classes(local["OUTPUT_RASTER"])
    # no RESOLUTION and a model without one: the COG's own grid, so the local file's outputs
    assert ds.crs == ref.crs and ds.transform.almost_equals(ref.transform) and ds.shape == ref.shape
    assert (got == want).mean() > 0.999


@pytest.mark.parametrize("progress", [1, 60])
def test_cancel_while_reading_or_classifying_a_web_layer(provider, xyz, small_model, tmp_path, progress):
    from qgis.core import QgsProcessingUtils
    from test_plugin import CancelAt

    layer, (left, bottom, right, top), _ = xyz
    feedback = CancelAt(progress=progress)
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("landcover:segment", {"INPUT": layer, "MODEL": small_model, "EXTENT": _extent((left, bottom, right, top)),
                                  "RESOLUTION": 0.3, "OUTPUT_RASTER": str(tmp_path / "c.tif"),
                                  "OUTPUT_VECTOR": str(tmp_path / "p.gpkg")}, feedback=feedback)
    # reading the layer is the first half of the progress: cancelled in it, or after it
    assert ("read in" in feedback.textLog()) == (progress > 50)
    assert os.listdir(tmp_path) == []
    temp = QgsProcessingUtils.tempFolder()
    assert not [f for _, _, files in os.walk(temp) for f in files if f.startswith("landcover_input")]


def test_qgis_process_classifies_an_xyz_layer(xyz, small_model, tmp_path):
    from conftest import qgis_process

    _, (left, bottom, right, top), server = xyz
    url = f"{server.url}/%7Bz%7D/%7Bx%7D/%7By%7D.png"
    extent = (left + 20, bottom + 20, left + 80, bottom + 80)
    done = qgis_process(["run", "landcover:segment", "--", f"INPUT=wms://type=xyz&url={url}&zmax={ZOOM}&zmin=0",
                         f"MODEL={small_model}", f"EXTENT={_extent(extent)}", "RESOLUTION=0.6", "DEVICE=cpu",
                         f"OUTPUT_RASTER={tmp_path / 'c.tif'}"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    classes, ds = _classes(str(tmp_path / "c.tif"))
    assert ds.crs.to_epsg() == 3857 and ds.shape == (100, 100) and (classes != 255).all()
