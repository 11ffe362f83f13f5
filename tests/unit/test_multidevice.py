"""One raster on several devices: parts of its rows, each in a process of its own (two CPU processes stand in
for two GPUs here), give the outputs of one process."""
import multiprocessing
import os
import signal

import numpy as np
import pytest
import rasterio
from conftest import FIXTURE, fixture_pixels, make_model, write_raster
from rasterio.transform import Affine

from landcover_plugin.core.errors import Cancelled, InputError
from landcover_plugin.core.inference.multidevice import python_executable, split_rows
from landcover_plugin.core.segment import SegmentOptions, segment

UTM = "EPSG:32640"


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_rows_of_a_part_blend_exactly_as_the_whole_image():
    import torch

    from landcover_plugin.core.inference.sliding import ArrayReader, slide
    from landcover_plugin.core.inference.windows import blend_weights
    from landcover_plugin.core.model.predictor import Predictor

    net, spec = make_model(tile=64, overlap=16)
    image = fixture_pixels()[:, :300, :150]
    predictor = Predictor(net, spec.mean, spec.std, blend_weights(64, 16), torch.device("cpu"), 3, precision="fp32")

    def run(rows=None):
        out = np.full((5, 300, 150), np.nan, np.float32)

        def put(r, c, scores):
            out[:, r:r + scores.shape[1], c:c + scores.shape[2]] = scores.numpy()

        slide(ArrayReader(image), predictor, 5, 64, 16, (put, lambda r: None), rows=rows)
        return out

    whole = run()
    assert not np.isnan(whole).any()
    # borders inside strips, on strip borders and in overlaps; parts of one row and of the last rows
    for cuts in ([0, 100, 300], [0, 48, 49, 201, 300], [0, 1, 299, 300]):
        parts = [run((a, b)) for a, b in zip(cuts, cuts[1:])]
        for (a, b), part in zip(zip(cuts, cuts[1:]), parts):
            assert np.isnan(part[:, :a]).all() and np.isnan(part[:, b:]).all()  # nothing outside its rows
            assert np.array_equal(part[:, a:b], whole[:, a:b])  # bit for bit


def test_parts_start_on_block_rows_and_share_the_cores():
    parts = split_rows(1000, ["cuda:0", "cuda:1", "cuda:2"], 256)
    assert [p.rows for p in parts] == [(0, 256), (256, 768), (768, 1000)]
    assert [p.device for p in parts] == ["cuda:0", "cuda:1", "cuda:2"] and {p.threads for p in parts} == {0}
    assert [p.rows for p in split_rows(300, ["cuda:0", "cuda:1", "cuda:2"], 256)] == [(0, 256), (256, 300)]
    assert [p.rows for p in split_rows(100, ["cpu", "cpu"], 256)] == [(0, 100)]
    assert [p.threads for p in split_rows(4096, ["cpu"] * 3, 256, cores=8)] == [2, 2, 2]


def test_device_names_and_their_errors():
    from landcover_plugin.core.model.device import device_names

    assert device_names("cpu, cpu") == ["cpu", "cpu"]
    assert device_names("auto") == ["auto"]
    for bad in ("gpu", "cpu,tpu", "cuda:x"):
        with pytest.raises(InputError, match="Unknown device"):
            device_names(bad)
    import torch

    if not torch.cuda.is_available():
        for name in ("cuda:all", "cuda:0,cuda:1", "cpu,cuda"):
            with pytest.raises(InputError, match="no CUDA GPU"):
                device_names(name)
    else:
        with pytest.raises(InputError, match="mix the CPU and GPUs"):
            device_names("cpu,cuda")
        with pytest.raises(InputError, match="There is no GPU"):
            device_names(f"cuda:{torch.cuda.device_count()}")


def test_python_for_the_processes_is_this_one_even_inside_qgis(monkeypatch):
    import sys

    own = python_executable()
    assert os.path.samefile(own, sys.executable) or os.path.dirname(own).startswith(sys.exec_prefix)
    # QGIS and qgis_process embed Python: sys.executable may be the QGIS program itself
    monkeypatch.setattr(sys, "executable", "/usr/bin/qgis")
    assert python_executable() == own


@pytest.mark.parametrize("resample", [False, True], ids=["raster grid", "resampled to the model's"])
def test_two_processes_give_the_outputs_of_one(tmp_path, resample):
    # 0.5 m pixels; a model at 0.25 m classifies on a grid twice as fine, then resamples
    img = write_raster(tmp_path / "in.tif", fixture_pixels(), crs=UTM, transform=Affine(0.5, 0, 4e5, 0, -0.5, 2.8e6))
    model = make_model(tile=64, overlap=16, gsd=0.25 if resample else None)
    results = {}
    for devices in ("cpu", "cpu,cpu"):
        out = tmp_path / devices.replace(",", "_")
        out.mkdir()
        logs = []
        results[devices] = segment(img, str(out / "c.tif"), model, confidence_path=str(out / "p.tif"),
                                   vector_path=str(out / "v.gpkg"), log=logs.append,
                                   options=SegmentOptions(device=devices, precision="fp32"))
    one, two = results["cpu"], results["cpu,cpu"]
    assert two.device == "2 processes on cpu, cpu" and one.device.startswith("cpu (")
    assert any("rows 0-" in m and "on cpu" in m for m in logs)
    assert (one.scale == 2.0) == resample and two.scale == one.scale
    labels = _read(one.class_path)
    assert len(np.unique(labels)) >= 3  # a model whose labels vary, or identity would prove little
    assert np.array_equal(_read(two.class_path), labels)
    # one thread per process against two in one: the same sums in another order of the last bits
    assert np.abs(_read(two.confidence_path) - _read(one.confidence_path)).max() <= 1e-5
    assert [(a.id, a.pixels) for a in two.areas] == [(a.id, a.pixels) for a in one.areas]
    ogr = pytest.importorskip("osgeo.ogr")

    counts = []
    for r in (one, two):
        ds = ogr.Open(r.vector_path)  # the layer dies with its data source: keep it
        counts.append(ds.GetLayer().GetFeatureCount())
    assert counts[0] == counts[1] > 0


def _outputs_left(folder):
    return sorted(os.listdir(folder))


def test_cancel_and_a_dead_process_leave_no_output(tmp_path):
    model = make_model(tile=64, overlap=16)
    out = tmp_path / "out"
    out.mkdir()
    opts = SegmentOptions(device="cpu,cpu", precision="fp32")
    seen = []

    def cancel_after_progress():
        return bool(seen)

    with pytest.raises(Cancelled):
        segment(FIXTURE, str(out / "c.tif"), model, confidence_path=str(out / "p.tif"),
                vector_path=str(out / "v.gpkg"), options=opts, progress=seen.append, cancel=cancel_after_progress)
    assert _outputs_left(out) == []
    assert not multiprocessing.active_children()

    killed = []

    def kill_one_after_progress():
        if seen and not killed:
            child = multiprocessing.active_children()[0]
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)
        return False

    seen.clear()
    with pytest.raises(RuntimeError, match=r"stopped \(signal 9"):
        segment(FIXTURE, str(out / "c.tif"), model, confidence_path=str(out / "p.tif"),
                vector_path=str(out / "v.gpkg"), options=opts, progress=seen.append, cancel=kill_one_after_progress)
    assert killed and _outputs_left(out) == []
    assert not multiprocessing.active_children()
