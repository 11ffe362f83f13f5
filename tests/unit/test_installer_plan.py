"""The dependency installer's choices (landcover_plugin.installer): which torch build, where, and what stays."""
import os
import sys

import pytest

from landcover_plugin import installer


@pytest.mark.parametrize("platform,driver,build,index", [
    ("linux", None, "cpu", "https://download.pytorch.org/whl/cpu"),
    ("linux", 575, "cuda", "https://download.pytorch.org/whl/cu128"),
    ("linux", 580, "cuda", "https://download.pytorch.org/whl/cu130"),
    ("win32", 561, "cuda", "https://download.pytorch.org/whl/cu126"),
    ("linux", 470, "cpu", "https://download.pytorch.org/whl/cpu"),  # a driver too old for any CUDA build
    ("darwin", None, "default", None),
])
def test_torch_build_follows_the_platform_and_driver(platform, driver, build, index):
    plan = installer.make_plan("/p", platform=platform, driver=driver, missing=["torch"], numpy_version="1.24.2")
    assert (plan.build, plan.index_url) == (build, index)
    if driver == 470:
        assert "older" in plan.reason
    assert plan.constraints == ["numpy==1.24.2"]  # an install can never bring another numpy


def test_rasterio_only_where_qgis_lacks_it():
    assert not any(p.startswith("rasterio") for p in installer.make_plan("/p", missing=["torch"]).packages)
    assert any(p.startswith("rasterio") for p in installer.make_plan("/p", missing=["torch", "rasterio"]).packages)


def test_pip_installs_into_the_profile_folder_of_this_python_only():
    plan = installer.make_plan("/home/u/QGIS3/profiles/default", platform="linux", driver=None, missing=["torch"],
                               numpy_version="2.2.4")
    folder = f"/home/u/QGIS3/profiles/default/python/landcover_deps/python{sys.version_info[0]}.{sys.version_info[1]}"
    assert plan.folder == folder
    cmd = installer.pip_command(plan, ["python3", "-m", "pip"], "/tmp/c.txt")
    assert cmd[cmd.index("--target") + 1] == folder and cmd[cmd.index("--constraint") + 1] == "/tmp/c.txt"
    assert "--break-system-packages" not in cmd and "--user" not in cmd
    assert cmd[-3:] == list(installer.PACKAGES) and installer.TORCH in cmd
    assert installer.deps_folder("/p", (3, 13)).endswith(os.path.join("landcover_deps", "python3.13"))


def test_configured_index_is_left_alone_when_asked():
    plan = installer.make_plan("/p", platform="linux", driver=None, missing=["torch"], torch_index="default")
    cmd = installer.pip_command(plan, ["pip"], None)
    assert "--index-url" not in cmd and "--extra-index-url" not in cmd and "--constraint" not in cmd


def test_activate_puts_the_folder_first_and_remove_takes_it_away(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert installer.activate(str(tmp_path)) is None  # nothing installed: the path is left as it is
    folder = installer.deps_folder(str(tmp_path))
    os.makedirs(os.path.join(folder, "numpy"))
    os.makedirs(os.path.join(folder, "numpy-2.3.0.dist-info"))
    os.makedirs(os.path.join(folder, "torch"))
    assert installer.activate(str(tmp_path)) == folder and sys.path[0] == folder
    assert sorted(installer.drop_numpy(folder)) == ["numpy", "numpy-2.3.0.dist-info"]
    assert os.listdir(folder) == ["torch"]
    assert installer.remove(str(tmp_path)) == folder
    assert not os.path.exists(folder) and folder not in sys.path
    assert installer.remove(str(tmp_path)) is None
