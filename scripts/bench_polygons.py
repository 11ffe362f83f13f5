"""Sieve and polygons of a large class raster: time, vertices and peak memory, beside QGIS's coverage simplification."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench_common import BENCH, peak_rss_mb

import _common


def make_class_raster(path: str, size: int, seed: int = 0) -> str:
    """A size x size class raster with land-cover-like regions (blobs of 5 classes, some speckle), by blocks."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from landcover_plugin.core.io.outputs import class_profile

    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 5, (size // 32 + 2, size // 32 + 2)).astype(np.uint8)
    with rasterio.open(path, "w", **class_profile(size, size, "EPSG:32640",
                                                  from_origin(300000, 2800000, 0.5, 0.5))) as dst:
        for r0 in range(0, size, 1024):
            n = min(1024, size - r0)
            yy, xx = np.mgrid[r0:r0 + n, 0:size]
            # wobbly region borders: offset the coarse grid lookup by smooth waves
            cy = ((yy + 9 * np.sin(xx / 23.0)) // 32).astype(int) + 1
            cx = ((xx + 9 * np.cos(yy / 19.0)) // 32).astype(int) + 1
            labels = coarse[np.clip(cy, 0, coarse.shape[0] - 1), np.clip(cx, 0, coarse.shape[1] - 1)]
            speckle = rng.random(labels.shape) < 0.002
            labels[speckle] = rng.integers(0, 5, speckle.sum())
            dst.write(labels, 1, window=Window(0, r0, size, n))
    return path


def _child_polygons(args) -> int:
    _common.setup(quiet=True)
    import rasterio

    from landcover_plugin.core.io.geo import ground_geometry
    from landcover_plugin.core.model.classes import DEFAULT_CLASSES
    from landcover_plugin.core.vector.vectorize import sieve, vectorize

    with rasterio.open(args.raster) as ds:
        geometry = ground_geometry(ds.crs, ds.transform, ds.height, ds.width)
    t0 = time.perf_counter()
    if args.min_area:
        sieve(args.raster, geometry.pixels_for_area(args.min_area))
    t1 = time.perf_counter()
    n = vectorize(args.raster, None, os.path.join(args.workdir, f"polygons_{args.simplify:g}.gpkg"), DEFAULT_CLASSES,
                  geometry, simplify=args.simplify)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "polygons": n,
                      "sieve_s": t1 - t0, "polygonize_s": time.perf_counter() - t1}))
    return 0


def cmd_polygons(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        base = make_class_raster(os.path.join(tmp, "classes.tif"), args.size)
        for simplify in args.simplify:
            raster = os.path.join(tmp, f"c{simplify}.tif")
            subprocess.run(["cp", base, raster], check=True)
            out = subprocess.run([sys.executable, BENCH, "_polygons", raster, "--workdir", tmp, "--min-area",
                                  str(args.min_area), "--simplify", str(simplify)], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            row = {"size": args.size, "simplify": simplify, **json.loads(out.stdout.strip().splitlines()[-1]),
                   "vertices": _vertices(os.path.join(tmp, f"polygons_{simplify:g}.gpkg"))}
            rows.append(row)
            print(f"{args.size} x {args.size}, min area {args.min_area} m2, simplify {simplify}: "
                  f"{row['polygons']} polygons, {row['vertices']} vertices, sieve {row['sieve_s']:.1f} s, polygons "
                  f"{row['polygonize_s']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB", flush=True)
        if args.compare_qgis:
            rows += _qgis_coverage_simplify(tmp, args.simplify)
    return {"bench": "polygons", "rows": rows}


def _vertices(gpkg: str) -> int:
    from osgeo import ogr

    ds = ogr.Open(gpkg)
    return sum(f.GetGeometryRef().GetGeometryRef(i).GetPointCount() for f in ds.GetLayer(0)
               for i in range(f.GetGeometryRef().GetGeometryCount()))


def _qgis_coverage_simplify(tmp: str, tolerances) -> list[dict]:
    """QGIS's own coverage simplification (GEOS, QGIS 3.36 and later) of the unsimplified polygons, timed
    through qgis_process (its start, about 2 s, included), for comparison with the engine's."""
    raw = os.path.join(tmp, "polygons_0.gpkg")
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    if not os.path.exists(raw) or subprocess.run(["qgis_process.bin", "help", "native:coveragesimplify"], env=env,
                                                 capture_output=True).returncode != 0:
        print("native:coveragesimplify: not in this QGIS (3.36 and later), or no unsimplified run (--simplify 0)")
        return []
    rows = []
    for tolerance in [t for t in tolerances if t > 0]:
        out = os.path.join(tmp, f"qgis_{tolerance:g}.gpkg")
        t0 = time.perf_counter()
        subprocess.run(["qgis_process.bin", "run", "native:coveragesimplify", "--", f"INPUT={raw}",
                        f"TOLERANCE={tolerance}", "PRESERVE_BOUNDARY=false", f"OUTPUT={out}"], env=env,
                       capture_output=True, check=True)
        row = {"qgis_coverage_simplify": tolerance, "seconds": time.perf_counter() - t0, "vertices": _vertices(out)}
        print(f"native:coveragesimplify {tolerance}: {row['seconds']:.1f} s on the unsimplified polygons, "
              f"{row['vertices']} vertices", flush=True)
        rows.append(row)
    return rows


def add_parsers(sub) -> None:
    """polygons and its child."""
    g = sub.add_parser("polygons", help="sieve and polygons of a large class raster: time and peak RSS")
    g.add_argument("--size", type=int, default=10000)
    g.add_argument("--min-area", type=float, default=4.0, help="square metres (pixels are 0.5 m)")
    g.add_argument("--simplify", type=float, nargs="+", default=[0.0, 1.0])
    g.add_argument("--compare-qgis", action="store_true",
                   help="also QGIS's native:coveragesimplify (QGIS 3.36+) on the unsimplified polygons")
    g.add_argument("--workdir", default=None)
    gp = sub.add_parser("_polygons")
    gp.add_argument("raster")
    gp.add_argument("--workdir")
    gp.add_argument("--min-area", type=float, default=0.0)
    gp.add_argument("--simplify", type=float, default=0.0)
