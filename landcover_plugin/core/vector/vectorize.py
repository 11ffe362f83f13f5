"""Class raster to land-cover polygons, in bounded memory.

GDAL does the pixel work, streaming by scanlines: SieveFilter merges small regions
into their largest neighbour, Polygonize traces each 4-connected region of one
class into a scratch GeoPackage on disk. The regions are then burnt back as ids so
that area and mean confidence per polygon come from one pass over the rasters.
Simplification (simplify.py, coverage.py) cuts the boundaries at the corners where regions
meet and simplifies each arc between them once, the same way for both polygons that share
it, so neighbours keep sharing their boundaries.
"""
from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from ..errors import Cancelled, InputError
from ..io.bindings import osgeo
from ..io.geo import GroundGeometry
from ..model.classes import NODATA_CLASS
from .coverage import Coverage
from .simplify import Nodes

ROWS_PER_READ = 256
LAYER = "landcover"


@dataclass(frozen=True)
class Region:
    wkb: bytes
    class_id: int
    class_name: str
    area: float
    confidence: float | None


def _gdal():
    modules = osgeo()
    if modules is None:
        raise InputError("Polygons need GDAL's Python bindings (osgeo); install python3-gdal or the gdal "
                         "package that matches your GDAL.")
    return modules


def sieve(class_path: str, min_pixels: int, cancel: Callable[[], bool] | None = None) -> None:
    """Merge regions smaller than min_pixels into their largest neighbour, in place; nodata stays."""
    if min_pixels <= 1:
        return
    gdal, _, _ = _gdal()
    cancel = cancel or (lambda: False)
    ds = gdal.Open(class_path, gdal.GA_Update)
    band = ds.GetRasterBand(1)
    try:
        gdal.SieveFilter(band, band.GetMaskBand(), band, int(min_pixels), 4,
                         callback=lambda *_: 0 if cancel() else 1)
    except RuntimeError:
        if cancel():
            raise Cancelled("Cancelled; no output was written.") from None
        raise
    finally:
        ds = None


@contextmanager
def regions(class_path: str, conf_path: str | None, classes, geometry: GroundGeometry, simplify: float = 0.0,
            cancel: Callable[[], bool] | None = None,
            progress: Callable[[float], None] | None = None) -> Iterator[Iterator[Region]]:
    """Context giving an iterator of Region records, one per 4-connected region of one class."""
    gdal, ogr, _ = _gdal()
    cancel = cancel or (lambda: False)
    progress = progress or (lambda f: None)
    names = {c.id: c.name for c in classes}
    folder = os.path.dirname(os.path.abspath(class_path))
    tag = uuid.uuid4().hex[:8]
    vec_path = os.path.join(folder, f".landcover-regions-{tag}.gpkg")
    id_path = os.path.join(folder, f".landcover-ids-{tag}.tif")
    cls_ds = vec_ds = None
    try:
        cls_ds = _with_display_transform(gdal, gdal.Open(class_path), tag)
        band = cls_ds.GetRasterBand(1)
        vec_ds = ogr.GetDriverByName("GPKG").CreateDataSource(vec_path)
        # a scratch layer read in order: no spatial index to maintain on every insert
        layer = vec_ds.CreateLayer("regions", srs=cls_ds.GetSpatialRef(), geom_type=ogr.wkbPolygon,
                                   options=["SPATIAL_INDEX=NO"])
        layer.CreateField(ogr.FieldDefn("class_id", ogr.OFTInteger))

        def step(frac, _msg, _data):
            progress(0.4 * frac)
            return 0 if cancel() else 1

        # one transaction: GeoPackage otherwise commits every polygon on its own (2.3x slower)
        layer.StartTransaction()
        try:
            gdal.Polygonize(band, band.GetMaskBand(), layer, 0, [], callback=step)
        except RuntimeError:
            layer.RollbackTransaction()
            if cancel():
                raise Cancelled("Cancelled; no output was written.") from None
            raise
        layer.CommitTransaction()
        layer.SyncToDisk()
        stats, nodes = _region_stats(gdal, cls_ds, vec_ds, layer, conf_path, id_path, geometry, cancel,
                                     simplify > 0)
        progress(0.8)
        yield _records(layer, stats, names, simplify, nodes, cls_ds.GetGeoTransform(), id_path)
        progress(1.0)
    finally:
        vec_ds = cls_ds = None
        if gdal.VSIStatL(f"/vsimem/landcover-{tag}.vrt") is not None:
            gdal.Unlink(f"/vsimem/landcover-{tag}.vrt")
        for p in (vec_path, vec_path + "-wal", vec_path + "-shm", id_path):
            if os.path.exists(p):
                os.remove(p)


