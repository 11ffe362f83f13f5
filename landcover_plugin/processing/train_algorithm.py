"""landcover:train, "Train land-cover model": a model for the user's region from polygons over their imagery."""
from __future__ import annotations

import os

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsCoordinateTransformContext,
    QgsPalettedRasterRenderer,
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingUtils,
    QgsRasterLayer,
    QgsVectorFileWriter,
    QgsVectorLayer,
)

from .algorithm import DEVICES, LandcoverAlgorithm, engine_warnings, model_parameter
from .compat import POLYGON_GEOMETRY
from .dependencies import require_engine


class TrainAlgorithm(LandcoverAlgorithm):
    INPUT = "INPUT"
    LABELS = "LABELS"
    CLASS_FIELD = "CLASS_FIELD"
    INIT_MODEL = "INIT_MODEL"
    FROM_SCRATCH = "FROM_SCRATCH"
    VALIDATION = "VALIDATION"
    MAX_MINUTES = "MAX_MINUTES"
    EPOCHS = "EPOCHS"
    TILE_SIZE = "TILE_SIZE"
    BATCH_SIZE = "BATCH_SIZE"
    LEARNING_RATE = "LEARNING_RATE"
    DEVICE = "DEVICE"
    INT8_CHECK = "INT8_CHECK"
    OUTPUT_MODEL = "OUTPUT_MODEL"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    VAL_MIOU = "VAL_MIOU"
    INIT_VAL_MIOU = "INIT_VAL_MIOU"

    def name(self):
        return "train"

    def displayName(self):  # noqa: N802
        return self.tr("Train land-cover model")

    def shortHelpString(self):  # noqa: N802
        return (
            self.tr("<p>Learns a land-cover model for your imagery from labels you give: polygons digitized over the "
                    "imagery with a class field (class ids or class names), or a raster of class ids (255 = "
                    "unlabelled). Pixels outside every polygon are unlabelled, not background: a few polygons of each "
                    "class are enough to start.</p><p>It starts from the bundled model (or another model file) and "
                    "adapts it to your region and your classes within the time budget; classes named like the starting "
                    "model's keep what it learnt. A categorized style on the labels gives the classes their names and "
                    "colours. Part of the labelled area is held out, in blocks, to score the model each epoch; the "
                    "best epoch is kept.</p><p>The model file works at once in <i>Segment land cover</i>, whose "
                    "outputs are styled with your classes. The report shows the curves, per-class IoU and the "
                    "confusion matrix on the held-out area, the starting model's beside the trained one's.</p>"))

    def initAlgorithm(self, config=None):  # noqa: N802
        add = self.add_parameter
        add(QgsProcessingParameterMultipleLayers(self.INPUT, self.tr("Imagery to learn from"),
                                                 QgsProcessing.SourceType.TypeRaster),
            self.tr("One or more rasters (GDAL files) that the labels cover."))
        add(QgsProcessingParameterMapLayer(self.LABELS, self.tr("Labels (polygons, or a raster of class ids)"),
                                           types=[QgsProcessing.SourceType.TypeVectorPolygon,
                                                  QgsProcessing.SourceType.TypeRaster]),
            self.tr("Polygons with a class field, in any CRS; or a raster of class ids where 255 means unlabelled."))
        add(QgsProcessingParameterField(self.CLASS_FIELD, self.tr("Class field (ids or names)"), None, self.LABELS,
                                        optional=True),
            self.tr("For polygon labels: the field holding each polygon's class id or class name."))
        add(model_parameter(self.INIT_MODEL, self.tr("Model to start from (empty: the bundled land-cover model)")),
            self.tr("A bundled model by name (land cover, buildings...) or a .safetensors model file to adapt; empty "
                    "for the bundled land-cover model."))
        add(QgsProcessingParameterBoolean(self.FROM_SCRATCH, self.tr("Train from scratch (random weights)"),
                                          defaultValue=False),
            self.tr("Ignore the starting model and learn from random weights (needs many more labels and time)."),
            advanced=True)
        add(QgsProcessingParameterNumber(self.VALIDATION, self.tr("Share of the labelled area held out for validation"),
                                         QgsProcessingParameterNumber.Type.Double, 0.2, False, 0.0, 0.5),
            self.tr("Blocks of the labelled area (not single pixels) held out to score the model; 0 for none."))
        add(QgsProcessingParameterNumber(self.MAX_MINUTES, self.tr("Time budget (minutes)"),
                                         QgsProcessingParameterNumber.Type.Double, 15.0, False, 0.1, 100000.0),
            self.tr("Training fits its schedule to this time, reading the data included."))
        add(QgsProcessingParameterNumber(self.EPOCHS, self.tr("Epochs (empty: as many as the time allows)"),
                                         QgsProcessingParameterNumber.Type.Integer, None, True, 1, 10000),
            self.tr("Number of epochs; shortened if they do not fit the time budget."), advanced=True)
        add(QgsProcessingParameterNumber(self.TILE_SIZE, self.tr("Training window size in pixels (empty: 256)"),
                                         QgsProcessingParameterNumber.Type.Integer, None, True, 32, 2048),
            self.tr("Side of the windows the network learns from."), advanced=True)
        add(QgsProcessingParameterNumber(self.BATCH_SIZE, self.tr("Batch size (empty: 8 on a CPU, 16 on a GPU)"),
                                         QgsProcessingParameterNumber.Type.Integer, None, True, 1, 1024),
            self.tr("Windows per training step."), advanced=True)
        add(QgsProcessingParameterNumber(self.LEARNING_RATE,
                                         self.tr("Learning rate (empty: 2e-4 to adapt, 2e-3 from scratch)"),
                                         QgsProcessingParameterNumber.Type.Double, None, True, 0.0, 1.0),
            self.tr("AdamW learning rate of the decoder; the encoder learns at 0.3x, the head at 5x."), advanced=True)
        add(QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), DEVICES, defaultValue=0),
            self.tr("auto: the CUDA GPU when PyTorch sees one, else the CPU."))
        add(QgsProcessingParameterBoolean(self.INT8_CHECK, self.tr("Measure int8 on the held-out area afterwards"),
                                          defaultValue=False),
            self.tr("After training, compare the model's int8 labels with its fp32 labels on the validation blocks "
                    "and record the figure in the model file: where at least 99.5% of pixels agree, Segment land "
                    "cover's auto precision runs the model in int8 on CPUs without bf16 kernels (most laptops), "
                    "1.4x faster than fp32. Needs the torchao package and a C++ compiler; takes about a minute "
                    "after the time budget."), advanced=True)
        add(QgsProcessingParameterFileDestination(self.OUTPUT_MODEL, self.tr("Trained model"),
                                                  "Model files (*.safetensors)"),
            self.tr("The .safetensors model file, usable at once by Segment land cover."))
        add(QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Training report"), "HTML files (*.html)",
                                                  optional=True, createByDefault=False),
            self.tr("Curves, per-class IoU and confusion matrix on the held-out area, starting model beside trained."))
        self.addOutput(QgsProcessingOutputNumber(self.VAL_MIOU, self.tr("Validation mean IoU")))
        self.addOutput(QgsProcessingOutputNumber(self.INIT_VAL_MIOU, self.tr("Validation mean IoU of the "
                                                                             "starting model")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        if ok and not self.parameterAsBool(parameters, self.FROM_SCRATCH, context):
            return self.check_model(parameters, self.INIT_MODEL, context)
        return ok, message

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_engine()
        from ..core.errors import Cancelled, LandcoverError
        from ..core.training.config import Hooks
        from ..core.training.job import TrainJob, run

        rasters = self._rasters(parameters, context)
        labels = self._labels(parameters, context, feedback)
        out_model = self.parameterAsFileOutput(parameters, self.OUTPUT_MODEL, context)
        if not out_model.lower().endswith(".safetensors"):
            out_model += ".safetensors"
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context) or None
        job = TrainJob(
            rasters=rasters, labels=labels, out_path=out_model,
            init=self.parameterAsFile(parameters, self.INIT_MODEL, context) or None,
            from_scratch=self.parameterAsBool(parameters, self.FROM_SCRATCH, context),
            validation=self.parameterAsDouble(parameters, self.VALIDATION, context),
            max_minutes=self.parameterAsDouble(parameters, self.MAX_MINUTES, context),
            epochs=self.optional_number(parameters, self.EPOCHS, context, int),
            tile=self.optional_number(parameters, self.TILE_SIZE, context, int),
            batch_size=self.optional_number(parameters, self.BATCH_SIZE, context, int),
            lr=self.optional_number(parameters, self.LEARNING_RATE, context, float),
            device=self.device(parameters, context), report_path=report,
            int8_check=self.parameterAsBool(parameters, self.INT8_CHECK, context), command="landcover:train")
        hooks = Hooks(log=feedback.pushInfo, progress=lambda f: feedback.setProgress(100.0 * f),
                      cancel=feedback.isCanceled)
        try:
            with engine_warnings(feedback):
                result = run(job, hooks)
        except Cancelled as exc:
            raise QgsProcessingException(str(exc)) from None
        except LandcoverError as exc:
            raise QgsProcessingException(str(exc)) from None
        if result.cancelled:
            feedback.pushWarning(f"Cancelled after {result.epochs} epoch(s): the best model so far (epoch "
                                 f"{result.best_epoch}) was written to {out_model}.")
        if result.val_miou is not None:
            feedback.pushInfo(f"Validation mean IoU {result.val_miou:.4f} (epoch {result.best_epoch}); the starting "
                              f"model: {result.init_val_miou:.4f}")
        return {self.OUTPUT_MODEL: out_model, self.OUTPUT_REPORT: report, self.VAL_MIOU: result.val_miou,
                self.INIT_VAL_MIOU: result.init_val_miou}

    def _rasters(self, parameters, context) -> list[str]:
        layers = self.parameterAsLayerList(parameters, self.INPUT, context)
        if not layers:
            raise QgsProcessingException(self.tr("Give at least one raster to learn from (INPUT)."))
        paths = []
        for layer in layers:
            if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "gdal":
                raise QgsProcessingException(f"{layer.name()} is not a raster file; give GeoTIFF, JPEG, PNG or other "
                                             "GDAL rasters to learn from.")
            paths.append(layer.source())
        return paths

    def _labels(self, parameters, context, feedback):
        from ..core.training.job import Labels

        layer = self.parameterAsLayer(parameters, self.LABELS, context)
        if layer is None:
            raise QgsProcessingException(self.tr("The labels (LABELS) could not be loaded."))
        if isinstance(layer, QgsRasterLayer):
            if layer.providerType() != "gdal":
                raise QgsProcessingException(self.tr("Label rasters must be raster files of class ids."))
            styled = None
            if isinstance(layer.renderer(), QgsPalettedRasterRenderer):
                styled = {str(int(c.value)): (c.label, c.color.name()) for c in layer.renderer().classes()
                          if c.label}
            return Labels(raster=layer.source(), styled=styled)
        if not isinstance(layer, QgsVectorLayer) or layer.geometryType() != POLYGON_GEOMETRY:
            raise QgsProcessingException(self.tr("The labels must be polygons or a raster of class ids."))
        field = self.parameterAsString(parameters, self.CLASS_FIELD, context)
        if not field:
            raise QgsProcessingException(self.tr("Polygon labels need CLASS_FIELD: the field holding class ids or "
                                                 "names."))
        if layer.fields().indexOf(field) < 0:
            raise QgsProcessingException(f"The labels have no field {field!r}.")
        styled = None
        renderer = layer.renderer()
        if isinstance(renderer, QgsCategorizedSymbolRenderer) and renderer.classAttribute() == field:
            styled = {str(c.value()): (c.label(), c.symbol().color().name()) for c in renderer.categories()
                      if c.value() is not None and str(c.value()) != ""}
        path, name = self._ogr_source(layer, context, feedback)
        return Labels(vector=path, layer=name, field=field, styled=styled)

    @staticmethod
    def _ogr_source(layer, context, feedback) -> tuple[str, str | None]:
        """(file, layer name) GDAL can read: the layer's own file, or a copy (memory layers, filters, services)."""
        source = layer.source()
        path, _, rest = source.partition("|")
        if layer.providerType() == "ogr" and os.path.isfile(path) and "subset=" not in rest:
            name = None
            for part in rest.split("|"):
                if part.startswith("layername="):
                    name = part[len("layername="):]
            return path, name
        copy = QgsProcessingUtils.generateTempFilename("labels.gpkg")
        options = QgsVectorFileWriter.SaveVectorOptions()
        options.driverName = "GPKG"
        options.layerName = "labels"
        error = QgsVectorFileWriter.writeAsVectorFormatV3(layer, copy, QgsCoordinateTransformContext(), options)
        if error[0] != QgsVectorFileWriter.WriterError.NoError:
            raise QgsProcessingException(f"The labels could not be copied for training: {error[1]}")
        feedback.pushInfo(f"labels copied to {copy}")
        return copy, "labels"
