#!/usr/bin/env python3
"""Train a land-cover U-Net on labelled rasters and write a model file the plugin can use.

    python scripts/train.py IMAGES [MASKS] --out model.safetensors [options]
    torchrun --nproc_per_node=2 scripts/train.py ...      (several GPUs or processes)

IMAGES/MASKS: folders of image/mask pairs (GeoTIFF, PNG, JPEG; masks of class ids,
255 ignored), paired by name as in evaluate.py. Or, as digitized in QGIS:
--raster image.tif --vector labels.gpkg --class-field class_id (rasterized on the fly;
pixels outside every polygon are unlabelled, and the class table comes from the field's
values unless --classes gives one). With --init MODEL the options left out take the
fine-tuning settings of the landcover:train algorithm, otherwise those of training from
scratch (shown in --help).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("images", nargs="?", help="folder of images")
    p.add_argument("masks", nargs="?", help="folder of masks (default: beside the images)")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--raster", action="append", default=[],
                   help="a raster labelled by --vector (repeat both for several)")
    p.add_argument("--vector", action="append", default=[],
                   help="polygons (GeoPackage, Shapefile, ...) whose --class-field holds class ids or names")
    p.add_argument("--class-field", default="class_id")
    p.add_argument("--layer", help="layer of the vector files (default: the first)")
    p.add_argument("--log-dir", help="checkpoint, epochs.csv, curves.png, confusion.png (default: OUT without "
                                     "extension + _log)")
    p.add_argument("--classes", help="JSON file: a list of {id, name, color} (default: the five LandCover.ai classes)")
    p.add_argument("--bands", type=int, nargs="+", help="input bands, 1-based (default: 1 2 3)")
    p.add_argument("--val-pattern", help="regular expression: matching files are for validation, e.g. 'tile(7|8)_'")
    p.add_argument("--val-fraction", type=float, default=0.15, help="without --val-pattern: share of files held out")
    p.add_argument("--val-share", type=float, help="hold out this share of the labelled area in blocks (spatial "
                   "split) instead of whole files; the default for --raster/--vector labels is 0.2")
    p.add_argument("--tile", type=int, help="training window size (256)")
    p.add_argument("--infer-tile", type=int, default=512, help="the model's default tile for inference")
    p.add_argument("--infer-overlap", type=int, default=64)
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--epochs", type=int, help="40 (fine-tuning: as many as --max-minutes allows, else 10); "
                   "0: as many as --max-minutes allows")
    p.add_argument("--batch-size", type=int, help="8 (fine-tuning on CUDA: 16)")
    p.add_argument("--lr", type=float, help="2e-3 (fine-tuning: 2e-4)")
    p.add_argument("--encoder-lr-factor", type=float, help="the encoder's learning rate relative to --lr "
                   "(1; fine-tuning: 0.3)")
    p.add_argument("--head-lr-factor", type=float, help="the classifier head's (1; fine-tuning: 5)")
    p.add_argument("--adapt-bn", action=argparse.BooleanOptionalAction, help="re-estimate batch-norm statistics "
                   "on the training imagery first (fine-tuning: on)")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, help="keep batch-norm statistics fixed "
                   "(fine-tuning: on)")
    p.add_argument("--fit-head", action=argparse.BooleanOptionalAction, default=None,
                   help="fit the classifier head to the labels by logistic regression first (fine-tuning: on)")
    p.add_argument("--average-last", type=int, default=0, metavar="N",
                   help="also score the mean of the last N epochs' weights and keep it where it is better "
                   "(without validation: always)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, help="1 (fine-tuning: 0.5); at most a tenth of all steps")
    p.add_argument("--passes", type=float, default=1.0, help="windows per epoch, in multiples of the training pixels")
    p.add_argument("--rare-fraction", type=float, default=0.5, help="share of windows centred on a rare-class pixel")
    p.add_argument("--scale-jitter", type=float, default=0.25)
    p.add_argument("--color-jitter", type=float, help="0.2 (fine-tuning: 0.1)")
    p.add_argument("--loss", choices=("dice", "focal"), default="dice", help="added to class-weighted cross-entropy")
    p.add_argument("--class-weight-power", type=float, default=0.5)
    p.add_argument("--gsd", type=float, help="ground sampling distance of the training images in metres")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, help="time budget: the schedule is fitted to it from measured "
                   "step and validation times")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --log-dir")
    p.add_argument("--init", metavar="MODEL", help="fine-tune: start from this model file (its architecture, "
                   "normalisation and weights; a new classifier head if the classes differ)")
    _model_file_options(p)
    return p.parse_args(argv)


def _model_file_options(p) -> None:
    """What the written model file holds beside the weights."""
    p.add_argument("--name", default="land-cover U-Net")
    p.add_argument("--half-weights", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument("--int8-check", action="store_true", help="after training, measure int8 against fp32 on the "
                   "validation images and record it in the model file, so that auto may run the model in int8 on "
                   "CPUs without bf16 kernels (needs torchao and a C++ compiler; compiling takes 15-40 s)")


def _config(args, cuda: bool, extra: dict):
    """TrainConfig from the options given, the rest from the fine-tuning (--init) or from-scratch settings."""
    from landcover_plugin.core.training.config import TrainConfig, fine_tuning_config

    given = dict(tile=args.tile, batch_size=args.batch_size, lr=args.lr, warmup_epochs=args.warmup_epochs,
                 encoder_lr_factor=args.encoder_lr_factor, head_lr_factor=args.head_lr_factor,
                 adapt_bn=args.adapt_bn, freeze_bn=args.freeze_bn, fit_head=args.fit_head,
                 epochs=None if args.epochs == 0 else args.epochs)
    if args.epochs == 0 and not args.max_minutes:
        from landcover_plugin.core.errors import InputError

        raise InputError("--epochs 0 (as many as fit) needs --max-minutes.")
    if args.init:
        cfg = fine_tuning_config(cuda, **{k: v for k, v in given.items() if v is not None}, workers=args.workers)
        cfg.max_val_pixels = None  # the command line names its validation files: score them all
        if args.epochs is None and not args.max_minutes:
            cfg.epochs = 10
    else:
        cfg = TrainConfig(**{k: v for k, v in given.items() if v is not None})
    if args.epochs == 0:
        cfg.epochs = None
    for key in ("infer_tile", "infer_overlap", "base_width", "depth", "weight_decay", "passes", "rare_fraction",
                "scale_jitter", "color_jitter", "loss", "class_weight_power", "seed", "workers", "device",
                "half_weights", "max_minutes", "name", "init", "average_last", "int8_check"):
        if getattr(args, key) is not None or key in ("gsd", "max_minutes", "init"):
            setattr(cfg, key, getattr(args, key))
    cfg.gsd = args.gsd if args.gsd is not None else cfg.gsd
    cfg.extra = extra
    return cfg


def _vector_items(args, classes, bands, init_spec):
    """Items of --raster/--vector pairs, the class table from the fields' values unless --classes gave one."""
    from landcover_plugin.core.io.class_table import class_table
    from landcover_plugin.core.io.labels import class_values
    from landcover_plugin.core.training.config import Hooks
    from landcover_plugin.core.training.job import Labels, load_labelled, target_gsd

    labels = [Labels(vector=v, layer=args.layer, field=args.class_field) for v in args.vector]
    if classes is None:
        values = [x for v in args.vector for x in class_values(v, args.class_field, args.layer)]
        classes = class_table(values, init_spec.classes if init_spec else (), None, f"the field {args.class_field!r}")
    gsd = args.gsd or target_gsd(args.raster, init_spec.gsd if init_spec else None)
    return load_labelled(list(zip(args.raster, labels)), classes, bands, gsd, Hooks()), classes, gsd


