"""Dynamic World in our engine against TensorFlow running Google's SavedModel, in the same run: our end-to-end
time (read, transform, network, blend, write) and TensorFlow's network time alone on the same windows (the
engine's tiling: window size, overlap and origins), plus the labels of both against TensorFlow's whole-image
run. TensorFlow runs in a child process of --tf-python (an environment of its own: its numpy need not be the
one QGIS's GDAL was built with); the plugin never needs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from bench_common import make_raster, peak_rss_mb


def add_parsers(sub) -> None:
    p = sub.add_parser("dynamic_world", help="Dynamic World: our engine against TensorFlow's SavedModel")
    p.add_argument("input", help="a 9-band stack from prepare_sentinel2, or a Sentinel-2 product or band folder")
    p.add_argument("--saved-model", required=True, help="Dynamic World's SavedModel folder (model/forward)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--repeat", type=int, default=1, help="runs of each, the fastest counted")
    p.add_argument("--size", type=int, help="run on a SIZE x SIZE mosaic of mirrored copies of the stack "
                                            "(10980: a whole Sentinel-2 tile)")
    p.add_argument("--no-tensorflow", action="store_true", help="our engine alone: its time and peak memory")
    p.add_argument("--eager", action="store_true", help="never compile the network (compiled.py), whatever the size")
    p.add_argument("--tf-python", default=sys.executable, help="a Python with TensorFlow (default: this one)")
    p.add_argument("--workdir", default=None)


def cmd_dynamic_world(args) -> dict:
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.model_file import load_model

    net, spec = load_model(resolve_model_path("dynamic_world"))
    if args.eager:
        from landcover_plugin.core.model import compiled

        compiled.COMPILE_MIN_PIXELS = float("inf")
    with tempfile.TemporaryDirectory(prefix="landcover-bench-", dir=args.workdir) as tmp:
        stack = _stack(args.input, spec, tmp)
        if args.size:
            stack = make_raster(os.path.join(tmp, "mosaic.tif"), args.size, stack)
        runs, labels, res = _ours(stack, net, spec, args, tmp)
        ours = min(runs)
        if args.no_tensorflow:
            return _ours_alone(res, runs)
        dn = _read(stack, spec)
        tile, overlap = _tiling(spec)
        tf_s, whole = _tensorflow_child(args, _normalised(dn, spec), tile, overlap, tmp)
    pixels = dn.shape[1] * dn.shape[2]
    valid = labels != 255
    result = {"bench": "dynamic_world", "megapixels": pixels / 1e6, "precision": res.precision,
              "tile": tile, "overlap": overlap, "ours_s": ours, "ours_runs_s": runs, "tensorflow_windows_s": tf_s,
              "ours_mp_per_s": pixels / 1e6 / ours, "tensorflow_mp_per_s": pixels / 1e6 / tf_s,
              "speedup": tf_s / ours, "labels_vs_tensorflow_whole_image": float((labels == whole)[valid].mean())}
    print(f"{pixels / 1e6:.2f} MP, {tile} px windows, overlap {overlap}, {res.precision}: ours end to end "
          f"{ours:.2f} s ({result['ours_mp_per_s']:.3f} MP/s), TensorFlow's network on the same windows "
          f"{tf_s:.2f} s ({result['tensorflow_mp_per_s']:.3f} MP/s): {result['speedup']:.2f}x; labels as "
          f"TensorFlow's whole-image run on {100 * result['labels_vs_tensorflow_whole_image']:.4f}% of pixels")
    return result


def _ours_alone(res, runs: list) -> dict:
    seconds = min(runs)
    result = {"bench": "dynamic_world", "megapixels": res.megapixels, "precision": res.precision,
              "why": res.precision_reason, "ours_s": seconds, "ours_runs_s": runs,
              "ours_mp_per_s": res.megapixels / seconds,
              "peak_rss_mb": peak_rss_mb(), "stages": res.stages}
    print(f"{res.megapixels:.1f} MP, {res.precision} ({res.precision_reason}): {seconds:.1f} s end to end "
          f"({result['ours_mp_per_s']:.3f} MP/s), peak memory {result['peak_rss_mb']:.0f} MB; seconds by stage "
          + ", ".join(f"{k} {v:.1f}" for k, v in res.stages.items()))
    return result


def _stack(path: str, spec, tmp: str) -> str:
    """`path` itself when it is a raster, else the stack prepare_sentinel2 makes of the product."""
    if os.path.isfile(path) and path.lower().endswith((".tif", ".tiff", ".vrt")):
        return path
    from landcover_plugin.core.io.sentinel2 import open_product
    from landcover_plugin.core.io.sentinel2_stack import prepare

    out = os.path.join(tmp, "stack.tif")
    prepare(open_product(path), spec.bands, out, alignment=spec.alignment)
    return out


def _ours(stack, net, spec, args, tmp):
    """Our end-to-end time; the labels unsieved (MIN_AREA 0) to compare the network's with TensorFlow's, else
    with the model's defaults as users run it."""
    import rasterio

    from landcover_plugin.core.segment import SegmentOptions, segment

    res, runs = None, []
    for i in range(args.repeat):
        started = time.perf_counter()
        res = segment(stack, os.path.join(tmp, f"ours{i}.tif"), (net, spec), log=lambda m: None,
                      options=SegmentOptions(device=args.device, precision=args.precision,
                                             min_area=None if args.no_tensorflow else 0))
        runs.append(time.perf_counter() - started)
    # the first run compiles where the network is compiled and its package not cached yet: all runs are shown
    print("ours, every run: " + ", ".join(f"{t:.1f} s" for t in runs))
    if args.no_tensorflow:
        return runs, None, res
    with rasterio.open(res.class_path) as ds:
        labels = ds.read(1)
    return runs, labels, res


