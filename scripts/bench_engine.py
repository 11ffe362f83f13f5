"""The engine in parts: peak memory by raster size, label agreement between tile sizes, throughput, and the
network alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench_common import BENCH, FIXTURE, make_raster, network_options, peak_rss_mb, random_model

import _common


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
            out = subprocess.run([sys.executable, BENCH, "_child", raster, "--workdir", tmp,
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


def add_parsers(sub) -> None:
    """memory, agreement, throughput, model and the memory bench's child."""
    m = sub.add_parser("memory", help="peak RSS by raster size (each in its own process)")
    network_options(m, 8)
    m.add_argument("--sizes", type=int, nargs="+", default=[2048, 16384])
    a = sub.add_parser("agreement", help="label agreement between tile sizes")
    network_options(a, 16)
    a.add_argument("--tiles", type=int, nargs="+", default=[256, 1024])
    a.add_argument("--model")
    a.add_argument("--raster")
    t = sub.add_parser("throughput", help="megapixels per second")
    network_options(t, 32)
    t.add_argument("--size", type=int, default=2048)
    t.add_argument("--repeat", type=int, default=2)
    n = sub.add_parser("model", help="the network alone: MP/s per precision, FLOPs per pixel")
    network_options(n, 32)
    n.add_argument("--seconds", type=float, default=5.0)
    n.add_argument("--model", help="model file or bundled model name instead of a random U-Net of --base-width")
    n.add_argument("--compile", choices=("default", "reduce-overhead", "max-autotune"),
                   help="also time torch.compile in this mode, at the engine's precision")
    c = sub.add_parser("_child")
    c.add_argument("raster")
    network_options(c, 8)
    c.add_argument("--confidence", action="store_true")
