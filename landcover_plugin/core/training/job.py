"""From a user's rasters and labels (polygons or a raster of class ids) to a model file.

The one path behind `landcover:train` and `scripts/train.py --raster`: check the inputs,
derive the class table, read each raster (at the model's ground resolution) with its
labels on its grid, hold out blocks for validation, train within the time budget,
write the report.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import rasterio
from rasterio.enums import Resampling

from ..errors import Cancelled, InputError
from ..evaluation.evaluation import labels_on_grid, raster_classes
from ..io.class_table import class_table
from ..io.geo import ground_geometry
from ..io.labels import class_values, rasterize_on_grid
from ..model.classes import NODATA_CLASS
from .data import Labelled
from .label_split import spatial_split

GSD_TOLERANCE = 0.05  # rasters within 5% of the target ground resolution are read as they are


@dataclass
class Labels:
    """Training labels: polygons (an OGR-readable file, its layer and class field) or a raster of class ids."""

    vector: str | None = None
    layer: str | None = None
    field: str | None = None
    raster: str | None = None
    styled: dict | None = None  # {field value: (name, colour)} from the user's categorized style


@dataclass
class TrainJob:
    rasters: list[str]
    labels: Labels
    out_path: str
    init: str | None = None  # None: the bundled model
    from_scratch: bool = False
    bands: tuple[int, ...] | None = None
    validation: float = 0.2
    max_minutes: float | None = 15.0
    epochs: int | None = None
    tile: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    report_path: str | None = None
    log_dir: str | None = None
    seed: int = 0
    name: str | None = None
    command: str = ""
    int8_check: bool = False  # measure int8 on the validation blocks after training (TrainConfig.int8_check)
    extra: dict = field(default_factory=dict)


@dataclass
class JobResult:
    val_miou: float | None
    init_val_miou: float | None
    classes: tuple
    epochs: int
    best_epoch: int | None
    cancelled: bool
    train: object  # the trainer's TrainResult


def _gsd(ds) -> float | None:
    return ground_geometry(ds.crs, ds.transform, ds.height, ds.width).gsd


def raster_gsd(path: str) -> float | None:
    """Ground sampling distance of a raster in metres, None without a CRS."""
    with rasterio.open(path) as ds:
        return _gsd(ds)


def check_rasters(paths: list[str], bands) -> None:
    """Every raster opens and has the bands asked for (cheap: headers only)."""
    if not paths:
        raise InputError("Give at least one raster to learn from.")
    for p in paths:
        try:
            with rasterio.open(p) as ds:
                count = ds.count
        except rasterio.errors.RasterioIOError as exc:
            raise InputError(f"{p} cannot be read as a raster ({exc}).") from None
        if max(bands) > count:
            raise InputError(f"{os.path.basename(p)} has {count} band(s), but bands {', '.join(map(str, bands))} "
                             f"are needed; choose a starting model for {count}-band imagery, or train from scratch "
                             "with the bands it has.")


def label_classes(labels: Labels, init_classes=()):
    """The class table the labels define (InputError for empty values or a single class)."""
    if labels.vector:
        if not labels.field:
            raise InputError("Polygon labels need a class field: the field holding class ids or names.")
        values = class_values(labels.vector, labels.field, labels.layer)
        return class_table(values, init_classes, labels.styled, f"the field {labels.field!r}")
    with rasterio.open(labels.raster) as ds:
        ids = set()
        for _, win in ds.block_windows(1):
            ids |= set(np.unique(ds.read(1, window=win)).tolist())
        ids.discard(NODATA_CLASS)
        if ds.nodata is not None:
            ids.discard(int(ds.nodata))
    styled = dict(labels.styled or {})
    for c in raster_classes(labels.raster):
        styled.setdefault(str(c.id), (c.name, c.color))
    return class_table(sorted(int(i) for i in ids), init_classes, styled, "the label raster")


def target_gsd(paths: list[str], model_gsd: float | None) -> float | None:
    """The ground resolution to train at: the starting model's, else the rasters' median; None without CRSs."""
    if model_gsd:
        return model_gsd
    gsds = [raster_gsd(p) for p in paths]
    if any(g is None for g in gsds):
        return None
    return round(statistics.median(gsds), 4)


def read_labelled(path: str, labels: Labels, classes, bands, gsd: float | None, name: str) -> Labelled:
    """One raster's image (resampled to gsd when it differs) and its labels on the same grid.

    Pixels the raster masks (nodata, alpha) are unlabelled.
    """
    with rasterio.open(path) as ds:
        native = _gsd(ds)
        scale = native / gsd if gsd and native and abs(native / gsd - 1) > GSD_TOLERANCE else 1.0
        shape = (max(1, round(ds.height * scale)), max(1, round(ds.width * scale)))
        image = ds.read(list(bands), out_shape=(len(bands), *shape), resampling=Resampling.bilinear) \
            if scale != 1.0 else ds.read(list(bands))
        valid = ds.dataset_mask(out_shape=shape) if scale != 1.0 else ds.dataset_mask()
        transform = ds.transform * ds.transform.scale(ds.width / shape[1], ds.height / shape[0])
        crs = ds.crs
    if labels.vector:
        mask = rasterize_on_grid(labels.vector, labels.field, classes, shape, transform,
                                 crs.to_wkt() if crs else None, labels.layer)
    else:
        mask = label_raster_on_grid(labels.raster, shape, transform, crs)
    mask[valid == 0] = NODATA_CLASS
    return Labelled(name, image, mask)


def label_raster_on_grid(path: str, shape, transform, crs) -> np.ndarray:
    """A raster of class ids on another grid (nearest neighbour); its nodata becomes 255."""
    return labels_on_grid(path, shape, transform, crs,
                          f"The label raster {os.path.basename(path)} has another size than the imagery and no CRS "
                          "to align them; give labels on the imagery's grid.", nodata_ignored=True).astype(np.uint8)


def _unique_names(paths):
    names, seen = [], {}
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def load_labelled(pairs, classes, bands, gsd, hooks) -> list[Labelled]:
    """Each (raster, Labels) pair read at the ground resolution gsd; InputError unless two classes have labels."""
    hooks.log(f"classes: {', '.join(f'{c.id} {c.name}' for c in classes)}; ground resolution "
              f"{f'{gsd:g} m' if gsd else 'not known (no CRS)'}")
    items = []
    for (path, labels), name in zip(pairs, _unique_names([p for p, _ in pairs])):
        if hooks.cancel():
            raise Cancelled("Cancelled before training started: no model was written.")
        items.append(read_labelled(path, labels, classes, bands, gsd, name))
    labelled = np.zeros(256, np.int64)
    for s in items:
        labelled += np.bincount(s.mask.ravel(), minlength=256)
    present = [c for c in classes if labelled[c.id]]
    if not present:
        raise InputError("No label falls on any input raster; check that the labels cover the imagery (their CRS "
                         "and extent).")
    if len(present) < 2:
        raise InputError(f"Only one class ({present[0].name}) has labels over the input rasters; a model needs at "
                         "least two: label another class there too.")
    total = int(labelled[:NODATA_CLASS].sum())
    hooks.log(f"{len(items)} raster(s), {total:,} labelled pixels "
              f"({100 * total / max(1, sum(s.mask.size for s in items)):.1f}% of the imagery)")
    return items


def _starting_spec(job: TrainJob):
    """The starting model's spec (None from scratch), its path resolved in `job`; a model training cannot
    start from is refused."""
    from ..model.bundled import resolve_model_path
    from ..model.model_file import read_spec

    if job.from_scratch:
        return None
    job.init = resolve_model_path(job.init)
    spec = read_spec(job.init) if job.init else None
    if spec is not None and spec.architecture != "unet":
        raise InputError(f"Training starts from U-Net models only; {spec.name} is not one. Choose another "
                         "starting model or train from scratch.")
    return spec


def run(job: TrainJob, hooks=None) -> JobResult:
    """Train as the job says; raises InputError before anything is written when the inputs do not fit."""
    from .config import Hooks, TrainConfig, fine_tuning_config
    from .trainer import train

    hooks = hooks or Hooks()
    started = time.perf_counter()
    init_spec = _starting_spec(job)
    bands = tuple(job.bands or (init_spec.bands if init_spec else (1, 2, 3)))
    check_rasters(job.rasters, bands)
    if job.validation < 0 or job.validation > 0.5:
        raise InputError(f"The validation share is {job.validation}; give a share from 0 to 0.5.")
    classes = label_classes(job.labels, init_spec.classes if init_spec else ())
    gsd = target_gsd(job.rasters, init_spec.gsd if init_spec else None)
    items = load_labelled(list(zip(job.rasters, [job.labels] * len(job.rasters))), classes, bands, gsd, hooks)
    ids = [c.id for c in classes]
    train_items, val_items = spatial_split(items, ids, job.validation, seed=job.seed)
    if val_items:
        held = sum(int((s.mask != NODATA_CLASS).sum()) for s in val_items)
        hooks.log(f"validation: {len(val_items)} held-out blocks, {held:,} labelled pixels")
    cuda = _cuda(job.device)
    spent = (time.perf_counter() - started) / 60
    budget = None if job.max_minutes is None else job.max_minutes - spent
    if budget is not None and budget <= 0:
        raise InputError(f"Reading the data took {spent:.1f} minutes, the whole time budget; give more minutes.")
    overrides = dict(tile=job.tile, batch_size=job.batch_size, lr=job.lr, epochs=job.epochs)
    if init_spec is not None:
        cfg = fine_tuning_config(cuda, **overrides)
    else:
        cfg = TrainConfig(**{"epochs": None, "workers": 0, "max_val_pixels": None if cuda else 3_000_000,
                             **{k: v for k, v in overrides.items() if v is not None}})
    cfg.max_minutes, cfg.device, cfg.gsd, cfg.seed, cfg.int8_check = budget, job.device, gsd, job.seed, job.int8_check
    cfg.init = job.init if init_spec is not None else None
    cfg.name = job.name or (f"{init_spec.name}, adapted" if init_spec else "land-cover U-Net")
    cfg.extra = {"training_rasters": [os.path.basename(p) for p in job.rasters],
                 "validation_share": job.validation, **job.extra}
    if init_spec is not None:
        cfg.infer_tile, cfg.infer_overlap = init_spec.tile_size, init_spec.overlap
    source = job.labels.vector or job.labels.raster
    note = (f"{len(job.rasters)} raster(s) labelled by {os.path.basename(source)}"
            + (f" (field {job.labels.field})" if job.labels.field else ""))
    result = train(cfg, train_items, val_items, classes, bands, job.out_path, job.log_dir, data_note=note,
                   command=job.command, hooks=hooks)
    if not result.written:
        raise Cancelled("Cancelled before the first epoch ended: no model was written.")
    init_miou = result.init_row.get("val_miou") if result.init_row else None
    val_miou = result.best if val_items else None
    if job.report_path:
        from ..evaluation.report import write_training_report

        write_training_report(job.report_path, result, classes, {
            "rasters": ", ".join(job.rasters), "labels": source, "starting model": cfg.init or "none (from scratch)",
            "validation": f"{job.validation:.0%} of the labelled area, {len(val_items)} blocks",
            "device": cfg.device, "epochs": result.epochs_done, "best epoch": result.best_epoch,
            "minutes": round((time.perf_counter() - started) / 60, 1), "model file": job.out_path})
    return JobResult(val_miou, init_miou, classes, result.epochs_done, result.best_epoch, result.cancelled, result)


def _cuda(device: str) -> bool:
    import torch

    return device != "cpu" and torch.cuda.is_available()
