"""A layer of traced polygons simplified as one coverage: neighbours keep sharing their boundaries.

Every boundary arc is simplified once (simplify.py) and the result kept for the other polygon that shares
it. Where a region is thinner than twice the tolerance, its simplified arcs can cross; those arcs stay as
traced, for both polygons, and the polygons they bound are checked again (a few passes settle it). Only
polygons that simplification changed are checked with GEOS, and only arcs whose bounding boxes overlap are
compared when looking for the crossing ones.
"""
from __future__ import annotations

import struct

import numpy as np

from .simplify import Nodes, simplify_ring

_WKB_POLYGON = struct.pack("<BI", 1, 3)


class Coverage:
    """Simplification of one layer's polygons on the pixel grid of geotransform `gt`."""

    def __init__(self, nodes: Nodes, tolerance: float, gt):
        self.nodes, self.gt = nodes, tuple(gt)
        self.det = gt[1] * gt[5] - gt[2] * gt[4]
        self.tol_px = tolerance / max(min(abs(gt[1]), abs(gt[5])), 1e-12)
        self.cache: dict = {}
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
            done, ring_keys, ring_arcs, ring_changed = simplify_ring(ring, self.nodes, self.tol_px, self.keep,
                                                                     self.cache)
            rings.append(done)
            keys += ring_keys
            arcs += ring_arcs
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

        users: dict = {}  # key of an arc that simplification changed -> the polygons it bounds
        gdal.PushErrorHandler("CPLQuietErrorHandler")  # GEOS would print where each polygon crosses itself
        try:
            layer.ResetReading()
            found = set()
            for f in layer:
                found |= self._check(f, users, ogr)
            for _ in range(rounds - 1):
                new = found - self.keep
                if not new:
                    break
                self.keep = self.keep | new
                found = set()
                for fid in sorted({fid for k in new for fid in users.get(k, ())}):
                    found |= self._check(layer.GetFeature(fid), None, ogr)
            self.keep = self.keep | found
        finally:
            gdal.PopErrorHandler()

    def _check(self, feature, users, ogr) -> set:
        """Keys of the arcs to keep for this polygon (none where it is valid once simplified)."""
        rings, keys, arcs, changed = self.simplify(feature.GetGeometryRef())
        if users is not None and changed:
            for k in set(keys):
                users.setdefault(k, []).append(feature.GetFID())
        if not changed or ogr.CreateGeometryFromWkb(self.wkb(rings)).IsValid():
            return set()
        return crossing(arcs, keys)


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
