"""landcover:segment, "Segment land cover": the engine behind a Processing algorithm."""
from __future__ import annotations

import math
import os
import time

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingMultiStepFeedback,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterDistance,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingUtils,
    QgsVectorLayer,
)

from ..core.model.device import PRECISIONS  # no torch at import
from .algorithm import DEVICES, LandcoverAlgorithm, engine_warnings, model_parameter
from .compat import POLYGON_WKB
from .dependencies import require_engine
from .layer_source import (
    band_count,
    band_descriptions,
    check_disk,
    fetch,
    grid_over,
    has_native_grid,
    is_local_file,
    remove,
    safe_source,
)
from .polygon_output import PolygonOutput, polygon_fields

SEGMENT_DEVICES = [*DEVICES, "cuda:all"]  # appended: a saved model's index of a device keeps its meaning


def _bundled_models_summary() -> str:
    """The bundled models' names, classes and defaults for the help text (read from their metadata only)."""
    try:
        from ..core.model.bundled import bundled_models

        models = [(m, m.spec) for m in bundled_models()]
    except Exception as exc:  # unreadable: say so in the help
        return f"<p>No usable bundled model ({exc}); choose a model file.</p>"
    if not models:
        return "<p>No bundled model is installed; choose a model file.</p>"
    items = []
    for m, spec in models:
        classes = ", ".join(f"{c.id} {c.name}" for c in spec.classes)
        miou = spec.training.get("engine_evaluation", {}).get("miou")
        quality = f"; held-out mean IoU {miou:.2f}" if miou is not None else ""
        items.append(f"<li><i>{spec.name}</i> (<tt>{m.key}</tt>): classes {classes}; tile {spec.tile_size}, "
                     f"overlap {spec.overlap} pixels; ground resolution "
                     f"{f'{spec.gsd} m' if spec.gsd else 'not declared'}{quality}. Card: models/{m.key}.md</li>")
    return ("<p><b>Model</b>: a bundled model, picked by its name (or its short name from <tt>qgis_process</tt>, "
            "e.g. <tt>MODEL=buildings_osm</tt>), or a .safetensors model file; empty for the first:</p>"
            f"<ul>{''.join(items)}</ul>")


