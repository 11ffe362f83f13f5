#!/usr/bin/env python3
"""Would shifting the model's class priors help? Fit on some tiles, measure on others.

    python scripts/class_offsets.py FIT_IMAGES FIT_MASKS TEST_IMAGES TEST_MASKS [--model FILE] [--json]

Each IMAGES/MASKS is a pair of folders or of files.

One offset per class is added to the log-probabilities the engine blends (the first
class's stays 0), chosen by coordinate search to maximise the mean IoU of the FIT pairs;
the TEST pairs' mean IoU is then reported without and with those offsets. A model that
over- or under-predicts a class everywhere gains on TEST; offsets that only suit the
FIT tiles' labelling lose there. Folders pair as in evaluate.py.
"""
from __future__ import annotations

import argparse
import json

import _common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("fit_images")
    p.add_argument("fit_masks")
    p.add_argument("test_images")
    p.add_argument("test_masks")
    p.add_argument("--model", help="model file or bundled model name (default: the bundled land-cover model)")
    p.add_argument("--stride", type=int, default=3, help="use every STRIDE-th pixel in each direction (default 3)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    return p.parse_args(argv)


def log_probabilities(pairs, network, spec, device, stride: int):
    """Stride-sampled log-probabilities (pixels, classes) and references (pixels,) of image/mask pairs."""
    import numpy as np

    from landcover_plugin.core.inference.sliding import predict_probabilities
    from landcover_plugin.core.inference.windows import blend_weights
    from landcover_plugin.core.model.predictor import Predictor
    from landcover_plugin.core.training.data import load_pairs

    ids = [c.id for c in spec.classes]
    tile, overlap = spec.tile_size, spec.overlap
    predictor = Predictor(network, spec.mean, spec.std, blend_weights(tile, overlap), device, 4)
    logp, refs = [], []
    for item in load_pairs(pairs, spec.bands, ids):
        p = predict_probabilities(predictor, item.image, len(ids), tile, overlap)[:, ::stride, ::stride]
        logp.append(np.log(np.maximum(p.reshape(len(ids), -1).T, 1e-6)))
        refs.append(item.mask[::stride, ::stride].ravel())
    return np.concatenate(logp), np.concatenate(refs)


def mean_iou(logp, ref, offsets, ids, names) -> dict:
    import numpy as np

    from landcover_plugin.core.evaluation.metrics import confusion, scores

    labels = np.asarray(ids, np.uint8)[np.argmax(logp + offsets, axis=1)]
    return scores(confusion(ref, labels, ids), names)


def fit_offsets(logp, ref, ids, names, rounds: int = 3, grid=None):
    """Coordinate search, class by class, over offsets in [-2, 2] (steps of 0.1)."""
    import numpy as np

    grid = np.round(np.arange(-2.0, 2.01, 0.1), 2) if grid is None else grid
    offsets = np.zeros(len(ids), np.float32)
    for _ in range(rounds):
        for c in range(1, len(ids)):
            trial = offsets.copy()
            best = (-1.0, offsets[c])
            for g in grid:
                trial[c] = g
                m = mean_iou(logp, ref, trial, ids, names)["miou"]
                if m > best[0] + 1e-9:
                    best = (m, g)
            offsets[c] = best[1]
    return offsets


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup(quiet=args.json)
    import numpy as np

    from landcover_plugin.core.io.pairs import pairs_from
    from landcover_plugin.core.model.bundled import resolve_model_path
    from landcover_plugin.core.model.device import resolve_device
    from landcover_plugin.core.model.model_file import load_model

    network, spec = load_model(resolve_model_path(args.model))
    device = resolve_device(args.device)
    ids, names = [c.id for c in spec.classes], [c.name for c in spec.classes]
    fit = log_probabilities(pairs_from(args.fit_images, args.fit_masks), network, spec, device, args.stride)
    test = log_probabilities(pairs_from(args.test_images, args.test_masks), network, spec, device, args.stride)
    offsets = fit_offsets(*fit, ids, names)
    zero = np.zeros(len(ids), np.float32)
    result = {"offsets": {n: round(float(o), 2) for n, o in zip(names, offsets)}}
    for which, (logp, ref) in (("fit", fit), ("test", test)):
        for tag, off in (("without", zero), ("with", offsets)):
            s = mean_iou(logp, ref, off, ids, names)
            result[f"{which}_miou_{tag}"] = round(s["miou"], 4)
            result[f"{which}_iou_{tag}"] = {n: None if v is None else round(v, 4) for n, v in s["iou"].items()}
    print("offsets: " + ", ".join(f"{n} {o:+.1f}" for n, o in result["offsets"].items()))
    for which in ("fit", "test"):
        print(f"{which}: mean IoU {result[f'{which}_miou_without']:.4f} without, "
              f"{result[f'{which}_miou_with']:.4f} with the offsets")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