NO_TRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # what GDAL reports for a raster without georeferencing
DISPLAY_TRANSFORM = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def _with_display_transform(gdal, ds, tag: str):
    """The class raster, seen through a VRT with QGIS's transform when it has none of its own.

    QGIS shows a raster without georeferencing with row r at y = -r; polygons traced with
    GDAL's default (y = +r) would land upside down beside it.
    """
    if tuple(ds.GetGeoTransform()) != NO_TRANSFORM or ds.GetSpatialRef() is not None:
        return ds
    vrt = gdal.Translate(f"/vsimem/landcover-{tag}.vrt", ds, format="VRT")
    vrt.SetGeoTransform(DISPLAY_TRANSFORM)
    return vrt


def _region_stats(gdal, cls_ds, vec_ds, layer, conf_path, id_path, geometry, cancel, find_nodes=False):
    """Area and confidence sums per feature id, from the regions burnt back as ids; and the
    boundary nodes that simplification needs."""
    w, h = cls_ds.RasterXSize, cls_ds.RasterYSize
    ids = gdal.GetDriverByName("GTiff").Create(id_path, w, h, 1, gdal.GDT_Int32,
                                               ["TILED=YES", "COMPRESS=DEFLATE", "BIGTIFF=IF_SAFER"])
    ids.SetGeoTransform(cls_ds.GetGeoTransform())
    if cls_ds.GetSpatialRef() is not None:
        ids.SetSpatialRef(cls_ds.GetSpatialRef())
    # Polygonize ran with 4-connectivity on pixel edges, so every pixel centre lies
    # inside exactly one polygon: burning FIDs gives back each region exactly.
    fid_max = _burn_fids(gdal, ids, vec_ds, layer) + 1
    area = np.zeros(fid_max)
    conf = np.zeros(fid_max)
    conf_ds = gdal.Open(conf_path) if conf_path else None
    id_band = ids.GetRasterBand(1)
    nodes = Nodes() if find_nodes else None
    above = None
    for r0 in range(0, h, ROWS_PER_READ):
        if cancel():
            raise Cancelled("Cancelled; no output was written.")
        rows = min(ROWS_PER_READ, h - r0)
        block = id_band.ReadAsArray(0, r0, w, rows)
        if nodes is not None:
            nodes.add_block(block, above, r0, last=r0 + rows >= h)
            above = block[-1].copy()
        fid = block.ravel()
        keep = fid > 0
        fid = fid[keep]
        pa = np.broadcast_to(geometry.pixel_areas(r0, rows)[:, None], (rows, w)).ravel()[keep]
        area += np.bincount(fid, weights=pa, minlength=fid_max)
        if conf_ds is not None:
            c = conf_ds.GetRasterBand(1).ReadAsArray(0, r0, w, rows).ravel()[keep]
            conf += np.bincount(fid, weights=c * pa, minlength=fid_max)
    ids = conf_ds = None
    return (area, (conf if conf_path else None)), (nodes.finish() if nodes is not None else None)


