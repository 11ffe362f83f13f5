#!/usr/bin/env python3
"""Polygons as a user would digitize them, drawn from dense masks: a random few regions of each class.

    python scripts/sparse_labels.py MASK [MASK ...] --out labels.gpkg [--share 0.1] [--classes JSON]

Each georeferenced mask (class ids, 255 unlabelled) is cut into square cells and
polygonized; each connected region of one class inside one cell is a candidate.
Classes take turns (in a random order each round) giving a random region of theirs until
the polygons cover `share` of the masks' pixels, so rare classes get polygons too, as
when an analyst digitizes a few of each class. The polygons are written with a text
field "class" (the class name) and an integer field "class_id", in --crs (default:
the masks' CRS). Used to measure how well a model adapts from sparse labels
(scripts/adaptation_bench.py) and to make the demo's polygons.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

import _common


def regions(mask: np.ndarray, cell: int, min_pixels: int):
    """(class id, pixel count, polygon in pixel coordinates as GeoJSON) of every region of one class in one cell."""
    from rasterio.features import shapes

    h, w = mask.shape
    cells = (np.arange(h)[:, None] // cell) * ((w + cell - 1) // cell) + np.arange(w)[None, :] // cell
    key = (cells.astype(np.int64) * 256 + mask).astype(np.int32)
    counts = np.bincount(key.ravel())
    out = []
    for geom, value in shapes(key, mask=mask != 255, connectivity=4):
        cid = int(value) % 256
        pixels = _area(geom)
        if pixels >= min_pixels and counts[int(value)] >= min_pixels:
            out.append((cid, pixels, geom))
    return out


def _area(geom) -> float:
    """Area of a GeoJSON polygon (with holes) by the shoelace formula."""
    def ring(coords):
        xy = np.asarray(coords, np.float64)
        return 0.5 * abs(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))

    rings = geom["coordinates"]
    return ring(rings[0]) - sum(ring(r) for r in rings[1:])


def pick(candidates, budget: float, seed: int):
    """Indices of candidates picked class by class in random turns until their pixels reach the budget."""
    rng = np.random.default_rng(seed)
    by_class = {}
    for i, (cid, _, _) in enumerate(candidates):
        by_class.setdefault(cid, []).append(i)
    for ids in by_class.values():
        rng.shuffle(ids)
    chosen, total = [], 0.0
    while total < budget and any(by_class.values()):
        for cid in rng.permutation(sorted(by_class)):
            if not by_class[cid]:
                continue
            i = by_class[cid].pop()
            if total + candidates[i][1] > budget:
                continue
            chosen.append(i)
            total += candidates[i][1]
    return chosen, total


def sparse_polygons(masks: list[str], share: float, seed: int = 0, cell: int = 128, min_pixels: int = 64):
    """[(class id, GeoJSON polygon in the mask's CRS)], the CRS as WKT, and the share of pixels covered."""
    import rasterio

    candidates, crs, pixels = [], None, 0
    for path in masks:
        with rasterio.open(path) as ds:
            mask, transform = ds.read(1), ds.transform
            crs = crs or (ds.crs.to_wkt() if ds.crs else None)
        pixels += mask.size
        for cid, n, geom in regions(mask, cell, min_pixels):
            candidates.append((cid, n, _transform(geom, transform)))
    chosen, covered = pick(candidates, share * pixels, seed)
    return [(candidates[i][0], candidates[i][2]) for i in chosen], crs, covered / max(pixels, 1)


def _transform(geom, transform):
    return {"type": "Polygon", "coordinates": [[tuple(transform * (x, y)) for x, y in r] for r in geom["coordinates"]]}


def write_polygons(path: str, polygons, crs_wkt: str | None, names: dict, out_crs: str | None = None) -> None:
    from osgeo import ogr, osr

    ogr.UseExceptions()
    src = osr.SpatialReference(wkt=crs_wkt) if crs_wkt else None
    dst = src
    if out_crs and src is not None:
        dst = osr.SpatialReference()
        dst.SetFromUserInput(out_crs)
    for s in (src, dst):
        if s is not None:
            s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    transform = osr.CoordinateTransformation(src, dst) if src is not None and not src.IsSame(dst) else None
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    layer = ds.CreateLayer("labels", srs=dst, geom_type=ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("class", ogr.OFTString))
    layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))
    layer.StartTransaction()
    for cid, geom in polygons:
        f = ogr.Feature(layer.GetLayerDefn())
        g = ogr.CreateGeometryFromJson(json.dumps(geom))
        if transform is not None:
            g.Transform(transform)
        f.SetGeometry(g)
        f.SetField("class", names.get(cid, f"class {cid}"))
        f.SetField("class_id", cid)
        layer.CreateFeature(f)
    layer.CommitTransaction()
    ds = None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("masks", nargs="+", help="georeferenced masks of class ids (255 unlabelled)")
    p.add_argument("--out", required=True, help="GeoPackage to write")
    p.add_argument("--share", type=float, default=0.1, help="share of the masks' pixels the polygons cover")
    p.add_argument("--cell", type=int, default=128, help="largest polygon side in pixels")
    p.add_argument("--min-pixels", type=int, default=64)
    p.add_argument("--classes", help="JSON class table for the names (default: the five LandCover.ai classes)")
    p.add_argument("--crs", help="CRS of the polygons, e.g. EPSG:4326 (default: the masks')")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    _common.setup()
    from landcover_plugin.core.model.classes import DEFAULT_CLASSES, parse_classes

    classes = parse_classes(json.load(open(args.classes)), args.classes) if args.classes else DEFAULT_CLASSES
    polygons, crs, covered = sparse_polygons(args.masks, args.share, args.seed, args.cell, args.min_pixels)
    write_polygons(args.out, polygons, crs, {c.id: c.name for c in classes}, args.crs)
    counts = np.bincount([c for c, _ in polygons], minlength=256)
    print(f"{len(polygons)} polygons covering {covered:.1%} of the masks; per class: "
          + ", ".join(f"{c.name} {counts[c.id]}" for c in classes), file=sys.stderr)
    return 0


if __name__ == "__main__":
    _common.run_main(main)
