#!/usr/bin/env python3
"""Measure the engine: the whole path per stage, peak memory by raster size, label agreement, throughput.

    python scripts/bench.py [--size N | --input PATH] [--model PATH | --base-channels W] [--device DEVICE]
                            [--tile N] [--batch N] [--compare-onnx] [--repeat N] [--skip-vectorize] [--json]
    python scripts/bench.py memory [--sizes 2048 16384]
    python scripts/bench.py agreement [--tiles 256 1024] [--model FILE]
    python scripts/bench.py throughput [--base-width 32 --tile 512 --size 2048 --device cpu]
    python scripts/bench.py model [--base-width 32 --tile 512 --device cuda --batch-size 16]
    python scripts/bench.py polygons [--size 10000 --min-area 4 --simplify 0 1]
    python scripts/bench.py precision IMAGES [MASKS] [--model FILE]
    python scripts/bench.py parts [--devices cuda:all --single cuda --size 4096]
    python scripts/bench.py cluster [--size 2048 --block-size 1024 --workers 1 2 --precision fp32]
    python scripts/bench.py dynamic_world STACK_OR_PRODUCT --saved-model DIR   (needs TensorFlow)

Each prints a table and, last, one line of JSON. Rasters are built from the committed
Dubai fixture, mirrored to fill the size, tiled and compressed like real orthophotos.
"""
from __future__ import annotations

import argparse
import json
import sys

import bench_engine
import bench_path
import bench_polygons
import bench_precision
import bench_scale
import bench_tensorflow

import _common

SUBCOMMANDS = ("memory", "agreement", "throughput", "model", "polygons", "precision", "parts", "cluster",
               "dynamic_world", "_child", "_polygons")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    for benches in (bench_engine, bench_precision, bench_scale, bench_polygons, bench_tensorflow):
        benches.add_parsers(sub)
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        return bench_path.run_bench(argv)
    args = parse_args(argv)
    if args.cmd == "_child":
        return bench_engine._child_segment(args)
    if args.cmd == "_polygons":
        return bench_polygons._child_polygons(args)
    _common.setup(quiet=True)
    commands = {"memory": bench_engine.cmd_memory, "agreement": bench_engine.cmd_agreement,
                "throughput": bench_engine.cmd_throughput, "model": bench_engine.cmd_model,
                "polygons": bench_polygons.cmd_polygons, "precision": bench_precision.cmd_precision,
                "parts": bench_scale.cmd_parts, "cluster": bench_scale.cmd_cluster,
                "dynamic_world": bench_tensorflow.cmd_dynamic_world}
    result = commands[args.cmd](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
