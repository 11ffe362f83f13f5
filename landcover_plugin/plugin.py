"""Registers the Processing provider, menu entries for the Segment and Train dialogs, a toolbar button, and the
actions that install and remove the engine's Python packages."""
from __future__ import annotations

import os

from qgis.core import QgsApplication

from . import installer
from .resources import ICON

MENU = "&Land cover"


def profile_folder() -> str:
    return QgsApplication.qgisSettingsDirPath()


class LandcoverPlugin:
    def __init__(self, iface):
        self.iface = iface
        self.provider = None
        self.actions = []

    def initProcessing(self):  # noqa: N802 (QGIS's name): qgis_process calls this without a GUI
        from .processing.provider import LandcoverProvider

        installer.activate(profile_folder())  # the engine's packages, where the installer put them
        self.provider = LandcoverProvider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        segment = self._action("Segment land cover…", "landcoverSegmentAction", self.open_segment_dialog)
        self.iface.addRasterToolBarIcon(segment)
        self._action("Train land-cover model…", "landcoverTrainAction", lambda: self.open_dialog("landcover:train"))
        self._action("Install engine dependencies (PyTorch)…", "landcoverInstallAction", self.open_installer)
        self._action("Remove engine dependencies…", "landcoverRemoveAction", self.remove_dependencies)
        if installer.missing_packages():
            self._offer_install()

    def _action(self, text: str, name: str, slot):
        from qgis.PyQt.QtGui import QIcon

        from .processing.compat import QAction

        action = QAction(QIcon(ICON), text, self.iface.mainWindow())
        action.setObjectName(name)
        action.triggered.connect(slot)
        self.iface.addPluginToRasterMenu(MENU, action)
        self.actions.append(action)
        return action

    @property
    def action(self):
        """The Segment action (the toolbar button)."""
        return self.actions[0] if self.actions else None

    def _offer_install(self):
        from qgis.core import Qgis
        from qgis.PyQt.QtWidgets import QPushButton

        bar = self.iface.messageBar()
        item = bar.createMessage("Land cover", "The engine needs PyTorch, which this QGIS does not have yet.")
        button = QPushButton("Install…")
        button.clicked.connect(self.open_installer)
        item.layout().addWidget(button)
        bar.pushWidget(item, Qgis.MessageLevel.Warning)

    def open_segment_dialog(self):
        self.open_dialog("landcover:segment")

    @staticmethod
    def open_dialog(algorithm_id: str):
        import processing

        processing.execAlgorithmDialog(algorithm_id, {})

    def open_installer(self):
        from .deps_dialog import DependenciesDialog

        DependenciesDialog(profile_folder(), self.iface.mainWindow()).exec()

    def remove_dependencies(self):
        from qgis.PyQt.QtWidgets import QMessageBox

        folder = installer.deps_folder(profile_folder())
        if not os.path.isdir(folder):
            QMessageBox.information(self.iface.mainWindow(), "Land cover",
                                    f"No engine dependencies were installed by this plugin ({folder}).")
            return
        answer = QMessageBox.question(self.iface.mainWindow(), "Land cover",
                                      f"Remove {folder} and the packages in it (PyTorch...)? Restart QGIS afterwards "
                                      "to unload them.")
        if answer == QMessageBox.StandardButton.Yes:
            installer.remove(profile_folder())

    def unload(self):
        for action in self.actions:
            self.iface.removePluginRasterMenu(MENU, action)
        if self.actions:
            self.iface.removeRasterToolBarIcon(self.actions[0])
        self.actions = []
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
