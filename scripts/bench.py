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

Each prints a table and, last, one line of JSON. Rasters are built from the committed
Dubai fixture, mirrored to fill the size, tiled and compressed like real orthophotos.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import _common

PRECISION_CHOICES = _common.PRECISION_CHOICES
FIXTURE = os.path.join(_common.ROOT, "tests", "data", "dubai_tile7_005_crop.tif")


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    VmHWM belongs to the process's own address space; ru_maxrss survives execve and so
    reports the parent's size at fork when that was larger.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_model(base_width: int, depth: int, tile: int, overlap: int, seed: int = 0):
    """A random-weight U-Net with batch-norm statistics fitted to the fixture, so its labels vary like a real one's."""
    import numpy as np
    import rasterio
    import torch

    from landcover_plugin.core.model.classes import DEFAULT_CLASSES
    from landcover_plugin.core.model.model_file import build_network
    from landcover_plugin.core.model.spec import ModelSpec
    from landcover_plugin.core.model.unet import fit_batchnorm

    torch.manual_seed(seed)
    spec = ModelSpec(classes=DEFAULT_CLASSES, bands=(1, 2, 3), mean=(110.0, 110.0, 100.0), std=(50.0, 45.0, 45.0),
                     base_width=base_width, depth=depth, tile_size=tile, overlap=overlap,
                     name=f"random U-Net base {base_width} depth {depth}")
    net = build_network(spec)
    with rasterio.open(FIXTURE) as ds:
        x = torch.from_numpy(ds.read(window=((0, 256), (0, 256))).astype(np.float32))[None]
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    return fit_batchnorm(net, x), spec


def make_raster(path: str, size: int) -> str:
    """A size x size RGB GeoTIFF (UTM, 0.5 m) tiled with mirrored copies of the fixture, written block by block."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    with rasterio.open(FIXTURE) as ds:
        base = ds.read()
    tile = np.concatenate([base, base[:, :, ::-1]], axis=2)
    tile = np.concatenate([tile, tile[:, ::-1]], axis=1)  # 1536 x 1536, seamless when repeated
    th, tw = tile.shape[1:]
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32640",
                   transform=from_origin(300000, 2800000, 0.5, 0.5), tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", BIGTIFF="IF_SAFER")
    rows = 512
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, rows):
            n = min(rows, size - r0)
            ri = np.arange(r0, r0 + n) % th
            band = tile[:, ri][:, :, np.arange(size) % tw]
            dst.write(band, window=Window(0, r0, size, n))
    return path


def _child_segment(args) -> int:
    """Run in a fresh process so that its peak RSS is the engine's alone."""
    _common.setup(quiet=True)
    from landcover_plugin.core.segment import SegmentOptions, segment

    model = random_model(args.base_width, args.depth, args.tile, args.overlap)
    out = os.path.join(args.workdir, "classes.tif")
    t0 = time.perf_counter()
    res = segment(args.raster, out, model, confidence_path=os.path.join(args.workdir, "confidence.tif") if
                  args.confidence else None,
                  options=SegmentOptions(device=args.device, batch_size=args.batch_size))
    print(json.dumps({"peak_rss_mb": peak_rss_mb(),
                      "seconds": time.perf_counter() - t0, "mp_per_s": res.mp_per_s, "device": res.device}))
    return 0


