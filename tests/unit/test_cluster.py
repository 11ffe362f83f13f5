"""Rasters on a Dask cluster of two worker processes: the outputs of one process, blocks resumed, a worker lost."""
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from conftest import fixture_pixels, make_model, write_raster
from rasterio.transform import from_origin

pytest.importorskip("distributed")

from landcover_plugin.core.inference.cluster import Cluster  # noqa: E402
from landcover_plugin.core.inference.many import segment_many  # noqa: E402
from landcover_plugin.core.segment import SegmentOptions, segment  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPTIONS = SegmentOptions(precision="fp32", min_area=2.0, device="cpu")
# Workers keep torch's own thread count, as the one-process runs compared with do: on a CPU, runs with other
# thread counts round sums differently, and a near-tie between two classes can flip (bench.py cluster).


@pytest.fixture(autouse=True)
def time_limit():
    """A cluster that stops answering fails its test instead of holding up the suite."""
    def stop(signum, frame):
        raise TimeoutError("the Dask cluster test took over 180 s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(180)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc:
        yield lc


@pytest.fixture(scope="module")
def model():
    return make_model(tile=64, overlap=16)


@pytest.fixture(scope="module")
def rasters(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rasters")
    pixels = fixture_pixels()
    return [write_raster(folder / f"sheet{i}.tif", pixels[:, r:r + 320, c:c + 352], crs="EPSG:32640",
                         transform=from_origin(300000 + c / 2, 2780000 - r / 2, 0.5, 0.5))
            for i, (r, c) in enumerate([(0, 0), (0, 400), (400, 0), (400, 400)])]


@pytest.fixture(scope="module")
def tall(tmp_path_factory):
    """1024 rows: four blocks of 256 rows at --block-size 443."""
    pixels = fixture_pixels()
    data = np.concatenate([pixels, pixels[:, :256]], axis=1)[:, :, :512]
    return write_raster(tmp_path_factory.mktemp("tall") / "tall.tif", data, crs="EPSG:32640",
                        transform=from_origin(300000, 2780000, 0.5, 0.5))


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(1)


def _polygons(gpkg):
    from osgeo import ogr

    ds = ogr.Open(gpkg)
    areas = {}
    for f in ds.GetLayer(0):
        areas[f.GetField("class_id")] = areas.get(f.GetField("class_id"), 0.0) + f.GetField("area")
    return ds.GetLayer(0).GetFeatureCount(), areas


def test_four_rasters_on_two_workers_give_the_outputs_of_one_process(cluster, rasters, model, tmp_path):
    local = segment_many(rasters, str(tmp_path / "local"), model, OPTIONS, log=lambda m: None)
    remote = segment_many(rasters, str(tmp_path / "cluster"), model, OPTIONS, scheduler=cluster.scheduler_address,
                          log=lambda m: None)
    assert [r.error for r in local + remote] == [None] * 8
    assert sorted(os.listdir(tmp_path / "cluster")) == ["sheet0", "sheet1", "sheet2", "sheet3"]  # no spool left
    for a, b in zip(local, remote):
        assert "Dask" in b.result.device and "Dask" not in a.result.device
        assert (_read(os.path.join(a.out_dir, "classes.tif")) == _read(os.path.join(b.out_dir, "classes.tif"))).all()
        (count_a, areas_a), (count_b, areas_b) = (_polygons(os.path.join(d, "landcover.gpkg"))
                                                  for d in (a.out_dir, b.out_dir))
        assert count_a == count_b and areas_a.keys() == areas_b.keys()
        assert all(areas_b[k] == pytest.approx(areas_a[k], rel=1e-4) for k in areas_a)


def test_one_raster_in_four_blocks_equals_one_process(cluster, tall, model, tmp_path):
    from distributed import Client

    logs = []
    one = segment(tall, str(tmp_path / "one.tif"), model, options=OPTIONS, vector_path=str(tmp_path / "one.gpkg"))
    with Client(cluster.scheduler_address) as client:
        blocks = segment(tall, str(tmp_path / "blocks.tif"), model, vector_path=str(tmp_path / "blocks.gpkg"),
                         options=SegmentOptions(precision="fp32", min_area=2.0, device="cpu",
                                                cluster=Cluster(client, str(tmp_path / "spool"), block_size=443)),
                         log=logs.append)
    assert any("4 block(s) of rows" in m for m in logs)
    assert (_read(one.class_path) == _read(blocks.class_path)).all()
    assert [a.pixels for a in one.areas] == [a.pixels for a in blocks.areas]
    # regions across block borders are one polygon each, with the whole region's area
    (count_a, areas_a), (count_b, areas_b) = _polygons(one.vector_path), _polygons(blocks.vector_path)
    assert count_a == count_b and all(areas_b[k] == pytest.approx(areas_a[k], rel=1e-4) for k in areas_a)


def test_a_rerun_skips_the_blocks_an_interrupted_run_finished(cluster, tall, model, tmp_path):
    from distributed import Client

    from landcover_plugin.core.errors import Cancelled

    spool = str(tmp_path / "spool")
    seen = []
    with Client(cluster.scheduler_address) as client:
        opts = SegmentOptions(precision="fp32", device="cpu", cluster=Cluster(client, spool, block_size=443))
        with pytest.raises(Cancelled):  # stopped once half the blocks are in
            segment(tall, str(tmp_path / "c.tif"), model, options=opts, progress=seen.append,
                    cancel=lambda: bool(seen) and seen[-1] >= 0.4)
        assert not os.path.exists(tmp_path / "c.tif")
        kept = [f for _, _, files in os.walk(spool) for f in files if f.endswith(".npy")]
        assert 2 <= len(kept) < 4
        logs = []
        again = segment(tall, str(tmp_path / "c.tif"), model, options=opts, log=logs.append)
    assert any(f"{len(kept)} already done" in m for m in logs)
    one = segment(tall, str(tmp_path / "one.tif"), model, options=SegmentOptions(precision="fp32", device="cpu"))
    assert (_read(again.class_path) == _read(one.class_path)).all()
    assert not [f for _, _, files in os.walk(spool) for f in files]  # cleared once the outputs are in place


def test_a_worker_killed_during_the_run_still_gives_the_same_outputs(tall, model, tmp_path):
    from distributed import Client, LocalCluster

    one = segment(tall, str(tmp_path / "one.tif"), model, options=SegmentOptions(precision="fp32", device="cpu"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        pids = list(client.run(os.getpid).values())
        killed = []

        def kill_one(fraction):
            if fraction > 0 and not killed:  # a block is in: the others are running or waiting
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])

        result = segment(tall, str(tmp_path / "c.tif"), model, progress=kill_one, options=SegmentOptions(
            precision="fp32", device="cpu", cluster=Cluster(client, str(tmp_path / "spool"), block_size=300)))
    assert killed
    assert (_read(result.class_path) == _read(one.class_path)).all()


def test_bad_inputs_are_reported_each_and_the_others_finish(rasters, model, tmp_path, monkeypatch):
    from landcover_plugin.core.inference import many

    broken = tmp_path / "broken.tif"
    broken.write_text("not a raster")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "segment.py"), rasters[0], str(broken),
                          str(tmp_path / "out"), "--no-polygons", "--precision", "fp32"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1
    assert "broken.tif: FAILED: The input" in out.stderr and "cannot be opened as a raster" in out.stderr
    assert "1 of 2 inputs done, 1 failed" in out.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["sheet0"]
    monkeypatch.setattr(many, "CONNECT_TIMEOUT", "2s")
    results = segment_many(rasters[:2], str(tmp_path / "nowhere"), model, OPTIONS, scheduler="tcp://127.0.0.1:9",
                           log=lambda m: None)
    assert all("cannot be reached" in r.error for r in results)
    assert not os.path.exists(tmp_path / "nowhere")  # nothing left of a run that could not start
