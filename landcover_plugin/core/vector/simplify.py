"""Polygon simplification that keeps neighbouring polygons sharing their boundaries.

Polygons traced from a class raster have their vertices on pixel corners, and two
neighbours trace their common boundary through the very same corners. The
boundary network is cut at its nodes: pixel corners where three or more regions
(or the outside) meet, or where two regions touch diagonally; they are found from
the region-id raster, block by block. Each arc between two nodes is simplified with
Douglas-Peucker in a canonical direction, so both polygons that share it get the
same simplified arc: no gaps, no overlaps, and every polygon can be simplified on
its own, streaming. This needs no GEOS, whose versions clash inside QGIS when a
pip-installed shapely brings its own.
"""
from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np


class Nodes:
    """Pixel corners (x, y) where region boundaries branch."""

    def __init__(self):
        self._rows: dict[int, list] = {}
        self._cols: dict[int, list] = {}
        self._set: set = set()

    def add_block(self, ids: np.ndarray, above: np.ndarray | None, y0: int, last: bool) -> None:
        """Nodes on the corner rows y0 .. y0 + len(ids) - 1 of a block of region ids (0: no region),
        and on the raster's bottom edge when this is the `last` block.

        `above` is the id row just above the block (None at the top of the raster).
        """
        h, w = ids.shape
        pad = np.full((h + 1, w + 2), -1, np.int64)
        pad[1:, 1:-1] = ids
        if above is not None:
            pad[0, 1:-1] = above
        self._add(pad, y0)
        if last:  # the raster's bottom edge: corners between the last row and the outside
            last = np.full((2, w + 2), -1, np.int64)
            last[0, 1:-1] = ids[-1]
            self._add(last, y0 + h)

    def _add(self, pad: np.ndarray, y0: int) -> None:
        a, b, c, d = pad[:-1, :-1], pad[:-1, 1:], pad[1:, :-1], pad[1:, 1:]
        distinct = 1 + (b != a) + ((c != a) & (c != b)) + ((d != a) & (d != b) & (d != c))
        diagonal = (a == d) & (b == c) & (a != b)
        ys, xs = np.nonzero((distinct >= 3) | diagonal)
        for y, x in zip((ys + y0).tolist(), xs.tolist()):
            self._set.add((x, y))
            self._rows.setdefault(y, []).append(x)
            self._cols.setdefault(x, []).append(y)

    def finish(self) -> "Nodes":
        for d in (self._rows, self._cols):
            for k in d:
                d[k].sort()
        return self

    def __contains__(self, xy) -> bool:
        return xy in self._set

    def between(self, p, q) -> list:
        """Nodes strictly inside the axis-parallel segment p -> q, in order from p."""
        (x0, y0), (x1, y1) = p, q
        if y0 == y1 and x0 != x1:
            return [(x, y0) for x in _strictly_between(self._rows.get(y0, []), x0, x1)]
        if x0 == x1 and y0 != y1:
            return [(x0, y) for y in _strictly_between(self._cols.get(x0, []), y0, y1)]
        return []


def _strictly_between(values: list, a, b) -> list:
    """The sorted values strictly between a and b, in order from a."""
    inside = values[bisect_right(values, min(a, b)):bisect_left(values, max(a, b))]
    return inside if a < b else inside[::-1]


def _dp(points: np.ndarray, tol: float) -> list[int]:
    """Indices kept by Douglas-Peucker between fixed first and last points (distinct)."""
    keep = [0, len(points) - 1]
    stack = [(0, len(points) - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        a, b = points[i], points[j]
        seg = points[i + 1:j] - a
        ab = b - a
        dist = np.abs(seg[:, 0] * ab[1] - seg[:, 1] * ab[0]) / np.hypot(*ab)
        k = int(np.argmax(dist))
        if dist[k] > tol:
            keep.append(i + 1 + k)
            stack += [(i, i + 1 + k), (i + 1 + k, j)]
    return sorted(keep)


def arc_key(arc: list) -> int:
    """The same key for an arc and its reverse."""
    if len(arc) <= 2:
        return hash(tuple(sorted(arc)))
    loop = arc[0] == arc[-1]
    flip = (arc[1] > arc[-2]) if loop else (arc[0] > arc[-1])
    return hash(tuple(arc[::-1] if flip else arc))


def simplify_arc(arc: list, tol: float) -> list:
    """Simplified arc (list of (x, y)); identical for an arc and its reverse."""
    if len(arc) <= 2:
        return arc
    loop = arc[0] == arc[-1]
    flip = (arc[1] > arc[-2]) if loop else (arc[0] > arc[-1])
    canon = arc[::-1] if flip else arc
    pts = np.asarray(canon, np.float64)
    if loop:
        # a closed arc: cut at its farthest point, keep at least a triangle
        far = int(np.argmax(np.hypot(*(pts - pts[0]).T)))
        keep = _dp(pts[:far + 1], tol) + [far + i for i in _dp(pts[far:], tol)[1:]]
        if len(keep) < 4 and far > 1:  # only start, far point and end: add the bend of the first half
            ab = pts[far] - pts[0]
            seg = pts[1:far] - pts[0]
            keep = sorted(set(keep) | {1 + int(np.argmax(np.abs(seg[:, 0] * ab[1] - seg[:, 1] * ab[0])))})
    else:
        keep = _dp(pts, tol)
        if len(keep) == 2:
            # keep the farthest bend, so that two arcs between the same nodes never collapse
            ab = pts[-1] - pts[0]
            seg = pts[1:-1] - pts[0]
            dist = np.abs(seg[:, 0] * ab[1] - seg[:, 1] * ab[0])
            if dist.max() > 0:
                keep = [0, 1 + int(np.argmax(dist)), len(pts) - 1]
    out = [canon[i] for i in keep]
    return out[::-1] if flip else out


def ring_arcs(ring: list, nodes: Nodes) -> list[list]:
    """A closed ring of pixel corners (first == last) cut into its arcs between nodes
    (one closed arc when no node lies on it)."""
    pts = ring[:-1]
    full = []
    for i, p in enumerate(pts):
        full.append(p)
        full.extend(nodes.between(p, pts[(i + 1) % len(pts)]))
    cuts = [i for i, p in enumerate(full) if p in nodes]
    if not cuts:
        start = min(range(len(full)), key=lambda i: full[i])
        return [full[start:] + full[:start] + [full[start]]]
    full = full[cuts[0]:] + full[:cuts[0]]
    cuts = [c - cuts[0] for c in cuts] + [len(full)]
    full.append(full[0])
    return [full[a:b + 1] for a, b in zip(cuts[:-1], cuts[1:])]


def simplify_ring(ring: list, nodes: Nodes, tol: float, keep_arcs=frozenset()) -> tuple[list, list, list]:
    """(simplified ring, keys of its arcs, the simplified arcs); arcs whose key is in `keep_arcs`
    stay as they are."""
    arcs = ring_arcs(ring, nodes)
    keys = [arc_key(a) for a in arcs]
    done = [a if k in keep_arcs else simplify_arc(a, tol) for a, k in zip(arcs, keys)]
    if len(done) == 1:
        return done[0], keys, done
    out = []
    for a in done:
        out.extend(a[:-1])
    out.append(out[0])
    return out, keys, done