def cmd_memory(args) -> dict:
    rows = []
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        for size in args.sizes:
            raster = make_raster(os.path.join(tmp, f"in_{size}.tif"), size)
            out = subprocess.run([sys.executable, __file__, "_child", raster, "--workdir", tmp,
                                  "--base-width", str(args.base_width), "--depth", str(args.depth),
                                  "--tile", str(args.tile), "--overlap", str(args.overlap), "--device", args.device,
                                  "--batch-size", str(args.batch_size), "--confidence"],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(out.stderr)
            row = {"size": size, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"{size:>6} x {size:<6} peak RSS {row['peak_rss_mb']:8.1f} MB   {row['seconds']:7.1f} s   "
                  f"{row['mp_per_s']:.2f} MP/s on {row['device']}", flush=True)
            os.remove(raster)
    result = {"bench": "memory", "rows": rows, "base_width": args.base_width, "depth": args.depth,
              "tile": args.tile, "gdal_cachemax_mb": os.environ.get("GDAL_CACHEMAX")}
    if len(rows) > 1:
        result["ratio_largest_to_smallest"] = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        print(f"ratio {result['ratio_largest_to_smallest']:.3f}")
    return result


def cmd_agreement(args) -> dict:
    import rasterio

    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    model = load_model(args.model) if args.model else random_model(args.base_width, args.depth, 512, args.overlap)
    labels = {}
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        for tile in args.tiles:
            res = segment(args.raster or FIXTURE, os.path.join(tmp, f"c{tile}.tif"), model, log=lambda m: None,
                          options=SegmentOptions(tile_size=tile, overlap=args.overlap, device=args.device))
            with rasterio.open(res.class_path) as ds:
                labels[tile] = ds.read(1)
    first = labels[args.tiles[0]]
    rows = {f"{args.tiles[0]}_vs_{t}": float((first == labels[t]).mean()) for t in args.tiles[1:]}
    for k, v in rows.items():
        print(f"label agreement {k}: {100 * v:.3f}%")
    return {"bench": "agreement", "agreement": rows, "model": args.model or f"random base {args.base_width}",
            "overlap": args.overlap, "raster": os.path.basename(args.raster or FIXTURE)}


def cmd_throughput(args) -> dict:
    from landcover_plugin.core.segment import SegmentOptions, segment

    model = random_model(args.base_width, args.depth, args.tile, args.overlap)
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        raster = make_raster(os.path.join(tmp, "in.tif"), args.size)
        segment(raster, os.path.join(tmp, "warm.tif"), model, log=lambda m: None,  # warm-up: allocator, kernels
                options=SegmentOptions(tile_size=args.tile, device=args.device, batch_size=args.batch_size,
                                       extent=(300000, 2800000 - 0.5 * args.tile, 300000 + 0.5 * args.tile,
                                               2800000)))
        best = None
        for _ in range(args.repeat):
            res = segment(raster, os.path.join(tmp, "c.tif"), model, log=lambda m: None,
                          options=SegmentOptions(tile_size=args.tile, overlap=args.overlap, device=args.device,
                                                 batch_size=args.batch_size))
            best = res if best is None or res.mp_per_s > best.mp_per_s else best
    print(f"U-Net base {args.base_width} depth {args.depth}, tile {args.tile}, {args.size} x {args.size}: "
          f"{best.mp_per_s:.3f} MP/s on {best.device} (batch {best.batch_size})")
    return {"bench": "throughput", "mp_per_s": best.mp_per_s, "device": best.device, "batch": best.batch_size,
            "base_width": args.base_width, "depth": args.depth, "tile": args.tile, "size": args.size}


def cmd_model(args) -> dict:
    """Network alone on random windows already on the device: MP/s and FLOPs per pixel."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from landcover_plugin.core.model.device import amp_dtype, resolve_device

    device = resolve_device(args.device)
    if args.model:  # a real model needs no fixture (and so no rasterio): a GPU image may lack it
        from landcover_plugin.core.model.bundled import resolve_model_path
        from landcover_plugin.core.model.model_file import load_model

        net, spec = load_model(resolve_model_path(args.model))
        args.base_width, args.depth = spec.base_width, spec.depth
    else:
        net, _ = random_model(args.base_width, args.depth, args.tile, args.overlap)
    net = net.to(device).to(memory_format=torch.channels_last)
    batch = args.batch_size or 8
    x = torch.randn(batch, 3, args.tile, args.tile, device=device).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(x[:1])
    flops_per_pixel = counter.get_total_flops() / args.tile ** 2
    rows = []
    dtypes = [None, torch.bfloat16] + ([torch.float16] if device.type == "cuda" else [])
    runs = [("eager", net, dtype) for dtype in dtypes]
    if args.compile:  # compiled for the precision the engine runs on this device
        runs.append((f"compile {args.compile}", torch.compile(net, mode=args.compile), amp_dtype(device)))
    for how, fn, dtype in runs:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            t0 = time.perf_counter()
            for _ in range(2):
                fn(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            warm_s = time.perf_counter() - t0
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                fn(x)
                n += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        mp = n * batch * args.tile ** 2 / 1e6 / dt
        rows.append({"dtype": str(dtype or "float32").replace("torch.", ""), "how": how, "mp_per_s": mp,
                     "tflop_per_s": mp * 1e6 * flops_per_pixel / 1e12, "warm_up_s": round(warm_s, 2)})
        print(f"{rows[-1]['dtype']:>9} {how:>24}: {mp:9.2f} MP/s  {rows[-1]['tflop_per_s']:8.2f} TFLOP/s  "
              f"(first two calls {warm_s:.1f} s)", flush=True)
    print(f"{flops_per_pixel / 1e3:.1f} kFLOP per pixel (U-Net base {args.base_width} depth {args.depth}); "
          f"amp on this device: {amp_dtype(device)}")
    return {"bench": "model", "flops_per_pixel": flops_per_pixel, "batch": batch, "tile": args.tile,
            "base_width": args.base_width, "depth": args.depth, "device": str(device), "rows": rows}


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
            out = subprocess.run([sys.executable, __file__, "_polygons", raster, "--workdir", tmp, "--min-area",
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


def cmd_precision(args) -> dict:
    """Labels of a reduced precision (--precision, default what the engine picks) against fp32, image by image."""
    import numpy as np
    import rasterio

    from landcover_plugin.core.errors import InputError
    from landcover_plugin.core.evaluation.metrics import confusion, scores
    from landcover_plugin.core.io.pairs import pair_files
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    path = resolve_model_path(args.model)
    if args.record is not None and args.precision != "int8":
        raise InputError("--record stores int8's agreement with fp32, which auto needs before it runs a model in "
                         "int8; add --precision int8.")
    net, spec = load_model(path)
    ids, names = [c.id for c in spec.classes], [c.name for c in spec.classes]
    pairs = pair_files(args.images, args.masks)
    same = total = 0
    runs = ("fp32", args.precision)
    conf = {r: np.zeros((len(ids), len(ids) + 1), np.int64) for r in runs}
    speed = {r: [0.0, 0.0] for r in runs}
    ran, rows = set(), []
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        for image, mask in pairs:
            labels = {}
            for i, precision in enumerate(runs):
                res = segment(image, os.path.join(tmp, f"{i}.tif"), (net, spec), log=lambda m: None,
                              options=SegmentOptions(device=args.device, precision=precision))
                speed[precision][0] += res.megapixels
                speed[precision][1] += res.inference_seconds  # int8's one-off compile is not in it
                if i:
                    ran.add(res.precision)
                with rasterio.open(res.class_path) as ds:
                    labels[i] = ds.read(1)
            with rasterio.open(mask) as ds:
                ref = ds.read(1)
            for i, precision in enumerate(runs):
                conf[precision] += confusion(ref, labels[i], ids)
            agree = float((labels[0] == labels[1]).mean())
            same += int((labels[0] == labels[1]).sum())
            total += labels[0].size
            rows.append({"image": os.path.basename(image), "agreement": agree})
            print(f"{os.path.basename(image)}: {100 * agree:.3f}% of pixels agree", flush=True)
    reduced = "/".join(sorted(ran))
    miou = {r: scores(m, names)["miou"] for r, m in conf.items()}
    mp_s = {r: mp / max(s, 1e-9) for r, (mp, s) in speed.items()}
    result = {"bench": "precision", "precision": reduced, "asked": args.precision, "agreement": same / total,
              "miou_fp32": miou["fp32"], "miou": miou[args.precision], "mp_per_s_fp32": mp_s["fp32"],
              "mp_per_s": mp_s[args.precision], "images": rows, "device": args.device}
    print(f"{reduced} vs fp32: {100 * same / total:.3f}% of {total} pixels agree (worst image "
          f"{100 * min(r['agreement'] for r in rows):.3f}%); mean IoU {result['miou_fp32']:.4f} (fp32) vs "
          f"{result['miou']:.4f} ({reduced}); {result['mp_per_s_fp32']:.3f} vs {result['mp_per_s']:.3f} MP/s")
    if args.record is not None:
        record_int8(path, spec, result, args)
    return result


def record_int8(path: str, spec, result: dict, args) -> None:
    """Store the measured int8 agreement in the model file (training.int8), where auto looks for it."""
    from landcover_plugin.core.errors import InputError
    from landcover_plugin.core.evaluation.int8_agreement import store

    if result["precision"] != "int8":
        raise InputError(f"int8 did not run here ({result['precision']} did): nothing to record.")
    worst = min(r["agreement"] for r in result["images"])
    about = f"{len(result['images'])} images of {os.path.abspath(args.images)}"
    about += f" ({args.record})" if args.record else ""
    about += (f": {100 * result['agreement']:.3f}% (worst image {100 * worst:.2f}%), mean IoU "
              f"{result['miou_fp32']:.4f} vs {result['miou']:.4f}")
    _, verdict = store(path, spec, result["agreement"], about,
                       "scripts/bench.py precision IMAGES MASKS --precision int8 --record")
    print(f"recorded in {path}: {100 * result['agreement']:.3f}% of labels agree; {verdict}")


def onnx_session(model, tile: int):
    """onnxruntime on the CPU running `model` exported for `tile`, on as many threads as torch uses."""
    import onnxruntime as ort
    import torch
    from export_onnx import export

    from landcover_plugin.core.model.model_file import save_model

    net, spec = model
    with tempfile.TemporaryDirectory(prefix="landcover-onnx-") as tmp:
        path = os.path.join(tmp, "m.safetensors")
        save_model(path, net, spec)
        onnx_path = export(path, os.path.join(tmp, "m.onnx"), tile)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        return ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])


def onnx_model_seconds(session, raster: str, spec, tile: int, overlap: int, batch: int) -> float:
    """Seconds onnxruntime spends in the model over the engine's windows of `raster` (model time only)."""
    import numpy as np
    import rasterio

    from landcover_plugin.core.inference.windows import window_grid
    from landcover_plugin.core.io.reader import Region, WindowReader

    mean = np.array(spec.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.array(spec.std, np.float32).reshape(1, -1, 1, 1)
    seconds = 0.0
    with rasterio.open(raster) as ds:
        reader = WindowReader(ds, spec.bands, Region(0, 0, ds.width, ds.height), 1.0, spec.mean)
        ys, xs = window_grid(reader.height, reader.width, tile, overlap)
        windows = [(int(y), int(x)) for y in ys for x in xs]
        for i in range(0, len(windows), batch):
            x = np.stack([reader.read(y, x0, tile)[0] for y, x0 in windows[i:i + batch]]).astype(np.float32)
            feed = (x - mean) / std
            t0 = time.perf_counter()
            session.run(None, {"input": feed})
            seconds += time.perf_counter() - t0
    return seconds


def prepare_int8(model, tile: int, args) -> float | None:
    """Compile (or load) the int8 package a CPU run may use, as an earlier run would have: users pay
    it once, so the timed run shows the steady state. Seconds it took, or None where int8 cannot run."""
    from landcover_plugin.core.model import quantize
    from landcover_plugin.core.model.device import auto_batch, device_names, resolve_device
    from landcover_plugin.core.model.unet import fused_for_inference

    net, spec = model
    device = resolve_device(device_names(args.device)[0])
    if device.type != "cpu" or args.precision not in ("auto", "int8"):
        return None
    shape = (args.batch or auto_batch(device, tile, spec.base_width), len(spec.bands), tile, tile)
    # under auto, only where the engine would choose int8 for a large raster (the model, the CPU, torchao)
    if args.precision == "auto" and not quantize.worth_int8(net, spec, shape, quantize.INT8_MIN_PIXELS_COLD):
        return None
    if getattr(net, "calibration_windows", None) is None or not quantize.int8_available():
        return None
    t0 = time.perf_counter()
    quantize.int8_network(net, fused_for_inference(net), spec.mean, spec.std, shape)
    return round(time.perf_counter() - t0, 2)


def _bench_args(argv):
    """The whole-path bench's options."""
    p = argparse.ArgumentParser(prog="bench.py", description="the whole engine path on one raster, per stage")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--size", type=int, default=2048, help="an N x N three-band raster made on the fly")
    src.add_argument("--input", help="a real raster instead")
    mdl = p.add_mutually_exclusive_group()
    mdl.add_argument("--model", help="model file or bundled model name (default: the bundled land-cover model)")
    mdl.add_argument("--base-channels", type=int, help="a random-weight U-Net of this base width instead")
    p.add_argument("--device", default="auto", help=_common.DEVICE_HELP)
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    p.add_argument("--cold", action="store_true",
                   help="time int8's one-off compile inside the run instead of preparing its package first")
    p.add_argument("--tile", type=int)
    p.add_argument("--overlap", type=int)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--compare-onnx", action="store_true")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs of the engine, each followed by onnxruntime's with --compare-onnx; the run with the "
                        "median figure is reported, every run listed (default: 3 with --compare-onnx on a CPU, "
                        "else 1)")
    p.add_argument("--skip-vectorize", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    if args.repeat is not None and args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def run_bench(argv) -> int:
    """The engine end to end on one raster, per stage; --compare-onnx adds onnxruntime on the same windows."""
    args = _bench_args(argv)
    _common.setup(quiet=True)
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.device import device_names, resolve_device
    from landcover_plugin.core.model.model_file import load_model

    # on a CPU the engine and onnxruntime share the cores whose speed drifts; a GPU run is not compared like for like
    on_cpu = resolve_device(device_names(args.device)[0]).type == "cpu"
    repeat = args.repeat if args.repeat is not None else (3 if args.compare_onnx and on_cpu else 1)

    model = random_model(args.base_channels, 4, args.tile or 512, args.overlap if args.overlap is not None else 64) \
        if args.base_channels else load_model(resolve_model_path(args.model))
    tile = args.tile or model[1].tile_size
    overlap = model[1].overlap if args.overlap is None else args.overlap
    prepare_s = None if args.cold else prepare_int8(model, tile, args)
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        raster = args.input or make_raster(os.path.join(tmp, "in.tif"), args.size)
        runs, session, peak = [], None, None
        for i in range(repeat):
            res, result = _bench_run(raster, model, tile, overlap, args, os.path.join(tmp, str(i)))
            peak = peak or peak_rss_mb()  # the engine's own, before onnxruntime's buffers
            if args.compare_onnx:
                # engine and onnxruntime take turns, so that a slow spell of a shared machine hits both of a pair
                session = session or onnx_session(model, tile)
                onnx_s = onnx_model_seconds(session, raster, model[1], tile, overlap, res.batch_size)
                result.update(onnx_mp_per_s=round(res.megapixels / onnx_s, 4),
                              onnx_threads=session.get_session_options().intra_op_num_threads,
                              ratio_vs_onnx=round(onnx_s / res.seconds, 3))
            runs.append((res, result))
    key = "ratio_vs_onnx" if args.compare_onnx else "mp_per_s"
    res, result = sorted(runs, key=lambda r: r[1][key])[(len(runs) - 1) // 2]
    result.update(peak_rss_mb=round(peak, 1), int8_prepare_s=prepare_s,
                  model=args.model or (f"random base {args.base_channels}" if args.base_channels else "bundled"))
    if repeat > 1:
        result["runs"] = [{k: r[k] for k in ("mp_per_s", "onnx_mp_per_s", "ratio_vs_onnx", "infer_s") if k in r}
                          for _, r in runs]
    _print_bench(res, result, prepare_s, args.json)
    return 0


def _bench_run(raster, model, tile, overlap, args, folder):
    """(SegmentResult, figures) of one engine run on `raster`, its outputs in `folder`, removed after."""
    import shutil

    from landcover_plugin.core.segment import SegmentOptions, segment

    os.makedirs(folder)
    opts = SegmentOptions(tile_size=tile, overlap=overlap, batch_size=args.batch, device=args.device,
                          precision=args.precision)
    res = segment(raster, os.path.join(folder, "classes.tif"), model, log=lambda m: None, options=opts,
                  vector_path=None if args.skip_vectorize else os.path.join(folder, "polygons.gpkg"))
    shutil.rmtree(folder)
    return res, {"megapixels": round(res.megapixels, 3), "seconds": round(res.seconds, 3),
                 "mp_per_s": round(res.megapixels / res.seconds, 4), **{f"{k}_s": v for k, v in res.stages.items()},
                 "device": res.device, "precision": res.precision, "batch": res.batch_size, "tile": tile,
                 "overlap": overlap}


def _print_bench(res, result, prepare_s, as_json: bool) -> None:
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in res.stages.items())
    runs = result.get("runs")
    print(f"{result['megapixels']} MP in {result['seconds']} s: {result['mp_per_s']} MP/s end to end on "
          f"{result['device']} in {res.precision} ({stages}); peak RSS {result['peak_rss_mb']} MB"
          + (f"; int8 package prepared beforehand in {prepare_s} s" if prepare_s is not None else "")
          + (f"; the median of {len(runs)} runs ({' / '.join(str(r['mp_per_s']) for r in runs)} MP/s)"
             if runs else ""))
    if "ratio_vs_onnx" in result:
        print(f"onnxruntime, model only, same windows, {result['onnx_threads']} threads: {result['onnx_mp_per_s']} "
              f"MP/s; ours end to end / that = {result['ratio_vs_onnx']}"
              + (f" (each run beside its own: {' / '.join(str(r['ratio_vs_onnx']) for r in runs)})" if runs else ""))
    if as_json:
        print(json.dumps(result))


def _network_options(sp, base_width, tile=512):
    sp.add_argument("--base-width", type=int, default=base_width)
    sp.add_argument("--depth", type=int, default=4)
    sp.add_argument("--tile", type=int, default=tile)
    sp.add_argument("--overlap", type=int, default=64)
    sp.add_argument("--device", default="cpu", help=_common.DEVICE_HELP)
    sp.add_argument("--batch-size", type=int, default=0)
    sp.add_argument("--workdir", default=None, help="where temporary rasters go (default: system temp)")


def _engine_benches(sub) -> None:
    m = sub.add_parser("memory", help="peak RSS by raster size (each in its own process)")
    _network_options(m, 8)
    m.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    a = sub.add_parser("agreement", help="label agreement between tile sizes")
    _network_options(a, 16)
    a.add_argument("--tiles", type=int, nargs="+", default=[256, 1024])
    a.add_argument("--model")
    a.add_argument("--raster")
    t = sub.add_parser("throughput", help="megapixels per second")
    _network_options(t, 32)
    t.add_argument("--size", type=int, default=2048)
    t.add_argument("--repeat", type=int, default=2)
    n = sub.add_parser("model", help="the network alone: MP/s per precision, FLOPs per pixel")
    _network_options(n, 32)
    n.add_argument("--seconds", type=float, default=5.0)
    n.add_argument("--model", help="model file or bundled model name instead of a random U-Net of --base-width")
    n.add_argument("--compile", choices=("default", "reduce-overhead", "max-autotune"),
                   help="also time torch.compile in this mode, at the engine's precision")
    pr = sub.add_parser("precision", help="labels of the reduced precision against fp32, on image/mask pairs")
    pr.add_argument("images")
    pr.add_argument("masks", nargs="?")
    pr.add_argument("--model")
    pr.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    pr.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp16", "int8"),
                    help="compared with fp32 (auto: what the engine picks for each image)")
    pr.add_argument("--json", action="store_true", help="accepted for symmetry: the last line is always JSON")
    pr.add_argument("--record", nargs="?", const="", metavar="NOTE",
                    help="store int8's agreement in the model file, where auto looks before choosing int8 (measure "
                         "on imagery the model was not trained on, and say so in NOTE)")
    pr.add_argument("--workdir", default=None)
    c = sub.add_parser("_child")
    c.add_argument("raster")
    _network_options(c, 8)
    c.add_argument("--confidence", action="store_true")


def _scale_benches(sub) -> None:
    pa = sub.add_parser("parts", help="one raster on one device and on several at once: speed, identical outputs")
    pa.add_argument("--devices", default="cuda:all", help="the several: " + _common.DEVICE_HELP)
    pa.add_argument("--single", default="auto", help="the one device compared with")
    pa.add_argument("--size", type=int, default=4096)
    pa.add_argument("--input", help="a real raster instead")
    pa.add_argument("--model")
    pa.add_argument("--precision", default="auto", choices=PRECISION_CHOICES)
    pa.add_argument("--batch-size", type=int, default=0)
    pa.add_argument("--tile", type=int)
    pa.add_argument("--overlap", type=int)
    pa.add_argument("--workdir", default=None)
    cl = sub.add_parser("cluster", help="one raster in this process and in blocks on local Dask clusters")
    cl.add_argument("--size", type=int, default=2048)
    cl.add_argument("--input", help="a real raster instead")
    cl.add_argument("--block-size", type=int, default=1024)
    cl.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    cl.add_argument("--model")
    cl.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)
    cl.add_argument("--workdir", default=None)
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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    sub = p.add_subparsers(dest="cmd", required=True)
    _engine_benches(sub)
    _scale_benches(sub)
    return p.parse_args(argv)