def _tiling(spec):
    from landcover_plugin.core.inference.plan import SegmentOptions, tiling

    return tiling(SegmentOptions(), spec)


def _read(stack, spec):
    """The stack's model bands, nodata filled with the values the engine fills it with (TensorFlow gets what the
    network gets: the labels then differ only by the port and the tiling)."""
    import numpy as np
    import rasterio

    from landcover_plugin.core.io.bands import match_bands
    from landcover_plugin.core.model.transforms import neutral_values

    with rasterio.open(stack) as ds:
        bands, _ = match_bands(spec.bands, ds.count, ds.descriptions)
        dn = ds.read(list(bands)).astype(np.float32)
        valid = ds.read_masks(list(bands)).min(axis=0) > 0
    fill = np.array(neutral_values(spec), np.float32).reshape(-1, 1, 1)
    return np.where(valid[None], dn, fill)


def _tensorflow_child(args, x, tile: int, overlap: int, tmp: str):
    import numpy as np

    from landcover_plugin.core.inference.windows import window_grid

    ys, xs = window_grid(x.shape[0], x.shape[1], tile, overlap)
    np.savez(os.path.join(tmp, "tf_in.npz"), x=x, ys=ys, xs=xs)
    subprocess.run([args.tf_python, os.path.abspath(__file__), args.saved_model, os.path.join(tmp, "tf_in.npz"),
                    str(tile), str(args.repeat)], check=True)
    with open(os.path.join(tmp, "tf_in.json")) as f:
        seconds = json.load(f)["seconds"]
    return seconds, np.load(os.path.join(tmp, "tf_whole.npy"))


def _tensorflow(saved_model: str, npz: str, tile: int, repeat: int) -> None:
    """In the child: TensorFlow's network time on the windows, and its whole-image labels, beside `npz`."""
    import numpy as np
    import tensorflow as tf

    data = np.load(npz)
    x, ys, xs = data["x"], data["ys"], data["xs"]  # (H, W, 9): the SavedModel's input
    sig = tf.saved_model.load(saved_model).signatures["serving_default"]
    key = list(sig.structured_input_signature[1])[0]

    def run(a):
        out = sig(**{key: tf.constant(a[None])})
        return next(iter(out.values())).numpy()[0]

    whole = run(x).argmax(-1).astype(np.uint8)
    windows = [(y, x0) for y in ys for x0 in xs]
    best = None
    for _ in range(repeat):
        took = 0.0
        for y, x0 in windows:
            # the engine's windows cross the raster's edges cropped to the raster: TensorFlow gets the same part
            part = x[max(y, 0):y + tile, max(x0, 0):x0 + tile]
            started = time.perf_counter()
            run(part)
            took += time.perf_counter() - started
        best = took if best is None else min(best, took)
    np.save(npz.replace("tf_in.npz", "tf_whole.npy"), whole)
    with open(npz.replace(".npz", ".json"), "w") as f:
        json.dump({"seconds": best}, f)


def _normalised(dn, spec):
    import numpy as np

    s = spec.transform["log_scale"]
    mean, std = (np.array(v, np.float32).reshape(-1, 1, 1) for v in (spec.mean, spec.std))
    z = (np.log1p(dn * s) - mean) / std
    return np.ascontiguousarray((1 / (1 + np.exp(-z))).transpose(1, 2, 0).astype(np.float32))


if __name__ == "__main__":
    _tensorflow(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
