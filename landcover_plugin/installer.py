"""The engine's Python packages (PyTorch, safetensors, torchao; rasterio where QGIS lacks it) for QGIS's own
Python, installed from inside QGIS (Plugins > Land cover > Install engine dependencies) or by `make deploy`.

pip installs them with --target into a folder of the plugin's own in the QGIS profile, one per Python
version (PROFILE/python/landcover_deps/python3.X), which the plugin puts first on sys.path. Nothing is
installed into QGIS's or the system's Python, so no --break-system-packages, and removing the folder undoes
it. numpy is never installed there: QGIS's GDAL bindings were built against QGIS's own numpy, and a second
numpy first on the path would replace it. torch is the CPU build unless an NVIDIA driver is present (then
the CUDA build that driver runs).

Standard library only: QGIS runs it in a process of its own, as `python -m landcover_plugin.installer`.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, field

TORCH = "torch==2.13.0"  # the engine's tested torch (requirements.txt), and the torchao built for it
PACKAGES = (TORCH, "safetensors>=0.4,<1", "torchao==0.18.0")
TORCH_INDEX = "https://download.pytorch.org/whl/"
PYPI = "https://pypi.org/simple"
# The CUDA builds of torch and the oldest NVIDIA driver (Linux numbering; Windows is the same from 5xx) each runs on
CUDA_BUILDS = ((580, "cu130"), (570, "cu128"), (560, "cu126"))
PLUGINS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where -m landcover_plugin... is found
APPROX_GB = {"cpu": 1.0, "cuda": 5.0, "default": 1.0}  # disk the folder takes, for the question before installing


def deps_folder(profile: str, version: tuple[int, int] | None = None) -> str:
    """PROFILE/python/landcover_deps/python3.X: one folder per Python version, kept when the plugin updates."""
    major, minor = version or sys.version_info[:2]
    return os.path.join(profile, "python", "landcover_deps", f"python{major}.{minor}")


def activate(profile: str) -> str | None:
    """Put this Python's dependency folder first on sys.path where it exists; return it."""
    folder = deps_folder(profile)
    if not os.path.isdir(folder):
        return None
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    return folder


def missing_packages() -> list[str]:
    """The engine's imports this Python cannot find."""
    return [name for name in ("torch", "safetensors", "rasterio") if importlib.util.find_spec(name) is None]


def nvidia_driver() -> int | None:
    """The NVIDIA driver's major version (e.g. 570), or None where there is no driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None and os.name == "nt":
        candidate = os.path.join(os.environ.get("SystemRoot", r"C:\Windows"), "System32", "nvidia-smi.exe")
        smi = candidate if os.path.isfile(candidate) else None
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30).stdout
        return int(out.split()[0].split(".")[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@dataclass
class Plan:
    """What an install does: the packages, where, from which index, and why that torch build."""

    folder: str
    packages: list[str]
    build: str  # "cpu", "cuda" or "default" (PyPI's own torch: macOS, or an index the user named)
    index_url: str | None  # None: pip's configured index
    extra_index_urls: list[str] = field(default_factory=list)
    constraints: list[str] = field(default_factory=list)
    reason: str = ""

    def summary(self) -> str:
        return (f"{', '.join(self.packages)} ({self.build} build of torch: {self.reason}), about "
                f"{APPROX_GB[self.build]:g} GB, into {self.folder}")


def make_plan(profile: str, platform: str = sys.platform, driver: int | None = None, missing=None,
              numpy_version: str | None = None, torch_index: str | None = None) -> Plan:
    """The install for this platform and driver (pure: the tests give each case).

    torch_index: "default" keeps pip's configured index (an offline mirror, a local wheel), a URL uses it;
    None picks the PyTorch index by platform and driver.
    """
    missing = missing_packages() if missing is None else missing
    packages = list(PACKAGES)
    if "rasterio" in missing:
        packages.append("rasterio>=1.3")  # QGIS on Windows and macOS; Linux packages it on QGIS's own GDAL
    constraints = [f"numpy=={numpy_version}"] if numpy_version else []
    folder = deps_folder(profile)
    if torch_index == "default":
        return Plan(folder, packages, "default", None, [], constraints, "pip's configured index")
    if torch_index:
        return Plan(folder, packages, "default", torch_index, [PYPI], constraints, f"the index {torch_index}")
    if platform == "darwin":
        return Plan(folder, packages, "default", None, [], constraints, "macOS: PyPI's torch (CPU and Apple GPUs)")
    build = next((name for oldest, name in CUDA_BUILDS if driver is not None and driver >= oldest), None)
    if build:
        return Plan(folder, packages, "cuda", TORCH_INDEX + build, [PYPI], constraints,
                    f"NVIDIA driver {driver} runs {build}")
    why = (f"NVIDIA driver {driver} is older than torch's CUDA builds need ({CUDA_BUILDS[-1][0]}); update it for "
           "the GPU" if driver is not None else "no NVIDIA driver found")
    return Plan(folder, packages, "cpu", TORCH_INDEX + "cpu", [PYPI], constraints, why)


def pip_command(plan: Plan, pip: list[str], constraints_file: str | None) -> list[str]:
    cmd = [*pip, "install", "--target", plan.folder, "--upgrade", "--no-warn-script-location",
           "--progress-bar", "off", "--disable-pip-version-check"]
    if plan.index_url:
        cmd += ["--index-url", plan.index_url]
    for url in plan.extra_index_urls:
        cmd += ["--extra-index-url", url]
    if constraints_file:
        cmd += ["--constraint", constraints_file]
    return cmd + plan.packages


def find_pip(python: str, cache: str, log) -> list[str]:
    """How to run pip with `python`: its own pip module, else pip's wheel from PyPI (Debian's QGIS comes
    without python3-pip, and ensurepip is disabled there), checked against PyPI's digest."""
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [python, "-m", "pip"]
    with urllib.request.urlopen("https://pypi.org/pypi/pip/json", timeout=60) as answer:
        release = json.load(answer)
    wheel = next(u for u in release["urls"] if u["filename"].endswith("-py3-none-any.whl"))
    url = urllib.request.urljoin("https://pypi.org/pypi/pip/json", wheel["url"])
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, wheel["filename"])
    log(f"{python} has no pip: fetching {wheel['filename']} from PyPI")
    with urllib.request.urlopen(url, timeout=120) as answer:
        data = answer.read()
    if hashlib.sha256(data).hexdigest() != wheel["digests"]["sha256"]:
        raise InstallError(f"The pip wheel from {url} does not match PyPI's checksum; try again later.")
    with open(path, "wb") as fh:
        fh.write(data)
    return [python, os.path.join(path, "pip")]  # pip runs from its own wheel


