"""Sentinel-2 headless, as users script it: qgis_process prepares a downloaded scene, then segments it with
Dynamic World; outputs come out styled with its classes."""
import json
import os
import sqlite3

from conftest import DATA, FIXTURE, qgis_process

L1C_FOLDER = os.path.join(DATA, "sentinel2", "ssl4eo_l1c_crop")
DW_CLASSES = ("water", "trees", "grass", "flooded_vegetation", "crops", "shrub_and_scrub", "built", "bare",
              "snow_and_ice")


def _ok(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return json.loads(r.stdout[r.stdout.index("{"):])["results"]


def test_qgis_process_prepares_a_scene_and_dynamic_world_maps_it_styled(tmp_path):
    import numpy as np
    import rasterio

    stack = tmp_path / "scene.tif"
    _ok(qgis_process(["run", "landcover:prepare_sentinel2", "--", f"INPUT={L1C_FOLDER}", f"OUTPUT={stack}"],
                     tmp_path))
    with rasterio.open(stack) as ds:
        assert ds.descriptions == ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B11", "B12") and ds.count == 9
    r = qgis_process(["run", "landcover:segment", "--", f"INPUT={stack}", "MODEL=dynamic_world", "DEVICE=cpu",
                      f"OUTPUT_RASTER={tmp_path / 'classes.tif'}", f"OUTPUT_VECTOR={tmp_path / 'cover.gpkg'}",
                      f"OUTPUT_REPORT={tmp_path / 'report.html'}"], tmp_path)
    results, log = _ok(r), r.stdout + r.stderr
    assert "Bands matched by their names" in log and "L2A" not in log
    with rasterio.open(results["OUTPUT_RASTER"]) as ds:
        classes = ds.read(1)
        assert ds.colormap(1)[4][:3] == (0xE4, 0x96, 0x35)  # crops in Dynamic World's palette
    valid = classes[:-1, :-1]  # the last row and column lie beyond the 20 m bands: nodata
    assert (classes[-1] == 255).all() and (valid != 255).all()
    assert np.isin(valid, (4, 6)).mean() > 0.8  # irrigated farmland and villages: crops and built
    qml = (tmp_path / "classes.qml").read_text()
    assert all(name in qml for name in DW_CLASSES)
    with sqlite3.connect(tmp_path / "cover.gpkg") as db:
        names = {row[0] for row in db.execute("select distinct class_name from cover")}
        style = db.execute("select styleQML from layer_styles").fetchone()[0]
    assert names <= set(DW_CLASSES) and "crops" in names and "crops" in style
    assert "crops" in (tmp_path / "report.html").read_text()


def test_dynamic_world_on_an_rgb_raster_names_the_missing_bands(tmp_path):
    r = qgis_process(["run", "landcover:segment", "--", f"INPUT={FIXTURE}", "MODEL=dynamic_world",
                      f"OUTPUT_RASTER={tmp_path / 'c.tif'}"], tmp_path)
    assert r.returncode != 0 and "B2, B3, B4, B5, B6, B7, B8, B11, B12" in r.stdout + r.stderr, r.stdout[-1500:]
    assert "Traceback" not in r.stdout + r.stderr and not os.path.exists(tmp_path / "c.tif")
