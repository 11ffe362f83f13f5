import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import rasterio
from conftest import FIXTURE, fixture_pixels, qgis_process, write_raster
from qgis.core import (
    QgsApplication,
    QgsCategorizedSymbolRenderer,
    QgsPalettedRasterRenderer,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingFeedback,
    QgsProcessingParameterDefinition,
    QgsRasterLayer,
    QgsVectorLayer,
)


@pytest.fixture(scope="session")
def utm_raster(tmp_path_factory):
    from rasterio.transform import from_origin

    path = tmp_path_factory.mktemp("qin") / "ortho.tif"
    return write_raster(path, fixture_pixels()[:, :200, :240], crs="EPSG:32640",
                        transform=from_origin(300000, 2780000, 0.5, 0.5))


def run(alg_id, params, context=None, feedback=None):
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    context = context or QgsProcessingContext()
    feedback = feedback or QgsProcessingFeedback()
    return processing.run(alg_id, params, context=context, feedback=feedback)


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_KEEP = []
SEGMENT_PARAMS = ["INPUT", "MODEL", "BANDS", "EXTENT", "RESOLUTION", "TILE_SIZE", "OVERLAP", "BATCH_SIZE", "DEVICE",
                  "PRECISION", "TTA", "MIN_AREA", "SIMPLIFY", "OUTPUT_RASTER", "OUTPUT_VECTOR", "OUTPUT_CONFIDENCE",
                  "OUTPUT_REPORT"]


def test_provider_and_algorithms_are_registered(provider):
    assert provider.id() == "landcover"
    seg = QgsApplication.processingRegistry().algorithmById("landcover:segment")
    ev = QgsApplication.processingRegistry().algorithmById("landcover:evaluate")
    assert seg.displayName() == "Segment land cover"
    assert ev.displayName() == "Evaluate land-cover classification"
    assert [p.name() for p in seg.parameterDefinitions()] == SEGMENT_PARAMS
    defaults = {p.name(): p.defaultValue() for p in seg.parameterDefinitions()}
    assert defaults["DEVICE"] == 0 and defaults["TTA"] is False and defaults["BATCH_SIZE"] == 0
    assert defaults["PRECISION"] == "auto" and seg.parameterDefinition("PRECISION").options() == [
        "auto", "fp32", "bf16", "int8", "fp16"]
    assert seg.parameterDefinition("PRECISION").flags() & QgsProcessingParameterDefinition.Flag.FlagAdvanced
    assert defaults["TILE_SIZE"] is None and defaults["OVERLAP"] is None and defaults["MIN_AREA"] is None
    simplify = seg.parameterDefinition("SIMPLIFY")  # a distance in the input layer's units, shown by the dialog
    assert simplify.type() == "distance" and simplify.parentParameterName() == "INPUT"
    assert "m²" in seg.parameterDefinition("MIN_AREA").description()
    assert all(p.help() for p in seg.parameterDefinitions())
    assert "bundled model" in seg.shortHelpString() and "road" in seg.shortHelpString()
    assert {o.name() for o in ev.outputDefinitions()} >= {"MIOU", "OVERALL_ACCURACY", "IOU"}


def test_plugin_load_and_unload(qgis_iface, qgis_processing):
    from landcover_plugin import classFactory

    registry = QgsApplication.processingRegistry()
    existing = registry.providerById("landcover")
    if existing is not None:
        registry.removeProvider(existing)
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    assert registry.providerById("landcover") is not None and plugin.action is not None
    plugin.unload()
    assert registry.providerById("landcover") is None
    from landcover_plugin.processing.provider import LandcoverProvider

    _KEEP.append(LandcoverProvider())  # QGIS does not own a Python provider: keep it alive
    registry.addProvider(_KEEP[-1])


