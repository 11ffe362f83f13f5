"""The QGIS side: Processing provider, algorithms and styling. The only package that imports qgis."""
