"""What the engine needs beyond QGIS's own Python, and how to get it on each platform."""
from __future__ import annotations

import platform
import sys

from qgis.core import QgsProcessingException

REQUIRED = ("torch", "safetensors", "rasterio")


def install_command() -> str:
    """The command that installs the missing packages into this QGIS's Python."""
    packages = "torch safetensors"
    if not sys.platform.startswith("linux"):
        packages += " rasterio"  # Linux distributions package it on QGIS's own GDAL
    if sys.platform.startswith("win"):
        return ("in the OSGeo4W Shell (or the QGIS installation's Python console): "
                f"python -m pip install {packages} \"numpy<2\"")
    if sys.platform == "darwin":
        return f"{sys.executable} -m pip install --user {packages} \"numpy<2\""
    return (f"{sys.executable} -m pip install --user --break-system-packages {packages} \"numpy<2\" "
            "(or, from this plugin's source folder: make deploy)")


def require_engine() -> None:
    """Raise a QgsProcessingException naming what is missing and the command that installs it."""
    missing = []
    for name in REQUIRED:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise QgsProcessingException(
            f"The land-cover engine needs {', '.join(missing)}, which this QGIS's Python "
            f"({platform.python_version()}) does not have. Install with: {install_command()}")
