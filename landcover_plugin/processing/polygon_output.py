"""OUTPUT_VECTOR: the engine's polygons into QGIS's feature sink, and nothing left of it when a run stops."""
from __future__ import annotations

import os

from qgis.core import QgsFeature, QgsFeatureSink, QgsFields, QgsGeometry

from .compat import new_field

# Files a vector output consists of beside the one QGIS names (GeoPackage journals, shapefile parts)
_SIDECARS = {".gpkg": ("-wal", "-shm", "-journal"), ".shp": (".shx", ".dbf", ".prj", ".cpg", ".qpj", ".qix")}


def polygon_fields() -> QgsFields:
    fields = QgsFields()
    for name, kind in (("class_id", "int"), ("class_name", "string"), ("area", "double"), ("confidence", "double")):
        fields.append(new_field(name, kind))
    return fields


class PolygonOutput:
    """Writes polygon records to `sink` (made by parameterAsSink, `dest_id` its destination), checking
    `cancel` after each; `discard()` closes the sink and removes what it created."""

    def __init__(self, sink, dest_id: str, fields: QgsFields, cancel, cancelled_error):
        self.sink, self.dest_id, self.fields = sink, dest_id, fields
        self._cancel, self._cancelled_error = cancel, cancelled_error

    def write(self, records) -> None:
        for rec in records:
            feature = QgsFeature(self.fields)
            geom = QgsGeometry()
            geom.fromWkb(rec.wkb)
            feature.setGeometry(geom)
            feature.setAttributes([int(rec.class_id), rec.class_name, float(rec.area),
                                   None if rec.confidence is None else float(rec.confidence)])
            self.sink.addFeature(feature, QgsFeatureSink.Flag.FastInsert)
            if self._cancel():
                raise self._cancelled_error("Cancelled; no output was written.")

    def close(self) -> None:
        """Flush and close the file (QGIS's writer closes when the sink goes)."""
        self.sink = None

    def discard(self) -> None:
        self.close()
        remove_vector_output(self.dest_id)


def remove_vector_output(dest_id: str) -> None:
    """Remove a vector output written to a file: the file, or only its layer where a GeoPackage holds others
    (an output added to an existing GeoPackage must not take the user's layers with it). Memory layers
    (temporary outputs) go with the run's context."""
    path, _, options = dest_id.partition("|")
    if not os.path.isfile(path):
        return
    layer = next((o[len("layername="):] for o in options.split("|") if o.startswith("layername=")), None)
    if layer is not None:
        from osgeo import ogr

        ds = ogr.Open(path, 1)
        if ds is not None and ds.GetLayerCount() > 1:
            index = next((i for i in range(ds.GetLayerCount()) if ds.GetLayer(i).GetName() == layer), None)
            if index is not None:
                ds.DeleteLayer(index)
            ds = None
            return
        ds = None
    stem, ext = os.path.splitext(path)
    extras = [path + s for s in _SIDECARS.get(ext.lower(), ()) if s.startswith("-")]
    extras += [stem + s for s in _SIDECARS.get(ext.lower(), ()) if s.startswith(".")]
    for name in [path, *extras]:
        try:
            os.remove(name)
        except FileNotFoundError:
            pass
