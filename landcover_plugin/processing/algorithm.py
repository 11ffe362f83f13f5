"""What every landcover algorithm shares."""
from __future__ import annotations

import logging
from contextlib import contextmanager

from qgis.core import QgsProcessingAlgorithm, QgsProcessingParameterDefinition, QgsProcessingParameterFile
from qgis.PyQt.QtCore import QCoreApplication, QVariant
from qgis.PyQt.QtGui import QIcon

from ..resources import ICON

TR_CONTEXT = "landcover"  # the context of the plugin's strings in a .ts/.qm translation
DEVICES = ["auto", "cpu", "cuda"]  # the DEVICE enum of every algorithm, in this order


def model_parameter(name: str, description: str) -> QgsProcessingParameterFile:
    """A model: a bundled model's name or a .safetensors file. Names pass the file filter's "All files";
    the drop-down of bundled models appears where Processing's Python widgets exist, QGIS's file widget
    elsewhere."""
    param = QgsProcessingParameterFile(name, description, optional=True,
                                       fileFilter="Model files (*.safetensors);;All files (*)")
    try:
        from . import model_widget
    except Exception:  # no Processing GUI (or one without the Python wrappers)
        return param
    param.setMetadata({"widget_wrapper": {"class": model_widget.ModelWidgetWrapper}})
    return param


class _ToFeedback(logging.Handler):
    def __init__(self, feedback):
        super().__init__(logging.WARNING)
        self.feedback = feedback

    def emit(self, record):
        self.feedback.pushWarning(record.getMessage())


@contextmanager
def engine_warnings(feedback):
    """The engine's logged warnings (a model file without a checksum, say) shown in the algorithm's log."""
    logger = logging.getLogger("landcover")
    handler = _ToFeedback(feedback)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


class LandcoverAlgorithm(QgsProcessingAlgorithm):
    """Ungrouped (the provider has three algorithms), with the plugin's icon."""

    def tr(self, text: str) -> str:
        """User-visible text through Qt's translations, in the plugin's context, as QGIS's own algorithms do."""
        return QCoreApplication.translate(TR_CONTEXT, text)

    def group(self):
        return ""

    def groupId(self):  # noqa: N802
        return ""

    def icon(self):
        return QIcon(ICON)

    def createInstance(self):  # noqa: N802
        return type(self)()

    devices = DEVICES  # the options of this algorithm's DEVICE enum, in order

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's own checks, with DEVICE taken by name too: qgis_process users write DEVICE=cuda."""
        raw = parameters.get("DEVICE")
        if isinstance(raw, str) and raw.strip() and not raw.strip().isdigit() \
                and raw.strip().lower() not in self.devices:
            return False, (f"DEVICE must be one of {', '.join(self.devices)} (or its number, 0 to "
                           f"{len(self.devices) - 1}), not \"{raw}\".")
        return super().checkParameterValues(self._device_as_index(parameters), context)

    def device(self, parameters, context) -> str:
        """The DEVICE chosen, given by name (qgis_process, processing.run) or by number (dialogs, models)."""
        return self.devices[self.parameterAsEnum(self._device_as_index(parameters), "DEVICE", context)]

    def _device_as_index(self, parameters):
        raw = parameters.get("DEVICE")
        if isinstance(raw, str) and raw.strip().lower() in self.devices:
            return {**parameters, "DEVICE": self.devices.index(raw.strip().lower())}
        return parameters

    def add_parameter(self, param, help_text: str, advanced: bool = False) -> None:
        """Add a parameter with its help text, among the advanced ones when asked."""
        param.setHelp(help_text)
        if advanced:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.Flag.FlagAdvanced)
        self.addParameter(param)

    def check_model(self, parameters, name: str, context) -> tuple[bool, str]:
        """A model parameter names a bundled model or a readable model file (its header only: no torch)."""
        from ..core.errors import LandcoverError
        from ..core.model.bundled import resolve_model_path
        from ..core.model.model_file import read_spec

        try:
            read_spec(resolve_model_path(self.parameterAsFile(parameters, name, context) or None))
        except LandcoverError as exc:
            return False, str(exc)
        return True, ""

    def optional_number(self, parameters, name: str, context, kind=int):
        """An optional number parameter's value, or None when it is left empty."""
        value = parameters.get(name)
        if value is None or (isinstance(value, str) and not value.strip()) or \
                (isinstance(value, QVariant) and value.isNull()):
            return None
        if kind is int:
            return self.parameterAsInt(parameters, name, context)
        return self.parameterAsDouble(parameters, name, context)
