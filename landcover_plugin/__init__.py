"""QGIS plugin for land-cover mapping with a U-Net."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from .plugin import LandcoverPlugin

    return LandcoverPlugin(iface)
