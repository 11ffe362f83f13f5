"""landcover:evaluate, "Evaluate land-cover classification": scores against reference data."""
from __future__ import annotations

import json

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMapLayer,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
    QgsVectorLayer,
)

from .algorithm import LandcoverAlgorithm
from .dependencies import require_engine


class EvaluateAlgorithm(LandcoverAlgorithm):
    INPUT = "INPUT"
    REFERENCE = "REFERENCE"
    REFERENCE_FIELD = "REFERENCE_FIELD"
    OUTPUT_REPORT = "OUTPUT_REPORT"
    MIOU = "MIOU"
    OVERALL_ACCURACY = "OVERALL_ACCURACY"
    MEAN_F1 = "MEAN_F1"
    IOU = "IOU"

    def name(self):
        return "evaluate"

    def displayName(self):  # noqa: N802
        return self.tr("Evaluate land-cover classification")

    def shortHelpString(self):  # noqa: N802
        return (self.tr("<p>Compares a classified raster (class ids, such as the output of Segment land cover) with "
                        "reference data: a raster of class ids, or polygons whose class field holds class ids or class "
                        "names. Reference value 255 and pixels outside the reference polygons are "
                        "ignored.</p><p>Outputs the mean IoU over the classes present in either raster (MIOU), the "
                        "overall accuracy, the mean F1 and the IoU of each class (IOU, as JSON), and optionally an "
                        "HTML report with the confusion matrix and per-class IoU, F1, precision and recall.</p>"))

    def initAlgorithm(self, config=None):  # noqa: N802
        p = QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Classified raster"))
        p.setHelp(self.tr("Class ids, for example the output of Segment land cover."))
        self.addParameter(p)
        p = QgsProcessingParameterMapLayer(self.REFERENCE, self.tr("Reference (raster of class ids, or polygons)"),
                                           types=[QgsProcessing.SourceType.TypeRaster,
                                                  QgsProcessing.SourceType.TypeVectorPolygon])
        p.setHelp(self.tr("Ground truth: a raster of class ids (255 ignored), or polygons with a class field."))
        self.addParameter(p)
        p = QgsProcessingParameterField(self.REFERENCE_FIELD, self.tr("Class field of the reference polygons"),
                                        None, self.REFERENCE, optional=True)
        p.setHelp(self.tr("For polygon references: the field holding class ids or class names."))
        self.addParameter(p)
        p = QgsProcessingParameterFileDestination(self.OUTPUT_REPORT, self.tr("Evaluation "
                                                                              "report"), "HTML files (*.html)",
                                                  optional=True, createByDefault=False)
        p.setHelp(self.tr("Confusion matrix and per-class scores as an HTML page."))
        self.addParameter(p)
        self.addOutput(QgsProcessingOutputNumber(self.MIOU, self.tr("Mean IoU")))
        self.addOutput(QgsProcessingOutputNumber(self.OVERALL_ACCURACY, self.tr("Overall accuracy")))
        self.addOutput(QgsProcessingOutputNumber(self.MEAN_F1, self.tr("Mean F1")))
        self.addOutput(QgsProcessingOutputString(self.IOU, self.tr("IoU per class (JSON)")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_engine()
        from ..core.errors import Cancelled, LandcoverError
        from ..core.evaluation.evaluation import evaluate_classification, raster_classes
        from ..core.evaluation.report import write_evaluation_report
        from ..core.io.labels import rasterize_labels
        from ..core.model.classes import DEFAULT_CLASSES, LandClass

        pred = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        ref = self.parameterAsLayer(parameters, self.REFERENCE, context)
        if pred is None or ref is None:
            raise QgsProcessingException(self.tr("The classified raster or the reference could not be loaded."))
        pred_path = pred.source()
        classes = raster_classes(pred_path) or list(DEFAULT_CLASSES)
        try:
            if isinstance(ref, QgsVectorLayer):
                field = self.parameterAsString(parameters, self.REFERENCE_FIELD, context)
                if not field:
                    raise QgsProcessingException(self.tr("Polygon references need REFERENCE_FIELD: the field holding "
                                                         "class ids or names."))
                path, _, layer_part = ref.source().partition("|layername=")
                reference = rasterize_labels(pred_path, path, field, classes, layer_part.split("|")[0] or None)
            elif isinstance(ref, QgsRasterLayer):
                reference = ref.source()
            else:
                raise QgsProcessingException(self.tr("The reference must be a raster or a polygon layer."))
            # classes that appear in the reference but are not named in the classified raster still count
            known = {c.id for c in classes}
            extra = _ids_in(reference) - known - {255}
            classes = classes + [LandClass(i, f"class {i}", "#808080") for i in sorted(extra)]
            result = evaluate_classification(pred_path, reference, classes, cancel=feedback.isCanceled)
        except Cancelled:
            raise QgsProcessingException(self.tr("Cancelled.")) from None
        except LandcoverError as exc:
            raise QgsProcessingException(str(exc)) from None
        names = [c.name for c in classes]
        feedback.pushInfo(f"Mean IoU {result['miou']:.4f}, overall accuracy {result['accuracy']:.4f}")
        for n in names:
            if result["iou"][n] is not None:
                feedback.pushInfo(f"  {n}: IoU {result['iou'][n]:.4f}, F1 {result['f1'][n]:.4f}")
        report = self.parameterAsFileOutput(parameters, self.OUTPUT_REPORT, context)
        if report:
            write_evaluation_report(report, result, names, f"Evaluation of {pred.name()}",
                                    {"classified raster": pred_path, "reference": ref.source()})
        return {self.MIOU: result["miou"], self.OVERALL_ACCURACY: result["accuracy"],
                self.MEAN_F1: result["mean_f1"], self.IOU: json.dumps(result["iou"]),
                self.OUTPUT_REPORT: report or None}


def _ids_in(reference) -> set:
    import numpy as np
    import rasterio

    if isinstance(reference, np.ndarray):
        return set(np.unique(reference).tolist())
    ids = set()
    with rasterio.open(reference) as ds:
        for _, win in ds.block_windows(1):
            ids |= set(np.unique(ds.read(1, window=win)).tolist())
    return ids
