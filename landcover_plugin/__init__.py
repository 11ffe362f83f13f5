"""QGIS plugin for land-cover mapping with a U-Net."""
