"""Class styling in QGIS: paletted raster, categorized polygons, kept with the files."""
from __future__ import annotations

import os

from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterLayer,
    QgsRendererCategory,
    QgsVectorLayer,
)
from qgis.PyQt.QtGui import QColor


def paletted_renderer(layer: QgsRasterLayer, classes) -> QgsPalettedRasterRenderer:
    items = [QgsPalettedRasterRenderer.Class(c.id, QColor(c.color), c.name) for c in classes]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, items)


def categorized_renderer(classes, field: str = "class_id") -> QgsCategorizedSymbolRenderer:
    cats = []
    for c in classes:
        symbol = QgsFillSymbol.createSimple({"color": c.color, "outline_color": "#404040", "outline_width": "0.1"})
        cats.append(QgsRendererCategory(c.id, symbol, c.name))
    return QgsCategorizedSymbolRenderer(field, cats)


def style_class_raster(path: str, classes) -> str | None:
    """Write `<name>.qml` beside the class raster so that QGIS shows the classes whenever it is opened."""
    layer = QgsRasterLayer(path, os.path.basename(path))
    if not layer.isValid():
        return None
    layer.setRenderer(paletted_renderer(layer, classes))
    qml = os.path.splitext(path)[0] + ".qml"
    layer.saveNamedStyle(qml)
    return qml


def style_polygons(layer: QgsVectorLayer, classes, save: bool = True) -> None:
    """Categorized renderer; saved as the default style inside a GeoPackage so it survives reopening."""
    layer.setRenderer(categorized_renderer(classes))
    layer.triggerRepaint()
    if save and layer.dataProvider().storageType() == "GPKG":
        layer.saveStyleToDatabase("landcover", "land-cover classes", True, "")


class ClassStyler(QgsProcessingLayerPostProcessorInterface):
    """Applies the class style to an output when QGIS loads it into the project."""

    _keep = []  # QGIS holds only a raw pointer to post-processors: keep them alive

    def __init__(self, classes, metadata: dict):
        super().__init__()
        self.classes, self.metadata = classes, metadata
        ClassStyler._keep.append(self)

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        if isinstance(layer, QgsRasterLayer):
            layer.setRenderer(paletted_renderer(layer, self.classes))
        elif isinstance(layer, QgsVectorLayer):
            style_polygons(layer, self.classes, save=False)
        md = layer.metadata()
        md.setAbstract("\n".join(f"{k}: {v}" for k, v in self.metadata.items()))
        md.setKeywords({"land cover": [c.name for c in self.classes]})
        layer.setMetadata(md)
        layer.triggerRepaint()
