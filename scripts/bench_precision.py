"""Labels of a reduced precision against fp32 on image/mask pairs, and int8's agreement recorded in the model file."""
from __future__ import annotations

import os
import tempfile


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


def add_parsers(sub) -> None:
    """precision."""
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
