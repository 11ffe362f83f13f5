"""The pure parts of training from a user's labels: class tables, held-out blocks, schedules."""
import numpy as np
import pytest

from landcover_plugin.core.errors import InputError
from landcover_plugin.core.io.class_table import class_table, head_rows, lookup, value_to_id
from landcover_plugin.core.model.classes import DEFAULT_CLASSES, LandClass
from landcover_plugin.core.training.data import Labelled
from landcover_plugin.core.training.label_split import choose_blocks, spatial_split
from landcover_plugin.core.training.schedule import fit_schedule


def test_names_matching_the_starting_model_keep_its_ids_and_colours():
    classes = class_table(["Water", "lava", " water ", "Building", "ash"], DEFAULT_CLASSES)
    assert [(c.id, c.name) for c in classes] == [(0, "ash"), (1, "building"), (2, "lava"), (3, "water")]
    assert classes[3].color == DEFAULT_CLASSES[3].color and classes[1].color == DEFAULT_CLASSES[1].color
    assert len({c.color for c in classes}) == 4
    assert head_rows(classes, DEFAULT_CLASSES) == [(1, 1), (3, 3)]


def test_ids_take_names_and_colours_from_the_style_only():
    classes = class_table([7, 9, 7, "12"], DEFAULT_CLASSES, {"7": ("Forest", "#00ff00"), 9: ("water", "#0000ff")})
    assert [(c.id, c.name, c.color) for c in classes] == [(7, "Forest", "#00ff00"), (9, "water", "#0000ff"),
                                                          (12, "class 12", classes[2].color)]
    assert head_rows(classes, DEFAULT_CLASSES) == [(1, 3)]  # "water" is the starting model's class 3
    mapping = value_to_id(classes)
    assert lookup(mapping, "FOREST") == 7 and lookup(mapping, 12.0) == 12 and lookup(mapping, "lava") is None


def test_style_order_gives_the_ids_of_new_names():
    classes = class_table(["b", "a", "c"], (), {"c": ("c", "#111111"), "a": ("a", "#222222")})
    assert [(c.id, c.name, c.color) for c in classes][:2] == [(0, "c", "#111111"), (1, "a", "#222222")]
    assert classes[2].name == "b"


@pytest.mark.parametrize("values,message", [
    ([3, 3], "one class only"),
    (["forest"], "one class only"),
    ([], "no class values"),
    ([1, 300], "out of range"),
])
def test_class_tables_that_cannot_train(values, message):
    with pytest.raises(InputError, match=message):
        class_table(values, DEFAULT_CLASSES)


def _sparse_scene(seed=0, size=512, n=40):
    rng = np.random.default_rng(seed)
    mask = np.full((size, size), 255, np.uint8)
    for k in range(n):
        y, x = rng.integers(0, size - 30, 2)
        mask[y:y + 30, x:x + 30] = k % 3 if k % 10 else 3  # class 3 is rare
    return Labelled("scene", rng.integers(0, 255, (3, size, size), dtype=np.uint8), mask)


def test_held_out_blocks_are_whole_blocks_with_context_and_leave_training_disjoint():
    item = _sparse_scene()
    train, val = spatial_split([item], range(4), 0.25, block=128, context=16, seed=3)
    labelled = (item.mask != 255).sum()
    held = sum((v.mask != 255).sum() for v in val)
    assert 0.15 < held / labelled < 0.5
    assert (train[0].mask != 255).sum() + held == labelled  # every label goes one way
    for v in val:
        y, x = (int(k) for k in v.name.split("@")[1].split(","))
        # the block's labels, unlabelled in training; imagery around it for context, unlabelled
        block = item.mask[y:y + 128, x:x + 128]
        assert np.all(train[0].mask[y:y + 128, x:x + 128] == 255)
        y0, x0 = max(0, y - 16), max(0, x - 16)
        np.testing.assert_array_equal(v.image, item.image[:, y0:y0 + v.image.shape[1], x0:x0 + v.image.shape[2]])
        np.testing.assert_array_equal(v.mask[y - y0:y - y0 + block.shape[0], x - x0:x - x0 + block.shape[1]], block)
        assert (v.mask != 255).sum() == (block != 255).sum()
    again = spatial_split([item], range(4), 0.25, block=128, context=16, seed=3)[1]
    assert [v.name for v in again] == [v.name for v in val]


