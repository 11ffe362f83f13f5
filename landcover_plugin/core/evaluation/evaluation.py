"""Confusion matrices: of a classified raster against a reference (raster of class ids, or polygons),
block by block; and of a network on labelled images in memory, blended as the engine runs it."""
from __future__ import annotations

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import reproject
from rasterio.windows import Window

from ..errors import Cancelled, InputError
from ..io.bindings import osgeo
from ..model.classes import NODATA_CLASS, LandClass
from .metrics import confusion, scores

ROWS_PER_READ = 512


def raster_classes(path: str) -> list[LandClass]:
    """Classes named in a class raster (GDAL category names and colour table), else none."""
    modules = osgeo()
    if modules is None:
        return []
    ds = modules[0].Open(path)
    band = ds.GetRasterBand(1)
    band.GetMetadata()  # the GeoTIFF driver loads category names from the .aux.xml lazily
    names = band.GetCategoryNames() or []
    table = band.GetColorTable()
    out = []
    for i, name in enumerate(names):
        if name and i != NODATA_CLASS:
            r, g, b = table.GetColorEntry(i)[:3] if table is not None and i < table.GetCount() else (128, 128, 128)
            out.append(LandClass(i, name, f"#{r:02x}{g:02x}{b:02x}"))
    ds = None
    return out


def labels_on_grid(path: str, shape, transform, crs, no_crs_message: str, nodata_ignored: bool = False) -> np.ndarray:
    """A raster of class ids on a grid (shape, transform, CRS): as it is when it lies on that grid (or
    neither has a CRS), else reprojected by nearest neighbour; InputError(no_crs_message) when it cannot
    be aligned. nodata_ignored: the raster's own nodata value becomes 255 too."""
    with rasterio.open(path) as ref:
        if ref.shape == tuple(shape) and (ref.transform == transform or ref.crs is None or crs is None):
            out = ref.read(1)
        elif ref.crs is None or crs is None:
            raise InputError(no_crs_message)
        else:
            out = np.full(shape, NODATA_CLASS, np.uint8)
            reproject(rasterio.band(ref, 1), out, dst_transform=transform, dst_crs=crs, dst_nodata=NODATA_CLASS,
                      resampling=Resampling.nearest)
        if nodata_ignored and ref.nodata is not None and ref.nodata != NODATA_CLASS:
            out[out == int(ref.nodata)] = NODATA_CLASS
    return out


def reference_on_grid(pred_ds, reference_path: str) -> np.ndarray:
    """A reference raster's class ids on the classified raster's grid (nearest neighbour when grids differ)."""
    return labels_on_grid(reference_path, pred_ds.shape, pred_ds.transform, pred_ds.crs,
                          "The reference raster has another size than the classified raster and no CRS to align "
                          "them; give a reference on the same grid.")


def evaluate_classification(pred_path: str, reference: np.ndarray | str, classes: list[LandClass],
                            cancel=None) -> dict:
    """Scores of a class raster against a reference (array on its grid, or a raster path)."""
    total = raster_confusion(pred_path, reference, [c.id for c in classes], cancel)
    if total.sum() == 0:
        raise InputError("The reference and the classified raster share no labelled pixel; check that they "
                         "overlap and use the same class ids.")
    return scores(total, [c.name for c in classes])


def raster_confusion(pred_path: str, reference: np.ndarray | str, ids, cancel=None,
                     no_crs_message: str | None = None) -> np.ndarray:
    """Confusion matrix (with its unclassified column) of a class raster against a reference, block by block:
    an array on the raster's grid, or a raster of class ids aligned to it (InputError(no_crs_message) where it
    cannot be)."""
    cancel = cancel or (lambda: False)
    with rasterio.open(pred_path) as pred:
        if isinstance(reference, np.ndarray):
            ref = reference
        elif no_crs_message:
            ref = labels_on_grid(reference, pred.shape, pred.transform, pred.crs, no_crs_message)
        else:
            ref = reference_on_grid(pred, reference)
        if ref.shape != pred.shape:
            raise InputError("The reference does not cover the classified raster's grid.")
        total = np.zeros((len(ids), len(ids) + 1), np.int64)
        for r0 in range(0, pred.height, ROWS_PER_READ):
            if cancel():
                raise Cancelled("Cancelled.")
            n = min(ROWS_PER_READ, pred.height - r0)
            p = pred.read(1, window=Window(0, r0, pred.width, n))
            total += confusion(ref[r0:r0 + n], p, ids)
    return total


def network_confusion(network, spec, items, device, tile: int, overlap: int, batch: int = 4) -> np.ndarray:
    """Confusion matrix (with its unclassified column) of `network` over labelled images in memory (objects
    with .image and .mask), blended as the engine does. An image smaller than the tile (a held-out block)
    is one window of its own size."""
    from ..inference.sliding import predict_array
    from ..inference.windows import blend_weights
    from ..model.predictor import Predictor

    ids = [c.id for c in spec.classes]
    total = np.zeros((len(ids), len(ids) + 1), np.int64)
    lut = np.array(ids, np.uint8)
    predictors = {}
    m = 2 ** spec.depth
    for s in items:
        h, w = s.mask.shape
        t, o = (tile, overlap) if max(h, w) > tile else (-(-max(h, w) // m) * m, 0)
        if (t, o) not in predictors:
            predictors[t, o] = Predictor(network, spec.mean, spec.std, blend_weights(t, o), device, batch)
        pred = lut[predict_array(predictors[t, o], s.image, len(ids), t, o)]
        total += confusion(s.mask, pred, ids)
    return total
