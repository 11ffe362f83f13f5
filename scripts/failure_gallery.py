#!/usr/bin/env python3
"""A picture of where a model goes wrong: the held-out images it scores worst on, each as
image | reference | prediction in the model's class colours (ignored reference pixels grey).

    python scripts/failure_gallery.py IMAGES MASKS --model NAME_OR_FILE --out docs/x.jpg [--worst 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("images")
    p.add_argument("masks", nargs="?")
    p.add_argument("--model", help="model file or bundled model name (default: the bundled land-cover model)")
    p.add_argument("--out", required=True, help="JPEG or PNG to write")
    p.add_argument("--worst", type=int, default=3, help="how many images (rows)")
    p.add_argument("--size", type=int, default=256, help="pixels per panel")
    return p.parse_args(argv)


def _colour(ids, classes):
    import numpy as np

    lut = np.full((256, 3), 128, np.uint8)  # ignored / nodata
    for c in classes:
        lut[c.id] = c.rgb
    return lut[ids]


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup(quiet=True)
    import numpy as np
    import rasterio
    from PIL import Image

    from landcover_plugin.core.evaluation.metrics import confusion, scores
    from landcover_plugin.core.io.pairs import pairs_from
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    network, spec = load_model(resolve_model_path(args.model))
    ids, names = [c.id for c in spec.classes], [c.name for c in spec.classes]
    scored = []
    with tempfile.TemporaryDirectory(prefix="landcover-gallery-") as tmp:
        for image, mask in pairs_from(args.images, args.masks):
            out = os.path.join(tmp, "c.tif")
            segment(image, out, (network, spec), options=SegmentOptions(precision="fp32"), log=lambda m: None)
            with rasterio.open(out) as ds:
                pred = ds.read(1)
            with rasterio.open(mask) as ds:
                ref = ds.read(1)
            with rasterio.open(image) as ds:
                rgb = np.moveaxis(ds.read([1, 2, 3]), 0, -1)
            miou = scores(confusion(ref, pred, ids), names)["miou"]
            scored.append((miou, os.path.basename(image), rgb, ref, pred))
    scored.sort(key=lambda s: s[0])
    rows = []
    for miou, name, rgb, ref, pred in scored[:args.worst]:
        panels = [Image.fromarray(a).resize((args.size, args.size), Image.NEAREST)
                  for a in (rgb, _colour(ref, spec.classes), _colour(pred, spec.classes))]
        row = Image.new("RGB", (3 * args.size + 8, args.size), "white")
        for i, panel in enumerate(panels):
            row.paste(panel, (i * (args.size + 4), 0))
        rows.append(row)
        print(f"{name}: mean IoU {miou:.3f}")
    sheet = Image.new("RGB", (rows[0].width, len(rows) * (args.size + 4) - 4), "white")
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * (args.size + 4)))
    sheet.save(args.out, quality=85, optimize=True)
    print(f"wrote {args.out}: image | reference | prediction, the {len(rows)} worst of {len(scored)}")
    return 0


if __name__ == "__main__":
    _common.run_main(main)
