"""GDAL's Python bindings (osgeo), which the engine uses beside rasterio for polygons, vector labels and
category names."""
from __future__ import annotations


def osgeo():
    """(gdal, ogr, osr) with Python exceptions on, or None where the bindings are not installed.

    GDAL 3.9+ warns on stderr at every call into a module that has not said whether it wants exceptions."""
    try:
        from osgeo import gdal, ogr, osr
    except ImportError:
        return None
    for module in (gdal, ogr, osr):
        module.UseExceptions()
    return gdal, ogr, osr
