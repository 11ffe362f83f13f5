"""Classify a raster with a model file: the one call behind the plugin and the scripts."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import rasterio

from .errors import Cancelled, InputError
from .inference.multidevice import PartJob, run_parts, split_rows
from .inference.rowbuffer import BackgroundWriter
from .inference.sinks import LabelWriter, SinkPlan, probability_writer
from .inference.sliding import slide
from .inference.windows import blend_weights
from .io import outputs
from .io.geo import ground_geometry
from .io.reader import Region, WindowReader, read_valid
from .model import quantize
from .model.bundled import resolve_model_path
from .model.device import (
    auto_batch,
    choose_precision,
    describe,
    device_names,
    read_threads,
    resolve_device,
    torch_or_error,
    write_in_background,
)
from .model.model_file import load_model
from .model.spec import ModelSpec
from .stopwatch import Stopwatch

logger = logging.getLogger("landcover")
GSD_TOLERANCE = 0.10
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


@dataclass
class SegmentResult:
    class_path: str
    confidence_path: str | None
    vector_path: str | None
    spec: ModelSpec
    device: str
    batch_size: int
    tile_size: int
    overlap: int
    scale: float
    width: int
    height: int
    seconds: float
    inference_seconds: float
    areas: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    area_units: str = "m"  # "m" (areas in m2) or "pixels" without georeferencing
    stages: dict = field(default_factory=dict)  # seconds per stage (see Stopwatch use below)
    min_area: float = 0.0  # as applied: square ground units
    simplify: float = 0.0  # as applied: map units
    precision: str = "fp32"  # as run: fp32, bf16, fp16 or int8

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / max(self.inference_seconds, 1e-9)


Progress = Callable[[float], None]
Cancel = Callable[[], bool]
Log = Callable[[str], None]


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


def segment(input_path: str, class_path: str, model=None, confidence_path: str | None = None,
            vector_path: str | None = None, options: SegmentOptions | None = None,
            progress: Progress | None = None, cancel: Cancel | None = None, log: Log | None = None,
            polygon_writer: Callable | None = None) -> SegmentResult:
    """Classify `input_path` and write the class raster (and confidence raster and polygons).

    `model` is a model file path, None for the bundled default, or a (network, ModelSpec) pair.
    Polygons go to the GeoPackage `vector_path`, or to `polygon_writer(records)` (an iterator
    of vectorize.Region) for callers with their own sink, such as QGIS. Files appear together
    at the end or not at all.
    """
    opts = options or SegmentOptions()
    log = log or logger.info
    progress = progress or (lambda f: None)
    cancel = cancel or (lambda: False)
    start = time.perf_counter()
    _check_paths(input_path, class_path, confidence_path, vector_path)
    network, spec = model if isinstance(model, tuple) else load_model(resolve_model_path(model))
    files = outputs.OutputSet()
    try:
        # GDAL_NUM_THREADS: GeoTIFF decodes the blocks of one read on several cores (GDAL >= 3.6);
        # as a config option rather than an open option, other drivers do not warn about it.
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), _open_input(input_path) as src, \
                _open_input(input_path) as mask_src:
            job = _Job(src, mask_src, spec, opts, log)
            tmp_class = files.temp_for(class_path)
            want_polygons = bool(vector_path or polygon_writer)
            # polygons carry their mean confidence, so it is computed even when not asked for as a file
            tmp_conf = files.temp_for(confidence_path) if confidence_path else \
                files.scratch(os.path.dirname(os.path.abspath(class_path)), ".tif") if want_polygons else None
            share = 0.85 if want_polygons else 1.0
            t0 = time.perf_counter()
            device, batch, precision = job.run(network, tmp_class, tmp_conf, files, lambda f: progress(share * f),
                                               cancel)
            infer_s = time.perf_counter() - t0
        outputs.set_category_names(tmp_class, spec.classes)
        from .vector.areas import class_areas
        from .vector.vectorize import sieve

        min_area, simplify = polygon_settings(opts, spec, job.geometry, job.transform)
        if min_area > 0:
            with job.watch.stage("sieve"):
                sieve(tmp_class, job.geometry.pixels_for_area(min_area))
        if want_polygons:
            from .vector.vectorize import regions, write_gpkg

            if polygon_writer is None:
                tmp_vec = files.temp_for(vector_path)
                wkt = job.src_crs.to_wkt() if job.src_crs else None

                def polygon_writer(records):
                    return write_gpkg(tmp_vec, records, wkt)

            keep = spec.polygons.classes
            with job.watch.stage("vectorize"), regions(tmp_class, tmp_conf, spec.classes, job.geometry,
                                                       simplify, cancel,
                                                       lambda f: progress(share + (1 - share) * f)) as records:
                polygon_writer(records if keep is None else (r for r in records if r.class_id in keep))
        with job.watch.stage("areas"):
            areas = class_areas(tmp_class, spec.classes, job.geometry)
        if cancel():
            raise Cancelled("Cancelled; no output was written.")
        files.commit()
        if job.spool is not None:
            job.spool.clear()
    except BaseException:
        files.discard()
        raise
    progress(1.0)
    result = SegmentResult(class_path, confidence_path, vector_path, spec, device, batch, job.tile, job.overlap,
                           job.scale, job.region.width, job.region.height, time.perf_counter() - start, infer_s,
                           areas, job.warnings, job.geometry.units, job.stage_seconds(), min_area, simplify, precision)
    log(f"Classified {result.megapixels:.2f} MP in {infer_s:.1f} s on {device} in {precision}: "
        f"{result.mp_per_s:.2f} MP/s "
        f"(batch {batch}, tile {job.tile}, overlap {job.overlap}); whole job {result.seconds:.1f} s.")
    return result


def chosen_bands(bands, count: int, spec: ModelSpec) -> tuple[int, ...]:
    """The 1-based bands a raster of `count` bands gives the model: `bands` where chosen, else the model's."""
    bands = tuple(bands) if bands else spec.bands
    if len(bands) != spec.in_channels:
        raise InputError(f"The model expects {spec.in_channels} input bands but {len(bands)} were chosen; "
                         f"choose {spec.in_channels} bands.")
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise InputError(f"Band {bad[0]} does not exist: the raster has {count} band(s); choose bands from 1 to "
                         f"{count} ({spec.in_channels} of them, in the order the model expects).")
    return bands