def test_plugin_offers_to_install_what_is_missing(qgis_iface, qgis_processing, monkeypatch):
    from landcover_plugin import classFactory, installer

    registry = QgsApplication.processingRegistry()
    kept = registry.providerById("landcover")
    registry.removeProvider(kept)
    monkeypatch.setattr(installer, "missing_packages", lambda: ["torch", "safetensors"])
    bar = qgis_iface.messageBar()
    bar.clearWidgets()
    plugin = classFactory(qgis_iface)
    plugin.initGui()
    try:
        names = [a.objectName() for a in plugin.actions]
        assert "landcoverInstallAction" in names and "landcoverRemoveAction" in names
        item = bar.currentItem()
        assert item is not None and "PyTorch" in item.text()
    finally:
        plugin.unload()
        bar.clearWidgets()
        _KEEP.append(type(kept)())
        registry.addProvider(_KEEP[-1])


def test_user_visible_strings_go_through_tr(qgis_app):
    """A translator that marks every string of the plugin's context: all names, descriptions and help show it."""
    from qgis.PyQt.QtCore import QCoreApplication, QTranslator

    from landcover_plugin.processing.evaluate_algorithm import EvaluateAlgorithm
    from landcover_plugin.processing.segment_algorithm import SegmentAlgorithm
    from landcover_plugin.processing.train_algorithm import TrainAlgorithm

    class Marking(QTranslator):
        def translate(self, context, source, disambiguation=None, n=-1):
            return f"«{source}»" if context == "landcover" else ""

    marking = Marking()
    QCoreApplication.installTranslator(marking)
    try:
        for cls in (SegmentAlgorithm, EvaluateAlgorithm, TrainAlgorithm):
            alg = cls()
            alg.initAlgorithm()
            assert alg.displayName().startswith("«")
            assert alg.shortHelpString().startswith("«")
            params = alg.parameterDefinitions()
            texts = [p.description() for p in params] + [p.help() for p in params]
            texts += [o.description() for o in alg.outputDefinitions()]
            assert all(t.startswith("«") for t in texts), [t for t in texts if not t.startswith("«")]
    finally:
        QCoreApplication.removeTranslator(marking)
    assert not SegmentAlgorithm().displayName().startswith("«")


def test_segment_outputs_styled_on_the_input_grid(provider, utm_raster, small_model, tmp_path):
    out = run("landcover:segment", {
        "INPUT": utm_raster, "MODEL": small_model, "DEVICE": 1, "MIN_AREA": 2.0, "SIMPLIFY": 0.5,
        "OUTPUT_RASTER": str(tmp_path / "classes.tif"), "OUTPUT_VECTOR": str(tmp_path / "polygons.gpkg"),
        "OUTPUT_CONFIDENCE": str(tmp_path / "conf.tif"), "OUTPUT_REPORT": str(tmp_path / "report.html")})
    with rasterio.open(utm_raster) as src, rasterio.open(out["OUTPUT_RASTER"]) as c:
        assert c.crs == src.crs and c.transform == src.transform and c.shape == src.shape
        assert c.nodata == 255
    raster = QgsRasterLayer(out["OUTPUT_RASTER"], "classes")
    assert raster.isValid()
    assert isinstance(raster.renderer(), QgsPalettedRasterRenderer), "the .qml beside the raster styles it"
    labels = {c.label for c in raster.renderer().classes()}
    assert labels == {"background", "building", "woodland/vegetation", "water", "road"}
    assert os.path.exists(tmp_path / "classes.qml")
    vector = QgsVectorLayer(out["OUTPUT_VECTOR"], "polygons", "ogr")
    assert vector.isValid() and vector.featureCount() > 0
    assert [f.name() for f in vector.fields()][-4:] == ["class_id", "class_name", "area", "confidence"]
    assert vector.crs().authid() == "EPSG:32640"
    total = sum(f["area"] for f in vector.getFeatures())
    assert total == pytest.approx(200 * 240 * 0.25)
    reopened = QgsVectorLayer(out["OUTPUT_VECTOR"], "again", "ogr")
    assert isinstance(reopened.renderer(), QgsCategorizedSymbolRenderer), "style saved in the GeoPackage"
    assert {c.label() for c in reopened.renderer().categories()} >= {"background"}
    html = (tmp_path / "report.html").read_text()
    assert "woodland/vegetation" in html and "<svg" in html and "m²" in html


