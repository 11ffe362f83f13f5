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
from landcover_plugin.core.many import segment_many  # noqa: E402
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


def _network_holders(client) -> list[str]:
    """The workers holding the network's task result, as the scheduler sees it."""
    return sorted({w for key, workers in client.who_has().items() if str(key).startswith("landcover-network-")
                   for w in workers})


@pytest.mark.parametrize("workers, victims", [
    (2, "network"),  # every worker holding the network (scattered data would be gone for good)
    (1, "all"),  # the only worker, which its nanny starts again
    (3, "two"),  # two of three
])
def test_a_run_survives_losing_workers_and_gives_the_outputs_of_one_process(tall, model, tmp_path, workers,
                                                                            victims):
    from distributed import Client, LocalCluster

    one = segment(tall, str(tmp_path / "one.tif"), model, options=SegmentOptions(precision="fp32", device="cpu"))
    logs = []
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            Client(lc) as client:
        client.wait_for_workers(workers)  # under load one may register late: never kill fewer than meant
        killed = []

        def kill(fraction):
            if fraction > 0 and not killed:  # a block is in: the others are running or waiting
                pids = client.run(os.getpid)
                chosen = {"network": _network_holders(client), "all": list(pids),
                          "two": sorted(pids)[:2]}[victims]
                for address in chosen:
                    os.kill(pids[address], signal.SIGKILL)
                killed.extend(chosen)

        result = segment(tall, str(tmp_path / "c.tif"), model, progress=kill, log=logs.append, options=SegmentOptions(
            precision="fp32", device="cpu", cluster=Cluster(client, str(tmp_path / "spool"), block_size=300)))
    assert killed
    assert (_read(result.class_path) == _read(one.class_path)).all()


