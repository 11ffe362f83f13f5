"""The land-cover engine: plain numpy, torch, rasterio and GDAL's bindings, never qgis.

torch is imported lazily by the modules that need it, so that importing this
package (for example from the QGIS plugin on a QGIS without torch) always works.
"""
