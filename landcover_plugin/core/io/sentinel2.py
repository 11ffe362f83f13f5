"""Sentinel-2 products as users download them: a .SAFE folder, its .zip, the MTD XML, or a folder of
single-band files (B2.tif, T33NZA_..._B02_10m.jp2, ...). `open_product` finds each band's file (GDAL's
SENTINEL2 driver reads the products; band order there is not numeric, so bands are taken by BANDNAME), the
product's level and processing baseline, the DN offset of baseline 04.00 on, and the product's cloud mask.
sentinel2_stack.py writes the 10 m stack a model needs from it."""
from __future__ import annotations

import glob
import json
import os
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from xml.etree import ElementTree

from ..errors import InputError
from .bands import L1C_ORDER, band_name

_MTD = re.compile(r"(^|/)(MTD_MSIL1C|MTD_MSIL2A|[^/]*_MTD_SAF[^/]*)\.xml$", re.IGNORECASE)
_PRODUCT = re.compile(r"MSI(L1C|L2A)_\d{8}T\d{6}_N(\d{4})", re.IGNORECASE)
_FILE_BAND = re.compile(r"(?:^|_)(B0?\d{1,2}A?)(?:_\d+m)?$", re.IGNORECASE)
_IMAGES = (".tif", ".tiff", ".jp2")
# SCL classes read as cloud: 3 cloud shadow, 8 and 9 cloud (medium, high probability), 10 thin cirrus
SCL_CLOUD = (3, 8, 9, 10)


@dataclass(frozen=True)
class BandFile:
    path: str  # what rasterio opens: a file, a /vsizip/ path or a SENTINEL2 subdataset
    index: int = 1


@dataclass(frozen=True)
class CloudMask:
    """The product's own cloud mask: `kind` "scl" (L2A scene classification, SCL_CLOUD values),
    "classi" (L1C MSK_CLASSI: band 1 opaque clouds, band 2 cirrus) or "binary" (nonzero = cloud)."""

    source: BandFile
    kind: str
    description: str


@dataclass
class Product:
    name: str
    level: str | None  # "L1C", "L2A", or None where nothing says
    baseline: str | None  # "04.00", ...
    bands: dict[str, BandFile]
    offsets: dict[str, int] = field(default_factory=dict)  # DN offset to add, per band
    offset_note: str = ""
    cloud: CloudMask | None = None

    def require(self, wanted) -> None:
        missing = [b for b in wanted if b not in self.bands]
        if missing:
            has = ", ".join(sorted(self.bands, key=_band_order)) or "no image bands"
            raise InputError(f"{self.name} lacks the band(s) {', '.join(missing)} the model needs (it has {has}); "
                             "use a product or folder with them (an L1C or L2A product at 10 and 20 m).")


def open_product(path: str, offset: int | None = None) -> Product:
    """The Product at `path`; `offset` (DN added to every band) overrides what the product's metadata says."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.exists(path):
        raise InputError(f"{path} does not exist; give a Sentinel-2 .SAFE folder, its .zip, its MTD XML file or "
                         "a folder of single-band files.")
    if os.path.isdir(path):
        mtd = _mtd_in_folder(path)
        product = _from_mtd(mtd, _read_text(mtd)) if mtd else _from_folder(path)
    elif path.lower().endswith(".zip"):
        product = _from_zip(path)
    elif path.lower().endswith(".xml"):
        product = _from_mtd(path, _read_text(path))
    else:
        raise InputError(f"{os.path.basename(path)} is not a Sentinel-2 product; give a .SAFE folder, its .zip, "
                         "its MTD XML file or a folder of single-band files.")
    if offset is not None:
        product.offsets = {b: int(offset) for b in product.bands}
        product.offset_note = f"an offset of {int(offset)} DN was given"
    return product


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _mtd_in_folder(folder: str) -> str | None:
    found = [p for p in glob.glob(os.path.join(folder, "*.xml")) if _MTD.search(p.replace(os.sep, "/"))]
    return sorted(found)[0] if found else None


def _from_zip(path: str) -> Product:
    try:
        with zipfile.ZipFile(path) as z:
            members = [n for n in z.namelist() if _MTD.search(n) and n.count("/") <= 1]
            if not members:
                raise InputError(f"{os.path.basename(path)} holds no Sentinel-2 product (no MTD_MSIL1C.xml or "
                                 "MTD_MSIL2A.xml in a .SAFE folder); unzip it and give the folder instead.")
            text = z.read(members[0]).decode("utf-8", "replace")
            qi = [n for n in z.namelist() if "/QI_DATA/" in n]
    except zipfile.BadZipFile:
        raise InputError(f"{os.path.basename(path)} is not a readable .zip file; download it again.") from None
    vsi = f"/vsizip/{path}/{members[0]}"
    return _from_mtd(vsi, text, qi_files=[f"/vsizip/{path}/{n}" for n in qi])


def _from_mtd(mtd: str, text: str, qi_files=None) -> Product:
    import rasterio

    try:
        with warnings.catch_warnings():  # the product itself has no grid: its subdatasets have
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(mtd) as ds:
                tags, subdatasets = ds.tags(), list(ds.subdatasets)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(f"GDAL cannot read the Sentinel-2 product {mtd}: {e}") from None
    name = tags.get("PRODUCT_URI") or os.path.basename(os.path.dirname(mtd)) or os.path.basename(mtd)
    level = _level(tags.get("PROCESSING_LEVEL", "") + " " + tags.get("PRODUCT_TYPE", "") + " " + name)
    bands, scl = {}, None
    for sub in sorted(subdatasets, key=_resolution_rank):
        if _resolution_rank(sub) > 60:
            continue  # TCI, PREVIEW: not reflectance
        with rasterio.open(sub) as ds:
            for i in range(1, ds.count + 1):
                band = ds.tags(i).get("BANDNAME", "")
                if band == "SCL" and scl is None:
                    scl = BandFile(sub, i)
                elif band_name(band) == band:
                    bands.setdefault(band, BandFile(sub, i))
    product = Product(name, level, tags.get("PROCESSING_BASELINE") or _baseline(name), bands)
    product.offsets, product.offset_note = _mtd_offsets(text, product)
    if scl is not None:
        product.cloud = CloudMask(scl, "scl", "the scene classification (SCL: cloud, cirrus and cloud shadow)")
    else:
        product.cloud = _classi(mtd if qi_files is None else None, qi_files)
    return product


def _resolution_rank(sub: str) -> int:
    m = re.search(r":(\d+)m:", sub)
    return int(m.group(1)) if m else 1000


def _level(text: str) -> str | None:
    m = re.search(r"(?:Level-|MSI|L)(1C|2A)", text, re.IGNORECASE)
    return f"L{m.group(1).upper()}" if m else None


def _baseline(name: str) -> str | None:
    m = _PRODUCT.search(name)
    return f"{m.group(2)[:2]}.{m.group(2)[2:]}" if m else None


def _mtd_offsets(text: str, product: Product) -> tuple[dict[str, int], str]:
    """Offsets from the MTD's RADIO_ADD_OFFSET (L1C) or BOA_ADD_OFFSET (L2A) lists, band_id 0 = B1."""
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return {}, "the product's MTD could not be parsed: no offset applied"
    offsets = {}
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1]
        if tag in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET") and el.get("band_id", "").isdigit():
            i = int(el.get("band_id"))
            if i < len(L1C_ORDER) and (el.text or "").strip():
                offsets[L1C_ORDER[i]] = int(float(el.text))
    if any(offsets.values()):
        return offsets, (f"offset {sorted(set(offsets.values()))[0]} DN from the product's metadata "
                         f"(processing baseline {product.baseline or '?'})")
    return offsets, f"no offset in the product's metadata (processing baseline {product.baseline or '?'})"


