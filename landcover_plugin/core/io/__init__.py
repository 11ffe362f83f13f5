"""Reading and writing rasters: windows of the input, output files, ground geometry, image/mask pairs."""
