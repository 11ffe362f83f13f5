"""landcover:train as users run it: toolbox parameters, sparse polygons, class tables, errors, cancel, models."""
import json
import os

import numpy as np
import pytest
import rasterio
from conftest import DATA, FIXTURE_MASK, fixture_pixels, qgis_process, write_raster
from qgis.core import (
    QgsApplication,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsVectorLayer,
)
from rasterio.transform import from_origin

from landcover_plugin.core.model.model_file import load_model, read_spec

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_PARAMS = ["INPUT", "LABELS", "CLASS_FIELD", "INIT_MODEL", "FROM_SCRATCH", "VALIDATION", "MAX_MINUTES", "EPOCHS",
                "TILE_SIZE", "BATCH_SIZE", "LEARNING_RATE", "DEVICE", "INT8_CHECK", "OUTPUT_MODEL",
                "OUTPUT_REPORT"]
# The sample's grid as `make demo-train` georeferences it; the committed polygons lie on it (EPSG:4326).
ORIGIN, PIXEL = (300000.0, 2780000.0), 0.5
POLYGONS = os.path.join(DATA, "dubai_tile7_005_crop_polygons.geojson")
FAST = {"TILE_SIZE": 64, "BATCH_SIZE": 4, "DEVICE": 1}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """The 768 x 768 sample, georeferenced in UTM 40N as the demo does, and its dense mask on the same grid."""
    d = tmp_path_factory.mktemp("sample")
    t = from_origin(*ORIGIN, PIXEL, PIXEL)
    image = write_raster(d / "sample.tif", fixture_pixels(), crs="EPSG:32640", transform=t)
    with rasterio.open(FIXTURE_MASK) as ds:
        mask = write_raster(d / "mask.tif", ds.read(1), crs="EPSG:32640", transform=t, nodata=255)
    return image, mask


@pytest.fixture(scope="module")
def start_model(small_model):
    """The starting model: small, so that training in tests takes seconds."""
    return small_model


def run(params, feedback=None):
    import processing

    return processing.run("landcover:train", params, context=QgsProcessingContext(),
                          feedback=feedback or QgsProcessingFeedback())


def _memory_polygons(features, crs="EPSG:32640", field_type="integer"):
    """A scratch layer as users digitize into: (WKT, value) features."""
    from qgis.core import QgsFeature, QgsGeometry

    layer = QgsVectorLayer(f"Polygon?crs={crs}&field=cls:{field_type}", "digitized", "memory")
    feats = []
    for wkt, value in features:
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromWkt(wkt))
        f.setAttributes([value])
        feats.append(f)
    layer.dataProvider().addFeatures(feats)
    return layer


def _box(col0, row0, col1, row1):
    x0, y0 = ORIGIN[0] + col0 * PIXEL, ORIGIN[1] - row0 * PIXEL
    x1, y1 = ORIGIN[0] + col1 * PIXEL, ORIGIN[1] - row1 * PIXEL
    return f"POLYGON(({x0} {y0}, {x1} {y0}, {x1} {y1}, {x0} {y1}, {x0} {y0}))"


def test_parameters_and_outputs(provider):
    alg = QgsApplication.processingRegistry().algorithmById("landcover:train")
    assert alg.displayName() == "Train land-cover model"
    assert [p.name() for p in alg.parameterDefinitions()] == TRAIN_PARAMS
    defaults = {p.name(): p.defaultValue() for p in alg.parameterDefinitions()}
    assert defaults["VALIDATION"] == 0.2 and defaults["MAX_MINUTES"] == 15 and defaults["FROM_SCRATCH"] is False
    assert defaults["EPOCHS"] is None and defaults["DEVICE"] == 0 and defaults["INT8_CHECK"] is False
    assert all(p.help() for p in alg.parameterDefinitions())
    assert {o.name() for o in alg.outputDefinitions()} >= {"VAL_MIOU", "INIT_VAL_MIOU", "OUTPUT_MODEL"}


