"""Picking a bundled model in QGIS: the MODEL drop-down, names in the toolbox and from qgis_process."""
import json
import os
from dataclasses import replace

import pytest
from conftest import fixture_pixels, make_model, qgis_process, write_raster
from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsRasterLayer,
    QgsVectorLayer,
)

from landcover_plugin.core.model import bundled, model_file
from landcover_plugin.core.model.classes import LandClass
from landcover_plugin.core.model.model_file import save_model
from landcover_plugin.core.model.spec import PolygonDefaults

BUILDING_CLASSES = (LandClass(0, "other", "#f2efe9"), LandClass(1, "building", "#d7301f"))


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    net, spec = make_model(tile=64, overlap=16)
    save_model(str(folder / bundled.DEFAULT_MODEL_NAME), net, replace(spec, name="Land cover"))
    net2, spec2 = make_model(tile=64, overlap=16, classes=BUILDING_CLASSES)
    save_model(str(folder / "buildings_osm.safetensors"), net2, replace(
        spec2, name="Buildings (OpenStreetMap)", polygons=PolygonDefaults((1,), 2.0, 0.3)))
    monkeypatch.setattr(bundled, "MODELS_DIR", str(folder))
    return folder


@pytest.fixture
def raster(tmp_path):
    from rasterio.transform import from_origin

    return write_raster(tmp_path / "in.tif", fixture_pixels()[:, :160, :200], crs="EPSG:32637",
                        transform=from_origin(500000, 9800000, 0.3, 0.3))


class AlgorithmDialog:  # Processing picks the widget by the dialog's class name
    pass


class BatchAlgorithmDialog:
    pass


class ModelerParametersDialog:
    def __init__(self):
        from qgis.core import QgsProcessingModelAlgorithm

        self.model, self.childId, self.context = QgsProcessingModelAlgorithm(), "segment_1", QgsProcessingContext()


def _model_parameter(provider):
    return provider.algorithm("segment").parameterDefinition("MODEL")


@pytest.mark.parametrize("dialog", [AlgorithmDialog, BatchAlgorithmDialog])
def test_model_widget_offers_the_bundled_models_and_takes_a_file(provider, models_dir, dialog):
    from processing.gui.wrappers import WidgetWrapperFactory

    wrapper = WidgetWrapperFactory.create_wrapper(_model_parameter(provider), dialog())
    combo = wrapper.combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["Land cover", "Buildings (OpenStreetMap)"]
    assert wrapper.value() == "landcover_default"
    wrapper.setValue("buildings_osm")
    assert combo.currentText() == "Buildings (OpenStreetMap)" and wrapper.value() == "buildings_osm"
    wrapper.setValue("/data/roofs.safetensors")
    assert wrapper.value() == "/data/roofs.safetensors"
    wrapper.setValue(None)
    assert wrapper.value() == "landcover_default"


def test_modeler_keeps_qgis_widget_so_outputs_can_feed_model(provider, models_dir):
    from processing.gui.wrappers import WidgetWrapperFactory
    from qgis.gui import QgsProcessingModelerParameterWidget

    wrapper = WidgetWrapperFactory.create_wrapper(_model_parameter(provider), ModelerParametersDialog())
    assert isinstance(wrapper, QgsProcessingModelerParameterWidget)


def test_segment_with_a_bundled_model_by_name(provider, models_dir, raster, tmp_path):
    import processing

    out = processing.run("landcover:segment", {
        "INPUT": raster, "MODEL": "Buildings (OpenStreetMap)", "DEVICE": 1,
        "OUTPUT_RASTER": str(tmp_path / "b.tif"), "OUTPUT_VECTOR": str(tmp_path / "b.gpkg")},
        context=QgsProcessingContext(), feedback=QgsProcessingFeedback())
    layer = QgsRasterLayer(out["OUTPUT_RASTER"], "b")
    assert {c.label for c in layer.renderer().classes()} == {"other", "building"}
    vector = QgsVectorLayer(out["OUTPUT_VECTOR"], "v", "ogr")
    features = list(vector.getFeatures())
    assert features and {f["class_name"] for f in features} == {"building"}
    assert min(f["area"] for f in features) >= 2.0, "the model's minimum area applies when MIN_AREA is empty"
    assert isinstance(vector.renderer(), QgsCategorizedSymbolRenderer)
    assert [c.label() for c in vector.renderer().categories()] == ["building"]


def test_an_unknown_model_name_is_refused_before_any_work(provider, models_dir, raster, tmp_path):
    import processing

    with pytest.raises(QgsProcessingException, match="no bundled model has that name.*buildings_osm"):
        processing.run("landcover:segment", {"INPUT": raster, "MODEL": "roofs",
                                             "OUTPUT_RASTER": str(tmp_path / "x.tif")},
                       context=QgsProcessingContext(), feedback=QgsProcessingFeedback())
    assert not os.path.exists(tmp_path / "x.tif")