class SegmentAlgorithm(LandcoverAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    BANDS = "BANDS"
    EXTENT = "EXTENT"
    RESOLUTION = "RESOLUTION"
    TILE_SIZE = "TILE_SIZE"
    OVERLAP = "OVERLAP"
    BATCH_SIZE = "BATCH_SIZE"
    DEVICE = "DEVICE"
    devices = SEGMENT_DEVICES
    PRECISION = "PRECISION"
    TTA = "TTA"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    OUTPUT_RASTER = "OUTPUT_RASTER"
    OUTPUT_VECTOR = "OUTPUT_VECTOR"
    OUTPUT_CONFIDENCE = "OUTPUT_CONFIDENCE"
    OUTPUT_REPORT = "OUTPUT_REPORT"

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return self.tr("Segment land cover")

    def shortHelpString(self):  # noqa: N802
        return (
            self.tr("<p>Classifies every pixel of a raster into land-cover classes with a U-Net, sliding "
                    "overlapping windows over the image at full resolution and blending their class "
                    "probabilities, on the GPU when there is one.</p>")
            + _bundled_models_summary() +
            self.tr("<p><b>Outputs</b>: a class raster (class ids, byte, nodata 255, same CRS and grid as the input "
                    "or the extent; styled with the class names and colours, a .qml beside it); optional polygons "
                    "of each connected region of a class with fields class_id, class_name, area (m², or pixels "
                    "without a CRS) and mean confidence; an optional confidence raster (probability of the chosen "
                    "class); an optional report (HTML with a chart, or CSV) of the area and share of each class. "
                    "Masked input pixels (nodata, alpha) are nodata everywhere. A web layer (WMS, XYZ, a remote "
                    "COG) is read at RESOLUTION over EXTENT.</p>"
                    "<p>Tile size, overlap and bands default to the model's. Regions smaller than the minimum area "
                    "join their largest neighbour, in the raster and the polygons alike.</p>"))

    def initAlgorithm(self, config=None):  # noqa: N802
        self._input_parameters()
        self._engine_parameters()
        self._region_parameters()
        self._outputs()

    def _input_parameters(self) -> None:
        add = self.add_parameter
        add(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")), self.tr("The image to classify."))
        add(model_parameter(self.MODEL, self.tr("Model (a bundled model, or a model file)")),
            self.tr("A bundled model by name (land cover, buildings...) or a .safetensors model file made by the "
                    "training script; empty for the bundled land-cover model."))
        add(QgsProcessingParameterBand(self.BANDS, self.tr("Bands, in the order the model expects (empty: "
                                                           "the model's)"),
                                       None, self.INPUT, optional=True, allowMultiple=True),
            self.tr("Input bands fed to the model, in order; empty for the model's own (usually 1, 2, 3)."))
        add(QgsProcessingParameterExtent(self.EXTENT, self.tr("Process only this extent"), optional=True),
            self.tr("Classify only this area; outputs cover the extent on the input's pixel grid. Required for a web "
                    "layer without an extent of its own (WMS, XYZ tiles)."))
        add(QgsProcessingParameterDistance(self.RESOLUTION, self.tr("Resolution to read the layer at (map units per "
                                                                    "pixel; empty: the model's, else "
                                                                    "the layer's)"), None, self.INPUT, True, 0.0),
            self.tr("For a layer that is not a local raster file (WMS/WMTS, XYZ tiles, WCS, a COG over HTTP): it is "
                    "read through QGIS at this resolution over EXTENT, and the outputs are on that grid in the layer's "
                    "CRS. Empty: the model's ground resolution, else the layer's own where it has one. Given for a "
                    "local file, the file is resampled to it too."))

    def _engine_parameters(self) -> None:
        add = self.add_parameter
        add(QgsProcessingParameterNumber(self.TILE_SIZE, self.tr("Tile size in pixels (empty: the model's)"),
                                         QgsProcessingParameterNumber.Type.Integer, None, True, 32, 8192),
            self.tr("Window size the network sees at once; larger windows give more context and need more memory."),
            advanced=True)
        add(QgsProcessingParameterNumber(self.OVERLAP, self.tr("Overlap in pixels (empty: the model's)"),
                                         QgsProcessingParameterNumber.Type.Integer, None, True, 0, 4095),
            self.tr("Overlap between neighbouring windows, blended smoothly; less than half the "
                    "tile size."), advanced=True)
        add(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size (0: automatic)"),
                                         QgsProcessingParameterNumber.Type.Integer, 0, False, 0, 1024),
            self.tr("Windows processed together; 0 picks one for the device."), advanced=True)
        add(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), SEGMENT_DEVICES, defaultValue=0),
            self.tr("auto: the CUDA GPU when PyTorch sees one, else the CPU. cuda:all: every GPU at once, each in a "
                    "process of its own running a part of the raster's rows; the outputs are those of one GPU. From "
                    "qgis_process by name (DEVICE=cuda) or by number."))
        add(QgsProcessingParameterEnum(self.PRECISION, self.tr("Precision"), list(PRECISIONS), False, "auto", False,
                                       True),
            self.tr("auto: fp16 on a GPU; on a CPU without bf16 kernels int8 for rasters of 2 megapixels or more (the "
                    "first such run compiles it for this model and CPU in 15-40 s, kept in the user's cache), else "
                    "bf16 where the CPU has bf16 kernels, else fp32. The log, the report and the class raster's "
                    "metadata say which precision ran and why. fp32 is the reference; fp16, bf16 and int8 agreed "
                    "with it on over 99.5% of the pixels of imagery the bundled land-cover model never saw (auto "
                    "uses int8 only for a model whose file records such a figure); on a CPU bf16 and int8 run "
                    "1.4-2x faster than fp32. fp16 runs on GPUs only, int8 on CPUs only and needs the torchao "
                    "package. From qgis_process: PRECISION=int8."),
            advanced=True)
        add(QgsProcessingParameterBoolean(self.TTA, self.tr("Test-time augmentation (8x slower)"), defaultValue=False),
            self.tr("Average the predictions of the 8 flips and quarter turns of every window."), advanced=True)

    def _region_parameters(self) -> None:
        add = self.add_parameter
        add(QgsProcessingParameterNumber(self.MIN_AREA, self.tr("Minimum region area in m² (square pixels for a raster "
                                                                "without CRS; empty: the model's)"),
                                         QgsProcessingParameterNumber.Type.Double, None, True, 0.0),
            self.tr("Regions smaller than this join their largest neighbour. In square metres on the ground, also for "
                    "a raster in degrees. Empty: the model's default (0 for land cover, a few m² for buildings)."))
        add(QgsProcessingParameterDistance(self.SIMPLIFY, self.tr("Polygon simplification tolerance (0: none; empty: "
                                                                  "the model's)"), None, self.INPUT, True, 0.0),
            self.tr("In the input layer's units, which the dialog shows (and converts others to). Simplifies each edge "
                    "shared by two polygons once, so neighbours keep sharing their boundaries. Empty: the model's "
                    "default (none for land cover, straight building outlines for buildings)."))

    def _outputs(self) -> None:
        add = self.add_parameter
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_RASTER, self.tr("Land-cover classes")),
            self.tr("Class ids, byte, nodata 255, styled with the class names and colours."))
        add(QgsProcessingParameterFeatureSink(self.OUTPUT_VECTOR, self.tr("Land-cover polygons"),
                                              QgsProcessing.SourceType.TypeVectorPolygon, optional=True,
                                              createByDefault=True),
            self.tr("One polygon per connected region of a class: class_id, class_name, area, confidence."))
        add(QgsProcessingParameterRasterDestination(self.OUTPUT_CONFIDENCE, self.tr("Confidence"), optional=True,
                                                    createByDefault=False),
            self.tr("Probability of the chosen class for each pixel, 0 to 1 (nodata -1)."))
        add(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Area report"),
                                                  "HTML files (*.html);;CSV files (*.csv)", optional=True,
                                                  createByDefault=False),
            self.tr("Area and share of each class, as an HTML page with a chart or a CSV table."))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        for name in (self.OUTPUT_RASTER, self.OUTPUT_CONFIDENCE):
            ext = os.path.splitext(_output_path(parameters.get(name)))[1].lower()
            if ok and ext not in ("", ".tif", ".tiff"):
                ok, message = False, (f"{name} is written as a GeoTIFF; give it a .tif file name (not {ext}), and "
                                      f"convert it afterwards with Raster > Conversion > Translate if need be.")
        return self._check_model_and_layer(parameters, context) if ok else (ok, message)

    def _check_model_and_layer(self, parameters, context):
        """The model file, and bands and extent against the layer and the model, from their headers (each
        read once): before torch loads."""
        from rasterio.transform import from_bounds

        from ..core.errors import LandcoverError
        from ..core.inference.plan import chosen_bands, region_of_extent
        from ..core.model.bundled import resolve_model_path
        from ..core.model.model_file import read_spec

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        try:
            spec = read_spec(resolve_model_path(self.parameterAsFile(parameters, self.MODEL, context) or None))
            if layer is None:
                return True, ""  # QGIS's own check has spoken
            chosen_bands(self.parameterAsInts(parameters, self.BANDS, context) or None, band_count(layer), spec,
                         band_descriptions(layer))
            if self._input_grid(parameters, context, layer, spec.gsd) is None and parameters.get(self.EXTENT) \
                    and layer.crs().isValid():
                r, e = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs()), layer.extent()
                grid = from_bounds(e.xMinimum(), e.yMinimum(), e.xMaximum(), e.yMaximum(), layer.width(),
                                   layer.height())
                region_of_extent((r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum()), grid, layer.width(),
                                 layer.height())
        except (LandcoverError, QgsProcessingException) as exc:
            return False, str(exc)
        return True, ""

    def _input_grid(self, parameters, context, layer, gsd):
        """The grid a layer is fetched on through its provider, or None where the engine reads the file itself
        (a local file, with no RESOLUTION asked for)."""
        resolution = self.optional_number(parameters, self.RESOLUTION, context, float)
        if is_local_file(layer) and resolution is None:
            return None
        if parameters.get(self.EXTENT):
            extent = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
        elif has_native_grid(layer):
            extent = layer.extent()
        else:
            raise QgsProcessingException(f"INPUT is a {layer.providerType()} layer without an extent of its own: "
                                         "give EXTENT, the area to classify.")
        if resolution is None and gsd:
            from rasterio.crs import CRS

            from ..core.io.geo import map_resolution

            bounds = (extent.xMinimum(), extent.yMinimum(), extent.xMaximum(), extent.yMaximum())
            try:
                resolution = map_resolution(CRS.from_wkt(layer.crs().toWkt()), bounds, gsd)
            except Exception:  # no usable CRS: the model's metres cannot be placed on this layer
                resolution = None
        if resolution is None and has_native_grid(layer):
            resolution = math.sqrt(layer.rasterUnitsPerPixelX() * layer.rasterUnitsPerPixelY())
        if resolution is None:
            raise QgsProcessingException(
                f"Give RESOLUTION, the map units per pixel to read this {layer.providerType()} layer at: neither the "
                "model nor the layer has a resolution of its own (e.g. 0.5 for half-metre pixels in a CRS in metres).")
        return grid_over(extent, resolution)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_engine()
        from ..core.errors import Cancelled, LandcoverError
        from ..core.model.bundled import resolve_model_path
        from ..core.model.model_file import load_model
        from ..core.segment import segment

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.tr("The input raster could not be loaded."))
        source = layer.source()
        model_path = self.parameterAsFile(parameters, self.MODEL, context) or None
        opts = self._options(parameters, context, layer)
        raster_out = self.parameterAsOutputLayer(parameters, self.OUTPUT_RASTER, context)
        conf_out = self.parameterAsOutputLayer(parameters, self.OUTPUT_CONFIDENCE, context) or None
        report_out = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None
        try:
            with engine_warnings(feedback):
                model = load_model(resolve_model_path(model_path))
        except LandcoverError as exc:
            raise QgsProcessingException(str(exc)) from None
        spec = model[1]
        grid = self._input_grid(parameters, context, layer, spec.gsd)
        steps = QgsProcessingMultiStepFeedback(2 if grid else 1, feedback)
        fields = polygon_fields()
        sink, vector_id = self.parameterAsSink(parameters, self.OUTPUT_VECTOR, context, fields,
                                               POLYGON_WKB, layer.crs())
        polygons = None if sink is None else PolygonOutput(sink, vector_id, fields, feedback.isCanceled, Cancelled)
        del sink  # the PolygonOutput holds it: closing it there closes the file

        started, finished = time.perf_counter(), False
        try:
            if grid is not None:
                source, opts.extent = self._fetch(layer, grid, steps, feedback), None
                steps.setCurrentStep(1)
            result = segment(source, raster_out, model, confidence_path=conf_out, options=opts,
                             progress=lambda f: steps.setProgress(100.0 * f), cancel=feedback.isCanceled,
                             log=self._logger(feedback), polygon_writer=polygons and polygons.write)
            finished = True
        except Cancelled:
            raise QgsProcessingException(self.tr("Cancelled: no output was written.")) from None
        except LandcoverError as exc:
            raise QgsProcessingException(str(exc)) from None
        finally:
            if grid is not None and source != layer.source():
                remove(source)
            if polygons is not None and not finished:
                polygons.discard()
        duration = time.perf_counter() - started

        self._style_and_report(spec, result, opts, layer, model_path, duration, context, raster_out, vector_id,
                               polygons, report_out)
        for w in result.warnings:
            feedback.pushWarning(w)
        return {self.OUTPUT_RASTER: raster_out, self.OUTPUT_VECTOR: vector_id, self.OUTPUT_CONFIDENCE: conf_out,
                self.OUTPUT_REPORT: report_out}

    def _options(self, parameters, context, layer):
        from ..core.segment import SegmentOptions

        bands = self.parameterAsInts(parameters, self.BANDS, context) or None
        extent = None
        if parameters.get(self.EXTENT) and is_local_file(layer):
            r = self.parameterAsExtent(parameters, self.EXTENT, context, layer.crs())
            extent = (r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum())
        return SegmentOptions(
            bands=tuple(bands) if bands else None, extent=extent,
            tile_size=self.optional_number(parameters, self.TILE_SIZE, context),
            overlap=self.optional_number(parameters, self.OVERLAP, context),
            batch_size=self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            device=self.device(parameters, context), tta=self.parameterAsBool(parameters, self.TTA, context),
            precision=self.parameterAsEnumString(parameters, self.PRECISION, context) or "auto",
            min_area=self.optional_number(parameters, self.MIN_AREA, context, float),
            simplify=self.optional_number(parameters, self.SIMPLIFY, context, float))

    @staticmethod
    def _style_and_report(spec, result, opts, layer, model_path, duration, context, raster_out, vector_id, polygons,
                          report_out) -> None:
        """Class styles on the outputs (and on the layers loaded when the run ends) and the area report."""
        from ..core.evaluation.report import write_area_report
        from .styling import ClassStyler, style_class_raster, style_polygons

        style_class_raster(raster_out, spec.classes)
        details = {"model": spec.name, "model file": model_path or "bundled default", "input": safe_source(layer),
                   "device": result.device, "precision": f"{result.precision} ({result.precision_reason})",
                   "batch size": result.batch_size, "tile size": result.tile_size,
                   "overlap": result.overlap, "test-time augmentation": opts.tta, "minimum area": result.min_area,
                   "simplification": result.simplify, "seconds": round(duration, 1),
                   "megapixels per second": round(result.mp_per_s, 3)}
        outlined = [c for c in spec.classes if spec.polygons.classes is None or c.id in spec.polygons.classes]
        for out_id, classes in ((raster_out, spec.classes), (vector_id, outlined)):
            if out_id and context.willLoadLayerOnCompletion(out_id):
                context.layerToLoadOnCompletionDetails(out_id).setPostProcessor(ClassStyler(classes, details))
        if polygons is not None:
            polygons.close()  # flush the file before styling it
            saved = QgsVectorLayer(vector_id, "polygons", "ogr")
            if saved.isValid():
                style_polygons(saved, outlined)
        if report_out:
            write_area_report(report_out, result.areas, result.area_units, f"Land cover: {layer.name()}", details)

    @staticmethod
    def _fetch(layer, grid, steps, feedback) -> str:
        """Read the layer onto `grid` through its provider into a temporary GeoTIFF; return its path."""
        path = QgsProcessingUtils.generateTempFilename("landcover_input.tif")
        check_disk(grid, band_count(layer), os.path.dirname(path))
        feedback.pushInfo(f"Reading {safe_source(layer)} through QGIS's {layer.providerType()} provider: "
                          f"{grid.describe()}, in {layer.crs().authid() or 'its CRS'}")
        started = time.perf_counter()
        fetch(layer, grid, path, steps)
        feedback.pushInfo(f"read in {time.perf_counter() - started:.1f} s")
        return path

    @staticmethod
    def _logger(feedback):
        def log(message: str):
            if message.startswith("Warning: "):
                return  # pushed as warnings at the end, once
            feedback.pushInfo(message)
        return log


def _output_path(value) -> str:
    """The file an output parameter names, or "" for a temporary output or a non-file destination."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink.staticValue()
    if not isinstance(value, str) or value == "TEMPORARY_OUTPUT" or value.startswith("memory:"):
        return ""
    return value
