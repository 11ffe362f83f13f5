"""Run inside QGIS desktop (qgis --code scripts/qgis_screenshot.py): segment the sample, show it, screenshot.

Environment: LANDCOVER_INPUT (raster), LANDCOVER_OUT (folder for outputs), LANDCOVER_SHOT (PNG path).
Used by `make screenshot`, under xvfb-run.
"""
import os

from qgis.core import QgsProject, QgsRasterLayer
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface


def shoot():
    import processing

    src = os.environ["LANDCOVER_INPUT"]
    out = os.environ["LANDCOVER_OUT"]
    shot = os.environ["LANDCOVER_SHOT"]
    status = os.path.join(out, "screenshot_status.txt")
    try:
        image = QgsRasterLayer(src, "sample image")
        QgsProject.instance().addMapLayer(image)
        processing.runAndLoadResults("landcover:segment", {
            "INPUT": src, "OUTPUT_RASTER": os.path.join(out, "classes.tif"),
            "OUTPUT_VECTOR": os.path.join(out, "landcover.gpkg"), "MIN_AREA": 16, "SIMPLIFY": 1.5})
        root = QgsProject.instance().layerTreeRoot()
        for layer in QgsProject.instance().mapLayers().values():
            if layer.name() != "sample image":
                node = root.findLayer(layer.id())
                if isinstance(layer, QgsRasterLayer):
                    layer.renderer().setOpacity(0.55)
                else:
                    layer.setOpacity(0.35)
                node.setItemVisibilityChecked(True)
        iface.mainWindow().resize(1400, 900)
        iface.mapCanvas().setExtent(image.extent())
        iface.mapCanvas().refreshAllLayers()

        def grab():
            iface.mainWindow().grab().save(shot)
            with open(status, "w") as fh:
                fh.write("ok\n")
            os._exit(0)  # no "save the project?" question on a virtual screen

        QTimer.singleShot(6000, grab)
    except Exception as exc:  # report and leave, so that make does not hang
        with open(status, "w") as fh:
            fh.write(f"failed: {exc!r}\n")
        os._exit(1)


QTimer.singleShot(3000, shoot)