def _dask_process(tmp_path, *args):
    """`dask scheduler` or `dask worker` as a process of its own, as on a real cluster (a worker without a
    nanny: nothing starts it again once it is killed), with this package importable."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_" + args[0], *args[1:],
                             "--scheduler-file", str(tmp_path / "scheduler.json")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_cluster_left_without_workers_ends_the_run_with_its_blocks_kept_and_a_rerun_resumes(
        tall, model, tmp_path, monkeypatch):
    from distributed import Client

    from landcover_plugin.core.inference import cluster as cluster_mod

    monkeypatch.setattr(cluster_mod, "NO_WORKER_TIMEOUT_S", 3.0)
    monkeypatch.setattr(cluster_mod, "WORKERS_CHECK_S", 0.5)
    spool = str(tmp_path / "spool")
    scheduler = _dask_process(tmp_path, "scheduler", "--port", "0", "--dashboard-address", ":0")
    worker = _dask_process(tmp_path, "worker", "--no-nanny", "--nthreads", "1")
    try:
        with Client(scheduler_file=str(tmp_path / "scheduler.json"), timeout=60) as client:
            client.wait_for_workers(1, timeout=60)

            def kill_the_worker(fraction):
                if fraction > 0 and worker.poll() is None:
                    worker.kill()

            with pytest.raises(RuntimeError, match="no worker for 3 s.*kept in.*run the same command again"):
                segment(tall, str(tmp_path / "c.tif"), model, progress=kill_the_worker, options=SegmentOptions(
                    precision="fp32", device="cpu", cluster=Cluster(client, spool, block_size=300)))
            assert not os.path.exists(tmp_path / "c.tif")
            kept = [f for _, _, files in os.walk(spool) for f in files if f.endswith(".npy")]
            assert 1 <= len(kept) < 4
            worker = _dask_process(tmp_path, "worker", "--no-nanny", "--nthreads", "1")  # workers back
            logs = []
            again = segment(tall, str(tmp_path / "c.tif"), model, log=logs.append, options=SegmentOptions(
                precision="fp32", device="cpu", cluster=Cluster(client, spool, block_size=300)))
    finally:
        for process in (worker, scheduler):
            process.kill()
            process.wait()
    assert any(f"{len(kept)} already done" in m for m in logs)
    one = segment(tall, str(tmp_path / "one.tif"), model, options=SegmentOptions(precision="fp32", device="cpu"))
    assert (_read(again.class_path) == _read(one.class_path)).all()


def test_bad_inputs_are_reported_each_and_the_others_finish(rasters, model, tmp_path, monkeypatch):
    from landcover_plugin.core import many

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


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """An odd-sized raster in a geographic CRS with nodata pixels and an alpha band that masks a corner."""
    pixels = fixture_pixels()[:, :701, :587].copy()
    pixels[:, 300:340, 100:500] = 0  # nodata across a block border
    alpha = np.full(pixels.shape[1:], 255, np.uint8)
    alpha[600:, 400:] = 0
    return write_raster(tmp_path_factory.mktemp("odd") / "odd.tif", np.concatenate([pixels, alpha[None]]),
                        crs="EPSG:4326", transform=from_origin(55.2, 25.1, 5e-6, 5e-6), nodata=0, alpha=True)


@pytest.mark.parametrize("block_size", [256, 333, 701])  # 256: the smallest, a GeoTIFF block of rows
def test_any_block_size_from_the_tile_up_on_an_odd_geographic_raster_with_nodata_equals_one_process(
        cluster, odd, model, tmp_path, block_size):
    from distributed import Client

    one = segment(odd, str(tmp_path / "one.tif"), model, options=OPTIONS)
    with Client(cluster.scheduler_address) as client:
        blocks = segment(odd, str(tmp_path / "blocks.tif"), model, options=SegmentOptions(
            precision="fp32", min_area=2.0, device="cpu", cluster=Cluster(client, str(tmp_path / "spool"),
                                                                          block_size=block_size)))
    a, b = _read(one.class_path), _read(blocks.class_path)
    assert (a == b).all() and (a == 255).sum() > 40 * 400  # nodata and alpha are nodata in both


def test_auto_runs_the_same_precision_and_map_in_one_process_and_on_a_cluster_cold_or_warm(tiny_int8, tmp_path):
    """A real image above int8's threshold on a CPU without bf16 kernels, as scripts/segment.py runs it: on a
    cluster with an empty cache (the workers build the package), then in one process with it cached. Before,
    the cluster ran fp32 and one process int8 only where a package was cached."""
    import json

    from landcover_plugin.core.model import quantize

    pixels = fixture_pixels()
    mosaic = np.block([[pixels, pixels[:, :, ::-1]], [pixels[:, ::-1], pixels[:, ::-1, ::-1]]])  # 1536 x 1536
    image = write_raster(tmp_path / "mosaic.tif", mosaic, crs="EPSG:32640", transform=from_origin(300000, 2780000,
                                                                                                  0.5, 0.5))
    assert mosaic.shape[1] * mosaic.shape[2] >= quantize.INT8_MIN_PIXELS
    path = tiny_int8
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "LANDCOVER_CACHE_DIR": str(tmp_path / "cache")}  # no bf16

    def run(name, *where):
        done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "segment.py"), image,
                               str(tmp_path / name), "--model", path, "--device", "cpu", "--no-polygons", "--json",
                               *where], capture_output=True, text=True, env=env, timeout=170)
        assert done.returncode == 0, done.stderr[-2000:]
        result = json.loads(done.stdout.strip().splitlines()[-1])["inputs"][0]
        return result["precision"], result["precision_reason"], _read(str(tmp_path / name / "classes.tif"))

    if not quantize.int8_available():
        pytest.skip("torchao or a C++ compiler is missing")
    # the decision does not look at the cache (test_precision), so two runs cover both paths and both caches
    runs = [run("cluster-cold", "--workers", "2", "--block-size", "700"), run("one-warm")]
    assert [r[0] for r in runs] == ["int8"] * 2 and "2 MP" in runs[0][1] and runs[0][1] == runs[1][1]
    assert (runs[0][2] == runs[1][2]).all()


def test_dynamic_world_in_blocks_equals_one_process(cluster, tmp_path):
    """A model whose edge windows run cropped (edges "network") and must start on even pixels: 1100 rows in
    three blocks give the one-process map."""
    from distributed import Client

    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model

    dn = np.load(os.path.join(ROOT, "tests", "data", "dynamic_world", "tf_reference.npz"))["dn"]
    data = np.concatenate([dn, dn[:, ::-1]] * 4, axis=1)[:, :1100, :150]
    path = str(tmp_path / "s2.tif")
    with rasterio.open(path, "w", driver="GTiff", width=150, height=1100, count=9, dtype="uint16",
                       crs="EPSG:32643", transform=from_origin(500000, 3370000, 10, 10)) as ds:
        ds.write(data)
    dw = load_model(resolve_model_path("dynamic_world"))
    options = SegmentOptions(precision="fp32", device="cpu", tile_size=128, overlap=48)
    one = segment(path, str(tmp_path / "one.tif"), dw, options=options)
    with Client(cluster.scheduler_address) as client:
        blocks = segment(path, str(tmp_path / "blocks.tif"), dw, options=SegmentOptions(
            precision="fp32", device="cpu", tile_size=128, overlap=48,
            cluster=Cluster(client, str(tmp_path / "spool"), block_size=256)))
    from landcover_plugin.core.inference.cluster import plan_blocks

    assert len(plan_blocks(1100, 150, 256, 128)) == 3
    assert (_read(one.class_path) == _read(blocks.class_path)).all()
