import os
import warnings

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
FIXTURE = os.path.join(DATA, "dubai_tile7_005_crop.tif")
FIXTURE_MASK = os.path.join(DATA, "dubai_tile7_005_crop_mask.png")

try:
    from rasterio.errors import NotGeoreferencedWarning

    warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
except ImportError:
    pass


def load_script(name):
    """A module of scripts/ (which import their neighbour _common), for tests that call its functions."""
    import importlib.util
    import sys

    scripts = os.path.join(os.path.dirname(HERE), "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    spec = importlib.util.spec_from_file_location(name, os.path.join(scripts, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fixture_pixels() -> np.ndarray:
    import rasterio

    with rasterio.open(FIXTURE) as ds:
        return ds.read()


def make_model(seed=0, base_width=8, depth=2, tile=128, overlap=32, gsd=None, classes=None, calibrate=True):
    """A random-weight U-Net whose batch-norm statistics are fitted to the fixture.

    With the default statistics a random U-Net answers one class everywhere; fitted
    statistics make its output vary across the image like a real model's, which the
    blending and vectorizing tests need.
    """
    import torch

    from landcover_plugin.core.model.classes import DEFAULT_CLASSES
    from landcover_plugin.core.model.model_file import build_network
    from landcover_plugin.core.model.spec import ModelSpec

    torch.manual_seed(seed)
    spec = ModelSpec(classes=tuple(classes or DEFAULT_CLASSES), bands=(1, 2, 3), mean=(110.0, 110.0, 100.0),
                     std=(50.0, 45.0, 45.0), base_width=base_width, depth=depth, tile_size=tile, overlap=overlap,
                     gsd=gsd)
    net = build_network(spec)
    if calibrate:
        from landcover_plugin.core.model.unet import fit_batchnorm

        x = torch.from_numpy(fixture_pixels()[:, :256, :256].astype(np.float32))[None]
        fit_batchnorm(net, (x - torch.tensor(spec.mean).view(1, 3, 1, 1)) / torch.tensor(spec.std).view(1, 3, 1, 1))
    net.eval()
    return net, spec


def write_raster(path, data, crs=None, transform=None, nodata=None, alpha=False, driver="GTiff", **extra):
    """A GeoTIFF (or another GDAL format) of `data`; with alpha=True the last band is an alpha band."""
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.transform import Affine

    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = dict(driver=driver, width=data.shape[2], height=data.shape[1], count=data.shape[0],
                   dtype=str(data.dtype), transform=transform or Affine.identity(), **extra)
    if crs is not None:
        profile["crs"] = crs
    if nodata is not None:
        profile["nodata"] = nodata
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if alpha:
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    return str(path)


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    from landcover_plugin.core.model.model_file import save_model

    net, spec = make_model()
    path = tmp_path_factory.mktemp("model") / "small.safetensors"
    save_model(str(path), net, spec)
    return str(path)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory):
    """A random-weight U-Net (base width 8, depth 2, tile 64) on the five default classes: runs in seconds."""
    from landcover_plugin.core.model.model_file import save_model

    net, spec = make_model(tile=64, overlap=16)
    path = tmp_path_factory.mktemp("m") / "small.safetensors"
    save_model(str(path), net, spec)
    return str(path)


@pytest.fixture(scope="session")
def tiny_int8(tmp_path_factory):
    """A small model file that auto runs in int8 on a CPU without bf16 kernels: calibration windows of the
    fixture and an int8 record of the scheme in use. Its int8 package compiles in seconds, where the bundled
    model's takes half a minute or more: the int8 plumbing tests use it."""
    from landcover_plugin.core.model import quantize
    from landcover_plugin.core.model.model_file import save_model

    net, spec = make_model(tile=64, overlap=16)
    pixels = fixture_pixels()
    windows = np.stack([pixels[:, r:r + 64, c:c + 64] for r, c in ((0, 0), (300, 300), (600, 100), (100, 600))])
    record = {"agreement": 0.999, "scheme": quantize.SCHEME, "images": "the tests' own", "date": "-"}
    path = tmp_path_factory.mktemp("tiny_int8") / "tiny_int8.safetensors"
    save_model(str(path), net, spec.with_training(int8=record), calibration=windows)
    return str(path)


_PROVIDERS = []  # QGIS does not own a Python provider: the tests keep theirs alive


@pytest.fixture
def provider(qgis_app, qgis_processing):
    """The landcover Processing provider registered now (pytest-qgis tests): looked up for every test, as a
    test of the plugin's load and unload replaces the registered one."""
    from qgis.core import QgsApplication

    from landcover_plugin.processing.provider import LandcoverProvider

    registry = QgsApplication.processingRegistry()
    if registry.providerById("landcover") is None:
        _PROVIDERS.append(LandcoverProvider())
        registry.addProvider(_PROVIDERS[-1])
    return registry.providerById("landcover")


def qgis_process(args, tmp_path, timeout=300, venv=True, env=None):
    """Run qgis_process.bin --json ARGS with the plugin staged under tmp_path and enabled, as users run it
    headless; returns the CompletedProcess. venv=False: QGIS's Python as it is, without the venv's packages
    (torch...) on its path; `env` adds variables."""
    import subprocess
    import sys

    root = os.path.dirname(HERE)
    plugin_dir = tmp_path / "plugins"
    subprocess.run(["make", "-s", "-C", root, "stage", f"STAGE={plugin_dir}"], check=True, capture_output=True)
    env = dict(os.environ, QGIS_PLUGINPATH=str(plugin_dir), QT_QPA_PLATFORM="offscreen", **(env or {}))
    if venv:
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if "site-packages" in p)
    else:
        env.pop("PYTHONPATH", None)
    subprocess.run(["qgis_process.bin", "plugins", "enable", "landcover_plugin"], env=env, capture_output=True)
    return subprocess.run(["qgis_process.bin", "--json", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


cuda = pytest.mark.skipif(not has_cuda(), reason="needs a CUDA GPU")


def has_gdal_bindings() -> bool:
    try:
        from osgeo import gdal  # noqa: F401
    except ImportError:
        return False
    return True


needs_gdal = pytest.mark.skipif(not has_gdal_bindings(), reason="polygons need GDAL's Python bindings")


# What may skip: CUDA tests without (or with) a GPU, and tests of an optional package or tool that is not
# installed. Any other skip (the bundled model missing, say) means a check did not run: make test fails.
ALLOWED_SKIPS = ("needs a CUDA GPU", "this machine has CUDA", "could not import", "is missing", "is not installed",
                 "GDAL's Python bindings", "../shared/data is not here", "no local torch 2.13.0 wheel",
                 "checked by make check-cards")
_SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append((report.nodeid, reason))


def unexpected_skips(skipped) -> list[str]:
    return [f"{node}: {reason}" for node, reason in skipped if not any(a in reason for a in ALLOWED_SKIPS)]


def pytest_sessionfinish(session, exitstatus):
    unexpected = unexpected_skips(_SKIPPED)
    if unexpected:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line("Skipped for a reason that is not a missing GPU or optional package:", red=True)
            for line in unexpected:
                reporter.write_line("  " + line)
        if exitstatus == 0:
            session.exitstatus = 1
