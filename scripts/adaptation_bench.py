#!/usr/bin/env python3
"""How well does a model adapt to a new region from a few polygons? Measured as a user would, in QGIS Processing.

    python scripts/adaptation_bench.py IMAGES MASKS --test ID [ID ...] --work DIR
        [--classes JSON] [--map OLD:NEW,...] [--share 0.1] [--minutes 15] [--json]

IMAGES/MASKS: image/mask pairs of a region (paired by name as in evaluate.py). The pairs
named by --test (a part of their file name) are held out entirely; the others are the
training imagery. Steps, all in DIR:
1. the training images become georeferenced GeoTIFFs (a projected CRS, 0.5 m pixels,
   side by side; keeps a file's own georeferencing where it has one), the test pairs one
   mosaic image and mask;
2. scripts/sparse_labels.py polygons over `share` of the training images (a random few
   regions of each class), written in EPSG:4326 with the class names;
3. landcover:train on the training rasters and the polygons, MAX_MINUTES --minutes,
   starting from the bundled model;
4. landcover:segment of the test mosaic with the trained model, and with the bundled
   model where the class table is the bundled model's (--map to its ids);
5. a per-pixel random forest (scikit-learn, 100 trees, RGB) trained on the pixels of the
   same polygons, applied to the test mosaic;
6. landcover:evaluate of each against the test mask.
Prints a table (and with --json a last line of JSON with the mean IoUs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

import _common

PIXEL = 0.5  # metres, for imagery without georeferencing
CRS = "EPSG:32647"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("images")
    p.add_argument("masks")
    p.add_argument("--test", nargs="+", required=True, help="parts of the file names of the held-out test pairs")
    p.add_argument("--work", required=True, help="folder for the prepared data, models and outputs")
    p.add_argument("--classes", help="JSON class table of the masks (default: the five LandCover.ai classes)")
    p.add_argument("--map", help="map mask ids to the bundled model's: OLD:NEW,... (255 ignores); the bundled "
                                 "model is then scored too")
    p.add_argument("--share", type=float, default=0.1, help="share of the training images the polygons cover")
    p.add_argument("--minutes", type=float, default=15.0, help="MAX_MINUTES of landcover:train")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def _lut(mapping: str | None) -> np.ndarray:
    lut = np.arange(256, dtype=np.uint8)
    for pair in (mapping or "").split(","):
        if pair.strip():
            old, new = (int(v) for v in pair.split(":"))
            lut[old] = new
    return lut


def _write(path, data, transform, crs, nodata=None):
    import rasterio

    data = data[None] if data.ndim == 2 else data
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=str(data.dtype), crs=crs, transform=transform, nodata=nodata, tiled=True,
                       compress="deflate") as ds:
        ds.write(data)


def prepare(args, classes) -> dict:
    """Georeferenced training rasters and masks, the test mosaic and its mask, and the polygons."""
    from rasterio.transform import from_origin
    from sparse_labels import sparse_polygons, write_polygons

    from landcover_plugin.core.io.pairs import pairs_from
    from landcover_plugin.core.training.data import read_image

    lut = _lut(args.map)
    pairs = pairs_from(args.images, args.masks)
    test = [p for p in pairs if any(t in os.path.basename(p[0]) for t in args.test)]
    train = [p for p in pairs if p not in test]
    if not test or not train:
        raise SystemExit("error: --test must name some but not all of the pairs")
    os.makedirs(os.path.join(args.work, "train"), exist_ok=True)
    rasters, masks, x = [], [], 500000.0
    for image, mask in train:
        stem = os.path.splitext(os.path.basename(image))[0]
        img, m = read_image(image), lut[read_image(mask)[0]]
        t = from_origin(x, 1600000.0, PIXEL, PIXEL)
        x += (img.shape[2] + 200) * PIXEL
        rasters.append(os.path.join(args.work, "train", f"{stem}.tif"))
        masks.append(os.path.join(args.work, "train", f"{stem}_mask.tif"))
        _write(rasters[-1], img, t, CRS)
        _write(masks[-1], m, t, CRS, 255)
    imgs = [read_image(i) for i, _ in test]
    msks = [lut[read_image(m)[0]] for _, m in test]
    h = max(i.shape[1] for i in imgs)
    mosaic = np.zeros((imgs[0].shape[0], h, sum(i.shape[2] for i in imgs)), imgs[0].dtype)
    mosaic_mask = np.full((h, mosaic.shape[2]), 255, np.uint8)
    c = 0
    for i, m in zip(imgs, msks):
        mosaic[:, :i.shape[1], c:c + i.shape[2]] = i
        mosaic_mask[:m.shape[0], c:c + m.shape[1]] = m
        c += i.shape[2]
    t = from_origin(500000.0, 1500000.0, PIXEL, PIXEL)
    test_image, test_mask = os.path.join(args.work, "test.tif"), os.path.join(args.work, "test_mask.tif")
    _write(test_image, mosaic, t, CRS)
    _write(test_mask, mosaic_mask, t, CRS, 255)
    polygons, crs, covered = sparse_polygons(masks, args.share, args.seed)
    labels = os.path.join(args.work, "labels.gpkg")
    if os.path.exists(labels):
        os.remove(labels)
    write_polygons(labels, polygons, crs, {c.id: c.name for c in classes}, "EPSG:4326")
    return {"rasters": rasters, "masks": masks, "test_image": test_image, "test_mask": test_mask, "labels": labels,
            "polygons": len(polygons), "covered": covered, "train_files": [os.path.basename(i) for i, _ in train],
            "test_files": [os.path.basename(i) for i, _ in test]}


def random_forest(data: dict, classes, out_path: str, seed: int) -> float:
    """Per-pixel random forest (RGB) on the polygons' pixels, applied to the test mosaic; returns seconds."""
    import rasterio
    from sklearn.ensemble import RandomForestClassifier

    from landcover_plugin.core.io.labels import rasterize_labels
    from landcover_plugin.core.io.outputs import set_category_names, write_class_styling

    started = time.perf_counter()
    xs, ys = [], []
    rng = np.random.default_rng(seed)
    for raster in data["rasters"]:
        mask = rasterize_labels(raster, data["labels"], "class_id", classes)
        with rasterio.open(raster) as ds:
            img = ds.read()
        keep = np.flatnonzero(mask.ravel() != 255)
        if len(keep) > 40000:
            keep = rng.choice(keep, 40000, replace=False)
        xs.append(img.reshape(img.shape[0], -1)[:, keep].T)
        ys.append(mask.ravel()[keep])
    forest = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed, min_samples_leaf=2)
    forest.fit(np.concatenate(xs), np.concatenate(ys))
    with rasterio.open(data["test_image"]) as ds:
        img, profile = ds.read(), ds.profile
    pred = np.empty(img.shape[1] * img.shape[2], np.uint8)
    flat = img.reshape(img.shape[0], -1).T
    for i in range(0, len(flat), 1 << 20):
        pred[i:i + (1 << 20)] = forest.predict(flat[i:i + (1 << 20)])
    profile.update(count=1, dtype="uint8", nodata=255)
    with rasterio.open(out_path, "w", **profile) as ds:
        ds.write(pred.reshape(1, img.shape[1], img.shape[2]))
        write_class_styling(ds, classes)
    set_category_names(out_path, classes)  # so that landcover:evaluate scores the same class table
    return time.perf_counter() - started


