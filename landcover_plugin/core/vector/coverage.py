"""A layer of traced polygons simplified as one coverage: neighbours keep sharing their boundaries.

Every boundary arc is simplified once (simplify.py) and the result kept for the other polygon that shares
it (in a cache of bounded size: simplification is deterministic, so an arc that fell out is simplified again
to the same result). Where a region is thinner than twice the tolerance, its simplified arcs can cross;
those arcs stay as traced, for both polygons, and the two polygons each such arc bounds (found in the raster
of region ids) are checked again: a few passes settle it. Only polygons that simplification changed are
checked with GEOS, and only arcs whose bounding boxes overlap are compared when looking for the crossing ones.
Memory stays bounded whatever the raster's size.
"""
from __future__ import annotations

import struct
from collections import OrderedDict

import numpy as np

from .simplify import Nodes, arc_key, canonical, ring_arcs, simplify_ring

_WKB_POLYGON = struct.pack("<BI", 1, 3)
CACHE_ARCS = 100_000  # simplified arcs kept (about 55 MB): neighbours come close together in the layer


class ArcCache(OrderedDict):
    """{arc key: simplified canonical arc}, forgetting the oldest entries beyond `size` (in O(1): a plain
    dict would scan the slots its deleted entries left at its front)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if len(self) > self.size:
            self.popitem(last=False)


class Coverage:
    """Simplification of one layer's polygons on the pixel grid of geotransform `gt`."""

    def __init__(self, nodes: Nodes, tolerance: float, gt, id_path: str | None = None):
        """id_path: the region-id raster (pixel values: the polygons' FIDs), which tells which polygons an arc
        bounds; read while settling only."""
        self.nodes, self.gt, self.id_path, self.id_band = nodes, tuple(gt), id_path, None
        self.det = gt[1] * gt[5] - gt[2] * gt[4]
        self.tol_px = tolerance / max(min(abs(gt[1]), abs(gt[5])), 1e-12)
        self.cache = ArcCache(CACHE_ARCS)
        self.keep: frozenset = frozenset()

    def pixel_rings(self, geom) -> list[np.ndarray]:
        """The rings of an OGR polygon as (n, 2) pixel corners (the inverse geotransform, rounded)."""
        out = []
        for xy in _ring_coordinates(geom):
            xy = xy - (self.gt[0], self.gt[3])
            gt, det = self.gt, self.det
            px = np.rint((xy[:, 0] * gt[5] - xy[:, 1] * gt[2]) / det).astype(np.int64)
            py = np.rint((xy[:, 1] * gt[1] - xy[:, 0] * gt[4]) / det).astype(np.int64)
            out.append(np.stack([px, py], 1))
        return out

    def simplify(self, geom) -> tuple[list, list, list, bool]:
        """(simplified rings in pixel corners, keys of their arcs, the simplified arcs, whether any changed)."""
        rings, keys, arcs, changed = [], [], [], False
        for ring in self.pixel_rings(geom):
            done, ring_keys, ring_done, ring_changed = simplify_ring(ring, self.nodes, self.tol_px, self.keep,
                                                                     self.cache)
            rings.append(done)
            keys += ring_keys
            arcs += ring_done
            changed = changed or ring_changed
        return rings, keys, arcs, changed

    def wkb(self, rings: list) -> bytes:
        """ISO WKB of a polygon whose rings are pixel corners, in map coordinates."""
        gt = self.gt
        parts = [_WKB_POLYGON, struct.pack("<I", len(rings))]
        for ring in rings:
            p = np.asarray(ring, np.float64)
            xy = np.empty_like(p)
            xy[:, 0] = gt[0] + p[:, 0] * gt[1] + p[:, 1] * gt[2]
            xy[:, 1] = gt[3] + p[:, 0] * gt[4] + p[:, 1] * gt[5]
            parts += [struct.pack("<I", len(xy)), xy.astype("<f8").tobytes()]
        return b"".join(parts)

    def settle(self, layer, rounds: int = 3) -> None:
        """Find the arcs to keep as traced: those of polygons that simplification made cross themselves."""
        from osgeo import gdal, ogr

        ids = gdal.Open(self.id_path) if self.id_path else None
        self.id_band = ids.GetRasterBand(1) if ids is not None else None
        gdal.PushErrorHandler("CPLQuietErrorHandler")  # GEOS would print where each polygon crosses itself
        try:
            layer.ResetReading()
            found: dict = {}  # key of an arc to keep -> a pixel edge of it
            for f in layer:
                found.update(self._check(f, ogr))
            for _ in range(rounds - 1):
                new = {k: edge for k, edge in found.items() if k not in self.keep}
                if not new:
                    break
                self.keep = self.keep | set(new)
                found = {}
                for fid in sorted({fid for edge in new.values() for fid in self._beside(edge)}):
                    found.update(self._check(layer.GetFeature(fid), ogr))
            self.keep = self.keep | set(found)
        finally:
            gdal.PopErrorHandler()
            self.id_band = ids = None  # closed before any polygon is handed on (its file is removed after)

    def _check(self, feature, ogr) -> dict:
        """{key: a pixel edge} of the arcs to keep for this polygon (none where it is valid once simplified)."""
        geom = feature.GetGeometryRef()
        rings, keys, arcs, changed = self.simplify(geom)
        if not changed or ogr.CreateGeometryFromWkb(self.wkb(rings)).IsValid():
            return {}
        bad = crossing(arcs, keys)
        edges = {}
        for ring in self.pixel_rings(geom):
            for arc in ring_arcs(ring, self.nodes):
                key = arc_key(canonical(arc)[0])
                if key in bad:
                    (x0, y0), (x1, y1) = arc[0], arc[1]  # traced: one step along a pixel edge from its start
                    edges[key] = ((x0, y0), (x0 + (x1 > x0) - (x1 < x0), y0 + (y1 > y0) - (y1 < y0)))
        return edges

    def _beside(self, edge) -> set:
        """FIDs of the polygons on either side of a pixel edge ((x, y) corners one step apart)."""
        if self.id_band is None:
            raise ValueError("the region-id raster is needed to re-check polygons")
        (x0, y0), (x1, y1) = edge
        x, y = min(x0, x1), min(y0, y1)
        sides = [(x, y - 1), (x, y)] if y0 == y1 else [(x - 1, y), (x, y)]
        w, h = self.id_band.XSize, self.id_band.YSize
        return {int(self.id_band.ReadAsArray(c, r, 1, 1)[0, 0]) for c, r in sides if 0 <= c < w and 0 <= r < h} - {0}


