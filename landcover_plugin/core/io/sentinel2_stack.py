"""One GeoTIFF of the bands a model needs from a Sentinel-2 product, on the grid of its finest band (10 m):
coarser bands resampled bilinearly through GDAL's warper (a VRT, never a whole band in memory), the
baseline offset applied with DN 0 kept as nodata, the product's cloud mask made nodata, band descriptions
B2, B3, ... set so that Segment matches them by name. Written in strips of rows, published all or nothing."""
from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from ..errors import Cancelled
from .outputs import OutputSet, geotiff_profile
from .reader import Region, region_of_extent
from .sentinel2 import SCL_CLOUD, BandFile, Product

NODATA = 0
STRIP_ROWS = 1024  # 9 bands x 1024 rows x 10,980 px as int32: 400 MB at most, whatever the tile


@dataclass(frozen=True)
class Grid:
    crs: object
    transform: object
    width: int
    height: int


@dataclass
class Prepared:
    path: str
    bands: tuple[str, ...]
    grid: Grid
    level: str | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cloud_fraction: float | None = None  # of the valid pixels, masked as cloud; None without a mask
    nodata_fraction: float = 0.0


def prepare(product: Product, wanted, out_path: str, extent=None, mask_clouds: bool = True, alignment: int = 2,
            progress=None, cancel=None) -> Prepared:
    """Write `out_path`; `extent` (xmin, ymin, xmax, ymax in the product's CRS) crops it, its origin snapped
    to multiples of `alignment` pixels of the product's grid so that a crop classifies as the whole would."""
    import rasterio

    wanted = tuple(wanted)
    product.require(wanted)
    grid = _grid(product, wanted, extent, alignment)
    result = Prepared(out_path, wanted, grid, product.level, notes=[f"Offset: {product.offset_note}."])
    if product.level == "L2A":
        result.warnings.append(f"{product.name} is Level-2A (surface reflectance); Dynamic World and models "
                               "trained like it expect Level-1C: use the L1C product of the same date where you can.")
    files = OutputSet()
    tmp = files.temp_for(out_path)
    try:
        with ExitStack() as stack:
            readers = [_Reader(product.bands[b], grid, stack, "bilinear") for b in wanted]
            cloud = None
            if mask_clouds and product.cloud is not None:
                cloud = _Reader(product.cloud.source, grid, stack, "nearest")
                result.notes.append(f"Clouds masked as nodata with {product.cloud.description}.")
            else:
                result.notes.append("No cloud mask applied: " + ("MASK_CLOUDS is off." if product.cloud else
                                    "the product has no raster cloud mask (L1C before processing baseline 04.00 "
                                    "keeps its own as GML, which is not read)") + "; clouds come out as "
                                    "snow_and_ice, their shadows as water.")
            profile = geotiff_profile(grid.width, grid.height, grid.crs, grid.transform, "uint16", NODATA,
                                      count=len(wanted))
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.descriptions = wanted
                dst.update_tags(S2_PRODUCT=product.name, S2_LEVEL=product.level or "unknown",
                                S2_BASELINE=product.baseline or "unknown", S2_OFFSET=product.offset_note)
                _write_strips(dst, readers, cloud, product, wanted, result, progress, cancel)
        files.commit()
    except BaseException:
        files.discard()
        raise
    return result


def _write_strips(dst, readers, cloud, product, wanted, result, progress, cancel) -> None:
    from rasterio.windows import Window

    grid = result.grid
    offsets = np.array([product.offsets.get(b, 0) for b in wanted], np.int32).reshape(-1, 1, 1)
    counts = np.zeros(3, np.int64)  # valid, cloudy, nodata
    for row0 in range(0, grid.height, STRIP_ROWS):
        if cancel is not None and cancel():
            raise Cancelled("Cancelled; no output was written.")
        window = Window(0, row0, grid.width, min(STRIP_ROWS, grid.height - row0))
        dn = np.stack([r.read(window) for r in readers]).astype(np.int32)
        valid = (dn != NODATA).all(axis=0)
        cloudy = _cloudy(cloud, window, product.cloud.kind) & valid if cloud is not None else None
        out = np.clip(dn + offsets, 1, 65535)  # an offset must not turn a dark pixel into nodata
        keep = valid & ~cloudy if cloudy is not None else valid
        out[:, ~keep] = NODATA
        dst.write(out.astype(np.uint16), window=window)
        counts += (int(valid.sum()), int(cloudy.sum()) if cloudy is not None else 0, int((~valid).sum()))
        if progress is not None:
            progress(min(1.0, (row0 + window.height) / grid.height))
    total = max(1, grid.width * grid.height)
    result.nodata_fraction = counts[2] / total
    result.cloud_fraction = counts[1] / max(1, counts[0]) if cloud is not None else None


def _cloudy(reader, window, kind: str) -> np.ndarray:
    if kind == "classi":
        data = reader.read(window, bands=(1, 2))
        return (data != 0).any(axis=0)
    data = reader.read(window)
    return np.isin(data, SCL_CLOUD) if kind == "scl" else data != 0


class _Reader:
    """One band on the output grid: read directly where its grid is the output's, else through a WarpedVRT."""

    def __init__(self, band: BandFile, grid: Grid, stack: ExitStack, resampling: str):
        import rasterio
        from rasterio.enums import Resampling
        from rasterio.vrt import WarpedVRT

        self.index, self.shift = band.index, None
        src = stack.enter_context(rasterio.open(band.path))
        col, row = ~src.transform * (grid.transform.c, grid.transform.f)
        if (src.crs == grid.crs and abs(src.transform.a - grid.transform.a) < 1e-9 * abs(grid.transform.a)
                and abs(src.transform.e - grid.transform.e) < 1e-9 * abs(grid.transform.e)
                and abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6):
            self.ds, self.shift = src, (round(row), round(col))  # the same grid, maybe cropped: read it as is
        else:
            # nodata 0 as the source's: bilinear weights only valid neighbours, and the edge of the data stays 0
            self.ds = stack.enter_context(WarpedVRT(
                src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                resampling=getattr(Resampling, resampling), src_nodata=NODATA, nodata=NODATA))

    def read(self, window, bands=None) -> np.ndarray:
        if self.shift is not None:
            window = window.__class__(window.col_off + self.shift[1], window.row_off + self.shift[0],
                                      window.width, window.height)
        if bands is not None:
            return self.ds.read([self.index + b - 1 for b in bands], window=window)
        return self.ds.read(self.index, window=window)


def product_grid(product: Product, wanted) -> Grid:
    """The grid of the finest of the wanted bands (10 m for Sentinel-2's), over the whole product."""
    import rasterio

    product.require(wanted)
    best = None
    for b in wanted:
        with rasterio.open(product.bands[b].path) as ds:
            if best is None or abs(ds.transform.a) < abs(best.transform.a) - 1e-9:
                best = Grid(ds.crs, ds.transform, ds.width, ds.height)
    return best


def _grid(product: Product, wanted, extent, alignment: int) -> Grid:
    """The product's grid cropped to `extent`, its origin on multiples of `alignment` pixels."""
    from rasterio.windows import transform as window_transform

    full = product_grid(product, wanted)
    region = region_of_extent(extent, full.transform, full.width, full.height)
    if extent:
        c0, r0 = region.col_off - region.col_off % alignment, region.row_off - region.row_off % alignment
        region = Region(c0, r0, region.col_off + region.width - c0, region.row_off + region.height - r0)
    return Grid(full.crs, window_transform(region.window, full.transform), region.width, region.height)
