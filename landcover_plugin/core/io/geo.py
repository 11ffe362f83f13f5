"""Ground geometry of rasters: resolution in metres and pixel areas, for any CRS or none."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# WGS84: on a sphere of the mean radius, areas at 60 degrees latitude come out 0.56% too small
_A = 6378137.0  # semi-major axis, metres
_E2 = (1 / 298.257223563) * (2 - 1 / 298.257223563)  # first eccentricity squared
_A_RAD_PER_DEG = _A * math.pi / 180.0


def _radii(lat_deg):
    """(N cos(lat), M) over the semi-major axis: the ground length of a radian of longitude and of
    latitude at `lat_deg` on the WGS84 ellipsoid, as fractions of _A."""
    phi = np.radians(lat_deg)
    w2 = 1 - _E2 * np.sin(phi) ** 2
    return np.cos(phi) / np.sqrt(w2), (1 - _E2) / w2 ** 1.5


@dataclass(frozen=True)
class GroundGeometry:
    """How big a pixel is on the ground.

    `units` is "m", or "pixels" for rasters without georeferencing. `res_x`, `res_y` are
    the pixel's size in metres where the CRS is true to the ground; where it is not
    (geographic CRSs, Web Mercator), `row_scale` = (rows, kx, ky) gives the ground length
    of a unit of res_x and res_y at sample rows, interpolated for the others.
    """

    units: str
    res_x: float
    res_y: float
    row_scale: tuple | None = None

    @property
    def gsd(self) -> float | None:
        """Mean ground sampling distance in metres at the raster's centre, or None in pixel units."""
        if self.units == "pixels":
            return None
        if self.row_scale is not None:
            rows, kx, ky = self.row_scale
            mid = len(rows) // 2
            return math.sqrt(self.res_x * kx[mid] * self.res_y * ky[mid])
        return math.sqrt(self.res_x * self.res_y)

    def pixel_areas(self, row0: int, nrows: int) -> np.ndarray:
        """Ground area of one pixel in each of the rows row0 .. row0 + nrows - 1."""
        if self.row_scale is None:
            return np.full(nrows, self.res_x * self.res_y)
        rows, kx, ky = self.row_scale
        return self.res_x * self.res_y * np.interp(row0 + np.arange(nrows) + 0.5, rows, kx * ky)

    def pixels_for_area(self, area: float) -> int:
        """Pixels in a region of `area` square units, at the pixel size of the raster's centre."""
        if area <= 0:
            return 0
        centre = self.gsd ** 2 if self.gsd else self.res_x * self.res_y
        return max(1, math.ceil(area / max(centre, 1e-12)))


def _sample_rows(height: int, samples: int = 257) -> np.ndarray:
    """Pixel-centre rows at which ground scale is measured (all of them for short rasters)."""
    return np.linspace(0.5, max(height - 0.5, 0.5), min(samples, max(2, height)))


def ground_geometry(crs, transform, height: int, width: int | None = None) -> GroundGeometry:
    """GroundGeometry of a raster from its rasterio CRS and affine transform."""
    px = math.hypot(transform.a, transform.d)
    py = math.hypot(transform.b, transform.e)
    if crs is None or transform.is_identity:
        return GroundGeometry("pixels", 1.0, 1.0)
    if crs.is_geographic:
        # on the ellipsoid, a degree of longitude shrinks with the latitude, and one of latitude grows
        rows = _sample_rows(height)
        lat = np.clip(transform.f + transform.e * rows, -90.0, 90.0)
        kx, ky = _radii(lat)
        return GroundGeometry("m", px * _A_RAD_PER_DEG, py * _A_RAD_PER_DEG, row_scale=(rows, kx, ky))
    try:
        factor = crs.linear_units_factor[1]
    except Exception:  # engineering CRSs without linear units: take the numbers as metres
        factor = 1.0
    plain = GroundGeometry("m", px * factor, py * factor)
    scale = _ground_scale(crs, transform, height, width or 1)
    if scale is None:
        return plain
    return GroundGeometry("m", px * factor, py * factor, row_scale=scale)


def _step_metres(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Ground length of short steps (a pixel) between points, on the WGS84 ellipsoid's local metric."""
    kx, ky = _radii((np.asarray(lat1) + np.asarray(lat2)) / 2)
    dlon = (np.asarray(lon2) - np.asarray(lon1) + 180.0) % 360.0 - 180.0
    return _A_RAD_PER_DEG * np.hypot(kx * dlon, ky * (np.asarray(lat2) - np.asarray(lat1)))


def _ground_scale(crs, transform, height: int, width: int, samples: int = 257):
    """(rows, kx, ky): ground length of a map unit along x and y down the centre column, where the
    projection stretches the ground by more than 1% (Web Mercator away from the equator); else None.

    Conformal projections with small distortion (UTM: 0.04%) keep their map units as metres.
    """
    try:
        from rasterio.warp import transform as warp
    except ImportError:
        return None
    rows = _sample_rows(height, samples)
    col = width / 2
    x0, y0 = transform * (np.full_like(rows, col), rows)
    x1, y1 = transform * (np.full_like(rows, col + 1), rows)
    x2, y2 = transform * (np.full_like(rows, col), rows + 1)
    try:
        lon, lat = (np.asarray(v) for v in warp(crs, "EPSG:4326", list(x0) + list(x1) + list(x2),
                                                list(y0) + list(y1) + list(y2)))
    except Exception:  # a CRS GDAL cannot take to latitude/longitude: keep map units
        return None
    n = len(rows)
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        return None
    map_x = np.hypot(x1 - x0, y1 - y0)
    map_y = np.hypot(x2 - x0, y2 - y0)
    kx = _step_metres(lon[:n], lat[:n], lon[n:2 * n], lat[n:2 * n]) / map_x
    ky = _step_metres(lon[:n], lat[:n], lon[2 * n:], lat[2 * n:]) / map_y
    # conformal projections made for the ground (UTM: 0.04%) keep their units: only a clear stretch counts
    if abs(kx[n // 2] - 1) < 0.01 and abs(ky[n // 2] - 1) < 0.01:
        return None
    return rows, kx, ky


def map_resolution(crs, bounds, metres: float) -> float:
    """Map units per pixel that make a pixel `metres` wide on the ground at the centre of `bounds`
    (left, bottom, right, top) in `crs` (a rasterio CRS): degrees on geographic CRSs, Web Mercator
    units stretched by the latitude, the metres themselves on ground-true projections."""
    from rasterio.transform import from_bounds

    left, bottom, right, top = bounds
    side = 256
    transform = from_bounds(left, bottom, right, top, side, side)
    geometry = ground_geometry(crs, transform, side, side)
    if geometry.gsd is None:
        raise ValueError("a CRS is needed to turn metres into map units")
    return metres * math.sqrt(abs(transform.a * transform.e)) / geometry.gsd
