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


class ProgressBar:
    """tqdm's bar on stderr for a job that reports fractions of 1, log lines written above it; where stderr is
    not a terminal (a log file, CI), a line at most every 30 seconds."""

    def __init__(self, label: str, quiet: bool = False):
        from tqdm import tqdm

        self.quiet = quiet
        self.bar = tqdm(total=100, desc=label, file=sys.stderr, disable=quiet,
                        mininterval=0.5 if sys.stderr.isatty() else 30,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def update(self, fraction: float) -> None:
        done = int(100 * min(max(fraction, 0.0), 1.0))
        if done > self.bar.n:
            self.bar.update(done - self.bar.n)

    def log(self, message: str) -> None:
        if not self.quiet:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


class EpochBar:
    """A training run's steps as tqdm bars on stderr, one per epoch, with the recent loss (training.Hooks.step)."""

    def __init__(self):
        self.bar, self.epoch = None, None

    def __call__(self, epoch: int, epochs: int, done: int, steps: int, loss: float) -> None:
        from tqdm import tqdm

        if epoch != self.epoch or self.bar is None or steps != self.bar.total:
            self.close()
            self.bar, self.epoch = tqdm(total=steps, desc=f"epoch {epoch}/{epochs}", file=sys.stderr, leave=False,
                                        mininterval=0.5 if sys.stderr.isatty() else 30), epoch
        self.bar.update(done - self.bar.n)
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
