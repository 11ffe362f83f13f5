"""Labels drawn as polygons: the values of their class field, and the polygons burnt onto a raster's grid
as class ids (255 where no polygon lies), reprojected where their CRS differs."""
from __future__ import annotations

import os

import numpy as np

from ..errors import InputError
from ..model.classes import NODATA_CLASS
from .bindings import osgeo
from .class_table import lookup, value_to_id


def rasterize_labels(raster_path: str, vector_path: str, field: str, classes, layer: str | None = None) -> np.ndarray:
    """Class ids (H, W) on the raster's grid from polygons whose `field` holds a class id or name.

    Pixels no polygon covers are 255 (ignored): digitized labels rarely cover everything.
    Polygons in another CRS are reprojected to the raster's.
    """
    import rasterio

    with rasterio.open(raster_path) as src:
        grid = (src.height, src.width), src.transform, src.crs.to_wkt() if src.crs else None
    return rasterize_on_grid(vector_path, field, classes, *grid, layer=layer)


def _open_layer(vector_path: str, layer: str | None):
    modules = osgeo()
    if modules is None:
        raise InputError("Vector labels need GDAL's Python bindings (osgeo).")
    try:
        ds = modules[1].Open(vector_path)
    except RuntimeError as exc:
        raise InputError(f"{vector_path} cannot be opened as a vector layer ({exc}).") from None
    lyr = ds.GetLayerByName(layer) if layer else ds.GetLayer(0)
    if lyr is None:
        raise InputError(f"{vector_path} has no layer {layer!r}.")
    return ds, lyr


def _check_field(lyr, field: str) -> None:
    defn = lyr.GetLayerDefn()
    if defn.GetFieldIndex(field) < 0:
        names = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
        raise InputError(f"The layer has no field {field!r}; its fields are {', '.join(names)}.")


def class_values(vector_path: str, field: str, layer: str | None = None) -> list:
    """The class field's value of every polygon; InputError naming how many have none."""
    ds, lyr = _open_layer(vector_path, layer)
    _check_field(lyr, field)
    values, empty = [], 0
    for f in lyr:
        v = f.GetField(field)
        if v is None or (isinstance(v, str) and not v.strip()):
            empty += 1
        else:
            values.append(v)
    total = len(values) + empty
    del ds, lyr  # closes the file
    if empty:
        raise InputError(f"{empty} of the {total} polygons have no value in the class field {field!r}; fill them "
                         "in or delete them.")
    if not values:
        raise InputError(f"No labelled polygons in {os.path.basename(vector_path)}.")
    return values


def rasterize_on_grid(vector_path: str, field: str, classes, shape, transform, crs_wkt: str | None,
                      layer: str | None = None) -> np.ndarray:
    """Class ids (H, W) on a grid (shape, affine transform, CRS as WKT) from polygons whose `field` holds a
    class id or name; 255 where no polygon lies. Polygons in another CRS are reprojected to the grid's."""
    import json

    from rasterio.features import rasterize


    ds, lyr = _open_layer(vector_path, layer)
    osr = osgeo()[2]  # there: the layer opened
    _check_field(lyr, field)
    ids = value_to_id(classes)
    transform_geom = None
    if crs_wkt and lyr.GetSpatialRef() is not None:
        dst = osr.SpatialReference(wkt=crs_wkt)
        srs = lyr.GetSpatialRef()
        for s in (srs, dst):
            s.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        if not srs.IsSame(dst):
            transform_geom = osr.CoordinateTransformation(srs, dst)
    shapes = []
    for f in lyr:
        value = f.GetField(field)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        cid = lookup(ids, value)
        if cid is None:
            if isinstance(value, str) and not value.strip().isdigit():
                raise InputError(f"Feature {f.GetFID()} has {field} = {value!r}, which is neither a class id "
                                 f"nor a class name.")
            raise InputError(f"Feature {f.GetFID()} has class {value}, which is not in the class table.")
        geom = f.GetGeometryRef()
        if geom is None:
            continue
        geom = geom.Clone()
        if transform_geom is not None:
            geom.Transform(transform_geom)
        shapes.append((json.loads(geom.ExportToJson()), cid))
    del ds, lyr
    if not shapes:
        raise InputError(f"No labelled polygons in {vector_path}.")
    return rasterize(shapes, out_shape=shape, transform=transform, fill=NODATA_CLASS, dtype="uint8")
