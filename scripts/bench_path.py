"""The whole path on one raster, stage by stage, and against onnxruntime on the same windows (`bench.py --size N`)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from bench_common import PRECISION_CHOICES, make_raster, peak_rss_mb, random_model

import _common


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
    from landcover_plugin.core.model.precision import Hardware, int8_verdict
    from landcover_plugin.core.model.unet import fused_for_inference

    net, spec = model
    device = resolve_device(device_names(args.device)[0])
    if device.type != "cpu" or args.precision not in ("auto", "int8"):
        return None
    shape = (args.batch or auto_batch(device, tile, spec.base_width), len(spec.bands), tile, tile)
    # under auto, only where the engine would choose int8 for a large raster (the model, the CPU, torchao)
    if args.precision == "auto" and not int8_verdict(Hardware.of(device), net, spec, quantize.INT8_MIN_PIXELS)[0]:
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
