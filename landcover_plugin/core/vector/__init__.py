"""From class rasters to polygons: sieve, tracing, shared-boundary simplification, areas."""