def _classi(mtd: str | None, qi_files) -> CloudMask | None:
    """L1C's raster cloud mask (baseline 04.00 on): MSK_CLASSI_B00 in the granule's QI_DATA."""
    if qi_files is None:
        qi_files = glob.glob(os.path.join(os.path.dirname(mtd), "GRANULE", "*", "QI_DATA", "*"))
    found = sorted(p for p in qi_files if re.search(r"MSK_CLASSI_B00\.(jp2|tif)$", p, re.IGNORECASE))
    if len(found) != 1:
        return None  # none, or several granules of the old format (whose cloud masks are GML)
    return CloudMask(BandFile(found[0]), "classi", "the product's MSK_CLASSI mask (opaque clouds and cirrus)")


def _from_folder(folder: str) -> Product:
    bands, cloud = {}, None
    for path in sorted(glob.glob(os.path.join(folder, "*"))):
        stem, ext = os.path.splitext(os.path.basename(path))
        if ext.lower() not in _IMAGES:
            continue
        m = _FILE_BAND.search(stem)
        if m:
            bands.setdefault(band_name(m.group(1)), BandFile(path))
        elif re.fullmatch(r"(cloud_?mask|clouds?|CLM)", stem, re.IGNORECASE):
            cloud = CloudMask(BandFile(path), "binary", f"{os.path.basename(path)} (nonzero = cloud)")
        elif re.search(r"(^|_)SCL(_\d+m)?$", stem):
            cloud = CloudMask(BandFile(path), "scl", f"{os.path.basename(path)} (SCL: cloud, cirrus and shadow)")
    if not bands:
        raise InputError(f"{folder} holds no Sentinel-2 product: no MTD XML and no band files named like "
                         "B2.tif, B02.jp2 or T33NZA_20220706T085611_B02_10m.jp2.")
    name, level, baseline = _folder_identity(folder)
    product = Product(name, level, baseline, bands, cloud=cloud)
    product.offsets, product.offset_note = _convention_offsets(product)
    return product


def _folder_identity(folder: str) -> tuple[str, str | None, str | None]:
    """(name, level, baseline) from a product name in the path or an Earth Engine metadata.json beside it."""
    name = os.path.basename(folder.rstrip(os.sep))
    meta = os.path.join(folder, "metadata.json")
    text = folder.replace(os.sep, "/")
    if os.path.exists(meta):
        try:
            with open(meta, encoding="utf-8") as f:
                doc = json.load(f)
            product_id = str(doc.get("PRODUCT_ID", ""))
            text, name = f"{text} {product_id}", product_id or name
        except (OSError, ValueError, AttributeError):
            pass
    level = re.search(r"MSI(L1C|L2A)", text, re.IGNORECASE)
    return name, level.group(1).upper() if level else None, _baseline(text)


def _convention_offsets(product: Product) -> tuple[dict[str, int], str]:
    """Without an MTD: ESA adds 1000 to every DN from processing baseline 04.00 on (N9999 marks
    reprocessed data, whose offset the name does not tell)."""
    b = product.baseline
    if b is None:
        return {}, "no processing baseline known: no offset applied (set OFFSET if the values carry one)"
    if "04.00" <= b < "99.99":
        return ({k: -1000 for k in product.bands},
                f"offset -1000 DN by ESA's convention for processing baseline {b} (no MTD in the folder)")
    return {}, f"no offset for processing baseline {b} (set OFFSET if the values carry one)"


def _band_order(name: str) -> int:
    return L1C_ORDER.index(name) if name in L1C_ORDER else len(L1C_ORDER)
