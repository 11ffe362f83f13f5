"""Raster layers that are not local files (WMS/WMTS, XYZ tiles, WCS, a COG over HTTP): read through
QGIS's own data provider onto a grid of the resolution asked for.

The layer is fetched once, block by block, into a temporary GeoTIFF that the engine then reads like
any raster: the engine's overlapping windows would otherwise ask the service for most pixels twice,
and processes on other GPUs (DEVICE cuda:all) cannot reach a QGIS provider but can open a file.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

from qgis.core import (
    Qgis,
    QgsDataSourceUri,
    QgsProcessingException,
    QgsProject,
    QgsRasterBlockFeedback,
    QgsRasterDataProvider,
    QgsRasterFileWriter,
    QgsRasterPipe,
    QgsRectangle,
)

# GDAL sources that are reached over a network: read through the provider like a web service
_REMOTE = ("/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsiwebhdfs",
           "http://", "https://", "ftp://")
# A service's data type of 32-bit colours: the fetched file has red, green, blue and alpha bands
_COLOUR_TYPES = (Qgis.DataType.ARGB32, Qgis.DataType.ARGB32_Premultiplied)
# Refuse grids that could not be written: more pixels than this, or more bytes than the disk has
MAX_PIXELS = 4 * 10 ** 10


def is_local_file(layer) -> bool:
    """A raster GDAL opens as a file on this machine: the engine reads it directly, on its own grid."""
    if layer.providerType() != "gdal":
        return False
    return not layer.source().split("|")[0].lower().startswith(_REMOTE)


def has_native_grid(layer) -> bool:
    """The provider knows the layer's size in pixels (files, COGs, WCS), so a native resolution and extent."""
    provider = layer.dataProvider()
    return bool(provider.capabilities() & QgsRasterDataProvider.Capability.Size) and provider.xSize() > 0


def band_count(layer) -> int:
    """Bands of the fetched raster: a colour service (WMS, XYZ) gives red, green, blue and alpha."""
    if layer.bandCount() == 1 and layer.dataProvider().dataType(1) in _COLOUR_TYPES:
        return 4
    return layer.bandCount()


def band_descriptions(layer) -> tuple[str, ...]:
    """Each band's description as GDAL has it: QGIS names a described band "Band 1: B2", an undescribed one
    "Band 1"."""
    names = []
    for i in range(1, layer.bandCount() + 1):
        _, sep, description = layer.bandName(i).partition(": ")
        names.append(description if sep else "")
    return tuple(names)


def safe_source(layer) -> str:
    """The layer's source for logs and reports, without a password a service URI may carry."""
    return QgsDataSourceUri.removePassword(layer.source())


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid: its top-left corner on the extent's, whole pixels of `resolution`."""

    left: float
    top: float
    resolution: float
    width: int
    height: int

    @property
    def extent(self) -> QgsRectangle:
        return QgsRectangle(self.left, self.top - self.height * self.resolution,
                            self.left + self.width * self.resolution, self.top)

    def describe(self) -> str:
        return f"{self.width} x {self.height} pixels of {self.resolution:.6g} map units"


def grid_over(extent: QgsRectangle, resolution: float) -> Grid:
    """Whole pixels covering `extent` (the last row and column may reach a little past it)."""
    if not resolution > 0:
        raise QgsProcessingException("RESOLUTION must be a positive number of map units per pixel.")
    width = max(1, math.ceil(extent.width() / resolution - 1e-9))
    height = max(1, math.ceil(extent.height() / resolution - 1e-9))
    if width * height > MAX_PIXELS:
        raise QgsProcessingException(
            f"EXTENT at RESOLUTION {resolution:g} is {width} x {height} pixels, too many to classify at once; "
            "give a smaller extent or a coarser resolution.")
    return Grid(extent.xMinimum(), extent.yMaximum(), resolution, width, height)


def check_disk(grid: Grid, bands: int, folder: str) -> None:
    """Refuse before fetching when the uncompressed copy could not fit in the temporary folder."""
    needed = grid.width * grid.height * bands
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise QgsProcessingException(
            f"Reading this layer at RESOLUTION {grid.resolution:g} takes up to {needed / 1e9:.1f} GB in {folder}, "
            f"which has {free / 1e9:.1f} GB free: give a smaller EXTENT or a coarser RESOLUTION.")


def fetch(layer, grid: Grid, path: str, feedback) -> None:
    """Write the layer's pixels on `grid` (in the layer's CRS) to the GeoTIFF `path`, through its provider.

    Progress goes to `feedback` (0-100); cancelling it stops the fetch. On failure or cancel nothing is
    left at `path`.
    """
    provider = layer.dataProvider().clone()
    if layer.providerType() == "gdal" and hasattr(provider, "enableProviderResampling"):
        # imagery between grids: bilinear, not the nearest pixel
        provider.enableProviderResampling(True)
        provider.setZoomedInResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)
        provider.setZoomedOutResamplingMethod(QgsRasterDataProvider.ResamplingMethod.Bilinear)
    pipe = QgsRasterPipe()
    if not pipe.set(provider):
        raise QgsProcessingException(f"The {layer.providerType()} layer {layer.name()} cannot be read.")
    writer = QgsRasterFileWriter(path)
    writer.setOutputFormat("GTiff")
    writer.setCreateOptions(["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
    block_feedback = QgsRasterBlockFeedback()
    block_feedback.progressChanged.connect(feedback.setProgress)
    feedback.canceled.connect(block_feedback.cancel)
    try:
        error = writer.writeRaster(pipe, grid.width, grid.height, grid.extent, layer.crs(),
                                   QgsProject.instance().transformContext(), block_feedback)
    finally:
        feedback.canceled.disconnect(block_feedback.cancel)
    if error != QgsRasterFileWriter.WriterError.NoError or feedback.isCanceled():
        remove(path)
        if feedback.isCanceled():
            raise QgsProcessingException("Cancelled: no output was written.")
        raise QgsProcessingException(
            f"The {layer.providerType()} layer {layer.name()} could not be read at {grid.describe()} ({error}); "
            "check that the service answers (open the layer in QGIS) and try a smaller EXTENT.")


def remove(path: str) -> None:
    """Delete the temporary copy and what GDAL wrote beside it."""
    for name in (path, path + ".aux.xml", path + ".ovr"):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass
