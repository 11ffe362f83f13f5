"""Running a plan: device, batch and precision; where the rows run (this process, a process per device, or
blocks on a Dask cluster); the blended sliding window writing class ids and confidence on the raster's
grid, or class probabilities on the model's grid that are resampled onto the raster's afterwards."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import rasterio

from ..errors import Cancelled, InputError
from ..io import outputs
from ..io.reader import WindowReader, read_valid
from ..model.device import (
    auto_batch,
    choose_precision,
    describe,
    device_names,
    read_threads,
    resolve_device,
    torch_or_error,
    write_in_background,
)
from ..model.precision import Decision, Hardware, decide
from ..model.spec import ModelSpec
from ..model.transforms import neutral_values
from .multidevice import PartJob, run_parts, split_rows
from .plan import Plan, SegmentOptions
from .rowbuffer import BackgroundWriter
from .sinks import LabelWriter, SinkPlan, probability_writer
from .sliding import slide
from .windows import blend_weights


@dataclass
class Execution:
    """How the rows run, decided before any of them does."""

    device: object  # torch.device of this process (the first of several)
    batch: int
    decision: Decision  # the precision every part runs, and why
    parts: list  # row parts for other processes or Dask blocks; empty or one: this process
    predictor: object | None  # this process's Predictor, where it runs windows itself
    where: str  # for the log: the device, the processes or the cluster
    write_behind: bool  # outputs written by a thread of their own
    cluster: object | None = None

    @property
    def precision(self) -> str:
        return self.decision.precision


@dataclass
class Ran:
    device: str  # as the result reports it
    batch: int
    decision: Decision
    write_behind: bool
    spool: object | None  # a cluster run's finished blocks, cleared once the outputs are in place
    run_again: dict  # a cluster run's blocks that ran again, by why


def execution(plan: Plan, spec: ModelSpec, opts: SegmentOptions, network, reader: WindowReader, log) -> Execution:
    torch_or_error()
    names = device_names(opts.device)
    device = resolve_device(names[0])
    if opts.batch_size < 0:
        raise InputError("The batch size must be 0 (automatic) or positive.")
    cluster = opts.cluster
    if cluster is not None:
        from .cluster import plan_blocks, worker_hardware

        hardware = worker_hardware(cluster.client, cluster.device)
        parts = plan_blocks(reader.height, reader.width, cluster.block_size, plan.tile, cluster.device,
                            cluster.threads)
    else:
        hardware = Hardware.of(device)
        parts = split_rows(reader.height, names, outputs.BLOCK) if len(names) > 1 else []
    # once for the whole raster, before it is split: every process and worker gets the decision, not "auto"
    decision = decide(opts.precision, hardware, network, spec, reader.width * reader.height)
    batch = opts.batch_size or auto_batch(device, plan.tile, spec.base_width, decision.compiled)
    here = cluster is None and len(parts) <= 1
    predictor = None
    if here or decision.precision == "int8" or decision.compiled:
        # with parts, a network is compiled (or its fallback chosen) here once, not by every process
        predictor, decision = make_predictor(network, spec, plan, device, batch, opts, decision, log)
    if cluster is not None:
        where = f"{len(parts)} block(s) on a Dask cluster"
    elif len(parts) > 1:
        where = f"{len(parts)} processes on {', '.join(p.device for p in parts)}"
    else:
        where = describe(device)
    write_behind = here and write_in_background(device)
    return Execution(device, batch, decision, parts, predictor if here else None, where, write_behind, cluster)


def make_predictor(network, spec: ModelSpec, plan: Plan, device, batch: int, opts: SegmentOptions,
                   decision: Decision, log):
    """(Predictor, the Decision that runs): an int8 network that cannot be compiled here falls back under auto."""
    from ..model.predictor import Predictor

    weights = blend_weights(plan.tile, plan.overlap)
    try:
        return Predictor(network, spec.mean, spec.std, weights, device, batch, opts.tta, decision.precision,
                         log, compiled=decision.compiled), decision
    except (InputError, Cancelled):
        raise
    except Exception as exc:  # Inductor's compiler can fail on a machine we never saw
        if decision.precision != "int8" and not decision.compiled:
            raise
        why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"
        if decision.compiled:
            log(f"The network could not be compiled on this machine ({why}); running it uncompiled.")
            decision = Decision("fp32", f"{decision.why}; compiling failed ({why})")
            return Predictor(network, spec.mean, spec.std, weights, device, batch, opts.tta, "fp32"), decision
        if opts.precision == "int8":
            raise InputError(f"int8 could not be compiled on this machine ({why}); choose auto, fp32 or "
                             f"bf16.") from None
        fallback = choose_precision(device, "auto", int8_pays=False)
        log(f"int8 could not be compiled on this machine ({why}); running {fallback} instead.")
        decision = Decision(fallback, f"auto: int8 could not be compiled on this machine ({why})")
        return Predictor(network, spec.mean, spec.std, weights, device, batch, opts.tta, fallback), decision


def run(plan: Plan, spec: ModelSpec, opts: SegmentOptions, network, src, mask_src, class_path: str,
        conf_path: str | None, files, progress, cancel, log, watch) -> Ran:
    """Classify the plan's region of `src` into class_path (and conf_path), both written whole here."""
    reader = WindowReader(src, plan.bands, plan.region, plan.scale, neutral_values(spec))
    ex = execution(plan, spec, opts, network, reader, log)
    region = plan.region
    log(f"Device {ex.where}, precision {ex.decision.describe()}, batch size {ex.batch}, tile {plan.tile}, "
        f"overlap {plan.overlap}, {region.width} x {region.height} pixels.")
    rows = _Rows(plan, spec, opts, network, src.name, reader, ex, progress, cancel, log, watch)
    ids = np.array([c.id for c in spec.classes], np.uint8)
    grid = dict(width=region.width, height=region.height, crs=plan.crs, transform=plan.transform)
    with rasterio.open(class_path, "w", **outputs.class_profile(**grid)) as cls_ds, \
            _open_optional(conf_path, outputs.confidence_profile(**grid)) as conf_ds:
        outputs.write_class_styling(cls_ds, spec.classes)
        cls_ds.update_tags(MODEL=spec.name, DEVICE=ex.device.type, TILE_SIZE=plan.tile, OVERLAP=plan.overlap,
                           PRECISION=ex.precision, PRECISION_REASON=ex.decision.reason)
        final = LabelWriter(ids, cls_ds, conf_ds, lambda r, n: read_valid(mask_src, plan.bands, region, r, n),
                            watch)
        if plan.scale == 1.0:
            rows.run(final.plan(region.width, region.height), final.write_rows)
        else:
            prob_path = files.scratch(os.path.dirname(os.path.abspath(class_path)), ".tif")
            prob_profile = outputs.geotiff_profile(reader.width, reader.height, None, rasterio.Affine.identity(),
                                                   "uint8", None, count=len(ids))
            with rasterio.open(prob_path, "w", **prob_profile) as prob_ds:
                rows.run(SinkPlan("probabilities", reader.width, reader.height, len(ids)), probability_writer(prob_ds))
            with rasterio.open(prob_path) as prob_ds:
                final.from_probabilities(prob_ds, region.width, region.height, plan.scale, cancel)
    if ex.predictor is None:
        return Ran(ex.where, ex.batch, ex.decision, ex.write_behind, rows.spool, rows.run_again)
    return Ran(describe(ex.device), ex.predictor.batch_size, ex.decision, ex.write_behind, rows.spool,
               rows.run_again)


