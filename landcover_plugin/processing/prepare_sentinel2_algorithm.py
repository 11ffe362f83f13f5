"""landcover:prepare_sentinel2, "Prepare Sentinel-2 scene": a downloaded product to one 10 m GeoTIFF of the
bands a model reads, which Segment then takes like any raster."""
from __future__ import annotations

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
)

from .algorithm import LandcoverAlgorithm, engine_warnings, model_parameter
from .dependencies import require_engine

DEFAULT_MODEL = "dynamic_world"


class PrepareSentinel2Algorithm(LandcoverAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    EXTENT = "EXTENT"
    MASK_CLOUDS = "MASK_CLOUDS"
    OFFSET = "OFFSET"
    OUTPUT = "OUTPUT"
    CLOUD_PERCENT = "CLOUD_PERCENT"

    def name(self):
        return "prepare_sentinel2"

    def displayName(self):  # noqa: N802
        return self.tr("Prepare Sentinel-2 scene")

    def shortHelpString(self):  # noqa: N802
        return self.tr(
            "<p>Turns a Sentinel-2 product as downloaded (a .SAFE folder, its .zip, its MTD_MSIL1C.xml or "
            "MTD_MSIL2A.xml, or a folder of single-band files such as B2.tif or T33NZA_..._B02_10m.jp2) into one "
            "GeoTIFF of the bands a model reads (Dynamic World: B2 B3 B4 B5 B6 B7 B8 B11 B12), on the 10 m grid, "
            "with the 20 m bands resampled bilinearly and the bands named B2, B3, ... so that Segment land cover "
            "matches them.</p><p>From processing baseline 04.00 (2022) on, the product's offset (-1000) is "
            "removed, read from its metadata (or set OFFSET). The product's own cloud mask (L2A: the scene "
            "classification's clouds, cirrus and shadows; L1C from baseline 04.00: MSK_CLASSI) becomes nodata, "
            "so every output of Segment is nodata there. Dynamic World expects Level-1C: prefer L1C products "
            "(an L2A product gets a warning; its classes differ on about half the pixels).</p>")

    def initAlgorithm(self, config=None):  # noqa: N802
        add = self.add_parameter
        add(QgsProcessingParameterFile(self.INPUT, self.tr("Sentinel-2 product (.SAFE folder, .zip, MTD XML or "
                                                           "folder of band files)"),
                                       fileFilter="Sentinel-2 products (*.zip *.xml *.SAFE);;All files (*)"),
            self.tr("A .SAFE folder or a folder of single-band files can be typed or pasted as a path."))
        param = model_parameter(self.MODEL, self.tr("Model whose bands to stack"))
        param.setDefaultValue(DEFAULT_MODEL)
        add(param, self.tr("A bundled model's name or a model file that names Sentinel-2 bands (default "
                           "dynamic_world)."))
        add(QgsProcessingParameterExtent(self.EXTENT, self.tr("Only this extent"), optional=True),
            self.tr("Crop the scene to this area (snapped outwards to the 10 m grid, on even pixels of the tile)."))
        add(QgsProcessingParameterBoolean(self.MASK_CLOUDS, self.tr("Mask clouds with the product's cloud mask"),
                                          defaultValue=True),
            self.tr("Pixels the product's own mask calls cloud, cirrus or cloud shadow become nodata."), True)
        add(QgsProcessingParameterNumber(self.OFFSET, self.tr("DN offset to add (empty: from the product)"),
                                         QgsProcessingParameterNumber.Type.Integer, optional=True,
                                         minValue=-10000, maxValue=10000),
            self.tr("Added to every band's values (DN 0 stays nodata): -1000 for products of processing baseline "
                    "04.00 on whose metadata is not at hand; empty reads it from the product."), True)
        add(QgsProcessingParameterRasterDestination(self.OUTPUT, self.tr("Prepared scene (10 m GeoTIFF)")),
            self.tr("UInt16, nodata 0, band descriptions B2, B3, ..."))
        self.addOutput(QgsProcessingOutputNumber(self.CLOUD_PERCENT, self.tr("Share of the scene masked as cloud "
                                                                              "(%)")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        if not (self.parameterAsFile(parameters, self.MODEL, context) or "").strip():
            parameters = {**parameters, self.MODEL: DEFAULT_MODEL}
        return self.check_model(parameters, self.MODEL, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        require_engine()
        from ..core.errors import Cancelled, LandcoverError
        from ..core.io.sentinel2 import open_product
        from ..core.io.sentinel2_stack import prepare, product_grid
        from ..core.model.bundled import resolve_model_path
        from ..core.model.model_file import read_spec

        path = self.parameterAsFile(parameters, self.INPUT, context)
        out = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        try:
            with engine_warnings(feedback):
                spec = read_spec(resolve_model_path(self.parameterAsFile(parameters, self.MODEL, context)
                                                    or DEFAULT_MODEL))
                if not all(isinstance(b, str) for b in spec.bands):
                    raise QgsProcessingException(self.tr("This model reads band numbers, not Sentinel-2 bands; "
                                                         "choose a model that names them (dynamic_world)."))
                product = open_product(path, self.optional_number(parameters, self.OFFSET, context))
                extent = None
                if parameters.get(self.EXTENT):
                    crs = product_grid(product, spec.bands).crs
                    r = self.parameterAsExtent(parameters, self.EXTENT, context,
                                               QgsCoordinateReferenceSystem(crs.to_wkt()))
                    extent = (r.xMinimum(), r.yMinimum(), r.xMaximum(), r.yMaximum())
                feedback.pushInfo(f"{product.name}: level {product.level or 'unknown'}, processing baseline "
                                  f"{product.baseline or 'unknown'}.")
                result = prepare(product, spec.bands, out, extent=extent,
                                 mask_clouds=self.parameterAsBoolean(parameters, self.MASK_CLOUDS, context),
                                 alignment=spec.alignment, progress=lambda f: feedback.setProgress(100 * f),
                                 cancel=feedback.isCanceled)
        except Cancelled:
            raise QgsProcessingException(self.tr("Cancelled: no output was written.")) from None
        except LandcoverError as exc:
            raise QgsProcessingException(str(exc)) from None
        for note in result.notes:
            feedback.pushInfo(note)
        feedback.pushInfo(f"{result.grid.width} x {result.grid.height} px, bands {' '.join(result.bands)}; "
                          f"nodata {100 * result.nodata_fraction:.1f}%.")
        for warning in result.warnings:
            feedback.pushWarning(warning)
        cloud = None if result.cloud_fraction is None else 100 * result.cloud_fraction
        if cloud is not None:
            feedback.pushInfo(f"Masked as cloud: {cloud:.1f}% of the valid pixels.")
        return {self.OUTPUT: out, self.CLOUD_PERCENT: cloud}
