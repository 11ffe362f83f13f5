"""The MODEL parameter's widget: a drop-down of the bundled models that also takes a model file.

Processing builds it from the parameter's "widget_wrapper" metadata in the algorithm dialog and
in Batch mode. The Graphical Modeler keeps QGIS's own widget for a file parameter, so that a
model can still feed it from another algorithm's output (landcover:train's OUTPUT_MODEL).
"""
from __future__ import annotations

from processing.gui.wrappers import DIALOG_MODELER, WidgetWrapper, dialogTypes
from qgis.gui import QgsGui
from qgis.PyQt.QtWidgets import QComboBox, QHBoxLayout, QToolButton, QWidget


def _bundled():
    try:
        from ..core.model.bundled import bundled_models

        return bundled_models()
    except Exception:  # a broken install must not stop the dialog from opening
        return []


class ModelWidgetWrapper(WidgetWrapper):
    def __new__(cls, param, dialog, row=0, col=0, **kwargs):
        if dialogTypes.get(dialog.__class__.__name__) == DIALOG_MODELER:
            return QgsGui.processingGuiRegistry().createModelerParameterWidget(
                dialog.model, dialog.childId, param, dialog.context)
        return super().__new__(cls)

    def createWidget(self):  # noqa: N802
        widget = QWidget()
        layout = QHBoxLayout(widget)
        layout.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setToolTip("A bundled model, or the path of a .safetensors model file")
        for model in _bundled():
            self.combo.addItem(model.name, model.key)
        layout.addWidget(self.combo, 1)
        browse = QToolButton()
        browse.setText("…")
        browse.setToolTip("Choose a model file")
        browse.clicked.connect(self._browse)
        layout.addWidget(browse)
        return widget

    def _browse(self):
        filename, _ = self.getFileName(self.combo.currentText())
        if filename:
            self.combo.setEditText(filename)

    def setValue(self, value):  # noqa: N802
        value = "" if value is None else str(value)
        index = next((i for i in range(self.combo.count())
                      if value and value.casefold() in (str(self.combo.itemData(i)).casefold(),
                                                        self.combo.itemText(i).casefold())), -1)
        if index >= 0:
            self.combo.setCurrentIndex(index)
        elif value:
            self.combo.setEditText(value)
        elif self.combo.count():
            self.combo.setCurrentIndex(0)

    def value(self):
        text = self.combo.currentText().strip()
        index = self.combo.findText(text)
        if index >= 0:
            return self.combo.itemData(index)
        return text or None