class _Rows:
    """Every window row of the plan, run where the execution says, its finished rows handed to `write`."""

    def __init__(self, plan, spec, opts, network, path, reader, ex: Execution, progress, cancel, log, watch):
        self.plan, self.spec, self.opts, self.network, self.path, self.reader = plan, spec, opts, network, path, reader
        self.ex, self.progress, self.cancel, self.log, self.watch = ex, progress, cancel, log, watch
        self.spool, self.run_again = None, {}

    def run(self, sink_plan, write) -> None:
        ex = self.ex
        if ex.cluster is not None:
            from .cluster import run_blocks

            self.spool, self.run_again = run_blocks(self._part_job(sink_plan), ex.parts, write, self.progress,
                                                    self.cancel, self.log, ex.cluster)
        elif len(ex.parts) > 1:
            run_parts(self._part_job(sink_plan), ex.parts, write, self.progress, self.cancel, self.log, self.watch)
        else:
            self._here(sink_plan, write)

    def _part_job(self, sink_plan) -> PartJob:
        plan, spec, opts = self.plan, self.spec, self.opts
        return PartJob(self.path, plan.bands, plan.region, plan.scale, tuple(spec.mean), tuple(spec.std),
                       neutral_values(spec),
                       plan.tile, plan.overlap, opts.batch_size, spec.base_width, opts.tta, self.ex.precision,
                       self.ex.decision.compiled, spec.num_classes, sink_plan, self.network)

    def _here(self, sink_plan, write) -> None:
        ex, plan = self.ex, self.plan
        writer = BackgroundWriter(write) if ex.write_behind else None
        try:
            slide(self.reader, ex.predictor, self.spec.num_classes, plan.tile, plan.overlap,
                  sink_plan.build(writer or write, plan.tile, ex.device), self.progress, self.cancel, self.watch,
                  read_threads(ex.device))
        except BaseException:
            if writer:
                writer.close(raise_error=False)
            raise
        if writer:
            writer.close()


def _open_optional(path, profile):
    return rasterio.open(path, "w", **profile) if path else contextlib.nullcontext(None)
