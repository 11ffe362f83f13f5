"""What every landcover algorithm shares."""
from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtCore import QVariant
from qgis.PyQt.QtGui import QIcon

from .provider import ICON

DEVICES = ["auto", "cpu", "cuda"]  # the DEVICE enum of every algorithm, in this order


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

    def add_parameter(self, param, help_text: str, advanced: bool = False) -> None:
        """Add a parameter with its help text, among the advanced ones when asked."""
        param.setHelp(help_text)
        if advanced:
            param.setFlags(param.flags() | param.FlagAdvanced)
        self.addParameter(param)

    def optional_number(self, parameters, name: str, context, kind=int):
        """An optional number parameter's value, or None when it is left empty."""
        value = parameters.get(name)
        if value is None or (isinstance(value, str) and not value.strip()) or \
                (isinstance(value, QVariant) and value.isNull()):
            return None
        if kind is int:
            return self.parameterAsInt(parameters, name, context)
        return self.parameterAsDouble(parameters, name, context)