def test_qgis_process_takes_a_bundled_model_name(raster, tmp_path):
    """The shipped buildings model, as a user runs it headless."""
    found = {m.key for m in bundled.bundled_models()}
    assert "buildings_osm" in found, "the buildings model ships with the plugin"
    r = qgis_process(["run", "landcover:segment", "--", f"INPUT={raster}", "MODEL=buildings_osm",
                      f"OUTPUT_RASTER={tmp_path / 'c.tif'}", f"OUTPUT_VECTOR={tmp_path / 'v.gpkg'}"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert os.path.exists(result["results"]["OUTPUT_RASTER"])
    vector = QgsVectorLayer(str(tmp_path / "v.gpkg"), "v", "ogr")
    assert {f["class_name"] for f in vector.getFeatures()} <= {"building"}
    bad = qgis_process(["run", "landcover:segment", "--", f"INPUT={raster}", "MODEL=roofs",
                        f"OUTPUT_RASTER={tmp_path / 'd.tif'}"], tmp_path)
    assert bad.returncode != 0 and "no bundled model has that name" in bad.stdout + bad.stderr


def test_train_starts_from_a_bundled_model_by_name_and_keeps_its_polygon_defaults(provider, models_dir, tmp_path):
    """Fine-tuning the buildings model on a user's own footprints gives a buildings model again."""
    import processing
    from qgis.core import QgsFeature, QgsGeometry, QgsRectangle
    from rasterio.transform import from_origin

    image = write_raster(tmp_path / "roofs.tif", fixture_pixels()[:, :256, :256], crs="EPSG:32637",
                         transform=from_origin(500000, 9800000, 0.3, 0.3))
    layer = QgsVectorLayer("Polygon?crs=EPSG:32637&field=cls:string", "digitized", "memory")
    x0, y0 = 500000, 9800000
    boxes = [("building", 60, 40, 200, 120), ("other", 0, 130, 256, 170), ("building", 10, 190, 80, 250),
             ("other", 120, 190, 250, 250)]
    features = []
    for name, c0, r0, c1, r1 in boxes:
        f = QgsFeature(layer.fields())
        f.setGeometry(QgsGeometry.fromRect(QgsRectangle(x0 + c0 * 0.3, y0 - r1 * 0.3, x0 + c1 * 0.3, y0 - r0 * 0.3)))
        f.setAttributes([name])
        features.append(f)
    layer.dataProvider().addFeatures(features)
    label_path = layer
    out = processing.run("landcover:train", {
        "INPUT": [image], "LABELS": label_path, "CLASS_FIELD": "cls", "INIT_MODEL": "buildings_osm", "EPOCHS": 1,
        "VALIDATION": 0,
        "TILE_SIZE": 64, "BATCH_SIZE": 4, "DEVICE": 1, "OUTPUT_MODEL": str(tmp_path / "mine.safetensors")},
        context=QgsProcessingContext(), feedback=QgsProcessingFeedback())
    spec = model_file.read_spec(out["OUTPUT_MODEL"])
    assert [c.name for c in spec.classes] == ["other", "building"]
    assert spec.polygons == PolygonDefaults((1,), 2.0, 0.3)
    with pytest.raises(QgsProcessingException, match="no bundled model has that name"):
        processing.run("landcover:train", {"INPUT": [image], "LABELS": label_path, "CLASS_FIELD": "cls",
                                           "INIT_MODEL": "roofs",
                                           "OUTPUT_MODEL": str(tmp_path / "x.safetensors")},
                       context=QgsProcessingContext(), feedback=QgsProcessingFeedback())
    assert not os.path.exists(tmp_path / "x.safetensors")


def test_the_toolbox_dialogs_offer_the_drop_down(provider, models_dir, raster, qgis_iface):
    """Processing's own algorithm and Batch dialogs, as the toolbox opens them."""
    from processing.gui.AlgorithmDialog import AlgorithmDialog
    from processing.gui.BatchAlgorithmDialog import BatchAlgorithmDialog
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsBrowserGuiModel

    from landcover_plugin.processing.model_widget import ModelWidgetWrapper

    browser = QgsBrowserGuiModel()
    qgis_iface.browserModel = lambda: browser  # pytest-qgis's stand-in iface has none
    layer = QgsRasterLayer(raster, "in")
    QgsProject.instance().addMapLayer(layer)
    dialog = AlgorithmDialog(provider.algorithm("segment").create(), False, None)
    panel = dialog.mainWidget()
    panel.wrappers["INPUT"].setParameterValue(layer.id(), QgsProcessingContext())
    model = panel.wrappers["MODEL"]
    assert isinstance(model, ModelWidgetWrapper)
    assert model.combo.currentText() == "Land cover"
    model.combo.setCurrentIndex(1)
    assert dialog.createProcessingParameters()["MODEL"] == "buildings_osm"
    batch = BatchAlgorithmDialog(provider.algorithm("segment").create(), None).mainWidget()
    cell = next(w for w in batch.wrappers[0] if isinstance(w, ModelWidgetWrapper))
    cell.setValue("Buildings (OpenStreetMap)")
    assert cell.parameterValue() == "buildings_osm"
    QgsProject.instance().removeAllMapLayers()