def test_loaded_outputs_are_styled_and_record_metadata(provider, utm_raster, small_model, tmp_path):
    import processing
    from qgis.core import QgsProject

    out_path = str(tmp_path / "c.tif")
    processing.runAndLoadResults("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model,
                                                       "OUTPUT_RASTER": out_path,
                                                       "OUTPUT_VECTOR": str(tmp_path / "v.gpkg")})
    loaded = {layer.source().split("|")[0]: layer for layer in QgsProject.instance().mapLayers().values()}
    raster, vector = loaded[out_path], loaded[str(tmp_path / "v.gpkg")]
    assert isinstance(raster.renderer(), QgsPalettedRasterRenderer)
    assert isinstance(vector.renderer(), QgsCategorizedSymbolRenderer)
    for layer in (raster, vector):
        abstract = layer.metadata().abstract()
        assert "device: cpu" in abstract and "model: " in abstract and "seconds: " in abstract
    QgsProject.instance().removeAllMapLayers()


def test_extent_and_bands(provider, utm_raster, small_model, tmp_path):
    out = run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model, "BANDS": [3, 2, 1],
                                    "EXTENT": "300010,300050,2779950,2779990 [EPSG:32640]",
                                    "OUTPUT_RASTER": str(tmp_path / "c.tif")})
    with rasterio.open(out["OUTPUT_RASTER"]) as c:
        assert c.shape == (80, 80) and c.transform.c == pytest.approx(300010)


def test_outputs_other_than_geotiff_are_refused_clearly(provider, utm_raster, small_model, tmp_path):
    assert provider.supportedOutputRasterLayerExtensions() == ["tif", "tiff"]  # what the dialogs offer
    for name in ("OUTPUT_RASTER", "OUTPUT_CONFIDENCE"):
        params = {"INPUT": utm_raster, "MODEL": small_model, "OUTPUT_RASTER": str(tmp_path / "c.tif"),
                  name: str(tmp_path / "out.img")}
        with pytest.raises(QgsProcessingException, match=f"{name} is written as a GeoTIFF.*not .img"):
            run("landcover:segment", params)
    assert not os.listdir(tmp_path)
    out = run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model,
                                    "OUTPUT_RASTER": str(tmp_path / "c.TIFF")})
    assert os.path.exists(out["OUTPUT_RASTER"])


def test_extent_in_another_crs_is_reprojected_to_the_layers(provider, utm_raster, small_model, tmp_path):
    from osgeo import osr

    utm, wgs84 = osr.SpatialReference(), osr.SpatialReference()
    utm.ImportFromEPSG(32640)
    wgs84.ImportFromEPSG(4326)
    for srs in (utm, wgs84):
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    to_lonlat = osr.CoordinateTransformation(utm, wgs84)
    corners = [to_lonlat.TransformPoint(x, y)[:2] for x in (300010, 300050) for y in (2779950, 2779990)]
    lons, lats = [c[0] for c in corners], [c[1] for c in corners]
    assert 54 < min(lons) < 58 and 25 < min(lats) < 26  # degrees, a box in another CRS than the layer's
    out = run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model,
                                    "EXTENT": f"{min(lons)},{max(lons)},{min(lats)},{max(lats)} [EPSG:4326]",
                                    "OUTPUT_RASTER": str(tmp_path / "c.tif")})
    with rasterio.open(out["OUTPUT_RASTER"]) as c:
        left, bottom, right, top = c.bounds
    # the lon/lat box, back in UTM, holds the 40 m square and a little more (meridians converge), not the layer
    assert 300000 < left <= 300010 and 300050 <= right < 300060
    assert 2779940 < bottom <= 2779950 and 2779990 <= top < 2780000