def region_of_extent(extent, transform, width: int, height: int) -> Region:
    """The pixels of a width x height raster (affine `transform`) that `extent` (xmin, ymin, xmax, ymax
    in the raster's CRS) covers, snapped outwards to whole pixels; the whole raster without an extent."""
    if not extent:
        return Region(0, 0, width, height)
    xmin, ymin, xmax, ymax = extent
    if not (xmax > xmin and ymax > ymin):
        raise InputError("The extent is empty; give xmin < xmax and ymin < ymax.")
    inverse = ~transform
    corners = [inverse * (x, y) for x in (xmin, xmax) for y in (ymin, ymax)]
    cols, rows = [c for c, _ in corners], [r for _, r in corners]
    # snap outwards to whole pixels, forgiving rounding noise in the coordinates
    c0, r0 = max(0, math.floor(min(cols) + 1e-6)), max(0, math.floor(min(rows) + 1e-6))
    c1, r1 = min(width, math.ceil(max(cols) - 1e-6)), min(height, math.ceil(max(rows) - 1e-6))
    if c1 <= c0 or r1 <= r0:
        raise InputError("The extent does not overlap the raster; choose an extent inside the layer "
                         "(in the layer's CRS).")
    return Region(c0, r0, c1 - c0, r1 - r0)


def _check_paths(input_path, *outputs_):
    given = [os.path.abspath(p) for p in outputs_ if p]
    if os.path.abspath(input_path) in given:
        raise InputError("An output path is the input raster itself; choose another output file.")
    if len(set(given)) != len(given):
        raise InputError("Two outputs have the same path; give each output its own file.")


def _open_input(path, **options):
    try:
        return rasterio.open(path, **options)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"The input {path} cannot be opened as a raster ({exc}).") from None


