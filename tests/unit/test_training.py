import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import write_raster

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.model.model_file import load_model
from landcover_plugin.core.training.data import Labelled, WindowSampler, load_pairs, read_image, split
from landcover_plugin.core.training.losses import combined_loss, dice_loss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "scripts", "train.py")
COLOURS = np.array([[200, 180, 150], [180, 40, 30], [40, 140, 60], [30, 90, 200], [90, 90, 90]], np.float32)


def _pattern(seed, size=96):
    """A learnable scene: rectangles whose colour gives their class, with noise."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(8):
        c = rng.integers(1, 5)
        y, x = rng.integers(0, size - 16, 2)
        h, w = rng.integers(10, 40, 2)
        mask[y:y + h, x:x + w] = c
    img = COLOURS[mask].transpose(2, 0, 1) + rng.normal(0, 12, (3, size, size))
    return np.clip(img, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def pattern_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pattern")
    (d / "images").mkdir()
    (d / "masks").mkdir()
    for i in range(6):
        img, mask = _pattern(i)
        mask[:3, :3] = 255  # some ignored pixels
        write_raster(d / "images" / f"scene{i}.tif", img)
        write_raster(d / "masks" / f"scene{i}.png", mask, driver="PNG")
    return d


def _train(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, TRAIN, *args], capture_output=True, text=True, timeout=300, cwd=cwd,
                          env=env)


COMMON = ["--tile", "64", "--infer-tile", "64", "--infer-overlap", "8", "--base-width", "8", "--depth", "2",
          "--batch-size", "8", "--workers", "0", "--device", "cpu", "--val-pattern", "scene[45]", "--passes", "4"]


def _history(log_dir):
    with open(os.path.join(log_dir, "epochs.csv")) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pattern_dir):
    """(folder, completed process) of one training on the pattern: the model m.safetensors, its log m_log/.
    Shared: the fine-tuning test starts from it."""
    folder = tmp_path_factory.mktemp("trained")
    r = _train(str(pattern_dir / "images"), str(pattern_dir / "masks"), "--out", str(folder / "m.safetensors"),
               "--epochs", "20", "--lr", "5e-3", *COMMON)
    return folder, r


def test_training_learns_a_pattern_well_above_chance(trained):
    tmp_path, r = trained
    out = tmp_path / "m.safetensors"
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _history(str(tmp_path / "m_log"))
    first, best = float(rows[0]["val_miou"]), max(float(r["val_miou"]) for r in rows)
    assert best > 0.7 and best > first, rows
    net, spec = load_model(str(out))
    assert spec.training["validation"]["val_miou"] == pytest.approx(best, abs=1e-4)
    assert spec.training["validation_files"] == ["scene4", "scene5"]
    assert spec.tile_size == 64 and spec.overlap == 8 and len(spec.mean) == 3
    assert "int8" not in spec.training  # measured only when asked (--int8-check)
    for name in ("curves.png", "confusion.png", "checkpoint.pt"):
        assert os.path.getsize(tmp_path / "m_log" / name) > 0
    assert json.loads(r.stdout.strip().splitlines()[-1])["best_val_miou"] == pytest.approx(best, abs=1e-4)


def test_resume_continues_from_the_checkpoint(tmp_path, pattern_dir):
    """A resumed run goes on from the checkpoint's optimiser and schedule: Adam's step count and the schedule's
    position carry on from the first run's instead of starting again."""
    out = tmp_path / "m.safetensors"
    base = [str(pattern_dir / "images"), str(pattern_dir / "masks"), "--out", str(out), *COMMON, "--passes", "1"]
    assert _train(*base, "--epochs", "2").returncode == 0
    checkpoint = tmp_path / "m_log" / "checkpoint.pt"
    first = torch.load(checkpoint, weights_only=True)
    steps = first["step"]
    assert steps > 2 and first["scheduler"]["last_epoch"] == steps
    assert all(int(s["step"]) == steps for s in first["optimizer"]["state"].values())
    r = _train(*base, "--epochs", "3", "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed after epoch 2" in r.stderr
    assert [row["epoch"] for row in _history(str(tmp_path / "m_log"))] == ["0", "1", "2", "3"]
    second = torch.load(checkpoint, weights_only=True)
    assert second["epoch"] == 2 and second["step"] == steps + steps // 2  # one more epoch of the same length
    assert second["scheduler"]["last_epoch"] == second["step"]
    assert all(int(s["step"]) == second["step"] for s in second["optimizer"]["state"].values())
    shutil.rmtree(tmp_path / "m_log")
    r = _train(*base, "--epochs", "3", "--resume")
    assert r.returncode == 2 and "no checkpoint" in r.stderr and "Traceback" not in r.stderr


def test_two_process_ddp_on_cpu(tmp_path, pattern_dir):
    """Two ranks under torchrun: they end with the same weights (gradients averaged every step) after each
    drew windows of its own, and rank 0 writes the model."""
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    out = tmp_path / "ddp.safetensors"
    # torchrun and gloo find their address from the host name, which a fresh chroot or container may not
    # resolve (torchrun then waits forever): the loopback interface is enough for one machine.
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PROBE_DIR=str(tmp_path))
    r = subprocess.run([torchrun, "--standalone", "--local-addr", "127.0.0.1", "--nproc_per_node=2",
                        os.path.join(os.path.dirname(__file__), "ddp_probe.py"), str(pattern_dir / "images"),
                        str(pattern_dir / "masks"), "--out", str(out), "--epochs", "2", *COMMON],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [row["epoch"] for row in _history(str(tmp_path / "ddp_log"))] == ["0", "1", "2"]  # 0: the start
    ranks = [json.loads((tmp_path / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] > 2
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["drawn"] and not set(ranks[0]["drawn"]) & set(ranks[1]["drawn"])
    load_model(str(out))


def test_custom_class_table(tmp_path, pattern_dir):
    classes = [{"id": i, "name": f"c{i}", "color": "#{:02x}{:02x}{:02x}".format(*COLOURS[i].astype(int))}
               for i in range(5)] + [{"id": 9, "name": "unused", "color": "#ffffff"}]
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    out = tmp_path / "m.safetensors"
    r = _train(str(pattern_dir / "images"), str(pattern_dir / "masks"), "--out", str(out), "--epochs", "1",
               "--classes", str(tmp_path / "classes.json"), *COMMON)
    assert r.returncode == 0, r.stderr[-2000:]
    _, spec = load_model(str(out))
    assert [c.id for c in spec.classes] == [0, 1, 2, 3, 4, 9] and spec.classes[5].name == "unused"
    bad = [{"id": 0, "name": "only"}]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    r = _train(str(pattern_dir / "images"), str(pattern_dir / "masks"), "--out", str(out), "--classes",
               str(tmp_path / "bad.json"), *COMMON)
    assert r.returncode == 2 and "color" in r.stderr


def test_fine_tuning_starts_from_a_model_file(tmp_path, pattern_dir, trained):
    data = [str(pattern_dir / "images"), str(pattern_dir / "masks")]
    first = trained[0] / "m.safetensors"
    assert trained[1].returncode == 0, trained[1].stderr[-2000:]
    start = max(float(r["val_miou"]) for r in _history(str(trained[0] / "m_log")))  # the epoch the file keeps
    # Other architecture options are overridden by the file's; a tiny learning rate keeps what it learnt.
    tuned = tmp_path / "tuned.safetensors"
    r = _train(*data, "--out", str(tuned), "--epochs", "1", "--lr", "1e-6", "--init", str(first), *COMMON,
               "--base-width", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "starting from" in r.stderr
    net, spec = load_model(str(tuned))
    _, first_spec = load_model(str(first))
    assert spec.base_width == 8 and spec.mean == first_spec.mean
    rows = _history(str(tmp_path / "tuned_log"))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert float(rows[0]["val_miou"]) == pytest.approx(start, abs=1e-4)  # epoch 0: the --init model, unchanged
    assert float(rows[1]["val_miou"]) > max(0.5, start - 0.1)
    assert spec.training["validation"]["val_miou"] == pytest.approx(max(float(r["val_miou"]) for r in rows), abs=1e-4)
    # A different class table keeps the features and starts a new classifier head.
    classes = [{"id": i, "name": f"c{i}", "color": "#808080"} for i in range(5)]
    (tmp_path / "classes.json").write_text(json.dumps(classes))
    r = _train(*data, "--out", str(tmp_path / "other.safetensors"), "--epochs", "1", "--init", str(first),
               "--classes", str(tmp_path / "classes.json"), *COMMON)
    assert r.returncode == 0 and "classifier head starts afresh" in r.stderr, r.stderr[-2000:]
    r = _train(*data, "--out", str(tmp_path / "x.safetensors"), "--init", str(pattern_dir / "images" / "scene0.tif"),
               *COMMON)
    assert r.returncode == 2 and "--init" in r.stderr and "Traceback" not in r.stderr


def test_int8_check_records_int8_agreement_on_the_validation_images(tmp_path, pattern_dir):
    from landcover_plugin.core.model import quantize

    if not quantize.int8_available():
        pytest.skip("torchao or a C++ compiler is missing")
    out = tmp_path / "m.safetensors"
    env = {**os.environ, "LANDCOVER_CACHE_DIR": str(tmp_path / "cache")}
    r = _train(str(pattern_dir / "images"), str(pattern_dir / "masks"), "--out", str(out), "--epochs", "2",
               "--lr", "5e-3", "--int8-check", *COMMON, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    record = load_model(str(out))[1].training["int8"]
    assert record["scheme"] == quantize.SCHEME and 0.5 < record["agreement"] <= 1.0
    assert record["images"].startswith("2 validation images or blocks") and "int8 labels agreed" in r.stderr
    assert list((tmp_path / "cache" / "int8").glob("*.pt2"))  # compiled once, for the segment runs after


def test_masks_with_unknown_ids_are_refused(tmp_path):
    img, mask = _pattern(0, 32)
    mask[0, 0] = 7
    write_raster(tmp_path / "a.tif", img)
    write_raster(tmp_path / "a_mask.png", mask, driver="PNG")
    with pytest.raises(InputError, match="class ids \\[7\\]"):
        load_pairs([(str(tmp_path / "a.tif"), str(tmp_path / "a_mask.png"))], (1, 2, 3), range(5))


def test_plain_images_read_without_gdal(tmp_path, monkeypatch):
    img, mask = _pattern(1, 40)
    path = write_raster(tmp_path / "m.png", mask, driver="PNG")
    expected = read_image(path)
    monkeypatch.setitem(sys.modules, "rasterio", None)  # as on a machine without rasterio
    np.testing.assert_array_equal(read_image(path), expected)


def test_split_by_pattern_and_by_fraction():
    items = [Labelled(f"tile{t}_part{p}", np.zeros((3, 4, 4), np.uint8), np.zeros((4, 4), np.uint8))
             for t in (1, 2, 3) for p in (1, 2)]
    train, val = split(items, r"^tile(2)_", 0.0, 0)
    assert [s.name for s in val] == ["tile2_part1", "tile2_part2"] and len(train) == 4
    a = split(items, None, 0.34, seed=5)
    b = split(items, None, 0.34, seed=5)
    assert [s.name for s in a[1]] == [s.name for s in b[1]] and len(a[1]) == 2
    with pytest.raises(InputError, match="No training images"):
        split(items, "tile", 0.0, 0)


def test_window_sampling_is_reproducible_and_favours_rare_classes():
    img, mask = _pattern(3, 128)
    mask[:] = 0
    mask[60:64, 60:64] = 3  # a rare class: 16 of 16384 pixels
    items = [Labelled("a", img, mask)]
    s = WindowSampler(items, range(5), 32, rare_fraction=0.5, seed=1)
    a, b = s.draw(2, 7), s.draw(2, 7)
    np.testing.assert_array_equal(a[0], b[0])
    rare = sum((s.draw(0, i)[1] == 3).any() for i in range(200))
    plain = WindowSampler(items, range(5), 32, rare_fraction=0.0, seed=1)
    rare_plain = sum((plain.draw(0, i)[1] == 3).any() for i in range(200))
    assert rare > 2 * rare_plain and rare > 60


def test_losses_ignore_255_and_reward_the_right_answer():
    target = torch.randint(0, 4, (2, 16, 16))
    target[:, :2] = 255
    good = torch.nn.functional.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 20
    bad = torch.roll(good, 1, dims=1)
    assert dice_loss(good, target) < 0.01 < dice_loss(bad, target)
    for kind in ("dice", "focal"):
        loss = combined_loss(kind, torch.ones(4))
        assert loss(good, target) < loss(bad, target)
        assert torch.isfinite(loss(good, torch.full_like(target, 255)))
    # Dice charges for a class predicted where the labels have none as much as for confusing two present
    # classes; counting only labelled classes, such false alarms would cost half as much.
    halves = torch.zeros((1, 16, 16), dtype=torch.long)
    halves[:, 8:] = 1

    def predicting(wrong):
        pred = halves.clone()
        pred[:, :2] = wrong  # a quarter of class 0's pixels
        return torch.nn.functional.one_hot(pred, 4).permute(0, 3, 1, 2).float() * 20

    assert dice_loss(predicting(3), halves) > dice_loss(predicting(1), halves) > 0.01


def _polygons(path, crs_epsg, features, field_type="int", driver="GPKG"):
    from osgeo import ogr, osr

    ds = ogr.GetDriverByName(driver).CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(crs_epsg)
    layer = ds.CreateLayer("labels", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("cls", ogr.OFTInteger if field_type == "int" else ogr.OFTString))
    for wkt, value in features:
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        f.SetField("cls", value)
        layer.CreateFeature(f)
    ds = None
    return str(path)


@pytest.fixture()
def labelled_raster(tmp_path):
    from rasterio.transform import from_origin

    img, _ = _pattern(2, 120)
    return write_raster(tmp_path / "ortho.tif", img, crs="EPSG:32640", transform=from_origin(500000, 2800000, 1, 1))


def test_vector_labels_are_rasterized_on_the_raster_grid(tmp_path, labelled_raster):
    pytest.importorskip("osgeo")
    from landcover_plugin.core.io.labels import rasterize_labels
    from landcover_plugin.core.model.classes import DEFAULT_CLASSES

    square = "POLYGON((500010 2799990, 500030 2799990, 500030 2799970, 500010 2799970, 500010 2799990))"
    strip = "POLYGON((500000 2799900, 500120 2799900, 500120 2799890, 500000 2799890, 500000 2799900))"
    gpkg = _polygons(tmp_path / "l.gpkg", 32640, [(square, 1), (strip, 4)])
    mask = rasterize_labels(labelled_raster, gpkg, "cls", DEFAULT_CLASSES)
    assert mask.shape == (120, 120)
    assert np.all(mask[10:30, 10:30] == 1) and np.all(mask[100:110, :] == 4)
    assert (mask == 255).sum() == 120 * 120 - 400 - 1200
    named = _polygons(tmp_path / "n.shp", 32640, [(square, "Building"), (strip, "road")], "str",
                      "ESRI Shapefile")
    np.testing.assert_array_equal(rasterize_labels(labelled_raster, named, "cls", DEFAULT_CLASSES), mask)
    # the same square given in geographic coordinates lands on the same pixels, give or take an edge
    from osgeo import ogr, osr

    utm, wgs = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(32640)
    wgs.ImportFromEPSG(4326)
    for s in (utm, wgs):
        s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    g = ogr.CreateGeometryFromWkt(square)
    g.Transform(osr.CoordinateTransformation(utm, wgs))
    geo = _polygons(tmp_path / "g.gpkg", 4326, [(g.ExportToWkt(), 1)])
    reproj = rasterize_labels(labelled_raster, geo, "cls", DEFAULT_CLASSES)
    assert abs(int((reproj == 1).sum()) - 400) <= 45
    with pytest.raises(InputError, match="no field 'missing'"):
        rasterize_labels(labelled_raster, gpkg, "missing", DEFAULT_CLASSES)
    bad = _polygons(tmp_path / "b.gpkg", 32640, [(square, "lava")], "str")
    with pytest.raises(InputError, match="neither a class id nor a class name"):
        rasterize_labels(labelled_raster, bad, "cls", DEFAULT_CLASSES)


def test_training_from_a_raster_and_polygons(tmp_path, labelled_raster):
    pytest.importorskip("osgeo")
    square = "POLYGON((500010 2799990, 500060 2799990, 500060 2799940, 500010 2799940, 500010 2799990))"
    rest = "POLYGON((500060 2799940, 500120 2799940, 500120 2799880, 500060 2799880, 500060 2799940))"
    gpkg = _polygons(tmp_path / "l.gpkg", 32640, [(square, 1), (rest, 0)])
    out = tmp_path / "v.safetensors"
    r = _train("--raster", labelled_raster, "--vector", gpkg, "--class-field", "cls", "--out", str(out),
               "--epochs", "1", *[a for a in COMMON if a not in ("--val-pattern", "scene[45]")])
    assert r.returncode == 0, r.stderr[-2000:]
    _, spec = load_model(str(out))
    assert "l.gpkg" in spec.training["data"]
    r = _train("--raster", labelled_raster, "--out", str(out))
    assert r.returncode == 2 and "one --vector for each --raster" in r.stderr


def test_starting_head_keeps_the_rows_of_classes_named_alike(tmp_path):
    from conftest import make_model

    from landcover_plugin.core.model.classes import LandClass
    from landcover_plugin.core.model.model_file import save_model
    from landcover_plugin.core.training.config import TrainConfig
    from landcover_plugin.core.training.fine_tune import start_model

    net, spec = make_model()
    path = str(tmp_path / "start.safetensors")
    save_model(path, net, spec)
    ours = (LandClass(0, "lava", "#ff0000"), LandClass(3, "Water", "#0000ff"), LandClass(5, "road", "#555555"))
    logged = []
    state, _ = start_model(TrainConfig(init=path), ours, 3, logged.append)
    head = net.state_dict()["head.weight"]
    assert torch.equal(state["head.weight"][1], head[3]) and torch.equal(state["head.weight"][2], head[4])
    assert state["head.weight"].shape[0] == 3 and not any(torch.equal(state["head.weight"][0], r) for r in head)
    assert any("but for the rows of Water, road" in m for m in logged)
    with pytest.raises(InputError, match="takes 3 bands, but 4 are given"):
        start_model(TrainConfig(init=path), ours, 4, logged.append)


def test_checkpoint_averaging_is_scored_and_kept_only_when_better(tmp_path, pattern_dir):
    data = [str(pattern_dir / "images"), str(pattern_dir / "masks")]
    out = tmp_path / "m.safetensors"
    r = _train(*data, "--out", str(out), "--epochs", "4", "--lr", "5e-3", "--average-last", "2", *COMMON,
               "--passes", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = _history(str(tmp_path / "m_log"))
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3", "4", "avg3-4"]
    net, spec = load_model(str(out))
    assert spec.training["validation"]["val_miou"] == pytest.approx(max(float(row["val_miou"]) for row in rows),
                                                                    abs=1e-4)
    # the file carries windows of its training imagery for int8 calibration
    windows = net.calibration_windows
    assert windows.shape[:2] == (16, 3) and windows.dtype == np.uint8 and windows.std() > 0
    # Without validation the average is the result.
    r = _train(*data, "--out", str(tmp_path / "n.safetensors"), "--epochs", "3", "--average-last", "3",
               *[a for a in COMMON if a not in ("--val-pattern", "scene[45]")], "--val-fraction", "0", "--passes", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "the mean of epochs 1-3" in r.stderr

    def strict(name):
        raise ValueError(f"{name} is not JSON")

    # the last line is strict JSON, with no mean IoU where nothing was validated (it said Infinity)
    assert json.loads(r.stdout.strip().splitlines()[-1], parse_constant=strict)["best_val_miou"] is None


def test_a_validation_pattern_matching_nothing_is_an_error(tmp_path, pattern_dir):
    r = _train(str(pattern_dir / "images"), str(pattern_dir / "masks"), "--out", str(tmp_path / "m.safetensors"),
               *COMMON, "--val-pattern", "^tile(1|4)_")
    assert r.returncode == 2 and "matches none of the 6 image names" in r.stderr and "Traceback" not in r.stderr