def _classes(args):
    """The --classes file's class table, or None."""
    from landcover_plugin.core.errors import InputError, ModelFileError
    from landcover_plugin.core.model.classes import parse_classes

    if not args.classes:
        return None
    try:
        with open(args.classes) as fh:
            return parse_classes(json.load(fh), f"classes file {args.classes}")
    except (OSError, ValueError) as exc:
        raise InputError(f"The classes file {args.classes} cannot be read as JSON ({exc}).") from None
    except ModelFileError as exc:
        raise InputError(str(exc)) from None


def _init_spec(args):
    """The --init model file's spec, or None."""
    from landcover_plugin.core.errors import InputError, ModelFileError
    from landcover_plugin.core.model.model_file import read_spec

    if not args.init:
        return None
    try:
        return read_spec(args.init)
    except ModelFileError as exc:
        raise InputError(f"--init: {exc}") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup()
    import torch
    from tqdm import tqdm

    from landcover_plugin.core.errors import InputError
    from landcover_plugin.core.io.pairs import pair_files
    from landcover_plugin.core.model.classes import DEFAULT_CLASSES
    from landcover_plugin.core.training.config import Hooks
    from landcover_plugin.core.training.data import load_pairs, split
    from landcover_plugin.core.training.label_split import spatial_split
    from landcover_plugin.core.training.trainer import train

    classes, init_spec = _classes(args), _init_spec(args)
    bands = tuple(args.bands or (1, 2, 3))
    if len(args.raster) != len(args.vector):
        raise InputError("Give one --vector for each --raster.")
    if not args.images and not args.raster:
        raise InputError("Give a folder of image/mask pairs, or --raster with --vector labels.")
    if args.images and args.raster and classes is None:
        classes = DEFAULT_CLASSES
    items = []
    if args.images:
        classes = classes or DEFAULT_CLASSES
        items = load_pairs(pair_files(args.images, args.masks), bands, [c.id for c in classes])
    if args.raster:
        more, classes, gsd = _vector_items(args, classes, bands, init_spec)
        items += more
        args.gsd = args.gsd or gsd
    share = args.val_share if args.val_share is not None else 0.2 if not args.images and not args.val_pattern else None
    if share is not None:
        train_items, val_items = spatial_split(items, [c.id for c in classes], share, seed=args.seed)
        held = f"{len(val_items)} held-out blocks ({share:.0%} of the labelled area)"
    else:
        train_items, val_items = split(items, args.val_pattern, args.val_fraction, args.seed)
        held = ", ".join(s.name for s in val_items) or "none"
    print(f"{len(train_items)} training images; validation: {held}", file=sys.stderr)
    log_dir = args.log_dir or os.path.splitext(args.out)[0] + "_log"
    cfg = _config(args, torch.cuda.is_available() and args.device != "cpu",
                  {"validation_files": [s.name for s in val_items], "training_files": len(train_items)})
    sources = ([os.path.abspath(args.images)] if args.images else []) + [os.path.abspath(v) for v in args.vector]
    note = f"{len(train_items)} labelled images from {', '.join(sources)}"
    command = "python scripts/train.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    bar = _common.EpochBar()
    hooks = Hooks(step=bar, log=lambda message: tqdm.write(message, file=sys.stderr))
    try:
        result = train(cfg, train_items, val_items, classes, bands, args.out, log_dir, resume=args.resume,
                       data_note=note, command=command, hooks=hooks)
    finally:
        bar.close()
    if int(os.environ.get("RANK", "0")) == 0:
        # without validation `best` ranks epochs by training loss (an average always wins): no mean IoU to give
        best = round(result.best, 5) if val_items else None
        print(json.dumps({"best_val_miou": best, "epochs": result.epochs_done, "model": args.out}))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
