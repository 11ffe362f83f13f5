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

import numpy as np


class Nodes:
    """Pixel corners (x, y) where region boundaries branch, as sorted codes y * stride + x."""

    def __init__(self):
        self._parts: list[np.ndarray] = []
        self._codes = np.empty(0, np.int64)
        self.stride = 0

    def add_block(self, ids: np.ndarray, above: np.ndarray | None, y0: int, last: bool) -> None:
        """Nodes on the corner rows y0 .. y0 + len(ids) - 1 of a block of region ids (0: no region),
        and on the raster's bottom edge when this is the `last` block.

        `above` is the id row just above the block (None at the top of the raster).
        """
        h, w = ids.shape
        self.stride = w + 1
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
        self._parts.append((ys + y0) * self.stride + xs)

    def finish(self) -> "Nodes":
        self._codes = np.unique(np.concatenate(self._parts)) if self._parts else np.empty(0, np.int64)
        self._parts = []
        return self

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Which of the corners xy (n, 2) are nodes."""
        codes = xy[:, 1] * self.stride + xy[:, 0]
        at = np.searchsorted(self._codes, codes)
        return (at < len(self._codes)) & (self._codes[np.minimum(at, len(self._codes) - 1)] == codes) \
            if len(self._codes) else np.zeros(len(codes), bool)


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


def canonical(arc: list) -> tuple[list, bool]:
    """(the arc in the direction both polygons that share it agree on, whether that is its reverse)."""
    if len(arc) <= 2:
        flip = arc[0] > arc[-1]
    elif arc[0] == arc[-1]:  # closed: the direction of its second point against its last but one
        flip = arc[1] > arc[-2]
    else:
        flip = arc[0] > arc[-1]
    return (arc[::-1] if flip else arc), flip


def arc_key(canon: list) -> tuple:
    """The key of an arc in canonical form, the same for both polygons that share it: a hash of its points
    with its ends and length, which no other arc of a raster's boundaries shares in practice."""
    return hash(tuple(canon)), canon[0], canon[-1], len(canon)


def simplify_arc(arc: list, tol: float) -> list:
    """Simplified arc (list of (x, y)); identical for an arc and its reverse."""
    canon, flip = canonical(arc)
    out = simplify_canonical(canon, tol)
    return out[::-1] if flip else out


def simplify_canonical(canon: list, tol: float) -> list:
    """Douglas-Peucker of an arc in canonical form; a closed arc keeps at least a triangle, an open one its
    farthest bend, so that two arcs between the same nodes never collapse onto each other."""
    if len(canon) <= 2:
        return canon
    pts = np.asarray(canon, np.float64)
    if canon[0] == canon[-1]:
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
            ab = pts[-1] - pts[0]
            seg = pts[1:-1] - pts[0]
            dist = np.abs(seg[:, 0] * ab[1] - seg[:, 1] * ab[0])
            if dist.max() > 0:
                keep = [0, 1 + int(np.argmax(dist)), len(pts) - 1]
    return [canon[i] for i in keep]


def ring_arcs(ring, nodes: Nodes) -> list[list]:
    """A closed ring of pixel corners (first == last; a list of (x, y) or an (n, 2) array) cut into its arcs
    between nodes (one closed arc when no node lies on it), as lists of (x, y)."""
    pts = np.asarray(ring[:-1], np.int64)
    d = np.roll(pts, -1, axis=0) - pts
    straight = (d[:, 0] == 0) | (d[:, 1] == 0)  # traced boundaries are; any other edge is one step
    lengths = np.where(straight, np.abs(d).sum(1), 1)
    steps = np.where(straight[:, None], np.sign(d), d)
    # every pixel corner along the ring (nodes can lie inside its edges), then its vertices and nodes
    corners = pts[0] + np.concatenate([np.zeros((1, 2), np.int64), np.cumsum(np.repeat(steps, lengths, 0), 0)[:-1]])
    is_vertex = np.zeros(len(corners), bool)
    is_vertex[np.cumsum(lengths) - lengths] = True
    is_node = nodes.contains(corners)
    keep = is_vertex | is_node
    full = list(map(tuple, corners[keep].tolist()))
    cuts = np.flatnonzero(is_node[keep]).tolist()
    if not cuts:
        start = min(range(len(full)), key=full.__getitem__)
        return [full[start:] + full[:start] + [full[start]]]
    full = full[cuts[0]:] + full[:cuts[0]]
    cuts = [c - cuts[0] for c in cuts] + [len(full)]
    full.append(full[0])
    return [full[a:b + 1] for a, b in zip(cuts[:-1], cuts[1:])]


def simplify_ring(ring, nodes: Nodes, tol: float, keep_arcs=frozenset(), cache: dict | None = None
                  ) -> tuple[list, list, list, bool]:
    """(simplified ring, keys of its arcs, the simplified arcs, whether any arc changed); arcs whose key is
    in `keep_arcs` stay as they are. `cache` ({key: simplified canonical arc}) saves simplifying an arc again
    for the other polygon that shares it, or in another pass."""
    cache = {} if cache is None else cache
    keys, done, changed = [], [], False
    for arc in ring_arcs(ring, nodes):
        canon, flip = canonical(arc)
        key = arc_key(canon)
        keys.append(key)
        if key in keep_arcs:
            done.append(arc)
            continue
        simple = cache.get(key)
        if simple is None:
            simple = cache[key] = simplify_canonical(canon, tol)
        changed = changed or len(simple) != len(canon)
        done.append(simple[::-1] if flip else simple)
    if len(done) == 1:
        return done[0], keys, done, changed
    out = []
    for a in done:
        out.extend(a[:-1])
    out.append(out[0])
    return out, keys, done, changed
