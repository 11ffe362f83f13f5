"""Bundled models picked by name, and the polygon defaults a model carries."""
import os
import subprocess
import sys
from dataclasses import replace

import pytest
from conftest import fixture_pixels, make_model, write_raster

from landcover_plugin.core.errors import ModelFileError
from landcover_plugin.core.model import bundled
from landcover_plugin.core.model.bundled import resolve_model_path
from landcover_plugin.core.model.model_file import read_spec, save_model
from landcover_plugin.core.model.spec import ModelSpec, PolygonDefaults

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A models/ folder holding a default land-cover model, a buildings model and a damaged file."""
    net, spec = make_model(calibrate=False)
    save_model(str(tmp_path / bundled.DEFAULT_MODEL_NAME), net, replace(spec, name="Land cover"))
    from landcover_plugin.core.model.classes import LandClass

    classes = (LandClass(0, "other", "#f2efe9"), LandClass(1, "building", "#d7301f"))
    net2, spec2 = make_model(classes=classes, calibrate=False)
    save_model(str(tmp_path / "buildings_osm.safetensors"), net2, replace(
        spec2, name="Buildings (OpenStreetMap)", polygons=PolygonDefaults((1,), 4.0, 0.5)))
    (tmp_path / "broken.safetensors").write_bytes(b"not a model")
    monkeypatch.setattr(bundled, "MODELS_DIR", str(tmp_path))
    return tmp_path


def test_bundled_models_are_listed_default_first_and_found_by_key_or_name(models_dir):
    found = bundled.bundled_models()
    assert [(m.key, m.name) for m in found] == [("landcover_default", "Land cover"),
                                                ("buildings_osm", "Buildings (OpenStreetMap)")]
    by_key = resolve_model_path("buildings_osm")
    assert by_key == str(models_dir / "buildings_osm.safetensors")
    assert resolve_model_path("  buildings (openstreetmap) ") == by_key
    assert resolve_model_path(None) == str(models_dir / bundled.DEFAULT_MODEL_NAME)


def test_an_unknown_name_lists_the_bundled_models(models_dir):
    with pytest.raises(ModelFileError) as info:
        resolve_model_path("buildings")
    assert "buildings_osm (Buildings (OpenStreetMap))" in str(info.value)
    assert "landcover_default (Land cover)" in str(info.value)


def test_a_file_wins_over_a_name(models_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_model_path("buildings_osm.safetensors") == "buildings_osm.safetensors"


@pytest.mark.parametrize("polygons,message", [
    ({"classes": [7]}, "class ids of the model"),
    ({"classes": []}, "class ids of the model"),
    ({"min_area_m2": -1}, "min_area_m2 must be a number"),
    ({"simplify_m": "1"}, "simplify_m must be a number"),
    ([1], "must be an object"),
])
def test_bad_polygon_defaults_are_refused(polygons, message):
    _, spec = make_model(calibrate=False)
    doc = {**spec.to_dict(), "polygons": polygons}
    with pytest.raises(ModelFileError, match=message):
        ModelSpec.from_dict(doc)


def test_files_without_polygon_defaults_keep_every_class():
    _, spec = make_model(calibrate=False)
    doc = spec.to_dict()
    del doc["polygons"]
    assert ModelSpec.from_dict(doc).polygons == PolygonDefaults(None, 0.0, 0.0)


def _classify(tmp_path, model, crs, transform, **options):
    from landcover_plugin.core.segment import SegmentOptions, segment

    src = write_raster(tmp_path / "in.tif", fixture_pixels()[:, :192, :192], crs=crs, transform=transform)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return segment(src, str(out / "c.tif"), model, vector_path=str(out / "p.gpkg"),
                   options=SegmentOptions(**options), log=lambda m: None)


def test_model_defaults_become_the_rasters_units(models_dir, tmp_path):
    from rasterio.transform import from_origin

    model = str(models_dir / "buildings_osm.safetensors")
    utm = _classify(tmp_path, model, "EPSG:32637", from_origin(500000, 9800000, 0.3, 0.3))
    assert (utm.min_area, utm.simplify) == pytest.approx((4.0, 0.5))
    # 1e-5 degrees is about 1.1 m across at the equator: 0.5 m is about 0.45 of a pixel
    geo = _classify(tmp_path, model, "EPSG:4326", from_origin(39.0, -0.5, 1e-5, 1e-5))
    assert geo.min_area == 4.0 and geo.simplify == pytest.approx(0.5 / 1.1 * 1e-5, rel=0.02)
    given = _classify(tmp_path, model, "EPSG:32637", from_origin(500000, 9800000, 0.3, 0.3), min_area=0.0,
                      simplify=0.0)
    assert (given.min_area, given.simplify) == (0.0, 0.0)


def test_polygons_keep_only_the_models_polygon_classes(models_dir, tmp_path):
    from osgeo import ogr
    from rasterio.transform import from_origin

    _classify(tmp_path, str(models_dir / "buildings_osm.safetensors"), "EPSG:32637",
              from_origin(500000, 9800000, 0.3, 0.3), min_area=0.0, simplify=0.0)
    ds = ogr.Open(str(tmp_path / "out" / "p.gpkg"))
    ids = {f.GetField("class_id") for f in ds.GetLayer(0)}
    assert ids == {1}


def test_model_metadata_script_changes_metadata_and_keeps_weights(tmp_path):
    from safetensors.torch import load_file

    net, spec = make_model(calibrate=False)
    path = str(tmp_path / "m.safetensors")
    save_model(path, net, spec)
    before = load_file(path)
    script = os.path.join(ROOT, "scripts", "model_metadata.py")
    done = subprocess.run([sys.executable, script, path, "--name", "Roofs", "--polygon-classes", "1",
                           "--min-area", "3", "--training", "card=roofs.md", "--training", "epochs=4"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    spec2 = read_spec(path)
    assert spec2.name == "Roofs" and spec2.polygons == PolygonDefaults((1,), 3.0, 0.0)
    assert spec2.training["card"] == "roofs.md" and spec2.training["epochs"] == 4
    after = load_file(path)
    assert all((after[k] == v).all() for k, v in before.items())
    bad = subprocess.run([sys.executable, script, path, "--polygon-classes", "9"], capture_output=True, text=True)
    assert bad.returncode == 2 and "class ids of the model" in bad.stderr and "Traceback" not in bad.stderr
    assert read_spec(path) == spec2


def test_model_metadata_weights_stores_them_in_8_bits_and_keeps_metadata_and_calibration(tmp_path):
    """How the bundled files were converted: --weights int8 on a float16 file of the bundled shape."""
    import numpy as np
    import torch

    from landcover_plugin.core.model.model_file import load_model

    net, spec = make_model(base_width=32, depth=4, calibrate=False)
    windows = np.arange(2 * 3 * 16 * 16, dtype=np.uint8).reshape(2, 3, 16, 16)
    path = str(tmp_path / "m.safetensors")
    save_model(path, net, spec.with_training(note="kept"), half=True, calibration=windows)
    size = os.path.getsize(path)
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "model_metadata.py"), path, "--weights",
                           "int8", "--name", "Compact"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.path.getsize(path) < 0.7 * size
    loaded, spec2 = load_model(path)  # its checksum verified
    assert spec2.name == "Compact" and spec2.training["note"] == "kept"
    assert np.array_equal(loaded.calibration_windows, windows)
    x = torch.from_numpy(fixture_pixels()[:, :64, :64].astype(np.float32))[None] / 255
    with torch.no_grad():
        a, b = net.eval()(x), loaded(x)
    assert (a - b).abs().max() < 0.02 * a.abs().max()  # 8-bit steps, not other weights
