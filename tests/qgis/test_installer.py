"""Installing the engine's packages from inside QGIS, into a clean profile, as a user without PyTorch does.

pip takes torch 2.13.0 from the machine's local wheel (pip's configured find-links): where there is none
for this Python, PyPI's Linux torch is a CUDA build of several GB, so the install is skipped.
"""
import glob
import json
import os
import subprocess
import sys

import pytest
from conftest import FIXTURE, qgis_process

from landcover_plugin import installer

QGIS_PYTHON = "/usr/bin/python3"  # Debian's QGIS runs this Python


def _local_torch_wheel() -> bool:
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    links = os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()
    return any(glob.glob(os.path.join(d, f"torch-2.13.0*-{tag}-*.whl")) for d in links)


pytestmark = pytest.mark.skipif(not _local_torch_wheel(),
                                reason="no local torch 2.13.0 wheel for this Python (PyPI's is a CUDA build of GBs)")


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    """A QGIS configuration folder of its own (QGIS_CUSTOM_CONFIG_PATH): its default profile starts empty."""
    root = tmp_path_factory.mktemp("qgis-config")
    return root, str(root / "profiles" / "default")


def test_without_torch_the_error_points_to_the_installer(config, tmp_path):
    root, _ = config
    done = qgis_process(["run", "landcover:segment", "--", f"INPUT={FIXTURE}",
                         f"OUTPUT_RASTER={tmp_path / 'c.tif'}"], tmp_path, venv=False,
                        env={"QGIS_CUSTOM_CONFIG_PATH": str(root)})
    assert done.returncode != 0
    assert "needs torch" in done.stdout + done.stderr
    assert "Install engine dependencies" in done.stdout + done.stderr
    assert "landcover_plugin.installer install --profile" in done.stdout + done.stderr


@pytest.fixture(scope="module")
def installed(config, qgis_app):
    """Install through the dialog, as a user clicks it (pip's configured index: the local torch wheel)."""
    from landcover_plugin.deps_dialog import DependenciesDialog

    _, profile = config
    dialog = DependenciesDialog(profile, torch_index="default")
    assert "torch==2.13.0" in dialog.summary.text() and profile in dialog.summary.text()
    dialog.start()
    assert dialog.process.waitForFinished(600_000)  # QProcess signals "finished" from inside the wait
    return dialog


def test_the_dialog_installs_into_the_profile(installed, config):
    _, profile = config
    log = installed.log.toPlainText()
    assert installed.succeeded, log[-3000:]
    assert installed.progress.value() == 100 and "installed into" in log
    folder = installer.deps_folder(profile)
    assert os.path.isdir(os.path.join(folder, "torch")) and os.path.isdir(os.path.join(folder, "safetensors"))
    assert not glob.glob(os.path.join(folder, "numpy*"))
    assert "--break-system-packages" not in log


def test_qgis_python_imports_torch_from_the_folder_and_keeps_its_numpy(installed, config):
    folder = installer.deps_folder(config[1])
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import numpy, torch, safetensors; "
            "from osgeo import gdal_array; gdal_array.OpenArray(numpy.zeros((2, 2), 'uint8')); "
            "print(json.dumps({'torch': torch.__file__, 'numpy': numpy.__file__}))")
    done = subprocess.run([QGIS_PYTHON, "-c", code, folder], capture_output=True, text=True, timeout=300,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr[-2000:]
    where = json.loads(done.stdout.strip().splitlines()[-1])
    assert where["torch"].startswith(folder) and not where["numpy"].startswith(folder)


def test_qgis_process_runs_on_the_installed_packages(installed, config, tmp_path):
    root, _ = config
    done = qgis_process(["run", "landcover:segment", "--", f"INPUT={FIXTURE}", "DEVICE=cpu",
                         f"OUTPUT_RASTER={tmp_path / 'c.tif'}"], tmp_path, venv=False,
                        env={"QGIS_CUSTOM_CONFIG_PATH": str(root)})
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert os.path.getsize(tmp_path / "c.tif") > 0


def test_remove_undoes_it(installed, config, monkeypatch, qgis_iface):
    from qgis.PyQt.QtWidgets import QMessageBox

    from landcover_plugin.plugin import LandcoverPlugin

    _, profile = config
    monkeypatch.setattr("landcover_plugin.plugin.profile_folder", lambda: profile)
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    LandcoverPlugin(qgis_iface).remove_dependencies()
    assert not os.path.exists(installer.deps_folder(profile))


def test_closing_the_dialog_during_an_install_leaves_nothing(tmp_path, qgis_app):
    from landcover_plugin.deps_dialog import DependenciesDialog

    dialog = DependenciesDialog(str(tmp_path), torch_index="default")
    dialog.start()
    assert dialog.process.waitForStarted(30_000)
    dialog.reject()
    assert dialog.succeeded is False and not os.path.exists(installer.deps_folder(str(tmp_path)))
