#!/usr/bin/env python3
"""Print the area table of a class raster (class names from the raster, else the default classes).

    python scripts/area_table.py classes.tif
"""
from __future__ import annotations

import sys

import _common


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    _common.setup(quiet=True)
    import rasterio

    from landcover_plugin.core.evaluation.evaluation import raster_classes
    from landcover_plugin.core.io.geo import ground_geometry
    from landcover_plugin.core.model.classes import DEFAULT_CLASSES
    from landcover_plugin.core.vector.areas import class_areas, format_area_table

    with rasterio.open(args[0]) as ds:
        geometry = ground_geometry(ds.crs, ds.transform, ds.height, ds.width)
    areas = class_areas(args[0], raster_classes(args[0]) or DEFAULT_CLASSES, geometry)
    print(format_area_table(areas, geometry.units))
    return 0


if __name__ == "__main__":
    _common.run_main(main)