@pytest.mark.parametrize("params,message", [
    ({"BANDS": [1, 2]}, "expects 3 input bands"),
    ({"BANDS": [1, 2, 7]}, "Band 7 does not exist"),
    ({"EXTENT": "0,10,0,10 [EPSG:32640]"}, "does not overlap"),
    ({"TILE_SIZE": 64, "OVERLAP": 40}, "less than half"),
    ({"PRECISION": "int8"}, "calibration windows, which int8 needs"),  # this model file has none
])
def test_errors_tell_the_user_what_to_change(provider, utm_raster, small_model, tmp_path, params, message):
    with pytest.raises(QgsProcessingException, match=message):
        run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model,
                                  "OUTPUT_RASTER": str(tmp_path / "c.tif"), **params})
    assert not os.path.exists(tmp_path / "c.tif")


def test_unsafe_or_bad_model_files(provider, utm_raster, tmp_path):
    bad = tmp_path / "evil.safetensors"
    bad.write_bytes(b"\x80\x04\x95 pickled")
    with pytest.raises(QgsProcessingException, match="pickle"):
        run("landcover:segment", {"INPUT": utm_raster, "MODEL": str(bad), "OUTPUT_RASTER": str(tmp_path / "c.tif")})


def test_damaged_and_old_model_files(provider, utm_raster, small_model, tmp_path):
    """A damaged copy is refused before anything runs; a file from before checksums runs, with a warning."""
    from landcover_plugin.core.model.model_file import DIGEST_KEY

    blob = bytearray(open(small_model, "rb").read())
    blob[-3] ^= 0x40
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(bytes(blob))
    with pytest.raises(QgsProcessingException, match='"damaged.safetensors" is damaged'):
        run("landcover:segment", {"INPUT": utm_raster, "MODEL": str(damaged), "OUTPUT_RASTER": str(tmp_path / "c.tif")})
    assert not os.path.exists(tmp_path / "c.tif")

    (n,) = struct.unpack("<Q", bytes(blob[:8]))
    header = json.loads(bytes(blob[8:8 + n]))
    del header["__metadata__"][DIGEST_KEY]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    old = tmp_path / "old.safetensors"
    old.write_bytes(struct.pack("<Q", len(raw)) + raw + open(small_model, "rb").read()[8 + n:])
    warnings = []

    class Feedback(QgsProcessingFeedback):
        def pushWarning(self, text):  # noqa: N802
            warnings.append(text)

    out = run("landcover:segment", {"INPUT": utm_raster, "MODEL": str(old), "OUTPUT_RASTER": str(tmp_path / "c.tif")},
              feedback=Feedback())
    assert os.path.exists(out["OUTPUT_RASTER"])
    assert any('"old.safetensors" was saved before model files carried a checksum' in w for w in warnings), warnings


def test_cuda_asked_without_cuda(provider, utm_raster, small_model, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in (2, 3):  # cuda, cuda:all
        with pytest.raises(QgsProcessingException, match="no CUDA GPU"):
            run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model, "DEVICE": device,
                                      "OUTPUT_RASTER": str(tmp_path / "c.tif")})
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("params,message", [
    ({"BANDS": [1, 2]}, "expects 3 input bands"),
    ({"BANDS": [1, 2, 7]}, "Band 7 does not exist"),
    ({"EXTENT": "0,10,0,10 [EPSG:32640]"}, "does not overlap"),
])
def test_bands_and_extent_are_checked_before_torch_loads(provider, utm_raster, small_model, tmp_path, monkeypatch,
                                                          params, message):
    monkeypatch.setitem(sys.modules, "torch", None)  # the checks must not need it
    with pytest.raises(QgsProcessingException, match=message):
        run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model, **params,
                                  "OUTPUT_RASTER": str(tmp_path / "c.tif")})
    assert not os.listdir(tmp_path)


def test_torch_missing_is_explained(provider, utm_raster, small_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(QgsProcessingException,
                       match="needs torch.*Install engine dependencies.*-m landcover_plugin.installer install"):
        run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model,
                                  "OUTPUT_RASTER": str(tmp_path / "c.tif")})


