#!/usr/bin/env python3
"""Evaluate a model file on image/mask pairs through the same engine the plugin uses.

    python scripts/evaluate.py IMAGES [MASKS] [--model FILE] [--json]

IMAGES and MASKS are folders (pairs are matched by name: x.jpg with x.png,
x_sat.jpg with x_mask.png, x.jpg with x_m.png) or one image and one mask file.
Prints per-class IoU, F1, precision and recall, overall accuracy and mean IoU
(over the classes present in reference or prediction); with --json the last line
is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("images", help="folder of images, or one image file")
    p.add_argument("masks", nargs="?", help="folder of masks (default: the images folder), or one mask file")
    p.add_argument("--model", help="model file or bundled model name (default: the bundled land-cover model)")
    p.add_argument("--tile-size", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--tta", action="store_true", help="test-time augmentation (flips and rotations)")
    p.add_argument("--precision", default="auto", choices=_common.PRECISION_CHOICES,
                   help="auto: what the engine picks for each image (fp16 on a GPU; bf16 or fp32 on a CPU for "
                        "images under 2 MP); fp32 gives the same figures on every machine; fp16: GPUs only; int8: "
                        "CPUs only")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup(quiet=args.json)
    import numpy as np

    from landcover_plugin.core.evaluation.evaluation import raster_confusion
    from landcover_plugin.core.evaluation.metrics import scores
    from landcover_plugin.core.io.pairs import pairs_from
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    pairs = pairs_from(args.images, args.masks)
    model_path = resolve_model_path(args.model)
    network, spec = load_model(model_path)
    ids = [c.id for c in spec.classes]
    names = [c.name for c in spec.classes]
    opts = SegmentOptions(tile_size=args.tile_size, overlap=args.overlap, batch_size=args.batch_size,
                          device=args.device, tta=args.tta, precision=args.precision)
    total = np.zeros((len(ids), len(ids) + 1), np.int64)
    seconds = megapixels = 0.0
    with tempfile.TemporaryDirectory(prefix="landcover-eval-") as tmp:
        for n, (image, mask) in enumerate(pairs, 1):
            out = os.path.join(tmp, "classes.tif")
            res = segment(image, out, (network, spec), options=opts, log=lambda m: None)
            seconds += res.inference_seconds
            megapixels += res.megapixels
            m = raster_confusion(out, mask, ids, no_crs_message=(
                f"The mask {os.path.basename(mask)} does not have the size of its image ({res.width} x "
                f"{res.height} pixels) and has no CRS to align it by."))
            total += m
            if not args.json:
                s = scores(m, names)
                print(f"[{n}/{len(pairs)}] {os.path.basename(image)}: mIoU {s['miou']:.3f}, "
                      f"accuracy {s['accuracy']:.3f}", file=sys.stderr)
    result = scores(total, names)
    result.update(model=os.path.abspath(model_path), compute=args.precision, pairs=len(pairs),
                  megapixels=round(megapixels, 3),
                  mp_per_s=round(megapixels / max(seconds, 1e-9), 3))
    print(report(result, names))
    if args.json:
        print(json.dumps(result))
    return 0


def report(s: dict, names) -> str:
    def f(v):
        return "   -  " if v is None else f"{v:6.3f}"

    lines = [f"{'class':<22} {'IoU':>6} {'F1':>6} {'prec':>6} {'recall':>6} {'pixels':>11}"]
    for name in names:
        lines.append(f"{name:<22} {f(s['iou'][name])} {f(s['f1'][name])} {f(s['precision'][name])} "
                     f"{f(s['recall'][name])} {s['pixels'][name]:>11d}")
    lines.append(f"mean IoU {f(s['miou']).strip()}   mean F1 {f(s['mean_f1']).strip()}   "
                 f"overall accuracy {f(s['accuracy']).strip()}   ({s['pairs']} pairs, {s['megapixels']} MP)")
    return "\n".join(lines)


if __name__ == "__main__":
    _common.run_main(main)
