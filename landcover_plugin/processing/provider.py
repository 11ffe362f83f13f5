"""The Processing provider `landcover`."""
from __future__ import annotations

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtGui import QIcon

from ..resources import ICON


class LandcoverProvider(QgsProcessingProvider):
    def id(self):
        return "landcover"

    def name(self):
        return QCoreApplication.translate("landcover", "Land cover")

    def longName(self):  # noqa: N802
        return QCoreApplication.translate("landcover", "Land cover (U-Net segmentation)")

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802
        return ICON

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        """The engine writes GeoTIFF (tiled, compressed, with the colour table): the dialogs offer only it."""
        return ["tif", "tiff"]

    def loadAlgorithms(self):  # noqa: N802
        from .evaluate_algorithm import EvaluateAlgorithm
        from .prepare_sentinel2_algorithm import PrepareSentinel2Algorithm
        from .segment_algorithm import SegmentAlgorithm
        from .train_algorithm import TrainAlgorithm

        self.addAlgorithm(SegmentAlgorithm())
        self.addAlgorithm(EvaluateAlgorithm())
        self.addAlgorithm(TrainAlgorithm())
        self.addAlgorithm(PrepareSentinel2Algorithm())
