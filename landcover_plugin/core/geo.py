"""Ground geometry of rasters: resolution in metres and pixel areas, for any CRS or none."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_EARTH_RADIUS = 6371008.8  # mean radius, metres
_M_PER_DEG = _EARTH_RADIUS * math.pi / 180.0


@dataclass(frozen=True)
class GroundGeometry:
    """How big a pixel is on the ground.

    `units` is "m", or "pixels" for rasters without georeferencing. For geographic
    CRSs res_x is metres per pixel at the equator and shrinks with the cosine of
    the latitude, which `row_lat` (latitude of row 0's centre, degrees per row)
    gives for every row.
    """

    units: str
    res_x: float
    res_y: float
    row_lat: tuple[float, float] | None = None
    lat_centre: float = 0.0

    def _cos(self, lat) -> np.ndarray | float:
        return np.cos(np.radians(np.clip(lat, -90.0, 90.0))) if self.row_lat else 1.0

    @property
    def gsd(self) -> float | None:
        """Mean ground sampling distance in metres at the raster's centre, or None in pixel units."""
        if self.units == "pixels":
            return None
        return math.sqrt(self.res_x * float(self._cos(self.lat_centre)) * self.res_y)

    def pixel_areas(self, row0: int, nrows: int) -> np.ndarray:
        """Ground area of one pixel in each of the rows row0 .. row0 + nrows - 1."""
        if self.row_lat is None:
            return np.full(nrows, self.res_x * self.res_y)
        lat0, dlat = self.row_lat
        return self.res_x * self.res_y * self._cos(lat0 + dlat * (row0 + np.arange(nrows)))

    def pixels_for_area(self, area: float) -> int:
        """Pixels in a region of `area` square units, at the pixel size of the raster's centre."""
        if area <= 0:
            return 0
        centre = self.res_x * self.res_y * float(self._cos(self.lat_centre))
        return max(1, math.ceil(area / max(centre, 1e-12)))


def ground_geometry(crs, transform, height: int) -> GroundGeometry:
    """GroundGeometry of a raster from its rasterio CRS and affine transform."""
    px = math.hypot(transform.a, transform.d)
    py = math.hypot(transform.b, transform.e)
    if crs is None or transform.is_identity:
        return GroundGeometry("pixels", 1.0, 1.0)
    if crs.is_geographic:
        return GroundGeometry("m", px * _M_PER_DEG, py * _M_PER_DEG,
                              row_lat=(transform.f + 0.5 * transform.e, transform.e),
                              lat_centre=transform.f + transform.e * height / 2)
    try:
        factor = crs.linear_units_factor[1]
    except Exception:  # engineering CRSs without linear units: take the numbers as metres
        factor = 1.0
    return GroundGeometry("m", px * factor, py * factor)
