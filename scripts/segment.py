#!/usr/bin/env python3
"""Classify rasters with the engine, without QGIS: class raster, confidence, polygons, area table.

    python scripts/segment.py INPUT... OUTPUT_DIR [--model FILE|NAME] [--min-area M2] [--simplify M]
                              [--workers N | --scheduler ADDRESS] [--block-size PX]

INPUT: raster files (GDAL paths such as /vsicurl/https://... and /vsis3/... too), folders of rasters,
globs ("tiles/*.tif") or a VRT mosaic. One input writes OUTPUT_DIR/classes.tif, confidence.tif,
landcover.gpkg and areas.csv; several write the same under OUTPUT_DIR/<input stem>/. --workers N runs
them on a local Dask cluster of N processes, --scheduler on an existing one, each raster in blocks of
rows (--block-size), with the outputs of one process. Exit code 1 when an input failed.
"""
from __future__ import annotations

import argparse
import json
import sys

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="rasters, folders, globs or a VRT mosaic")
    p.add_argument("output_dir", help="folder for classes.tif, confidence.tif, landcover.gpkg, areas.csv "
                   "(under <input stem>/ for several inputs)")
    p.add_argument("--model", help="model file, or a bundled model's name, e.g. buildings_osm (default: the "
                   "bundled land-cover model)")
    p.add_argument("--bands", type=int, nargs="+")
    p.add_argument("--tile-size", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--batch-size", type=int, default=0)
    p.add_argument("--device", default="auto", help=_common.DEVICE_HELP + " (on a cluster: each worker's GPU where "
                   "it has one, else its CPU)")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--precision", default="auto", choices=_common.PRECISION_CHOICES,
                   help="auto: fp16 on a GPU; on a CPU without bf16 kernels int8 for rasters of 2 MP or more where "
                        "the model records faithful int8 labels and int8 can run (compiled once), else bf16 where the "
                        "CPU has it, else fp32; fp16: GPUs only; int8: CPUs only. Decided once for the whole raster, "
                        "on a cluster from what all its workers have; the log and the class raster's tags say which "
                        "ran and why")
    p.add_argument("--min-area", type=float, help="smallest region kept, square ground units (default: the model's)")
    p.add_argument("--simplify", type=float, help="polygon simplification tolerance, map units (default: the model's)")
    p.add_argument("--no-polygons", action="store_true")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, help="run on a local Dask cluster of this many worker processes")
    where.add_argument("--scheduler", help="run on the Dask cluster at this address (tcp://host:8786)")
    p.add_argument("--block-size", type=int, help="on a cluster: a block holds about this squared pixels, in whole "
                   "rows (default 4096: one block for a raster up to 4096 x 4096)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup(quiet=args.json)
    from landcover_plugin.core.errors import InputError
    from landcover_plugin.core.many import segment_many
    from landcover_plugin.core.segment import SegmentOptions
    from landcover_plugin.core.vector.areas import format_area_table

    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1.")
    options = SegmentOptions(bands=tuple(args.bands) if args.bands else None, tile_size=args.tile_size,
                             overlap=args.overlap, batch_size=args.batch_size, device=args.device, tta=args.tta,
                             precision=args.precision, min_area=args.min_area, simplify=args.simplify)
    bar = _common.ProgressBar("segment", quiet=args.json)
    results = segment_many(args.inputs, args.output_dir, args.model, options, workers=args.workers,
                           scheduler=args.scheduler, block_size=args.block_size, polygons=not args.no_polygons,
                           log=bar.log, progress=bar.update)
    bar.close()
    failed = [r for r in results if r.error]
    for r in results:
        if r.result is not None:
            print(f"{r.input}:")
            print(format_area_table(r.result.areas, r.result.area_units))
            print(f"{r.result.megapixels:.2f} MP at {r.result.mp_per_s:.2f} MP/s on {r.result.device} in "
                  f"{r.result.precision} ({r.result.precision_reason}); outputs in {r.out_dir}")
            again = {why: n for why, n in r.result.blocks_run_again.items() if n}
            if again:
                print("blocks run again: " + ", ".join(f"{n} ({why})" for why, n in again.items()))
        elif r.skipped:
            print(f"{r.input}: already done, outputs in {r.out_dir}")
        else:
            print(f"{r.input}: FAILED: {r.error}", file=sys.stderr)
    if len(results) > 1:
        print(f"{len(results) - len(failed)} of {len(results)} inputs done" + (f", {len(failed)} failed" if failed
                                                                                else ""))
    if args.json:
        print(json.dumps({"inputs": [{"input": r.input, "out_dir": r.out_dir, "error": r.error, "skipped": r.skipped,
                                      "mp_per_s": r.result and r.result.mp_per_s,
                                      "precision": r.result and r.result.precision,
                                      "precision_reason": r.result and r.result.precision_reason,
                                      "blocks_run_again": r.result and r.result.blocks_run_again,
                                      "seconds": r.result and r.result.seconds,
                                      "areas": r.result and [a.__dict__ for a in r.result.areas]}
                                     for r in results]}))
    return 1 if failed else 0


if __name__ == "__main__":
    _common.run_main(main)