class _Job:
    """Checks the inputs against the model and runs the blended sliding window."""

    def __init__(self, src, mask_src, spec: ModelSpec, opts: SegmentOptions, log: Log):
        self.src, self.mask_src, self.spec, self.opts, self.log = src, mask_src, spec, opts, log
        self.warnings: list[str] = []
        self.watch = Stopwatch()
        self.src_crs = src.crs
        self.bands = self._bands()
        self.region = self._region()
        self.transform = src.window_transform(self.region.window)
        self.geometry = ground_geometry(src.crs, self.transform, self.region.height, self.region.width)
        if src.crs is None:
            self._warn("The raster has no CRS: outputs are in pixel units and the model's ground resolution "
                       "cannot be checked.")
        self.scale = self._scale()
        self.tile, self.overlap = self._tiling()
        self.write_behind = False  # outputs written by a thread of their own (run() decides)
        self.spool = None  # a cluster run's finished blocks, cleared once the outputs are in place

    def stage_seconds(self) -> dict:
        """Seconds per stage. "write" (final outputs) happens while blending, so it is taken out
        of "blend", unless a thread of its own writes; "read" runs in its own thread, beside the others."""
        seconds = self.watch.rounded()
        if "write" in seconds and "blend" in seconds and self.scale == 1.0 and not self.write_behind:
            seconds["blend"] = round(max(0.0, seconds["blend"] - seconds["write"]), 3)
        return seconds

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        self.log("Warning: " + msg)

    def _bands(self) -> tuple[int, ...]:
        return chosen_bands(self.opts.bands, self.src.count, self.spec)

    def _region(self) -> Region:
        return region_of_extent(self.opts.extent, self.src.transform, self.src.width, self.src.height)

    def _scale(self) -> float:
        model_gsd, raster_gsd = self.spec.gsd, self.geometry.gsd
        if not model_gsd or not raster_gsd:
            return 1.0
        ratio = raster_gsd / model_gsd
        if abs(ratio - 1.0) <= GSD_TOLERANCE:
            return 1.0
        self.log(f"The raster's resolution is {raster_gsd:.3g} m and the model's {model_gsd:.3g} m: "
                 f"windows are resampled by {ratio:.3g}.")
        return ratio

    def _tiling(self) -> tuple[int, int]:
        tile = self.opts.tile_size or self.spec.tile_size
        overlap = self.spec.overlap if self.opts.overlap is None else self.opts.overlap
        if tile < MIN_TILE:
            raise InputError(f"The tile size must be at least {MIN_TILE} pixels.")
        if overlap < 0 or overlap * 2 >= tile:
            raise InputError(f"The overlap ({overlap}) must be at least 0 and less than half the tile size ({tile}).")
        return tile, overlap

    def run(self, network, class_path, conf_path, files, progress: Progress, cancel: Cancel):
        torch_or_error()
        names = device_names(self.opts.device)
        device = resolve_device(names[0])
        batch = self.opts.batch_size or auto_batch(device, self.tile, self.spec.base_width)
        if batch < 0:
            raise InputError("The batch size must be 0 (automatic) or positive.")
        spec, region = self.spec, self.region
        reader = WindowReader(self.src, self.bands, region, self.scale, spec.mean)
        shape = (batch, len(self.bands), self.tile, self.tile)
        int8_pays = (device.type == "cpu" and self.opts.precision == "auto"
                     and quantize.worth_int8(network, spec, shape, reader.width * reader.height))
        precision = choose_precision(device, self.opts.precision, int8_pays)
        cluster = self.opts.cluster
        if cluster is not None:
            from .inference.cluster import plan_blocks

            parts = plan_blocks(reader.height, reader.width, cluster.block_size, self.tile, cluster.device,
                                cluster.threads)
            if self.opts.precision == "auto":
                precision = "auto"  # each worker's own choice for its device (no int8 compiled on workers)
        else:
            parts = split_rows(reader.height, names, outputs.BLOCK) if len(names) > 1 else []
        predictor = None
        if cluster is None and (len(parts) <= 1 or precision == "int8"):
            # with parts, an int8 network is compiled (or its fallback chosen) here once, not by every process
            predictor, precision = self._predictor(network, device, batch, precision)
        self.write_behind = cluster is None and len(parts) <= 1 and write_in_background(device)
        if cluster is not None:
            where = f"{len(parts)} block(s) on a Dask cluster"
        elif len(parts) > 1:
            where = f"{len(parts)} processes on {', '.join(p.device for p in parts)}"
        else:
            where = describe(device)
        self.log(f"Device {where}, precision {precision}, batch size {batch}, tile {self.tile}, "
                 f"overlap {self.overlap}, {self.region.width} x {self.region.height} pixels.")
        ids = np.array([c.id for c in spec.classes], np.uint8)
        grid = dict(width=region.width, height=region.height, crs=self.src.crs, transform=self.transform)

        def classify(plan, write):
            if cluster is not None or len(parts) > 1:
                job = PartJob(self.src.name, self.bands, region, self.scale, tuple(spec.mean), tuple(spec.std),
                              self.tile, self.overlap, self.opts.batch_size, spec.base_width, self.opts.tta,
                              precision, spec.num_classes, plan, network)
            if cluster is not None:
                from .inference.cluster import run_blocks

                self.spool = run_blocks(job, parts, write, progress, cancel, self.log, cluster)
            elif len(parts) > 1:
                run_parts(job, parts, write, progress, cancel, self.log, self.watch)
            else:
                writer = BackgroundWriter(write) if self.write_behind else None
                try:
                    slide(reader, predictor, spec.num_classes, self.tile, self.overlap,
                          plan.build(writer or write, self.tile, device), progress, cancel, self.watch,
                          read_threads(device))
                except BaseException:
                    if writer:
                        writer.close(raise_error=False)
                    raise
                if writer:
                    writer.close()

        with rasterio.open(class_path, "w", **outputs.class_profile(**grid)) as cls_ds, \
                _open_optional(conf_path, outputs.confidence_profile(**grid)) as conf_ds:
            outputs.write_class_styling(cls_ds, spec.classes)
            cls_ds.update_tags(MODEL=spec.name, DEVICE=device.type, TILE_SIZE=self.tile, OVERLAP=self.overlap)
            final = LabelWriter(ids, cls_ds, conf_ds, lambda r, n: read_valid(self.mask_src, self.bands, region, r, n),
                                 self.watch)
            if self.scale == 1.0:
                classify(final.plan(region.width, region.height), final.write_rows)
            else:
                prob_path = files.scratch(os.path.dirname(os.path.abspath(class_path)), ".tif")
                prob_profile = outputs.geotiff_profile(reader.width, reader.height, None, rasterio.Affine.identity(),
                                                       "uint8", None, count=len(ids))
                with rasterio.open(prob_path, "w", **prob_profile) as prob_ds:
                    classify(SinkPlan("probabilities", reader.width, reader.height, len(ids)),
                             probability_writer(prob_ds))
                with rasterio.open(prob_path) as prob_ds:
                    final.from_probabilities(prob_ds, region.width, region.height, self.scale, cancel)
        if cluster is not None or len(parts) > 1:
            return where, batch, precision
        return describe(device), predictor.batch_size, precision

    def _predictor(self, network, device, batch, precision):
        """(Predictor, precision that runs): an int8 network that cannot be compiled here falls back under auto."""
        from .model.predictor import Predictor

        spec = self.spec
        weights = blend_weights(self.tile, self.overlap)
        try:
            return Predictor(network, spec.mean, spec.std, weights, device, batch, self.opts.tta, precision,
                             self.log), precision
        except (InputError, Cancelled):
            raise
        except Exception as exc:  # Inductor's compiler can fail on a machine we never saw
            if precision != "int8":
                raise
            why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
            if self.opts.precision == "int8":
                raise InputError(f"int8 could not be compiled on this machine ({why}); choose auto, fp32 or "
                                 f"bf16.") from None
            precision = choose_precision(device, "auto", int8_pays=False)
            self.log(f"int8 could not be compiled on this machine ({why}); running {precision} instead.")
            return Predictor(network, spec.mean, spec.std, weights, device, batch, self.opts.tta, precision), precision


def _open_optional(path, profile):
    return rasterio.open(path, "w", **profile) if path else contextlib.nullcontext(None)
