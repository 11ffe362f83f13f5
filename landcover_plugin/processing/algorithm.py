"""What every landcover algorithm shares."""
from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtGui import QIcon

from .provider import ICON


class LandcoverAlgorithm(QgsProcessingAlgorithm):
    """Ungrouped (the provider has three algorithms), with the plugin's icon."""

    def group(self):
        return ""

    def groupId(self):  # noqa: N802
        return ""

    def icon(self):
        return QIcon(ICON)

    def createInstance(self):  # noqa: N802
        return type(self)()