def test_raster_without_crs_runs_with_a_warning(provider, small_model, tmp_path):
    warnings = []

    class Feedback(QgsProcessingFeedback):
        def pushWarning(self, text):  # noqa: N802
            warnings.append(text)

    out = run("landcover:segment", {"INPUT": FIXTURE, "MODEL": small_model, "EXTENT": "0,100,0,100",
                                    "OUTPUT_RASTER": str(tmp_path / "c.tif")}, feedback=Feedback())
    assert os.path.exists(out["OUTPUT_RASTER"]) and any("no CRS" in w for w in warnings)


class CancelAt(QgsProcessingFeedback):
    """Cancels at the first check made from a function of that name, or once progress reaches a share."""

    def __init__(self, function=None, progress=None):
        super().__init__()
        self.function, self.checks = function, []
        if progress is not None:
            self.progressChanged.connect(lambda p: p >= progress and self.cancel())

    def isCanceled(self):  # noqa: N802 (called from the plugin's Python code, so this override counts)
        caller = sys._getframe(1).f_code.co_name
        self.checks.append(caller)
        if caller == self.function:
            self.cancel()
        return super().isCanceled()


@pytest.mark.parametrize("where", ["start", "half way", "writing polygons"])
def test_cancel_leaves_no_output(provider, utm_raster, small_model, tmp_path, where):
    feedback = {"start": CancelAt(progress=0), "half way": CancelAt(progress=50),
                "writing polygons": CancelAt(function="write")}[where]
    if where == "start":
        feedback.cancel()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model, "TILE_SIZE": 64, "OVERLAP": 16,
                                  "OUTPUT_RASTER": str(out / "c.tif"), "OUTPUT_CONFIDENCE": str(out / "p.tif"),
                                  "OUTPUT_VECTOR": str(out / "polygons.gpkg"),
                                  "OUTPUT_REPORT": str(out / "areas.csv")}, feedback=feedback)
    assert os.listdir(out) == []  # the GeoPackage made before the run started included
    if where == "writing polygons":
        assert "write" in feedback.checks  # the cancel came while polygons were being written


def test_cancel_keeps_the_other_layers_of_a_geopackage(provider, utm_raster, small_model, tmp_path):
    from osgeo import ogr

    gpkg = str(tmp_path / "project.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(gpkg)
    ds.CreateLayer("roads", geom_type=ogr.wkbLineString)
    ds = None
    with pytest.raises(QgsProcessingException, match="Cancelled"):
        run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model, "OUTPUT_RASTER": str(tmp_path / "c.tif"),
                                  "OUTPUT_VECTOR": f"ogr:dbname='{gpkg}' table=\"landcover\" (geom)"},
            feedback=CancelAt(function="write"))
    ds = ogr.Open(gpkg)
    assert [ds.GetLayer(i).GetName() for i in range(ds.GetLayerCount())] == ["roads"]


def test_evaluate_matches_a_hand_computed_confusion(provider, tmp_path):
    from rasterio.transform import from_origin

    t = from_origin(0, 40, 1, 1)
    pred = np.zeros((4, 10), np.uint8)
    pred[:, 5:] = 1
    ref = np.zeros((4, 10), np.uint8)
    ref[:, 4:] = 1
    ref[0, :] = 255
    p = write_raster(tmp_path / "pred.tif", pred, crs="EPSG:32640", transform=t, nodata=255)
    r = write_raster(tmp_path / "ref.tif", ref, crs="EPSG:32640", transform=t, nodata=255)
    out = run("landcover:evaluate", {"INPUT": p, "REFERENCE": r, "OUTPUT_REPORT": str(tmp_path / "ev.html")})
    # 3 labelled rows: background ref 4 px/row all right; building ref 6 px/row, 1 called background
    iou_bg = 12 / (12 + 3)
    iou_b = 15 / 18
    assert out["MIOU"] == pytest.approx((iou_bg + iou_b) / 2)
    assert out["OVERALL_ACCURACY"] == pytest.approx(27 / 30)
    assert json.loads(out["IOU"])["building"] == pytest.approx(iou_b)
    assert "Confusion matrix" in (tmp_path / "ev.html").read_text()