def start_qgis():
    """A headless QGIS with Processing and the landcover provider."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.path.append("/usr/share/qgis/python/plugins")
    from qgis.core import QgsApplication

    app = QgsApplication([], False)
    app.initQgis()
    from processing.core.Processing import Processing

    Processing.initialize()
    from landcover_plugin.processing.provider import LandcoverProvider

    provider = LandcoverProvider()
    QgsApplication.processingRegistry().addProvider(provider)
    return app, provider


def _test_scores(run, data, models: dict, classes, device: int, w: str, seed: int) -> dict:
    """Mean and per-class IoU on the test mosaic of each model (through landcover:segment) and of the random
    forest baseline."""
    out = {}
    for name, model in models.items():
        seg = run("landcover:segment", {"INPUT": data["test_image"], "MODEL": model, "DEVICE": device,
                                        "OUTPUT_RASTER": os.path.join(w, f"test_{name}.tif")})
        ev = run("landcover:evaluate", {"INPUT": seg["OUTPUT_RASTER"], "REFERENCE": data["test_mask"],
                                        "OUTPUT_REPORT": os.path.join(w, f"evaluation_{name}.html")})
        out[f"{name}_miou"], out[f"{name}_iou"] = ev["MIOU"], json.loads(ev["IOU"])
    out["forest_seconds"] = round(random_forest(data, classes, os.path.join(w, "test_forest.tif"), seed), 1)
    ev = run("landcover:evaluate", {"INPUT": os.path.join(w, "test_forest.tif"), "REFERENCE": data["test_mask"],
                                    "OUTPUT_REPORT": os.path.join(w, "evaluation_forest.html")})
    out["forest_miou"], out["forest_iou"] = ev["MIOU"], json.loads(ev["IOU"])
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    _common.setup(quiet=True)
    from landcover_plugin.core.model.classes import DEFAULT_CLASSES, parse_classes

    classes = DEFAULT_CLASSES if args.map or not args.classes else parse_classes(json.load(open(args.classes)))
    data = prepare(args, classes)
    print(f"{len(data['rasters'])} training rasters, {data['polygons']} polygons over {data['covered']:.1%} of them; "
          f"test: {', '.join(data['test_files'])}", file=sys.stderr)
    app, provider = start_qgis()
    import processing
    from qgis.core import QgsProcessingContext, QgsProcessingFeedback

    class Feedback(QgsProcessingFeedback):
        def pushInfo(self, info):  # noqa: N802
            print(info, file=sys.stderr, flush=True)

    def run(alg, params):
        return processing.run(alg, params, context=QgsProcessingContext(), feedback=Feedback())

    w = args.work
    device = ["auto", "cpu", "cuda"].index(args.device)
    out = {"train_files": data["train_files"], "test_files": data["test_files"], "polygons": data["polygons"],
           "labelled_share": round(data["covered"], 4), "minutes": args.minutes}
    labels, field = data["labels"], "class"
    if not args.map:
        # The user's own class table: ids in the field, names and colours in the layer's style.
        from qgis.core import QgsVectorLayer

        from landcover_plugin.processing.styling import categorized_renderer

        labels = QgsVectorLayer(data["labels"], "labels", "ogr")
        labels.setRenderer(categorized_renderer(classes, "class_id"))
        field = "class_id"
    started = time.perf_counter()
    trained = run("landcover:train", {"INPUT": data["rasters"], "LABELS": labels, "CLASS_FIELD": field,
                                      "VALIDATION": 0.2, "MAX_MINUTES": args.minutes, "DEVICE": device,
                                      "OUTPUT_MODEL": os.path.join(w, "adapted.safetensors"),
                                      "OUTPUT_REPORT": os.path.join(w, "training.html")})
    out["train_minutes"] = round((time.perf_counter() - started) / 60, 2)
    out["val_miou"], out["init_val_miou"] = trained["VAL_MIOU"], trained["INIT_VAL_MIOU"]
    models = {"adapted": trained["OUTPUT_MODEL"]}
    if args.map:
        models["bundled"] = ""
    out.update(_test_scores(run, data, models, classes, device, w, args.seed))
    print(f"\ntest mosaic mean IoU: adapted {out['adapted_miou']:.3f}"
          + (f", bundled {out['bundled_miou']:.3f}" if "bundled_miou" in out else "")
          + f", random forest {out['forest_miou']:.3f}", file=sys.stderr)
    if args.json:
        print(json.dumps(out))
    del provider
    app.exitQgis()
    return 0


if __name__ == "__main__":
    _common.run_main(main)
