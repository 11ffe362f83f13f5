"""Area per class of a class raster, read block by block."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from ..io.geo import GroundGeometry
from ..model.classes import NODATA_CLASS

ROWS_PER_READ = 256


@dataclass(frozen=True)
class ClassArea:
    id: int
    name: str
    color: str
    pixels: int
    area: float  # square ground units (m^2, or pixels without georeferencing)
    percent: float  # of all classified pixels' area


def class_areas(path: str, classes, geometry: GroundGeometry) -> list[ClassArea]:
    pixels = np.zeros(256, np.int64)
    area = np.zeros(256, np.float64)
    with rasterio.open(path) as ds:
        for r0 in range(0, ds.height, ROWS_PER_READ):
            n = min(ROWS_PER_READ, ds.height - r0)
            labels = ds.read(1, window=Window(0, r0, ds.width, n))
            row_area = np.broadcast_to(geometry.pixel_areas(r0, n)[:, None], labels.shape)
            pixels += np.bincount(labels.ravel(), minlength=256)
            area += np.bincount(labels.ravel(), weights=row_area.ravel(), minlength=256)
    pixels[NODATA_CLASS] = 0
    area[NODATA_CLASS] = 0.0
    total = area.sum()
    return [ClassArea(c.id, c.name, c.color, int(pixels[c.id]), float(area[c.id]),
                      100.0 * area[c.id] / total if total else 0.0) for c in classes]


def format_area_table(areas: list[ClassArea], units: str) -> str:
    unit = "m2" if units == "m" else "px"
    lines = [f"{'class':<22} {'pixels':>12} {'area (' + unit + ')':>16} {'share':>7}"]
    for a in areas:
        lines.append(f"{a.name:<22} {a.pixels:>12d} {a.area:>16.1f} {a.percent:>6.2f}%")
    return "\n".join(lines)
