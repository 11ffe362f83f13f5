"""What a run will do, decided from the raster's header, the model and the options before any pixel is
read or any network runs: bands, the region an extent covers, ground geometry, resampling, tiling and
the polygon settings. Pure: no torch, no pixels read, so the QGIS side checks parameters with the same code."""
from __future__ import annotations

from dataclasses import dataclass

from rasterio.windows import transform as window_transform

from ..errors import InputError
from ..io.bands import match_bands
from ..io.geo import GroundGeometry, ground_geometry
from ..io.reader import Region, region_of_extent  # noqa: F401  (the QGIS side checks extents with it)
from ..model.spec import ModelSpec
from .windows import pad

GSD_TOLERANCE = 0.10  # resolutions this close to the model's are classified unresampled
MIN_TILE = 32


@dataclass
class SegmentOptions:
    bands: tuple[int, ...] | None = None  # 1-based, in the order the model expects
    extent: tuple[float, float, float, float] | None = None  # xmin, ymin, xmax, ymax in the raster's CRS
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int = 0  # 0: choose for the device
    device: str = "auto"
    precision: str = "auto"  # auto, fp32, bf16 or int8 (CPU): see device.choose_precision
    tta: bool = False
    min_area: float | None = None  # square ground units; smaller regions join their neighbours; None: the model's
    simplify: float | None = None  # polygon simplification tolerance in map units; None: the model's
    cluster: object | None = None  # a cluster.Cluster: the rows run as blocks on Dask workers


@dataclass(frozen=True)
class Plan:
    bands: tuple[int, ...]
    region: Region  # the pixels classified, in the raster's grid
    transform: object  # affine transform of the outputs (the region's)
    crs: object
    geometry: GroundGeometry
    scale: float  # raster resolution / model resolution; 1.0: windows are not resampled
    tile: int
    overlap: int
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the log should say about the plan


def plan(src, spec: ModelSpec, opts: SegmentOptions) -> Plan:
    """The plan for a raster whose header `src` gives (count, width, height, transform, crs, as a rasterio
    dataset has them); InputError where the options do not fit the raster or the model."""
    bands, matched = match_bands(spec.bands, src.count, getattr(src, "descriptions", ()), opts.bands)
    region = region_of_extent(opts.extent, src.transform, src.width, src.height)
    transform = window_transform(region.window, src.transform)
    geometry = ground_geometry(src.crs, transform, region.height, region.width)
    warnings = () if src.crs is not None else (
        "The raster has no CRS: outputs are in pixel units and the model's ground resolution cannot be checked.",)
    scale = resample_scale(spec.gsd, geometry.gsd)
    notes = () if scale == 1.0 else (
        f"The raster's resolution is {geometry.gsd:.3g} m and the model's {spec.gsd:.3g} m: windows are "
        f"resampled by {scale:.3g}.",)
    notes += (matched,) if matched else ()
    warnings += _level_warnings(spec, src, matched)
    tile, overlap = tiling(opts, spec)
    return Plan(bands, region, transform, src.crs, geometry, scale, tile, overlap, warnings, notes)


def _level_warnings(spec: ModelSpec, src, matched: str | None) -> tuple[str, ...]:
    """A Sentinel-2 model fed another processing level: what prepare_sentinel2 recorded, or a 12-band stack
    (sen2cor's, without B10) read by the standard order."""
    tags = src.tags() if callable(getattr(src, "tags", None)) else {}
    level = tags.get("S2_LEVEL") if tags.get("S2_LEVEL") in ("L1C", "L2A") else None
    if level is None and matched and "L2A stack" in matched:
        level = "L2A"
    if not spec.level or level in (None, spec.level):
        return ()
    return (f"The raster is Sentinel-2 {level} but {spec.name} reads {spec.level}: its classes will be off (on "
            f"the same acquisition, L2A and L1C agreed on 49% of the pixels); use the {spec.level} product.",)


def chosen_bands(bands, count: int, spec: ModelSpec, descriptions=()) -> tuple[int, ...]:
    """The 1-based bands a raster of `count` bands gives the model: `bands` where chosen, else the model's
    (by name where the model names them)."""
    return match_bands(spec.bands, count, descriptions, bands)[0]


def resample_scale(model_gsd: float | None, raster_gsd: float | None) -> float:
    """How much windows are resampled: the raster's resolution over the model's, or 1.0 where either is
    unknown or they are within GSD_TOLERANCE of each other."""
    if not model_gsd or not raster_gsd:
        return 1.0
    ratio = raster_gsd / model_gsd
    return 1.0 if abs(ratio - 1.0) <= GSD_TOLERANCE else ratio


def tiling(opts: SegmentOptions, spec: ModelSpec) -> tuple[int, int]:
    """(tile, overlap): the options' where given, else the model's; InputError for sizes that cannot blend."""
    tile = opts.tile_size or spec.tile_size
    overlap = spec.overlap if opts.overlap is None else opts.overlap
    if tile < MIN_TILE:
        raise InputError(f"The tile size must be at least {MIN_TILE} pixels.")
    if overlap < 0 or overlap * 2 >= tile:
        raise InputError(f"The overlap ({overlap}) must be at least 0 and less than half the tile size ({tile}).")
    a = spec.alignment
    if a > 1 and (pad(overlap) % a or (tile - overlap) % a):
        # windows start at -pad(overlap) + k (tile - overlap): a network that resamples by a gives other
        # labels on windows that start elsewhere
        raise InputError(f"This model needs its windows to start on multiples of {a} pixels, which a tile size "
                         f"of {tile} with an overlap of {overlap} does not give; choose another (the model's own "
                         f"are {spec.tile_size} and {spec.overlap}).")
    return tile, overlap


def polygon_settings(opts: SegmentOptions, spec: ModelSpec, geometry, transform) -> tuple[float, float]:
    """(minimum area in square ground units, simplification in map units): the options where given, else
    the model's defaults, which are in metres and become the raster's units here. A raster without
    georeferencing is taken to be at the model's ground resolution, as it is classified unresampled."""
    min_area, simplify = opts.min_area, opts.simplify
    if min_area is not None and simplify is not None:
        return min_area, simplify
    metres_per_px = geometry.gsd or spec.gsd
    map_units_per_px = abs(transform.a)  # of the outputs' grid
    if min_area is None:
        m2 = spec.polygons.min_area_m2
        min_area = m2 if geometry.units != "pixels" else m2 / metres_per_px ** 2 if metres_per_px else 0.0
    if simplify is None:
        m = spec.polygons.simplify_m
        simplify = m / metres_per_px * map_units_per_px if metres_per_px else 0.0
    return min_area, simplify
