"""The plugin zip as plugins.qgis.org checks an upload and QGIS 4 lists a plugin: built from the
repository as `make package` builds it, and the check shown to refuse each kind of broken zip."""
import os
import subprocess
import sys
import zipfile

import pytest
from conftest import load_script

package = load_script("package_plugin")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# room kept under the repository's 25,000,000 bytes for the models still to come
ROOM = 5_000_000


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return package.build(str(tmp_path_factory.mktemp("dist") / "landcover_plugin.zip"))


def test_the_built_zip_passes_the_upload_checks_with_room_to_spare(built):
    assert package.zip_problems(built) == []
    assert os.path.getsize(built) <= package.MAX_BYTES - ROOM
    with zipfile.ZipFile(built) as z:
        names = z.namelist()
        licence = z.read("landcover_plugin/LICENSE").decode()
    assert "GNU GENERAL PUBLIC LICENSE" in licence and "Version 2" in licence
    assert {"landcover_plugin/metadata.txt", "landcover_plugin/__init__.py"} <= set(names)
    for model in ("landcover_default", "buildings_osm"):  # every bundled model, and its card with its notices
        assert f"landcover_plugin/models/{model}.safetensors" in names
        assert f"landcover_plugin/models/{model}.md" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_the_repository_and_the_package_carry_the_same_licence():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as a, \
            open(os.path.join(ROOT, "landcover_plugin", "LICENSE"), encoding="utf-8") as b:
        assert a.read() == b.read()


def _zip(path, files: dict) -> str:
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    return str(path)


def _metadata(**changes) -> str:
    with open(os.path.join(ROOT, "metadata.txt"), encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    out = []
    for line in lines:
        key = line.split("=", 1)[0]
        if key in changes:
            if changes[key] is not None:
                out.append(f"{key}={changes.pop(key)}")
            else:
                changes.pop(key)
        else:
            out.append(line)
    out += [f"{k}={v}" for k, v in changes.items() if v is not None]
    return "\n".join(out) + "\n"


GOOD = {"landcover_plugin/__init__.py": "", "landcover_plugin/LICENSE": "GPL", "landcover_plugin/icon.svg": "<svg/>"}


@pytest.mark.parametrize("files, expected", [
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata()}, None),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(qgisMaximumVersion=None)}, "qgisMaximumVersion is missing"),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(qgisMaximumVersion="3.99")}, "qgisMaximumVersion is 3.99"),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(supportsQt6="True")}, "supportsQt6 is deprecated"),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(email=None)}, "lacks email"),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(tracker="bugs")}, "tracker is not a URL"),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(icon="missing.svg")}, "missing.svg is not in the zip"),
    ({"landcover_plugin/__init__.py": "", "landcover_plugin/metadata.txt": _metadata()},
     "landcover_plugin/LICENSE is missing"),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(), "docs/x.md": ""}, "must hold one folder"),
    ({**GOOD, "landcover_plugin/metadata.txt": _metadata(), "landcover_plugin/__pycache__/a.pyc": ""},
     "compiled file or a forbidden folder"),
    ({**GOOD, "landcover_plugin/metadata.txt": "name=x\n"}, "cannot be parsed"),
])
def test_the_check_refuses_what_the_plugin_repository_refuses(tmp_path, files, expected):
    problems = package.zip_problems(_zip(tmp_path / "p.zip", files))
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_a_zip_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    path = _zip(tmp_path / "p.zip", {**GOOD, "landcover_plugin/metadata.txt": _metadata()})
    monkeypatch.setattr(package, "MAX_BYTES", os.path.getsize(path) - 1)
    assert any("over the plugin repository's" in p for p in package.zip_problems(path))


def test_the_command_line_check_fails_on_a_broken_zip(tmp_path):
    path = _zip(tmp_path / "p.zip", {**GOOD, "landcover_plugin/metadata.txt": _metadata(qgisMaximumVersion=None)})
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "package_plugin.py"), "--check", path],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "qgisMaximumVersion" in done.stderr


def test_deploy_goes_to_every_qgis_profile_folder_there_is(tmp_path):
    """QGIS 3 reads QGIS3/profiles, QGIS 4 QGIS4/profiles: both get the plugin where both exist."""
    for major in (3, 4):
        (tmp_path / f"QGIS{major}" / "profiles" / "default").mkdir(parents=True)

    def profiles(**variables):
        args = [f"{k}={v}" for k, v in variables.items()]
        done = subprocess.run(["make", "-s", "print-profiles", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True)
        return done.stdout.split()

    both = profiles(QGIS_DATA=tmp_path, QGIS_PYTHON="false")
    assert both == [str(tmp_path / f"QGIS{m}" / "profiles" / "default") for m in (3, 4)]
    assert profiles(QGIS_DATA=tmp_path, PROFILE="/elsewhere") == ["/elsewhere"]
    (tmp_path / "QGIS3").rename(tmp_path / "old")
    assert profiles(QGIS_DATA=tmp_path, QGIS_PYTHON="false") == [str(tmp_path / "QGIS4" / "profiles" / "default")]