def test_sparse_polygons_by_name_in_another_crs(provider, sample, start_model, tmp_path):
    """The committed polygons (10% of the sample, EPSG:4326, class names) train a model segment can use."""
    image, mask = sample
    out = run({"INPUT": [image], "LABELS": POLYGONS, "CLASS_FIELD": "class", "INIT_MODEL": start_model,
               "EPOCHS": 2, "MAX_MINUTES": 5, **FAST, "OUTPUT_MODEL": str(tmp_path / "adapted.safetensors"),
               "OUTPUT_REPORT": str(tmp_path / "report.html")})
    net, spec = load_model(out["OUTPUT_MODEL"])
    assert [(c.id, c.name) for c in spec.classes] == [(0, "background"), (1, "building"),
                                                      (2, "woodland/vegetation"), (3, "water"), (4, "road")]
    assert spec.gsd == pytest.approx(PIXEL) and spec.training["epoch"] in (0, 1, 2)
    assert 0 <= out["INIT_VAL_MIOU"] <= 1 and 0 <= out["VAL_MIOU"] <= 1 and out["VAL_MIOU"] >= out["INIT_VAL_MIOU"]
    html = (tmp_path / "report.html").read_text()
    for needed in ("Confusion matrix, trained model", "starting model IoU", "woodland/vegetation", "<svg"):
        assert needed in html
    # The polygons are where the labels are: each polygon's pixels on the sample's grid hold its class.
    from landcover_plugin.core.io.labels import rasterize_labels

    labels = rasterize_labels(image, POLYGONS, "class", spec.classes)
    with rasterio.open(mask) as ds:
        truth = ds.read(1)
    covered = labels != 255
    assert 0.05 < covered.mean() <= 0.11
    assert (labels[covered] == truth[covered]).mean() > 0.9  # simplified outlines, a few edge pixels off
    seg = QgsApplication.processingRegistry().algorithmById("landcover:segment")
    assert seg is not None
    import processing

    classes = processing.run("landcover:segment", {"INPUT": image, "MODEL": out["OUTPUT_MODEL"],
                                                   "OUTPUT_RASTER": str(tmp_path / "c.tif")})["OUTPUT_RASTER"]
    with rasterio.open(classes) as ds:
        assert ds.shape == (768, 768) and set(np.unique(ds.read(1))) <= {0, 1, 2, 3, 4}


def test_ids_named_and_coloured_by_the_layer_style(provider, sample, start_model, tmp_path):
    """A scratch layer (memory provider) of class ids with a categorized style: its labels and colours make
    the class table."""
    from landcover_plugin.core.model.classes import LandClass
    from landcover_plugin.processing.styling import categorized_renderer

    image, _ = sample
    layer = _memory_polygons([(_box(0, 0, 200, 200), 7), (_box(300, 300, 500, 500), 9),
                              (_box(0, 600, 300, 760), 7), (_box(500, 0, 760, 250), 9)])
    layer.setRenderer(categorized_renderer([LandClass(7, "Water", "#112233"), LandClass(9, "dunes", "#aabbcc")],
                                           "cls"))
    out = run({"INPUT": [image], "LABELS": layer, "CLASS_FIELD": "cls", "INIT_MODEL": start_model, "EPOCHS": 1,
               "VALIDATION": 0, **FAST, "OUTPUT_MODEL": str(tmp_path / "ids.safetensors"), "INT8_CHECK": True})
    spec = read_spec(out["OUTPUT_MODEL"])
    # INT8_CHECK reaches the trainer (tests/unit/test_training.py runs the measurement); with nothing held
    # out there is nothing to measure it on, so the file records no figure
    assert spec.training["config"]["int8_check"] is True and "int8" not in spec.training
    assert [(c.id, c.name, c.color) for c in spec.classes] == [(7, "Water", "#112233"), (9, "dunes", "#aabbcc")]
    assert out["VAL_MIOU"] is None and out["INIT_VAL_MIOU"] is None  # nothing held out


def test_raster_labels_with_unlabelled_pixels(provider, sample, start_model, tmp_path):
    image, mask = sample
    with rasterio.open(mask) as ds:
        dense, profile = ds.read(1), ds.profile
    sparse = np.full_like(dense, 255)
    sparse[::4, ::4] = dense[::4, ::4]  # a sixteenth of the pixels labelled
    labels = write_raster(tmp_path / "labels.tif", sparse, crs=profile["crs"], transform=profile["transform"])
    out = run({"INPUT": [image], "LABELS": labels, "INIT_MODEL": start_model, "EPOCHS": 1, **FAST,
               "OUTPUT_MODEL": str(tmp_path / "r.safetensors")})
    spec = read_spec(out["OUTPUT_MODEL"])
    assert [c.id for c in spec.classes] == sorted(set(np.unique(sparse).tolist()) - {255})
    assert out["VAL_MIOU"] is not None


def _no_files(folder):
    return [f for f in os.listdir(folder) if not f.startswith(".")] == []


@pytest.mark.parametrize("case,message", [
    ("elsewhere", "No label falls on any input raster"),
    ("empty", "have no value in the class field"),
    ("one_class", "one class only"),
    ("bands", "band"),
    ("budget", "too small for one epoch|the whole time budget"),
    ("no_field", "CLASS_FIELD"),
])
def test_bad_input_says_what_to_change_and_writes_nothing(provider, sample, start_model, tmp_path, case, message):
    image, _ = sample
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    two = [(_box(0, 0, 300, 300), 1), (_box(400, 400, 700, 700), 2)]
    params = {"INPUT": [image], "LABELS": _memory_polygons(two), "CLASS_FIELD": "cls", "INIT_MODEL": start_model,
              "EPOCHS": 1, **FAST, "OUTPUT_MODEL": str(out_dir / "m.safetensors"),
              "OUTPUT_REPORT": str(out_dir / "r.html")}
    if case == "elsewhere":
        params["LABELS"] = _memory_polygons([("POLYGON((0 0, 10 0, 10 10, 0 10, 0 0))", 1),
                                             ("POLYGON((20 0, 30 0, 30 10, 20 10, 20 0))", 2)])
    elif case == "empty":
        params["LABELS"] = _memory_polygons(two + [(_box(500, 0, 600, 100), None)])
    elif case == "one_class":
        params["LABELS"] = _memory_polygons([(w, 1) for w, _ in two])
    elif case == "bands":
        params["INPUT"] = [write_raster(tmp_path / "grey.tif", fixture_pixels()[:1], crs="EPSG:32640",
                                        transform=from_origin(*ORIGIN, PIXEL, PIXEL))]
    elif case == "budget":
        params.update(MAX_MINUTES=0.1, EPOCHS=None, TILE_SIZE=512, BATCH_SIZE=24, VALIDATION=0)
    elif case == "no_field":
        params["CLASS_FIELD"] = None
    with pytest.raises(QgsProcessingException, match=message):
        run(params)
    assert _no_files(out_dir)