def test_rare_classes_are_served_first_but_keep_training_pixels():
    counts = np.array([[100, 0], [100, 0], [100, 0], [100, 10], [100, 10], [100, 0]])
    for seed in range(5):
        taken = choose_blocks(counts, 0.3, seed)
        val = counts[taken].sum(0)
        assert val[1] == 10  # one of the two blocks with the rare class, never both
        assert val[0] <= 300


def test_validation_share_out_of_range_or_labels_too_few():
    item = _sparse_scene(n=0)
    item.mask[5:15, 5:15] = 1  # one small polygon: no block to hold out
    with pytest.raises(InputError, match="at most half"):
        spatial_split([item], range(4), 0.6)
    with pytest.raises(InputError, match="too few or too close"):
        spatial_split([item], range(4), 0.2)
    assert spatial_split([item], range(4), 0.0) == ([item], [])


def test_schedule_fills_or_fits_the_budget():
    # as many epochs of 20 steps (1 s each) and 5 s of validation as fit in 250 s
    s = fit_schedule(250, 1.0, 5.0, 20, None)
    assert (s.epochs, s.steps_per_epoch) == (10, 20)
    # ten epochs asked for, 200 s: shorter epochs
    s = fit_schedule(200, 1.0, 2.0, 50, 10)
    assert (s.epochs, s.steps_per_epoch) == (10, 18)
    # too short for ten epochs of the minimum length: fewer epochs
    s = fit_schedule(60, 1.0, 2.0, 50, 10)
    assert s.steps_per_epoch == 10 and s.epochs == 5
    # a huge budget: no more than 200 epochs, longer ones instead
    s = fit_schedule(1e6, 1.0, 0.0, 5, None)
    assert s.epochs == 200 and s.steps_per_epoch == 5000
    with pytest.raises(InputError, match="too small for one epoch"):
        fit_schedule(10, 2.0, 5.0, 50, None)


def test_head_rows_by_name_ignore_case_and_spaces():
    ours = (LandClass(0, "Woodland/Vegetation", "#000000"), LandClass(1, "snow", "#ffffff"))
    assert head_rows(ours, DEFAULT_CLASSES) == [(0, 2)]


def test_sparse_polygons_cover_the_share_with_every_class(tmp_path):
    """scripts/sparse_labels.py: regions within cells, classes taking turns, never past the share."""
    import os
    import sys

    from conftest import write_raster
    from rasterio.transform import from_origin

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "scripts"))
    from sparse_labels import sparse_polygons

    mask = np.zeros((256, 256), np.uint8)
    mask[:, 128:] = 2
    mask[100:120, 10:30] = 3  # a small rare class: 400 pixels
    mask[0:8, 0:8] = 255
    path = write_raster(tmp_path / "m.tif", mask, crs="EPSG:32640", transform=from_origin(1000, 2000, 2, 2))
    polygons, crs, covered = sparse_polygons([path], 0.1, seed=4, cell=32, min_pixels=16)
    assert 0.05 < covered <= 0.1 and "32640" in crs
    assert {cid for cid, _ in polygons} == {0, 2, 3}
    from rasterio.features import rasterize

    drawn = rasterize([(g, c) for c, g in polygons], out_shape=mask.shape, transform=from_origin(1000, 2000, 2, 2),
                      fill=255, dtype="uint8")
    assert np.array_equal(drawn[drawn != 255], mask[drawn != 255])  # every polygon holds its own class only
    assert (drawn != 255).sum() == pytest.approx(covered * mask.size)


