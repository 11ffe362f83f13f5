"""Shared start-up of the command-line tools: import path, GDAL cache, logging, error exit."""
from __future__ import annotations

import logging
import os
import sys
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# GDAL caches up to 5% of RAM by default; a command-line run keeps it small so that
# memory stays flat on large rasters. Windows are read once (plus their overlap rows),
# so a larger cache bought no speed: 16384² ran as fast with 16 MB as with 64 MB.
os.environ.setdefault("GDAL_CACHEMAX", "16")


PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16", "int8")  # as core.device.PRECISIONS, without importing it
DEVICE_HELP = ("auto, cpu, cuda, cuda:N (one GPU), cuda:all (every GPU, a process each, parts of the raster "
               "at once) or a comma-separated list of devices, e.g. cuda:0,cuda:1")


def setup(quiet: bool = False) -> None:
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    try:
        from rasterio.errors import NotGeoreferencedWarning

        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    except ImportError:
        pass


def run_main(main) -> None:
    """Run main(); engine errors become one line on stderr and exit code 2, never a traceback."""
    from landcover_plugin.core.errors import LandcoverError

    try:
        sys.exit(main())
    except LandcoverError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class ProgressLine:
    """A progress bar on stderr (a line every tenth where stderr is not a terminal), with log lines above it."""

    def __init__(self, label: str, quiet: bool = False, width: int = 30):
        self.label, self.quiet, self.width = label, quiet, width
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def update(self, fraction: float) -> None:
        if self.quiet:
            return
        percent = int(100 * min(max(fraction, 0.0), 1.0))
        if self.tty and percent != self.shown:
            done = self.width * percent // 100
            sys.stderr.write(f"\r{self.label} [{'#' * done}{'.' * (self.width - done)}] {percent:3d}%")
            sys.stderr.flush()
        elif not self.tty and percent // 10 != self.shown // 10:
            print(f"{self.label}: {percent}%", file=sys.stderr, flush=True)
        self.shown = percent

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self.tty and self.shown >= 0:
            sys.stderr.write("\r\033[K")
        print(message, file=sys.stderr, flush=True)
        if self.tty and self.shown >= 0:
            self.update(self.shown / 100)

    def close(self) -> None:
        if self.tty and self.shown >= 0 and not self.quiet:
            sys.stderr.write("\n")