def cmd_parts(args) -> dict:
    """One raster on one device, then on several at once (a process each): speed, and whether the outputs agree."""
    import numpy as np
    import rasterio

    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    model = load_model(resolve_model_path(args.model))
    result = {"bench": "parts"}
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        raster = args.input or make_raster(os.path.join(tmp, "in.tif"), args.size)
        outputs = {}
        for run, device in (("single", args.single), ("parts", args.devices)):
            cls, conf = os.path.join(tmp, f"{run}.tif"), os.path.join(tmp, f"{run}_conf.tif")
            t0 = time.perf_counter()
            res = segment(raster, cls, model, confidence_path=conf, log=lambda m: None,
                          options=SegmentOptions(device=device, precision=args.precision, batch_size=args.batch_size,
                                                 tile_size=args.tile, overlap=args.overlap))
            seconds = time.perf_counter() - t0
            with rasterio.open(cls) as a, rasterio.open(conf) as b:
                outputs[run] = a.read(1), b.read(1)
            result.update({f"device_{run}": res.device, f"precision_{run}": res.precision,
                           f"seconds_{run}": round(seconds, 3), f"mp_per_s_{run}": round(res.megapixels / seconds, 4)})
            print(f"{run}: {res.megapixels:.2f} MP in {seconds:.2f} s on {res.device} in {res.precision}", flush=True)
    (la, ca), (lb, cb) = outputs["single"], outputs["parts"]
    result.update(megapixels=round(la.size / 1e6, 3), identical_labels=bool(np.array_equal(la, lb)),
                  label_agreement=float((la == lb).mean()), max_confidence_difference=float(np.abs(ca - cb).max()),
                  speedup=round(result["seconds_single"] / result["seconds_parts"], 3))
    print(f"parts / single speed {result['speedup']}; labels identical: {result['identical_labels']} "
          f"({100 * result['label_agreement']:.4f}% agree); confidence differs by at most "
          f"{result['max_confidence_difference']:.2g}")
    return result