def test_evaluate_against_polygons(provider, utm_raster, small_model, tmp_path):
    from osgeo import ogr, osr

    seg = run("landcover:segment", {"INPUT": utm_raster, "MODEL": small_model,
                                    "OUTPUT_RASTER": str(tmp_path / "c.tif")})
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(str(tmp_path / "ref.gpkg"))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32640)
    layer = ds.CreateLayer("truth", srs=srs, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("kind", ogr.OFTString))
    f = ogr.Feature(layer.GetLayerDefn())
    f.SetGeometry(ogr.CreateGeometryFromWkt(
        "POLYGON((300000 2780000, 300120 2780000, 300120 2779900, 300000 2779900, 300000 2780000))"))
    f.SetField("kind", "water")
    layer.CreateFeature(f)
    ds = None
    out = run("landcover:evaluate", {"INPUT": seg["OUTPUT_RASTER"], "REFERENCE": str(tmp_path / "ref.gpkg"),
                                     "REFERENCE_FIELD": "kind"})
    with rasterio.open(seg["OUTPUT_RASTER"]) as c:
        share = (c.read(1) == 3).mean()
    assert out["OVERALL_ACCURACY"] == pytest.approx(share, abs=1e-9)
    with pytest.raises(QgsProcessingException, match="REFERENCE_FIELD"):
        run("landcover:evaluate", {"INPUT": seg["OUTPUT_RASTER"], "REFERENCE": str(tmp_path / "ref.gpkg")})


def test_graphical_model_chains_segment_and_evaluate(provider, utm_raster, small_model, tmp_path):
    from qgis.core import QgsProcessingModelAlgorithm

    with rasterio.open(utm_raster) as src:
        truth = np.random.default_rng(0).integers(0, 5, src.shape).astype(np.uint8)
        reference = write_raster(tmp_path / "truth.tif", truth, crs=src.crs, transform=src.transform, nodata=255)
    model = QgsProcessingModelAlgorithm()
    assert model.fromFile(os.path.join(ROOT, "tests", "data", "segment_and_evaluate.model3"))
    results, ok = model.run({"image": utm_raster, "model": small_model, "reference": reference,
                             "segment:classes": str(tmp_path / "model_classes.tif")},
                            QgsProcessingContext(), QgsProcessingFeedback())
    assert ok
    evaluation = results["CHILD_RESULTS"]["evaluate"]
    assert 0 < evaluation["MIOU"] < 0.5 and 0 < evaluation["OVERALL_ACCURACY"] < 0.5  # random truth
    assert set(json.loads(evaluation["IOU"])) == {"background", "building", "woodland/vegetation", "water", "road"}
    assert os.path.exists(tmp_path / "model_classes.tif")