class _CancelAfter(QgsProcessingFeedback):
    """Cancels once progress passes `fraction` (progress comes from the training steps)."""

    def __init__(self, fraction):
        super().__init__()
        self.fraction, self.messages = fraction, []
        self.progressChanged.connect(self._check)

    def _check(self, value):
        if value >= 100 * self.fraction:
            self.cancel()

    def pushInfo(self, info):  # noqa: N802
        self.messages.append(info)
        super().pushInfo(info)

    def pushWarning(self, warning):  # noqa: N802
        self.messages.append(warning)
        super().pushWarning(warning)


def test_cancel_keeps_the_best_model_after_an_epoch_and_nothing_before(provider, sample, start_model, tmp_path):
    image, _ = sample
    params = {"INPUT": [image], "LABELS": POLYGONS, "CLASS_FIELD": "class", "INIT_MODEL": start_model, "EPOCHS": 4,
              **FAST, "OUTPUT_MODEL": str(tmp_path / "m.safetensors")}
    early = _CancelAfter(0.0)
    early.cancel()
    with pytest.raises(QgsProcessingException, match="no model was written"):
        run(params, early)
    assert not os.path.exists(tmp_path / "m.safetensors")
    late = _CancelAfter(0.6)  # during the third of four epochs
    out = run(params, late)
    assert os.path.exists(out["OUTPUT_MODEL"])
    done = [int(m.split("Cancelled after ")[1].split()[0]) for m in late.messages if "Cancelled after " in m]
    assert done and 1 <= done[0] < 4, late.messages
    assert read_spec(out["OUTPUT_MODEL"]).training["epoch"] <= done[0]


def test_modeler_chain_train_segment_evaluate(provider, sample, start_model, tmp_path):
    from qgis.core import QgsProcessingModelAlgorithm

    image, mask = sample
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(os.path.join(ROOT, "examples", "train_segment_evaluate.model3"))
    results, ok = model.run({"imagery": [image], "labels": POLYGONS, "class_field": "class",
                             "starting_model": start_model, "minutes": 0.3, "image": image, "reference": mask,
                             "train:model": str(tmp_path / "chain.safetensors"),
                             "segment:classes": str(tmp_path / "chain_classes.tif")},
                            QgsProcessingContext(), QgsProcessingFeedback())
    assert ok
    children = results["CHILD_RESULTS"]
    assert os.path.exists(tmp_path / "chain.safetensors") and os.path.exists(tmp_path / "chain_classes.tif")
    assert 0 < children["evaluate"]["MIOU"] <= 1
    assert set(json.loads(children["evaluate"]["IOU"])) == {"background", "building", "woodland/vegetation",
                                                            "water", "road"}
    assert 0 <= children["train"]["VAL_MIOU"] <= 1


def test_qgis_process_trains_headless(sample, start_model, tmp_path):
    image, _ = sample
    r = qgis_process(["run", "landcover:train", "--", f"INPUT={image}", f"LABELS={POLYGONS}", "CLASS_FIELD=class",
                      f"INIT_MODEL={start_model}", "EPOCHS=1", "TILE_SIZE=64", "BATCH_SIZE=4",
                      f"OUTPUT_MODEL={tmp_path / 'q.safetensors'}"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])["results"]
    assert os.path.exists(result["OUTPUT_MODEL"]) and 0 <= result["VAL_MIOU"] <= 1


def test_batch_rows_share_one_context(provider, sample, start_model, tmp_path):
    """Batch mode runs the algorithm once per row in one context: each row writes its own model."""
    import processing

    image, _ = sample
    context = QgsProcessingContext()
    specs = []
    for i, validation in enumerate((0.2, 0.0)):
        out = processing.run("landcover:train", {
            "INPUT": [image], "LABELS": POLYGONS, "CLASS_FIELD": "class", "INIT_MODEL": start_model, "EPOCHS": 1,
            "VALIDATION": validation, **FAST, "OUTPUT_MODEL": str(tmp_path / f"row{i}.safetensors")},
            context=context, feedback=QgsProcessingFeedback())
        specs.append(read_spec(out["OUTPUT_MODEL"]))
        assert (out["VAL_MIOU"] is None) == (validation == 0)
    assert [s.training["validation_share"] for s in specs] == [0.2, 0.0]