def cmd_cluster(args) -> dict:
    """One raster in this process, then in blocks on local Dask clusters of 1, 2... workers: blocks per second,
    MP/s, the cluster path's overhead against the in-process run, and whether the class rasters are equal."""
    import numpy as np
    import rasterio
    from distributed import Client, LocalCluster

    from landcover_plugin.core.inference.cluster import Cluster
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model
    from landcover_plugin.core.segment import SegmentOptions, segment

    model = load_model(resolve_model_path(args.model))
    cores = len(os.sched_getaffinity(0))
    rows = []
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        raster = args.input or make_raster(os.path.join(tmp, "in.tif"), args.size)
        t0 = time.perf_counter()
        res = segment(raster, os.path.join(tmp, "local.tif"), model, log=lambda m: None,
                      options=SegmentOptions(device="cpu", precision=args.precision))
        local_s = time.perf_counter() - t0
        with rasterio.open(res.class_path) as ds:
            reference = ds.read(1)
        print(f"in-process: {res.megapixels:.2f} MP in {local_s:.2f} s ({res.megapixels / local_s:.3f} MP/s, "
              f"{res.precision})", flush=True)
        for workers in args.workers:
            with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
                    Client(lc) as client:
                client.run(lambda: None)  # workers up before the clock starts
                logs = []
                t0 = time.perf_counter()
                res = segment(raster, os.path.join(tmp, f"cluster{workers}.tif"), model, log=logs.append,
                              options=SegmentOptions(device="cpu", precision=args.precision, cluster=Cluster(
                                  client, os.path.join(tmp, "spool"), args.block_size, max(1, cores // workers))))
                seconds = time.perf_counter() - t0
            with rasterio.open(res.class_path) as ds:
                labels = ds.read(1)
            same, agreement = bool(np.array_equal(labels, reference)), float((labels == reference).mean())
            blocks = int(next(m for m in logs if "block(s) of rows" in m).split()[0])
            row = {"workers": workers, "blocks": blocks, "seconds": round(seconds, 3),
                   "blocks_per_s": round(blocks / seconds, 4), "mp_per_s": round(res.megapixels / seconds, 4),
                   "overhead_vs_in_process": round(seconds / local_s, 3), "identical_classes": same,
                   "torch_threads_per_worker": max(1, cores // workers), "label_agreement": agreement}
            rows.append(row)
            print(f"{workers} worker(s): {blocks} blocks in {seconds:.2f} s, {row['blocks_per_s']} blocks/s, "
                  f"{row['mp_per_s']} MP/s, {row['overhead_vs_in_process']}x the in-process time; classes "
                  f"identical: {same} ({100 * agreement:.5f}% agree; {max(1, cores // workers)} torch thread(s) a "
                  f"worker, {cores} in-process)", flush=True)
    return {"bench": "cluster", "size": args.size, "block_size": args.block_size, "cores": cores,
            "in_process_seconds": round(local_s, 3), "rows": rows}


SUBCOMMANDS = ("memory", "agreement", "throughput", "model", "polygons", "precision", "parts", "cluster", "_child",
               "_polygons")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help"):
        return run_bench(argv)
    args = parse_args(argv)
    if args.cmd == "_child":
        return _child_segment(args)
    if args.cmd == "_polygons":
        return _child_polygons(args)
    _common.setup(quiet=True)
    commands = {"memory": cmd_memory, "agreement": cmd_agreement, "throughput": cmd_throughput, "model": cmd_model,
                "polygons": cmd_polygons, "precision": cmd_precision, "parts": cmd_parts, "cluster": cmd_cluster}
    result = commands[args.cmd](args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