class InstallError(Exception):
    """An install that did not finish; the message says what to do."""


def install(plan: Plan, python: str, log=print) -> None:
    """Run pip for `plan` with `python`, streaming its output to `log`; then take out any numpy pip brought
    along, so that QGIS's numpy stays the one imported."""
    os.makedirs(plan.folder, exist_ok=True)
    pip = find_pip(python, os.path.join(os.path.dirname(plan.folder), "_pip"), log)
    with tempfile.TemporaryDirectory() as tmp:
        constraints = None
        if plan.constraints:
            constraints = os.path.join(tmp, "constraints.txt")
            with open(constraints, "w") as fh:
                fh.write("\n".join(plan.constraints) + "\n")
        cmd = pip_command(plan, pip, constraints)
        log("$ " + " ".join(cmd))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            log(line.rstrip())
        if proc.wait() != 0:
            raise InstallError(f"pip stopped (exit code {proc.returncode}); its messages are above. Check the "
                               "network connection and the free disk space, then try again.")
    removed = drop_numpy(plan.folder)
    if removed:
        log(f"kept QGIS's own numpy: removed {', '.join(removed)} that pip brought along")
    log(f"installed into {plan.folder}")


def drop_numpy(folder: str) -> list[str]:
    names = [n for n in os.listdir(folder) if n in ("numpy", "numpy.libs") or
             (n.startswith("numpy-") and n.endswith((".dist-info", ".egg-info")))]
    for name in names:
        shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    return names


def remove(profile: str) -> str | None:
    """Delete this Python's dependency folder; return it (None where there was none)."""
    folder = deps_folder(profile)
    if folder in sys.path:
        sys.path.remove(folder)
    if not os.path.isdir(folder):
        return None
    shutil.rmtree(folder)
    parent = os.path.dirname(folder)
    if set(os.listdir(parent)) <= {"_pip"}:  # no other Python's packages left: the pip wheel goes too
        shutil.rmtree(parent)
    return folder


def numpy_version() -> str | None:
    """The version of the numpy this Python imports (QGIS's), which an install must keep."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy.__version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m landcover_plugin.installer", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=("plan", "install", "remove"))
    parser.add_argument("--profile", required=True,
                        help="the QGIS profile folder (QgsApplication.qgisSettingsDirPath())")
    parser.add_argument("--if-missing", action="store_true",
                        help="install only if this Python (with the folder) lacks an engine package")
    parser.add_argument("--torch-index", help='"default" for pip\'s configured index, or an index URL; empty: '
                        "the PyTorch index for this platform and driver")
    args = parser.parse_args(argv)
    if args.action == "remove":
        folder = remove(args.profile)
        print(f"removed {folder}" if folder else f"nothing to remove at {deps_folder(args.profile)}")
        return 0
    activate(args.profile)  # what is already there counts as installed
    if args.action == "install" and args.if_missing and not missing_packages():
        print("the engine's packages are all importable: nothing to install")
        return 0
    plan = make_plan(args.profile, driver=nvidia_driver(), numpy_version=numpy_version(),
                     torch_index=args.torch_index)
    if args.action == "plan":
        print(json.dumps({**asdict(plan), "summary": plan.summary()}))
        return 0
    from .core.interpreter import python_program

    try:
        install(plan, python_program() or sys.executable, lambda line: print(line, flush=True))
    except (InstallError, OSError) as exc:
        print(f"Error: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
