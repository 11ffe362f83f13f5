"""The few names that differ between the QGIS versions users run: 3.22 (Qt5) to QGIS 4 (Qt6).

Everything else is written once, in the form both accept (scoped enums, imports through qgis.PyQt);
tests/qgis/test_qt6_ready.py keeps the Qt5-only forms out.
"""
from __future__ import annotations

from qgis.core import Qgis, QgsField, QgsWkbTypes
from qgis.PyQt.QtCore import QMetaType, QVariant

try:  # Qt6 moved QAction to QtGui
    from qgis.PyQt.QtGui import QAction
except ImportError:
    from qgis.PyQt.QtWidgets import QAction

# QgsField takes a QMetaType.Type from QGIS 3.38 on (QVariant.Type is deprecated there; PyQt6 lacks it)
# and only a QVariant.Type before it.
_TYPES = {"int": ("Int", "Int"), "double": ("Double", "Double"), "string": ("QString", "String")}


# QGIS 3.30 moved the geometry enums to Qgis (WkbType, GeometryType) and deprecated QgsWkbTypes' own, which
# a later QGIS may drop; 3.22 to 3.28 have only QgsWkbTypes'.
if hasattr(Qgis, "WkbType"):
    POLYGON_WKB, POLYGON_GEOMETRY = Qgis.WkbType.Polygon, Qgis.GeometryType.Polygon
else:
    POLYGON_WKB, POLYGON_GEOMETRY = QgsWkbTypes.Type.Polygon, QgsWkbTypes.GeometryType.PolygonGeometry


def new_field(name: str, kind: str) -> QgsField:
    """A QgsField of kind "int", "double" or "string", in the type the running QGIS expects."""
    meta_type, variant_type = _TYPES[kind]
    try:
        return QgsField(name, getattr(QMetaType.Type, meta_type))
    except TypeError:
        return QgsField(name, getattr(QVariant, variant_type))


__all__ = ["POLYGON_GEOMETRY", "POLYGON_WKB", "QAction", "new_field"]