def _burn_fids(gdal, ids_ds, vec_ds, layer) -> int:
    """Write each polygon's FID into the id raster; returns the largest FID.

    GDAL burns attributes, not FIDs: an SQL layer exposes the FID as one, without a pass
    over the features in Python.
    """
    top = vec_ds.ExecuteSQL(f"SELECT MAX(fid) FROM {layer.GetName()}")
    largest = top.GetNextFeature().GetField(0) or 0
    vec_ds.ReleaseResultSet(top)
    # "fid + 0": the GeoPackage driver would turn a bare "fid AS rid" back into the FID
    ids_layer = vec_ds.ExecuteSQL(f"SELECT fid + 0 AS rid, geom FROM {layer.GetName()}")
    # Without a CRS GDAL warns that it cannot compare the layer's and raster's; they are the same grid.
    gdal.PushErrorHandler("CPLQuietErrorHandler")
    try:
        gdal.RasterizeLayer(ids_ds, [1], ids_layer, options=["ATTRIBUTE=rid"])
    finally:
        gdal.PopErrorHandler()
        vec_ds.ReleaseResultSet(ids_layer)
    ids_ds.FlushCache()
    return int(largest)


def _records(layer, stats, names, simplify, nodes, gt, id_path) -> Iterator[Region]:
    area, conf = stats
    coverage = None
    if simplify > 0:
        coverage = Coverage(nodes, simplify, gt, id_path)
        coverage.settle(layer)
    layer.ResetReading()
    for f in layer:
        geom = f.GetGeometryRef()
        wkb = coverage.wkb(coverage.simplify(geom)[0]) if coverage is not None else geom.ExportToIsoWkb()
        yield _record(wkb, f, area, conf, names)


def _record(wkb, f, area, conf, names) -> Region:
    fid, cid = f.GetFID(), f.GetField("class_id")
    a = area[fid]
    return Region(bytes(wkb), cid, names.get(cid, str(cid)), float(a),
                  float(conf[fid] / a) if conf is not None and a > 0 else None)


def write_gpkg(path: str, records: Iterator[Region], srs_wkt: str | None) -> int:
    """Write Region records as a GeoPackage layer "landcover"; returns the number written."""
    gdal, ogr, osr = _gdal()
    if os.path.exists(path):
        os.remove(path)
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(path)
    srs = osr.SpatialReference(wkt=srs_wkt) if srs_wkt else None
    if srs is not None:
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
    layer = ds.CreateLayer(LAYER, srs=srs, geom_type=ogr.wkbPolygon)
    for name, kind in (("class_id", ogr.OFTInteger), ("class_name", ogr.OFTString), ("area", ogr.OFTReal),
                       ("confidence", ogr.OFTReal)):
        layer.CreateField(ogr.FieldDefn(name, kind))
    defn = layer.GetLayerDefn()
    n = 0
    layer.StartTransaction()
    for rec in records:
        if rec.class_id == NODATA_CLASS:
            continue
        f = ogr.Feature(defn)
        f.SetGeometry(ogr.CreateGeometryFromWkb(rec.wkb))
        # fields by index: looking names up costs more than writing the feature
        f.SetField(0, int(rec.class_id))
        f.SetField(1, rec.class_name)
        f.SetField(2, float(rec.area))
        if rec.confidence is not None:
            f.SetField(3, float(rec.confidence))
        layer.CreateFeature(f)
        n += 1
        if n % 20000 == 0:
            layer.CommitTransaction()
            layer.StartTransaction()
    layer.CommitTransaction()
    ds = None
    return n


def vectorize(class_path: str, conf_path: str | None, out_path: str, classes, geometry: GroundGeometry,
              simplify: float = 0.0, cancel=None, progress=None) -> int:
    """Polygons of a class raster into a GeoPackage; returns the number of polygons."""
    gdal, _, _ = _gdal()
    ds = gdal.Open(class_path)
    srs = ds.GetSpatialRef()
    wkt = srs.ExportToWkt() if srs is not None else None
    ds = None
    with regions(class_path, conf_path, classes, geometry, simplify, cancel, progress) as recs:
        return write_gpkg(out_path, recs, wkt)
