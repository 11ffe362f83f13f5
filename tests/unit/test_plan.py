"""The plan of a run, decided before any pixel is read: pure, and importable without torch."""
import os
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from conftest import make_model, write_raster
from rasterio.crs import CRS
from rasterio.transform import from_origin

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.inference.plan import SegmentOptions, plan

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UTM = CRS.from_epsg(32640)


@pytest.fixture(scope="module")
def header(tmp_path_factory):
    path = write_raster(tmp_path_factory.mktemp("plan") / "r.tif", np.zeros((4, 300, 400), np.uint8), crs=UTM,
                        transform=from_origin(300000, 2780000, 0.25, 0.25))
    with rasterio.open(path) as ds:
        yield ds


def test_a_plan_from_the_header_the_model_and_the_options(header):
    _, spec = make_model(gsd=0.5, tile=64, overlap=16)
    p = plan(header, spec, SegmentOptions(bands=(3, 2, 1), extent=(300010.0, 2779950.0, 300020.0, 2779990.0)))
    assert p.bands == (3, 2, 1)
    assert (p.region.col_off, p.region.row_off, p.region.width, p.region.height) == (40, 40, 40, 160)
    assert (p.transform.c, p.transform.f) == (300010.0, 2779990.0)
    assert p.scale == pytest.approx(0.5) and "resampled by 0.5" in p.notes[0]  # 0.25 m raster, 0.5 m model
    assert (p.tile, p.overlap) == (64, 16) and p.warnings == ()
    assert plan(header, spec, SegmentOptions(tile_size=128, overlap=0)).tile == 128


@pytest.mark.parametrize("options,message", [
    (SegmentOptions(bands=(1, 2)), "expects 3 input bands"),
    (SegmentOptions(bands=(1, 2, 5)), "Band 5 does not exist"),
    (SegmentOptions(extent=(0.0, 0.0, 10.0, 10.0)), "does not overlap"),
    (SegmentOptions(tile_size=16), "at least 32"),
    (SegmentOptions(overlap=32), "less than half the tile size"),
])
def test_plans_that_cannot_run_say_what_to_change(header, options, message):
    _, spec = make_model(tile=64, overlap=16)
    with pytest.raises(InputError, match=message):
        plan(header, spec, options)


def test_planning_needs_no_torch(tmp_path):
    path = write_raster(tmp_path / "r.tif", np.zeros((3, 50, 60), np.uint8))
    model = os.path.join(ROOT, "landcover_plugin", "models", "landcover_default.safetensors")
    code = (f"import sys; sys.modules['torch'] = None; sys.path.insert(0, {ROOT!r}); import rasterio; "
            "from landcover_plugin.core.inference.plan import SegmentOptions, plan; "
            "from landcover_plugin.core.model.model_file import read_spec; "
            f"p = plan(rasterio.open({path!r}), read_spec({model!r}), "
            "SegmentOptions()); print(p.region.width, p.region.height, p.scale, p.warnings[0][:24])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:3] == ["60", "50", "1.0"] and "no CRS" in out.stdout
