"""Inputs of scripts/segment.py and blocks of a raster on a cluster: plain arithmetic, no Dask needed."""
import os

import pytest

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.inference.cluster import plan_blocks
from landcover_plugin.core.many import expand_inputs, output_dirs


def test_blocks_hold_about_the_pixels_asked_in_whole_rows_of_output_blocks():
    parts = plan_blocks(10000, 5000, 4096, tile=512)
    assert [p.rows for p in parts][:2] == [(0, 3328), (3328, 6656)] and parts[-1].rows == (9984, 10000)
    assert all(a % 256 == 0 for a, _ in (p.rows for p in parts))
    assert plan_blocks(4096, 4096, 4096, tile=512)[0].rows == (0, 4096)  # a sheet up to the size: one block
    # at least four tiles tall: each block also runs the strip above it
    assert plan_blocks(10000, 20000, 1024, tile=512)[0].rows == (0, 2048)
    with pytest.raises(InputError, match="at least 256"):
        plan_blocks(1000, 1000, 100)


def test_inputs_from_files_folders_and_globs_each_once(tmp_path):
    for name in ("b.tif", "a.tif", "notes.txt", "c.vrt"):
        (tmp_path / name).write_text("x")
    folder = str(tmp_path)
    assert expand_inputs([folder]) == [os.path.join(folder, n) for n in ("a.tif", "b.tif", "c.vrt")]
    assert expand_inputs([os.path.join(folder, "*.tif"), os.path.join(folder, "a.tif"), "/vsicurl/http://h/x.tif"]) \
        == [os.path.join(folder, "a.tif"), os.path.join(folder, "b.tif"), "/vsicurl/http://h/x.tif"]
    with pytest.raises(InputError, match="Nothing matches"):
        expand_inputs([os.path.join(folder, "*.jp2")])


def test_one_input_writes_in_the_folder_several_under_their_stems():
    assert output_dirs(["/d/a.tif"], "/out") == ["/out"]
    assert output_dirs(["/d/a.tif", "/e/a.tif", "/d/b.vrt"], "/out") == ["/out/a", "/out/a_2", "/out/b"]


def test_local_workers_take_a_gpu_each_in_turn(monkeypatch):
    import types

    import torch

    from landcover_plugin.core.inference import cluster

    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(name=3))
    assert cluster._worker_device("auto") == "cuda:1"
    assert cluster._worker_device("cpu") == "cpu"
    monkeypatch.setattr(distributed, "get_worker", lambda: types.SimpleNamespace(name="gpu-node-7"))
    assert cluster._worker_device("auto") == "auto"  # a worker per machine: its own GPU
