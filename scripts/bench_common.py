"""What the benches share: peak memory, a random U-Net, rasters made from the committed fixture, options."""
from __future__ import annotations

import os
import resource

import _common

PRECISION_CHOICES = _common.PRECISION_CHOICES
FIXTURE = os.path.join(_common.ROOT, "tests", "data", "dubai_tile7_005_crop.tif")
# bench.py runs the child processes of the memory and polygon benches
BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench.py")


def peak_rss_mb() -> float:
    """Peak resident memory of this process.

    VmHWM belongs to the process's own address space; ru_maxrss survives execve and so
    reports the parent's size at fork when that was larger.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_model(base_width: int, depth: int, tile: int, overlap: int, seed: int = 0):
    """A random-weight U-Net with batch-norm statistics fitted to the fixture, so its labels vary like a real one's."""
    import numpy as np
    import rasterio
    import torch

    from landcover_plugin.core.model.classes import DEFAULT_CLASSES
    from landcover_plugin.core.model.model_file import build_network
    from landcover_plugin.core.model.spec import ModelSpec
    from landcover_plugin.core.model.unet import fit_batchnorm

    torch.manual_seed(seed)
    spec = ModelSpec(classes=DEFAULT_CLASSES, bands=(1, 2, 3), mean=(110.0, 110.0, 100.0), std=(50.0, 45.0, 45.0),
                     base_width=base_width, depth=depth, tile_size=tile, overlap=overlap,
                     name=f"random U-Net base {base_width} depth {depth}")
    net = build_network(spec)
    with rasterio.open(FIXTURE) as ds:
        x = torch.from_numpy(ds.read(window=((0, 256), (0, 256))).astype(np.float32))[None]
    x = (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1)
    return fit_batchnorm(net, x), spec


def make_raster(path: str, size: int, source: str = FIXTURE) -> str:
    """A size x size GeoTIFF tiled with mirrored copies of `source` (the Dubai fixture: UTM, 0.5 m; another
    raster keeps its bands, names, type and grid), written block by block."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    with rasterio.open(source) as ds:
        base, dtype, descriptions, crs, transform, nodata = (ds.read(), ds.dtypes[0], ds.descriptions, ds.crs,
                                                              ds.transform, ds.nodata)
    if source == FIXTURE:
        crs, transform = "EPSG:32640", from_origin(300000, 2800000, 0.5, 0.5)
    tile = np.concatenate([base, base[:, :, ::-1]], axis=2)
    tile = np.concatenate([tile, tile[:, ::-1]], axis=1)  # twice the source each way, seamless when repeated
    th, tw = tile.shape[1:]
    profile = dict(driver="GTiff", width=size, height=size, count=len(base), dtype=dtype, crs=crs,
                   transform=transform, nodata=nodata, tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", BIGTIFF="IF_SAFER")
    rows = 512
    with rasterio.open(path, "w", **profile) as dst:
        dst.descriptions = descriptions
        for r0 in range(0, size, rows):
            n = min(rows, size - r0)
            ri = np.arange(r0, r0 + n) % th
            band = tile[:, ri][:, :, np.arange(size) % tw]
            dst.write(band, window=Window(0, r0, size, n))
    return path


def network_options(sp, base_width, tile=512):
    sp.add_argument("--base-width", type=int, default=base_width)
    sp.add_argument("--depth", type=int, default=4)
    sp.add_argument("--tile", type=int, default=tile)
    sp.add_argument("--overlap", type=int, default=64)
    sp.add_argument("--device", default="cpu", help=_common.DEVICE_HELP)
    sp.add_argument("--batch-size", type=int, default=0)
    sp.add_argument("--workdir", default=None, help="where temporary rasters go (default: system temp)")
