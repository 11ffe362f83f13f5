"""Registers the Processing provider, menu entries for the Segment and Train dialogs and a toolbar button."""
from __future__ import annotations

import os
import sys

from qgis.core import QgsApplication

HERE = os.path.dirname(os.path.abspath(__file__))
ICON = os.path.join(HERE, "icon.svg")


def add_deploy_dependencies() -> None:
    """Make the packages `make deploy` put beside the plugins folder importable (torch and friends)."""
    deps = os.path.join(os.path.dirname(os.path.dirname(HERE)), "landcover_deps")
    if os.path.isdir(deps) and deps not in sys.path:
        sys.path.append(deps)


class LandcoverPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.action = None
        self.train_action = None

    def initProcessing(self):  # noqa: N802 (QGIS's name): qgis_process calls this without a GUI
        from .processing.provider import LandcoverProvider

        add_deploy_dependencies()
        self.provider = LandcoverProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        from qgis.PyQt.QtGui import QIcon

        from .processing.compat import QAction

        self.action = QAction(QIcon(ICON), "Segment land cover…", self.iface.mainWindow())
        self.action.setObjectName("landcoverSegmentAction")
        self.action.triggered.connect(self.open_segment_dialog)
        self.iface.addPluginToRasterMenu("&Land cover", self.action)
        self.iface.addRasterToolBarIcon(self.action)
        self.train_action = QAction(QIcon(ICON), "Train land-cover model…", self.iface.mainWindow())
        self.train_action.setObjectName("landcoverTrainAction")
        self.train_action.triggered.connect(lambda: self.open_dialog("landcover:train"))
        self.iface.addPluginToRasterMenu("&Land cover", self.train_action)

    def open_segment_dialog(self):
        self.open_dialog("landcover:segment")

    @staticmethod
    def open_dialog(algorithm_id: str):
        import processing

        processing.execAlgorithmDialog(algorithm_id, {})

    def unload(self):
        if self.action is not None:
            self.iface.removePluginRasterMenu("&Land cover", self.action)
            self.iface.removeRasterToolBarIcon(self.action)
            self.action = None
        if self.train_action is not None:
            self.iface.removePluginRasterMenu("&Land cover", self.train_action)
            self.train_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