def _ring_coordinates(geom) -> list[np.ndarray]:
    """The (n, 2) coordinates of each ring of an OGR polygon, read from its WKB."""
    from osgeo import ogr

    wkb = geom.ExportToIsoWkb(ogr.wkbNDR)
    kind, count = struct.unpack_from("<II", wkb, 1)
    dims = {3: 2, 1003: 3, 2003: 3, 3003: 4}.get(kind)
    if dims is None:
        raise ValueError(f"a polygon was expected, not WKB type {kind}")
    out, at = [], 9
    for _ in range(count):
        (n,) = struct.unpack_from("<I", wkb, at)
        xy = np.frombuffer(wkb, "<f8", n * dims, at + 4).reshape(n, dims)[:, :2]
        out.append(xy)
        at += 4 + 8 * n * dims
    return out


def crossing(arcs: list, keys: list) -> set:
    """Keys of the simplified arcs of one polygon that cross or touch another of its arcs (or themselves)
    anywhere but at their shared end points; all of its keys where none is found."""
    from osgeo import ogr

    lines = []
    for arc in arcs:
        line = ogr.Geometry(ogr.wkbLineString)
        for x, y in arc:
            line.AddPoint_2D(float(x), float(y))
        lines.append(line)
    bad = {k for line, k in zip(lines, keys) if not line.IsSimple()}
    boxes = np.array([[min(x for x, _ in a), min(y for _, y in a), max(x for x, _ in a), max(y for _, y in a)]
                      for a in arcs], np.float64)
    for i in range(len(lines)):
        # only arcs whose boxes overlap can meet
        near = np.nonzero((boxes[i + 1:, 0] <= boxes[i, 2]) & (boxes[i + 1:, 2] >= boxes[i, 0])
                          & (boxes[i + 1:, 1] <= boxes[i, 3]) & (boxes[i + 1:, 3] >= boxes[i, 1]))[0] + i + 1
        for j in near.tolist():
            if not lines[i].Intersects(lines[j]):
                continue
            ends = {tuple(arcs[i][0]), tuple(arcs[i][-1])} & {tuple(arcs[j][0]), tuple(arcs[j][-1])}
            inter = lines[i].Intersection(lines[j])
            points = {(round(p[0], 9), round(p[1], 9)) for p in _points(inter)}
            if inter.GetDimension() > 0 or points - {(float(x), float(y)) for x, y in ends}:
                bad |= {keys[i], keys[j]}
    return bad or set(keys)


def _points(geom) -> list:
    if geom.GetGeometryCount():
        return [p for i in range(geom.GetGeometryCount()) for p in _points(geom.GetGeometryRef(i))]
    return geom.GetPoints() or []