def test_rasters_of_several_resolutions_are_read_at_one(tmp_path):
    """Two rasters at 0.5 m and 1 m are read at their median, 0.75 m; labels land on the resampled grids."""
    pytest.importorskip("osgeo")
    from conftest import write_raster
    from osgeo import ogr, osr
    from rasterio.transform import from_origin

    from landcover_plugin.core.training.config import Hooks
    from landcover_plugin.core.training.job import Labels, load_labelled, target_gsd

    fine = write_raster(tmp_path / "fine.tif", np.full((3, 120, 120), 50, np.uint8), crs="EPSG:32640",
                        transform=from_origin(500000, 2800000, 0.5, 0.5))
    coarse = write_raster(tmp_path / "coarse.tif", np.full((3, 60, 60), 90, np.uint8), crs="EPSG:32640",
                          transform=from_origin(500000, 2800000, 1.0, 1.0))
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "l.gpkg"))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32640)
    layer = ds.CreateLayer("l", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    for wkt, kind in (("POLYGON((500000 2800000, 500030 2800000, 500030 2799970, 500000 2799970, 500000 2800000))",
                       "sand"), ("POLYGON((500030 2799970, 500060 2799970, 500060 2799940, 500030 2799940, "
                                 "500030 2799970))", "grass")):
        f = ogr.Feature(layer.GetLayerDefn())
        f.SetGeometry(ogr.CreateGeometryFromWkt(wkt))
        f.SetField("kind", kind)
        layer.CreateFeature(f)
    ds = None
    assert target_gsd([fine, coarse], None) == pytest.approx(0.75)
    assert target_gsd([fine, coarse], 2.0) == 2.0  # the starting model's, when it declares one
    classes = class_table(["sand", "grass"])
    labels = Labels(vector=str(tmp_path / "l.gpkg"), field="kind")
    items = load_labelled([(fine, labels), (coarse, labels)], classes, (1, 2, 3), 0.75, Hooks(log=lambda m: None))
    assert [s.image.shape[1:] for s in items] == [(80, 80), (80, 80)]  # 60 m at 0.75 m
    for s in items:
        assert (s.mask == 1).sum() == 40 * 40 and (s.mask == 0).sum() == 40 * 40  # 30 m squares
        assert np.all(s.mask[:40, :40] == 1)  # "sand" sorts after "grass": id 1


def test_a_time_budget_is_replanned_from_measured_times():
    """--max-minutes: the schedule fitted after the first timed steps, then fitted again after each epoch from
    the times measured so far: slower steps than first measured leave fewer epochs, and the run stops in time."""
    import time

    from landcover_plugin.core.training.budget import CALIBRATION_STEPS, Budget
    from landcover_plugin.core.training.config import TrainConfig

    budget = Budget(TrainConfig(max_minutes=1.0, epochs=None, batch_size=8, tile=64), data_steps=10, val_pixels=0,
                    rank=0)
    now = time.perf_counter()
    budget.t_start = now
    budget.step_s, budget.val_s = 0.5, 1.0
    line = budget.fit(0, now, CALIBRATION_STEPS)
    assert budget.plan.epochs == 9 and budget.plan.steps_per_epoch == 10  # 58.8 s left, 6 s an epoch
    assert "9 epochs of 10 steps fit in 1 minutes" in line
    budget.t_start = time.perf_counter() - 12.0  # two epochs took 12 s
    budget.step_s, budget.val_s = 2.0, 1.0  # and steps now take four times as long: 21 s an epoch
    budget.replan(2, 20)
    assert budget.plan.epochs == 2 + 2 and budget.total_steps == 20 + 2 * 10
    assert not budget.out_of_time()
    budget.t_start = time.perf_counter() - 59.0
    assert budget.out_of_time() and not budget.overrun()
    budget.replan(4, 40)
    assert budget.plan.epochs == 4  # no time for another epoch: the run ends where it is
    budget.t_start = time.perf_counter() - 61.0
    assert budget.overrun()


def test_augmented_images_stay_aligned_with_their_masks():
    """Windows drawn with scale jitter, resized, flipped and turned: the image's first band, made equal to 40 x
    the mask's class, still says each labelled pixel's class after augmentation (but where resampling blends
    class edges), for every one of the eight flips and turns."""
    import torch

    from landcover_plugin.core.training.data import WindowSampler, augment_batch

    rng = np.random.default_rng(3)
    mask = np.kron(rng.integers(0, 5, (12, 12)), np.ones((16, 16), np.int64)).astype(np.uint8)  # 192 x 192 blocks
    mask[:, :5] = 255  # an unlabelled strip
    image = np.stack([mask.astype(np.float32) * 40, rng.random(mask.shape, np.float32) * 255,
                      np.flipud(mask).astype(np.float32)])
    sampler = WindowSampler([Labelled("blocks", image, mask)], range(5), 64, 0.5, (0.75, 1.25), seed=1)
    draws = [sampler.draw(0, i) for i in range(64)]
    assert {d[3] for d in draws} == set(range(8)) and len({d[2] for d in draws}) > 4
    x, y = augment_batch([torch.from_numpy(d[0]).float() for d in draws], [torch.from_numpy(d[1]) for d in draws],
                         [d[2] for d in draws], [d[3] for d in draws], 64, 0.0, 0)
    labelled = y != 255
    agree = (torch.abs(x[:, 0] - 40 * y.float()) < 1.0)[labelled].float().mean()
    assert agree > 0.9
    for k in range(8):  # and each flip or turn on its own
        pick = torch.tensor([d[3] == k for d in draws])
        assert (torch.abs(x[pick, 0] - 40 * y[pick].float()) < 1.0)[labelled[pick]].float().mean() > 0.9
