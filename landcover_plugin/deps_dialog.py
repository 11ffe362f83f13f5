"""The dialog that installs the engine's Python packages (landcover_plugin.installer) from inside QGIS.

pip runs in a process of its own (QProcess), so QGIS stays responsive; its output is the log, and the
packages it reports give the progress.
"""
from __future__ import annotations

import os

from qgis.PyQt.QtCore import QProcess
from qgis.PyQt.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QVBoxLayout,
)

from . import installer


def installer_command(profile: str, torch_index: str | None = None) -> tuple[str, list[str]]:
    """(program, arguments) that run the installer with QGIS's own Python."""
    from .core.interpreter import python_program

    args = ["-m", "landcover_plugin.installer", "install", "--profile", profile]
    if torch_index:
        args += ["--torch-index", torch_index]
    return python_program() or "python3", args


def _progress(line: str, current: int) -> int:
    """A share of 100 from pip's messages: each package found moves it on, installing is the last tenth."""
    if line.startswith("Collecting") or line.startswith("Processing "):
        return min(80, current + 6)
    if line.startswith("Installing collected packages"):
        return 90
    if line.startswith("installed into"):
        return 100
    return current


class DependenciesDialog(QDialog):
    """Says what will be installed where, installs it with progress and a log, and reports the result."""

    def __init__(self, profile: str, parent=None, torch_index: str | None = None):
        super().__init__(parent)
        self.profile, self.torch_index = profile, torch_index
        self.setWindowTitle("Land cover: install the engine's Python packages")
        self.setMinimumWidth(640)
        plan = installer.make_plan(profile, driver=installer.nvidia_driver(), numpy_version=installer.numpy_version(),
                                   torch_index=torch_index)
        self.existed = os.path.isdir(plan.folder)
        layout = QVBoxLayout(self)
        self.summary = QLabel(f"The land-cover engine needs PyTorch. pip will install {plan.summary()}. QGIS's own "
                              "Python and its numpy stay as they are; Remove engine dependencies undoes it.")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        layout.addWidget(self.progress)
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        layout.addWidget(self.log, 1)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.install_button = self.buttons.addButton("Install", QDialogButtonBox.ButtonRole.AcceptRole)
        self.install_button.clicked.connect(self.start)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)
        self.process = None
        self.succeeded = None  # True or False once the installer has finished

    def start(self) -> None:
        self.install_button.setEnabled(False)
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.setWorkingDirectory(installer.PLUGINS_DIR)  # where `-m landcover_plugin.installer` is found
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        program, args = installer_command(self.profile, self.torch_index)
        self.log.appendPlainText(f"$ {program} {' '.join(args)}")
        self.process.start(program, args)

    def _read(self) -> None:
        text = bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace")
        for line in text.splitlines():
            self.log.appendPlainText(line)
            self.progress.setValue(_progress(line, self.progress.value()))

    def _finished(self, code, _status=None) -> None:
        self._read()
        self.succeeded = code == 0
        if self.succeeded:
            installer.activate(self.profile)
            self.progress.setValue(100)
            self.log.appendPlainText("Done: the land-cover algorithms can run now.")
        else:
            self.log.appendPlainText("The installation did not finish; the messages above say why.")
            if not self.existed:  # nothing half-installed left behind
                installer.remove(self.profile)
        self.install_button.setEnabled(not self.succeeded)

    def reject(self) -> None:
        """Close; an install still running is stopped and what it began removed."""
        if self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning:
            self.process.finished.disconnect(self._finished)
            self.process.kill()
            self.process.waitForFinished(10000)
            if not self.existed:
                installer.remove(self.profile)
            self.succeeded = False
        super().reject()

