#!/usr/bin/env python3
"""Show or change a model file's metadata in place; the weights are copied unchanged.

    python scripts/model_metadata.py MODEL                       # print the metadata
    python scripts/model_metadata.py MODEL --name "Buildings (OpenStreetMap)" \\
        --polygon-classes 1 --min-area 4 --simplify 0.5 --training data="..."

--min-area and --simplify are the defaults landcover:segment applies when the user leaves
MIN_AREA and SIMPLIFY empty, in square metres and metres on the ground. --calibration IMAGES
MASKS stores windows of those training images (centred on labelled pixels) for int8
inference, replacing any the file holds. Every change records the file's checksum anew;
--checksum alone records one in a file saved before model files carried one (check first that
it is the file you trust: a damaged file gets a checksum of its damage). --weights int8 stores
the weights compactly (how the bundled models ship: the plugin repository takes packages of at
most 25 MB).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("model", help="model file or bundled model name")
    p.add_argument("--name")
    p.add_argument("--polygon-classes", type=int, nargs="+", help="class ids outlined as polygons (default: all)")
    p.add_argument("--min-area", type=float, help="default smallest region, m²")
    p.add_argument("--simplify", type=float, help="default simplification tolerance, m")
    p.add_argument("--input-level", choices=("L1C", "L2A"),
                   help="the Sentinel-2 processing level the model reads (Segment warns on another)")
    p.add_argument("--training", action="append", default=[], metavar="KEY=VALUE",
                   help="set training.KEY to VALUE (JSON, else the text)")
    p.add_argument("--calibration", nargs=2, metavar=("IMAGES", "MASKS"),
                   help="folder of the model's training images (and their masks): windows for int8 calibration")
    p.add_argument("--checksum", action="store_true",
                   help="record the checksum of a file saved before model files carried one")
    p.add_argument("--weights", choices=("float32", "float16", "int8"),
                   help="store the weights anew in this form (int8: the large convolutions in 8 bits with a scale "
                        "per channel, the rest in float16; loaded as float32 either way)")
    return p.parse_args(argv)


def _value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def _calibration(folders: list[str], spec):
    """Calibration windows (a torch tensor) from folders of training images and their masks."""
    import torch

    from landcover_plugin.core.io.pairs import pair_files
    from landcover_plugin.core.training.data import calibration_windows, load_pairs

    items = load_pairs(pair_files(*folders), spec.bands, [c.id for c in spec.classes])
    return torch.from_numpy(calibration_windows(items))


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup()
    from landcover_plugin.core.errors import InputError
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import CALIBRATION_KEY, read_spec, rewrite
    from landcover_plugin.core.model.spec import PolygonDefaults

    path = resolve_model_path(args.model)
    spec = read_spec(path)
    changes = {}
    if args.input_level:
        changes["level"] = args.input_level
    if args.name:
        changes["name"] = args.name
    if args.polygon_classes or args.min_area is not None or args.simplify is not None:
        old = spec.polygons
        changes["polygons"] = PolygonDefaults(
            tuple(args.polygon_classes) if args.polygon_classes else old.classes,
            old.min_area_m2 if args.min_area is None else args.min_area,
            old.simplify_m if args.simplify is None else args.simplify)
    for item in args.training:
        key, sep, text = item.partition("=")
        if not sep:
            raise InputError(f"--training takes KEY=VALUE, not {item!r}.")
        spec = spec.with_training(**{key: _value(text)})
    if not changes and not args.training and not args.calibration and not args.checksum and not args.weights:
        print(json.dumps(spec.to_dict(), indent=1))
        return 0
    spec = replace(spec, **changes)
    calibration = _calibration(args.calibration, spec) if args.calibration else None
    if args.weights:  # the weights as loaded (float32) stored anew, with the metadata and calibration, at once
        from landcover_plugin.core.model.model_file import load_model, save_model

        save_model(path, load_model(path)[0], spec, storage=args.weights,
                   calibration=None if calibration is None else calibration.numpy())
    else:
        rewrite(path, spec, None if calibration is None else {CALIBRATION_KEY: calibration})
    print(f"updated {path}")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
