"""Classify a raster with a model file: the one call behind the plugin and the scripts.

A run is planned from the raster's header, the model and the options (inference/plan.py), its rows run
here, in processes per device or on a Dask cluster (inference/run.py), and the class raster then gives
the polygons and areas. Every output is written beside its destination and appears at the end or not at all.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import rasterio

from .errors import Cancelled, InputError
from .inference.plan import SegmentOptions, plan, polygon_settings
from .inference.run import run
from .io import outputs
from .model.bundled import resolve_model_path
from .model.model_file import load_model
from .model.spec import ModelSpec
from .stopwatch import Stopwatch

__all__ = ["SegmentOptions", "SegmentResult", "segment"]
logger = logging.getLogger("landcover")


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
    precision_reason: str = ""  # why that precision ran: asked for, or auto's reason
    blocks_run_again: dict = field(default_factory=dict)  # on a cluster: blocks that ran again, by why

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @property
    def mp_per_s(self) -> float:
        return self.megapixels / max(self.inference_seconds, 1e-9)


Progress = Callable[[float], None]
Cancel = Callable[[], bool]
Log = Callable[[str], None]


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
    job = _Job(options or SegmentOptions(), log or logger.info, progress or (lambda f: None),
               cancel or (lambda: False))
    _check_paths(input_path, class_path, confidence_path, vector_path)
    network, spec = model if isinstance(model, tuple) else load_model(resolve_model_path(model))
    files = outputs.OutputSet()
    try:
        tmp_class = files.temp_for(class_path)
        want_polygons = bool(vector_path or polygon_writer)
        # polygons carry their mean confidence, so it is computed even when not asked for as a file
        tmp_conf = files.temp_for(confidence_path) if confidence_path else \
            files.scratch(os.path.dirname(os.path.abspath(class_path)), ".tif") if want_polygons else None
        job.share = 0.85 if want_polygons else 1.0
        ran, the_plan = job.classify(input_path, network, spec, tmp_class, tmp_conf, files)
        outputs.set_category_names(tmp_class, spec.classes)
        min_area, simplify = polygon_settings(job.opts, spec, the_plan.geometry, the_plan.transform)
        job.sieve(tmp_class, the_plan, min_area)
        if want_polygons:
            if polygon_writer is None:
                polygon_writer = _gpkg_writer(files.temp_for(vector_path), the_plan.crs)
            job.polygons(tmp_class, tmp_conf, spec, the_plan, simplify, polygon_writer)
        with job.watch.stage("areas"):
            from .vector.areas import class_areas

            areas = class_areas(tmp_class, spec.classes, the_plan.geometry)
        if job.cancel():
            raise Cancelled("Cancelled; no output was written.")
        files.commit()
        if ran.spool is not None:
            ran.spool.clear()
    except BaseException:
        files.discard()
        raise
    job.progress(1.0)
    return job.result(class_path, confidence_path, vector_path, spec, ran, the_plan, areas, min_area, simplify)


class _Job:
    """One segment() call's options, callbacks, timings and warnings, and its stages."""

    def __init__(self, opts: SegmentOptions, log: Log, progress: Progress, cancel: Cancel):
        self.opts, self.log, self.progress, self.cancel = opts, log, progress, cancel
        self.watch = Stopwatch()
        self.warnings: list[str] = []
        self.share = 1.0  # of the progress bar that classifying takes
        self.start = time.perf_counter()
        self.infer_s = 0.0

    def classify(self, input_path, network, spec, class_path, conf_path, files):
        """(inference.run.Ran, the Plan): the class (and confidence) raster written to its temporary file."""
        # GDAL_NUM_THREADS: GeoTIFF decodes the blocks of one read on several cores (GDAL >= 3.6);
        # as a config option rather than an open option, other drivers do not warn about it.
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), _open_input(input_path) as src, \
                _open_input(input_path) as mask_src:
            the_plan = plan(src, spec, self.opts)
            for w in the_plan.warnings:
                self.warnings.append(w)
                self.log("Warning: " + w)
            for note in the_plan.notes:
                self.log(note)
            t0 = time.perf_counter()
            ran = run(the_plan, spec, self.opts, network, src, mask_src, class_path, conf_path, files,
                      lambda f: self.progress(self.share * f), self.cancel, self.log, self.watch)
            self.infer_s = time.perf_counter() - t0
        return ran, the_plan

    def sieve(self, class_path, the_plan, min_area: float) -> None:
        if min_area > 0:
            from .vector.vectorize import sieve

            with self.watch.stage("sieve"):
                sieve(class_path, the_plan.geometry.pixels_for_area(min_area), self.cancel)

    def polygons(self, class_path, conf_path, spec, the_plan, simplify: float, writer) -> None:
        from .vector.vectorize import regions

        keep = spec.polygons.classes
        share = self.share
        with self.watch.stage("vectorize"), regions(class_path, conf_path, spec.classes, the_plan.geometry,
                                                    simplify, self.cancel,
                                                    lambda f: self.progress(share + (1 - share) * f)) as records:
            writer(records if keep is None else (r for r in records if r.class_id in keep))

    def stage_seconds(self, the_plan, write_behind: bool) -> dict:
        """Seconds per stage. "write" (final outputs) happens while blending, so it is taken out
        of "blend", unless a thread of its own writes; "read" runs in its own thread, beside the others."""
        seconds = self.watch.rounded()
        if "write" in seconds and "blend" in seconds and the_plan.scale == 1.0 and not write_behind:
            seconds["blend"] = round(max(0.0, seconds["blend"] - seconds["write"]), 3)
        return seconds

    def result(self, class_path, confidence_path, vector_path, spec, ran, the_plan, areas, min_area,
               simplify) -> SegmentResult:
        region = the_plan.region
        result = SegmentResult(class_path, confidence_path, vector_path, spec, ran.device, ran.batch, the_plan.tile,
                               the_plan.overlap, the_plan.scale, region.width, region.height,
                               time.perf_counter() - self.start, self.infer_s, areas, self.warnings,
                               the_plan.geometry.units, self.stage_seconds(the_plan, ran.write_behind), min_area,
                               simplify, ran.decision.precision, ran.decision.reason, ran.run_again)
        self.log(f"Classified {result.megapixels:.2f} MP in {self.infer_s:.1f} s on {ran.device} in "
                 f"{ran.decision.precision}: {result.mp_per_s:.2f} MP/s (batch {ran.batch}, tile {the_plan.tile}, "
                 f"overlap {the_plan.overlap}); whole job {result.seconds:.1f} s.")
        return result


def _gpkg_writer(path: str, crs):
    from .vector.vectorize import write_gpkg

    wkt = crs.to_wkt() if crs else None
    return lambda records: write_gpkg(path, records, wkt)


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
