"""What the engine needs beyond QGIS's own Python, and how to get it."""
from __future__ import annotations

import platform

from qgis.core import QgsApplication, QgsProcessingException

from .. import installer


def install_hint() -> str:
    """Where a user installs the missing packages: the plugin's menu, or the same installer from a terminal."""
    from ..core.interpreter import python_program

    profile = QgsApplication.qgisSettingsDirPath()
    command = f"{python_program() or 'python3'} -m landcover_plugin.installer install --profile \"{profile}\""
    return ("Install them from the menu Raster > Land cover > Install engine dependencies (PyTorch)…, or, without "
            f"the QGIS window, run from {installer.PLUGINS_DIR}: {command}")


def require_engine() -> None:
    """Raise a QgsProcessingException naming what is missing and how to install it."""
    missing = installer.missing_packages()
    if missing:
        raise QgsProcessingException(
            f"The land-cover engine needs {', '.join(missing)}, which this QGIS's Python "
            f"({platform.python_version()}) does not have. {install_hint()}")
