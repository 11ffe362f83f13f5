#!/usr/bin/env python3
"""Image/mask pairs for the buildings model from the OpenStreetMap building data in ../shared/data.

    python scripts/buildings_data.py ../shared/data OUT_DIR

Writes OUT_DIR/images/<place>_<chip>.tif and OUT_DIR/masks/<same>.tif (1 = building, 0 = other),
GeoTIFFs in EPSG:4326, every chip at about the same ground resolution (zoom-19 tiles of 256
pixels, 0.26-0.30 m): the Banepa chips (512 pixels, 0.13 m) are averaged 2x2 and their
building polygons rasterized on that grid; the Zanzibar/Nairobi/Philippines chips keep their
pixels, their masks already say 1 = building. OUT_DIR/classes.json is the class table for
`scripts/train.py --classes`. With --landcover, masks are for a LandCover.ai-encoded training set
instead (1 = building, 255 = ignored elsewhere: ground not mapped as building may be anything) and
the held-out chips are left out. OUT_DIR/heldout.txt lists the chips held out for the model
card (linked again under OUT_DIR/heldout/images and masks): the last column of chips of every
cluster of each place, so that no held-out chip is surrounded by training chips.
"""
from __future__ import annotations

import json
import os
import re
import sys

from _common import run_main, setup

CHIP = re.compile(r"OAM-(\d+)-(\d+)-19")
CLASSES = [{"id": 0, "name": "other", "color": "#f2efe9"}, {"id": 1, "name": "building", "color": "#d7301f"}]


def _write(path, array, transform, crs):
    import rasterio

    count = 1 if array.ndim == 2 else array.shape[0]
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[-1], height=array.shape[-2], count=count,
                       dtype="uint8", crs=crs, transform=transform, compress="deflate") as dst:
        dst.write(array if array.ndim == 3 else array[None])


def banepa(folder, out, other, factor=2):
    """The Banepa chips averaged factor x factor, their polygons rasterized on the coarser grid."""
    import numpy as np
    import rasterio
    from rasterio.features import rasterize
    from shapely.geometry import shape

    with open(os.path.join(folder, "labels", "buildings.geojson")) as f:
        polygons = [shape(feat["geometry"]) for feat in json.load(f)["features"] if feat.get("geometry")]
    names = []
    for name in sorted(os.listdir(os.path.join(folder, "images"))):
        if not name.endswith(".tif"):
            continue
        with rasterio.open(os.path.join(folder, "images", name)) as src:
            rgb = src.read([1, 2, 3]).astype(np.float32)
            transform = src.transform * src.transform.scale(factor, factor)
            crs = src.crs
        h, w = rgb.shape[1] // factor, rgb.shape[2] // factor
        small = rgb[:, :h * factor, :w * factor].reshape(3, h, factor, w, factor).mean(axis=(2, 4))
        mask = rasterize(((p, 1) for p in polygons), out_shape=(h, w), transform=transform, fill=other,
                         dtype="uint8")
        stem = "banepa_" + os.path.splitext(name)[0]
        _write(os.path.join(out, "images", stem + ".tif"), np.round(small).astype(np.uint8), transform, crs)
        _write(os.path.join(out, "masks", stem + ".tif"), mask, transform, crs)
        names.append(stem)
    return names


def oam(folder, out, other):
    """The 256-pixel chips: their masks' georeference given to the images, written as GeoTIFF pairs."""
    import numpy as np
    import rasterio

    names = []
    for name in sorted(os.listdir(os.path.join(folder, "images"))):
        stem = os.path.splitext(name)[0]
        mask_path = os.path.join(folder, "masks", stem + ".tif")
        if not os.path.exists(mask_path):
            continue
        with rasterio.open(mask_path) as m:
            mask, transform, crs = m.read(1), m.transform, m.crs
        with rasterio.open(os.path.join(folder, "images", name)) as src:
            rgb = src.read([1, 2, 3])
        _write(os.path.join(out, "images", stem + ".tif"), rgb, transform, crs)
        _write(os.path.join(out, "masks", stem + ".tif"), np.where(mask == 1, 1, other).astype("uint8"), transform,
               crs)
        names.append(stem)
    return names


def held_out(names):
    """Per place and cluster of touching chips more than one chip wide, the chips of the cluster's largest x
    (a place whose clusters are all one column wide keeps them all for training)."""
    by_place = {}
    for n in names:
        x, y = map(int, CHIP.search(n).groups())
        by_place.setdefault(n.split("_OAM")[0], []).append((x, y, n))
    chosen = []
    for chips in by_place.values():
        clusters = []
        for x, y, n in sorted(chips):
            for c in clusters:
                if any(abs(x - cx) <= 1 and abs(y - cy) <= 1 for cx, cy, _ in c):
                    c.append((x, y, n))
                    break
            else:
                clusters.append([(x, y, n)])
        for c in clusters:
            last = max(x for x, _, _ in c)
            if last > min(x for x, _, _ in c):
                chosen += [n for x, _, n in c if x == last]
    return sorted(chosen)


def main():
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("shared_data", help="the folder holding osm_buildings_banepa/ and osm_buildings_oam/")
    p.add_argument("out")
    p.add_argument("--landcover", action="store_true", help="masks for a five-class set: 255 where not building")
    a = p.parse_args()
    setup()
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(a.out, sub), exist_ok=True)
    other = 255 if a.landcover else 0
    names = banepa(os.path.join(a.shared_data, "osm_buildings_banepa"), a.out, other)
    names += oam(os.path.join(a.shared_data, "osm_buildings_oam"), a.out, other)
    held = held_out(names)
    for n in held:
        for sub in ("images", "masks"):
            path = os.path.join(a.out, sub, n + ".tif")
            if a.landcover:
                os.remove(path)
            else:  # the held-out pairs on their own, for scripts/evaluate.py
                os.makedirs(os.path.join(a.out, "heldout", sub), exist_ok=True)
                link = os.path.join(a.out, "heldout", sub, n + ".tif")
                if not os.path.lexists(link):
                    os.symlink(os.path.abspath(path), link)
    with open(os.path.join(a.out, "classes.json"), "w") as f:
        json.dump(CLASSES, f, indent=1)
    with open(os.path.join(a.out, "heldout.txt"), "w") as f:
        f.write("\n".join(held) + "\n")
    print(f"{len(names)} chips, {len(held)} held out: {a.out}/heldout.txt")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    run_main(main)
