"""Run inside QGIS desktop (qgis --code scripts/qgis_screenshot.py): segment the sample, show it, screenshot.

Environment: LANDCOVER_INPUT (raster), LANDCOVER_OUT (folder for outputs), LANDCOVER_SHOT (PNG path); for a
web layer instead, LANDCOVER_XYZ (an XYZ tile URL template), LANDCOVER_EXTENT (left,right,bottom,top in
EPSG:3857) and LANDCOVER_RESOLUTION; for a Sentinel-2 product instead, LANDCOVER_SENTINEL2 (prepared with
landcover:prepare_sentinel2, then segmented with Dynamic World and its own polygon defaults). Used by `make
screenshot`, `make screenshot-xyz` and `make screenshot-sentinel2`, under xvfb-run.
"""
import os

from qgis.core import QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QTimer
from qgis.utils import iface


def _prepared(processing, product, out):
    """The product's 10 m stack, drawn in natural colours (B4 B3 B2 = bands 3 2 1)."""
    from qgis.core import QgsContrastEnhancement, QgsMultiBandColorRenderer

    stack = processing.run("landcover:prepare_sentinel2", {"INPUT": product,
                                                           "OUTPUT": os.path.join(out, "scene.tif")})["OUTPUT"]
    image = QgsRasterLayer(stack, "Sentinel-2 L1C (B4 B3 B2)")
    renderer = QgsMultiBandColorRenderer(image.dataProvider(), 3, 2, 1)
    for band, set_enhancement in ((3, renderer.setRedContrastEnhancement), (2, renderer.setGreenContrastEnhancement),
                                  (1, renderer.setBlueContrastEnhancement)):
        enhancement = QgsContrastEnhancement(image.dataProvider().dataType(band))
        enhancement.setContrastEnhancementAlgorithm(QgsContrastEnhancement.ContrastEnhancementAlgorithm.StretchToMinimumMaximum)
        enhancement.setMinimumValue(500)
        enhancement.setMaximumValue(2500)
        set_enhancement(enhancement)
    image.setRenderer(renderer)
    return image


def shoot():
    import processing

    src = os.environ.get("LANDCOVER_INPUT")
    out = os.environ["LANDCOVER_OUT"]
    shot = os.environ["LANDCOVER_SHOT"]
    status = os.path.join(out, "screenshot_status.txt")
    try:
        params = {"OUTPUT_RASTER": os.path.join(out, "classes.tif"),
                  "OUTPUT_VECTOR": os.path.join(out, "landcover.gpkg"), "MIN_AREA": 16, "SIMPLIFY": 1.5}
        xyz = os.environ.get("LANDCOVER_XYZ")
        sentinel2 = os.environ.get("LANDCOVER_SENTINEL2")
        if sentinel2:
            image = _prepared(processing, sentinel2, out)
            params = {k: v for k, v in params.items() if k.startswith("OUTPUT")}
            params["MODEL"] = "dynamic_world"
        elif xyz:
            image = QgsRasterLayer(f"type=xyz&url={xyz}&zmin=0&zmax=18", "sample image (XYZ tiles)", "wms")
            params.update(EXTENT=os.environ["LANDCOVER_EXTENT"] + " [EPSG:3857]",
                          RESOLUTION=float(os.environ["LANDCOVER_RESOLUTION"]))
        else:
            image = QgsRasterLayer(src, "sample image")
        QgsProject.instance().addMapLayer(image)
        processing.runAndLoadResults("landcover:segment", {"INPUT": image, **params})
        root = QgsProject.instance().layerTreeRoot()
        for layer in QgsProject.instance().mapLayers().values():
            if layer.id() != image.id():
                node = root.findLayer(layer.id())
                if isinstance(layer, QgsRasterLayer):
                    layer.renderer().setOpacity(0.55)
                else:
                    layer.setOpacity(0.35)
                node.setItemVisibilityChecked(True)
        iface.mainWindow().resize(1400, 900)
        if xyz:  # the project took the tiles' CRS (EPSG:3857): show the extent classified
            left, right, bottom, top = (float(v) for v in os.environ["LANDCOVER_EXTENT"].split(","))
            iface.mapCanvas().setExtent(QgsRectangle(left, bottom, right, top))
        else:
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
