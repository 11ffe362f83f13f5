"""Output files: GeoTIFF profiles, class styling, and all-or-nothing publication.

Every output is written under a temporary name beside its destination and moved
into place only when the whole job has succeeded, so a failed or cancelled run
never leaves a half-written file (nor replaces a good one).
"""
from __future__ import annotations

import os
import uuid

from ..model.classes import NODATA_CLASS
from .bindings import osgeo

CONFIDENCE_NODATA = -1.0
BLOCK = 256
_SIDECARS = (".aux.xml", "-wal", "-shm", "-journal")


class OutputSet:
    def __init__(self):
        self._pairs: list[tuple[str, str]] = []

    def temp_for(self, final: str) -> str:
        final = os.path.abspath(final)
        folder, name = os.path.split(final)
        if not os.path.isdir(folder):
            from ..errors import InputError

            raise InputError(f"The output folder {folder} does not exist; create it or choose another path.")
        stem, ext = os.path.splitext(name)
        tmp = os.path.join(folder, f".{stem}.part-{uuid.uuid4().hex[:8]}{ext}")
        self._pairs.append((tmp, final))
        return tmp

    def scratch(self, folder: str, ext: str) -> str:
        """A temporary file that is always removed, never published."""
        tmp = os.path.join(os.path.abspath(folder), f".landcover-scratch-{uuid.uuid4().hex[:8]}{ext}")
        self._pairs.append((tmp, ""))
        return tmp

    def commit(self) -> None:
        for tmp, final in self._pairs:
            if not final:
                continue
            _remove_with_sidecars(final)
            for side in _SIDECARS:
                if os.path.exists(tmp + side):
                    os.replace(tmp + side, final + side)
            os.replace(tmp, final)
        self.discard()

    def discard(self) -> None:
        for tmp, _ in self._pairs:
            _remove_with_sidecars(tmp)
        self._pairs = []


def _remove_with_sidecars(path: str) -> None:
    for p in (path, *(path + s for s in _SIDECARS)):
        if os.path.exists(p):
            os.remove(p)


def geotiff_profile(width, height, crs, transform, dtype, nodata, count=1) -> dict:
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, nodata=nodata,
                   compress="deflate", tiled=True, blockxsize=BLOCK, blockysize=BLOCK,
                   BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")  # compress blocks on every core
    if crs is not None:
        profile["crs"] = crs
    if crs is not None or not transform.is_identity:
        # An input without georeferencing gives outputs without one too: an explicit identity
        # transform would make QGIS draw them upside down beside the input.
        profile["transform"] = transform
    if dtype == "float32":
        profile["predictor"] = 3
    return profile


def class_profile(width, height, crs, transform) -> dict:
    return geotiff_profile(width, height, crs, transform, "uint8", NODATA_CLASS)


def confidence_profile(width, height, crs, transform) -> dict:
    return geotiff_profile(width, height, crs, transform, "float32", CONFIDENCE_NODATA)


def write_class_styling(dataset, classes) -> None:
    """Colour table on an open rasterio dataset (names need GDAL: see set_category_names)."""
    cmap = {v: (0, 0, 0, 0) for v in range(256)}
    for c in classes:
        cmap[c.id] = (*c.rgb, 255)
    dataset.write_colormap(1, cmap)


def set_category_names(path: str, classes) -> bool:
    """Category names, which GDAL keeps in the .aux.xml beside a GeoTIFF; False without GDAL's bindings."""
    modules = osgeo()
    if modules is None:
        return False
    gdal = modules[0]
    names = [""] * (max(c.id for c in classes) + 1)
    for c in classes:
        names[c.id] = c.name
    ds = gdal.Open(path, gdal.GA_Update)
    ds.GetRasterBand(1).SetCategoryNames(names)
    ds = None
    return True
