"""Classifying rasters: window arithmetic, the sliding-window loop, blending, writing rows, several
devices, a Dask cluster."""