def test_qgis_process_runs_segment_headless(small_model, utm_raster, tmp_path):
    r = qgis_process(["run", "landcover:segment", "--", f"INPUT={utm_raster}", f"MODEL={small_model}",
                      "PRECISION=bf16", "DEVICE=cpu", f"OUTPUT_RASTER={tmp_path / 'c.tif'}",
                      f"OUTPUT_VECTOR={tmp_path / 'v.gpkg'}"], tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(r.stdout[r.stdout.index("{"):])
    assert os.path.exists(result["results"]["OUTPUT_RASTER"]) and os.path.exists(tmp_path / "v.gpkg")
    assert os.path.exists(tmp_path / "c.qml")
    assert "precision bf16" in r.stdout + r.stderr  # the log says which precision ran
    assert "Device cpu" in r.stdout + r.stderr  # DEVICE by name, as qgis_process users write it


def test_qgis_process_takes_device_names_and_refuses_a_missing_gpu(small_model, utm_raster, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    for device in ("cuda:all", "2"):  # a name and an index (every name is parsed in test_multidevice)
        r = qgis_process(["run", "landcover:segment", "--", f"INPUT={utm_raster}", f"MODEL={small_model}",
                          f"DEVICE={device}", f"OUTPUT_RASTER={tmp_path / 'c.tif'}"], tmp_path)
        assert r.returncode != 0 and "no CUDA GPU" in r.stdout + r.stderr, (device, r.stdout[-1500:] + r.stderr[-1500:])
        assert not os.path.exists(tmp_path / "c.tif")
    r = qgis_process(["run", "landcover:segment", "--", f"INPUT={utm_raster}", f"MODEL={small_model}",
                      "DEVICE=tpu", f"OUTPUT_RASTER={tmp_path / 'c.tif'}"], tmp_path)
    assert r.returncode != 0 and "DEVICE" in r.stdout + r.stderr and "cuda:all" in r.stdout + r.stderr


def test_package_is_one_installable_folder(tmp_path):
    import zipfile

    r = subprocess.run(["make", "-s", "-C", ROOT, "package", f"STAGE={tmp_path / 'stage'}"], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    zpath = os.path.join(ROOT, r.stdout.strip().splitlines()[-1])
    names = zipfile.ZipFile(zpath).namelist()
    assert {n.split("/")[0] for n in names} == {"landcover_plugin"}
    for needed in ("landcover_plugin/metadata.txt", "landcover_plugin/__init__.py", "landcover_plugin/icon.svg",
                   "landcover_plugin/processing/segment_algorithm.py", "landcover_plugin/core/segment.py",
                   "landcover_plugin/models/landcover_default.safetensors",
                   "landcover_plugin/models/buildings_osm.safetensors", "landcover_plugin/models/buildings_osm.md"):
        assert needed in names
    meta = zipfile.ZipFile(zpath).read("landcover_plugin/metadata.txt").decode()
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "repository",
                "tracker", "homepage", "tags", "category", "icon", "hasProcessingProvider", "changelog"):
        assert f"\n{key}=" in "\n" + meta, key
    assert not any("__pycache__" in n for n in names)


def test_batch_rows_share_one_context(provider, utm_raster, small_model, tmp_path):
    """Batch processing runs the algorithm once per row in one context, as here."""
    second = write_raster(tmp_path / "second.tif", fixture_pixels()[:, 200:300, :150], crs="EPSG:32640",
                          transform=rasterio.transform.from_origin(301000, 2780000, 0.5, 0.5))
    context = QgsProcessingContext()
    for i, raster in enumerate((utm_raster, second)):
        out = run("landcover:segment", {"INPUT": raster, "MODEL": small_model,
                                        "OUTPUT_RASTER": str(tmp_path / f"row{i}.tif"),
                                        "OUTPUT_REPORT": str(tmp_path / f"row{i}.csv")}, context=context)
        with rasterio.open(raster) as src, rasterio.open(out["OUTPUT_RASTER"]) as c:
            assert c.shape == src.shape and c.transform == src.transform
        assert (tmp_path / f"row{i}.csv").read_text().startswith("class_id,class_name,pixels,area_m2,percent")


def test_evaluate_reprojects_a_reference_on_another_grid(provider, tmp_path):
    from rasterio.transform import from_origin

    pred = np.zeros((40, 40), np.uint8)
    pred[:, 20:] = 3
    ref = np.zeros((20, 20), np.uint8)  # the same area at twice the pixel size
    ref[:, 10:] = 3
    p = write_raster(tmp_path / "pred.tif", pred, crs="EPSG:32640", transform=from_origin(0, 40, 1, 1), nodata=255)
    r = write_raster(tmp_path / "ref.tif", ref, crs="EPSG:32640", transform=from_origin(0, 40, 2, 2), nodata=255)
    out = run("landcover:evaluate", {"INPUT": p, "REFERENCE": r})
    assert out["OVERALL_ACCURACY"] == pytest.approx(1.0) and out["MIOU"] == pytest.approx(1.0)
