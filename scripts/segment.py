#!/usr/bin/env python3
"""Classify a raster with the engine, without QGIS: class raster, confidence, polygons, area table.

    python scripts/segment.py INPUT OUTPUT_DIR [--model FILE|NAME] [--min-area M2] [--simplify M]
"""
from __future__ import annotations

import argparse
import json
import os

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("input", help="raster to classify")
    p.add_argument("output_dir", help="folder for classes.tif, confidence.tif, landcover.gpkg, areas.csv")
    p.add_argument("--model", help="model file, or a bundled model's name, e.g. buildings_osm (default: the "
                   "bundled land-cover model)")
    p.add_argument("--bands", type=int, nargs="+")
    p.add_argument("--tile-size", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--device", default="auto", help=_common.DEVICE_HELP)
    p.add_argument("--tta", action="store_true")
    p.add_argument("--precision", default="auto", choices=_common.PRECISION_CHOICES,
                   help="auto: fp16 on a GPU; on a CPU without bf16 kernels int8 for rasters of 2 MP or more once "
                        "compiled (32 MP before) where it can run, else bf16 where the CPU has it, else fp32; fp16: "
                        "GPUs only; int8: CPUs only")
    p.add_argument("--min-area", type=float, help="smallest region kept, square ground units (default: the model's)")
    p.add_argument("--simplify", type=float, help="polygon simplification tolerance, map units (default: the model's)")
    p.add_argument("--no-polygons", action="store_true")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup(quiet=args.json)
    from landcover_plugin.core.areas import format_area_table
    from landcover_plugin.core.segment import SegmentOptions, segment

    os.makedirs(args.output_dir, exist_ok=True)
    out = os.path.join
    res = segment(args.input, out(args.output_dir, "classes.tif"), args.model,
                  confidence_path=out(args.output_dir, "confidence.tif"),
                  vector_path=None if args.no_polygons else out(args.output_dir, "landcover.gpkg"),
                  options=SegmentOptions(bands=tuple(args.bands) if args.bands else None, tile_size=args.tile_size,
                                         overlap=args.overlap, batch_size=args.batch_size, device=args.device,
                                         tta=args.tta, precision=args.precision, min_area=args.min_area,
                                         simplify=args.simplify))
    with open(out(args.output_dir, "areas.csv"), "w") as fh:
        fh.write("class_id,class_name,pixels,area,percent\n")
        for a in res.areas:
            fh.write(f"{a.id},{a.name},{a.pixels},{a.area:.3f},{a.percent:.3f}\n")
    print(format_area_table(res.areas, res.area_units))
    print(f"{res.megapixels:.2f} MP at {res.mp_per_s:.2f} MP/s on {res.device}; outputs in {args.output_dir}")
    if args.json:
        print(json.dumps({"mp_per_s": res.mp_per_s, "device": res.device, "seconds": res.seconds,
                          "areas": [a.__dict__ for a in res.areas]}))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
