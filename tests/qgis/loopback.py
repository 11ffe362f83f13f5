"""Web sources on 127.0.0.1 for the tests: an XYZ tile server cut from a raster, and files served with
HTTP range requests (what GDAL's /vsicurl/ reads a cloud-optimized GeoTIFF with)."""
from __future__ import annotations

import http.server
import os
import threading

import numpy as np

WEB_MERCATOR_HALF = 20037508.342789244  # half the side of the Web Mercator square, metres


def tile_bounds(z: int, x: int, y: int) -> tuple[float, float, float, float]:
    """(left, bottom, right, top) of XYZ tile z/x/y in EPSG:3857."""
    size = 2 * WEB_MERCATOR_HALF / 2 ** z
    left, top = -WEB_MERCATOR_HALF + x * size, WEB_MERCATOR_HALF - y * size
    return left, top - size, left + size, top


def cut_tiles(raster: str, folder: str, zoom: int) -> tuple[float, float, float, float]:
    """Write the 256-pixel PNG tiles z/x/y.png that cover `raster` at `zoom` (RGBA: transparent outside
    it); return the raster's bounds in EPSG:3857."""
    import rasterio
    from rasterio.warp import Resampling, reproject, transform_bounds

    with rasterio.open(raster) as src:
        bounds = transform_bounds(src.crs, "EPSG:3857", *src.bounds)
        size = 2 * WEB_MERCATOR_HALF / 2 ** zoom
        xs = range(int((bounds[0] + WEB_MERCATOR_HALF) // size), int((bounds[2] + WEB_MERCATOR_HALF) // size) + 1)
        ys = range(int((WEB_MERCATOR_HALF - bounds[3]) // size), int((WEB_MERCATOR_HALF - bounds[1]) // size) + 1)
        for x in xs:
            for y in ys:
                left, bottom, right, top = tile_bounds(zoom, x, y)
                dst = np.zeros((4, 256, 256), np.uint8)
                transform = rasterio.transform.from_bounds(left, bottom, right, top, 256, 256)
                for b in range(3):
                    reproject(rasterio.band(src, b + 1), dst[b], dst_transform=transform, dst_crs="EPSG:3857",
                              resampling=Resampling.bilinear)
                inside = np.zeros((256, 256), np.uint8)
                reproject(np.full((src.height, src.width), 255, np.uint8), inside, src_transform=src.transform,
                          src_crs=src.crs, dst_transform=transform, dst_crs="EPSG:3857",
                          resampling=Resampling.nearest)
                dst[3] = inside
                os.makedirs(os.path.join(folder, str(zoom), str(x)), exist_ok=True)
                with rasterio.open(os.path.join(folder, str(zoom), str(x), f"{y}.png"), "w", driver="PNG",
                                   width=256, height=256, count=4, dtype="uint8") as out:
                    out.write(dst)
    return bounds


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single byte ranges, as GDAL's /vsicurl/ asks for them."""

    requests: list  # paths asked for, shared by the server's handlers

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        type(self).requests.append(self.path)
        path = self.translate_path(self.path)
        spec = self.headers.get("Range")
        if not spec or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        first, _, last = spec.removeprefix("bytes=").partition("-")
        start = int(first) if first else size - int(last)
        end = min(int(last), size - 1) if first and last else size - 1
        if start >= size:
            self.send_error(416)
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            body = fh.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self):  # noqa: N802
        type(self).requests.append(self.path)
        super().do_HEAD()


class LoopbackServer:
    """Serves `folder` on 127.0.0.1 at a free port from a thread; `url` is its root, `requests` what was asked."""

    def __init__(self, folder: str):
        handler = type("Handler", (_RangeHandler,), {"requests": []})
        self.requests = handler.requests
        self._server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), lambda *a, **k: handler(*a, directory=folder, **k))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self):
        self._server.shutdown()
        self._server.server_close()

