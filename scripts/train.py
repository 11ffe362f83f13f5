#!/usr/bin/env python3
"""Train a land-cover U-Net on labelled rasters and write a model file the plugin can use.

    python scripts/train.py IMAGES [MASKS] --out model.safetensors [options]
    torchrun --nproc_per_node=2 scripts/train.py ...      (several GPUs or processes)

IMAGES/MASKS: folders of image/mask pairs (GeoTIFF, PNG, JPEG; masks of class ids,
255 ignored), paired by name as in evaluate.py. Or, as digitized in QGIS:
--raster image.tif --vector labels.gpkg --class-field class_id (rasterized on the fly).
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
    p.add_argument("--tile", type=int, default=256, help="training window size")
    p.add_argument("--infer-tile", type=int, default=512, help="the model's default tile for inference")
    p.add_argument("--infer-overlap", type=int, default=64)
    p.add_argument("--base-width", type=int, default=32)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--passes", type=float, default=1.0, help="windows per epoch, in multiples of the training pixels")
    p.add_argument("--rare-fraction", type=float, default=0.5, help="share of windows centred on a rare-class pixel")
    p.add_argument("--scale-jitter", type=float, default=0.25)
    p.add_argument("--color-jitter", type=float, default=0.2)
    p.add_argument("--loss", choices=("dice", "focal"), default="dice", help="added to class-weighted cross-entropy")
    p.add_argument("--class-weight-power", type=float, default=0.5)
    p.add_argument("--gsd", type=float, help="ground sampling distance of the training images in metres")
    p.add_argument("--half-weights", action="store_true", help="store float16 weights (half the file size)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, help="stop after the epoch that passes this time")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --log-dir")
    p.add_argument("--name", default="land-cover U-Net")
    p.add_argument("--init", metavar="MODEL", help="fine-tune: start from this model file (its architecture, "
                   "normalisation and weights; a new classifier head if the classes differ)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup()
    from landcover_plugin.core.classes import DEFAULT_CLASSES, parse_classes
    from landcover_plugin.core.errors import InputError, ModelFileError
    from landcover_plugin.core.pairs import pair_files
    from landcover_plugin.core.train_data import load_pairs, load_vector_labels, split
    from landcover_plugin.core.trainer import TrainConfig, train

    classes = DEFAULT_CLASSES
    if args.classes:
        try:
            with open(args.classes) as fh:
                classes = parse_classes(json.load(fh), f"classes file {args.classes}")
        except (OSError, ValueError) as exc:
            raise InputError(f"The classes file {args.classes} cannot be read as JSON ({exc}).") from None
        except ModelFileError as exc:
            raise InputError(str(exc)) from None
    bands = tuple(args.bands or (1, 2, 3))
    if len(args.raster) != len(args.vector):
        raise InputError("Give one --vector for each --raster.")
    if not args.images and not args.raster:
        raise InputError("Give a folder of image/mask pairs, or --raster with --vector labels.")
    items = load_pairs(pair_files(args.images, args.masks), bands, [c.id for c in classes]) if args.images else []
    items += [load_vector_labels(r, v, args.class_field, bands, classes, args.layer)
              for r, v in zip(args.raster, args.vector)]
    train_items, val_items = split(items, args.val_pattern, args.val_fraction, args.seed)
    print(f"{len(train_items)} training and {len(val_items)} validation images; validation: "
          f"{', '.join(s.name for s in val_items) or 'none'}", file=sys.stderr)
    log_dir = args.log_dir or os.path.splitext(args.out)[0] + "_log"
    cfg = TrainConfig(tile=args.tile, infer_tile=args.infer_tile, infer_overlap=args.infer_overlap,
                      base_width=args.base_width, depth=args.depth, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                      passes=args.passes, rare_fraction=args.rare_fraction, scale_jitter=args.scale_jitter,
                      color_jitter=args.color_jitter, loss=args.loss, class_weight_power=args.class_weight_power,
                      seed=args.seed, workers=args.workers, device=args.device, half_weights=args.half_weights,
                      gsd=args.gsd, max_minutes=args.max_minutes, name=args.name, init=args.init,
                      extra={"validation_files": [s.name for s in val_items],
                             "training_files": len(train_items)})
    sources = ([os.path.abspath(args.images)] if args.images else []) + [os.path.abspath(v) for v in args.vector]
    note = f"{len(train_items)} labelled images from {', '.join(sources)}"
    command = "python scripts/train.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = train(cfg, train_items, val_items, classes, bands, args.out, log_dir, resume=args.resume,
                   data_note=note, command=command)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"best_val_miou": result["best"], "epochs": len(result["history"]), "model": args.out}))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
