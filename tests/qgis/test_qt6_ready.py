"""QGIS 4 (Qt6) loads the plugin only if its code runs on PyQt6 and its metadata admits 4.x: no Qt5-only
idiom and no QGIS-3-only form may come back.

Three checks over every source QGIS loads (the plugin and the scripts run inside QGIS):
- the idioms QGIS's Qt6 migration guide lists, by pattern (PyQt5 imports, exec_, QVariant types...);
- the QGIS 3 forms that QGIS 3.30 deprecated for their Qgis-namespace successors, and QGIS 3's own profile
  folder named without QGIS 4's;
- unscoped enum values, found by asking the running PyQGIS what each `Class.Name` is: PyQt6 knows
  `QgsProcessing.SourceType.TypeRaster` but not `QgsProcessing.TypeRaster`.
"""
import ast
import enum
import importlib
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

QT5_ONLY = [
    (re.compile(r"\b(from|import)\s+PyQt[56]\b"), "import Qt through qgis.PyQt"),
    (re.compile(r"\.exec_\("), "exec_() is gone in PyQt6: call exec()"),
    (re.compile(r"\bQVariant\.(Int|UInt|LongLong|Double|String|Bool|Date|DateTime|Time|List|Map|StringList|"
                r"ByteArray|Invalid)\b"), "QVariant types are gone in PyQt6: QMetaType.Type (compat.new_field)"),
    (re.compile(r"\bQRegExp\b"), "QRegExp is gone in Qt6: QRegularExpression"),
    (re.compile(r"\bQDesktopWidget\b"), "QDesktopWidget is gone in Qt6: QScreen"),
    (re.compile(r"\bQtWidgets\s+import\b[^\n]*\bQAction\b"), "QAction is in QtGui on Qt6: import it from compat"),
    (re.compile(r"\bpyqtSignal\(\s*QVariant\b"), "QVariant signals: use object"),
    (re.compile(r"(?<!\.Flag)\.Flag(Advanced|Hidden|Optional|IsModelOutput)\b"),
     "an unscoped parameter flag: QgsProcessingParameterDefinition.Flag.FlagAdvanced"),
]

QGIS3_ONLY = [
    (re.compile(r"\bQgsWkbTypes\.(Type|GeometryType)\.\w+"),
     "deprecated since QGIS 3.30: Qgis.WkbType / Qgis.GeometryType (compat.POLYGON_WKB, POLYGON_GEOMETRY)"),
    (re.compile(r"\b(Qt\.MidButton|Qt\.TextColorRole|Qt\.BackgroundColorRole|QPainter\.HighQualityAntialiasing)\b"),
     "removed in Qt6: MouseButton.MiddleButton, ItemDataRole.ForegroundRole/BackgroundRole, RenderHint.Antialiasing"),
    (re.compile(r"\bsupportsQt6\b"), "deprecated and ignored: qgisMaximumVersion=4.x says it"),
]
QGIS3_FOLDER = re.compile(r"QGIS3[/\\]profiles|QGIS3\.ini")


# compat.py is where the few Qt5 and QGIS 3 forms live, behind their Qt6 and QGIS 4 forms
COMPAT = os.path.join("landcover_plugin", "processing", "compat.py")
ALLOWED = {COMPAT: ("QtWidgets import QAction", "QgsWkbTypes.Type.Polygon",
                    "QgsWkbTypes.GeometryType.PolygonGeometry")}


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def loaded_by_qgis() -> list[str]:
    """The plugin's sources, and the scripts that QGIS runs (they import qgis)."""
    paths = []
    for top in ("landcover_plugin", "scripts"):
        for folder, _, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith(".py") and (top == "landcover_plugin" or "from qgis" in _read(path)):
                    paths.append(path)
    return sorted(paths)


def _is_enum_value(value) -> bool:
    return isinstance(value, enum.Enum) or (isinstance(value, int) and type(value) not in (int, bool))


def _qgis_names(tree: ast.Module) -> dict:
    """The names a module imports from qgis, resolved in this PyQGIS."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "qgis":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
    return names


def unscoped_enums(source: str) -> list[str]:
    """`Class.Value` where Value is an enum value whose enum is not Class: Qt5 accepts it, PyQt6 does not."""
    tree = ast.parse(source)
    names = _qgis_names(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain, base = [node.attr], node.value
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in names:
            continue
        owner = names[base.id]
        for attr in chain:
            value = getattr(owner, attr, None)
            if value is None:
                break
            if _is_enum_value(value) and type(value) is not owner:
                found.append(f"line {node.lineno}: {base.id}.{'.'.join(chain)}")
                break
            owner = value
    return sorted(set(found))


def test_the_scan_finds_what_it_looks_for():
    bad = ("from qgis.core import QgsProcessing, QgsProcessingParameterNumber\n"
           "from qgis.PyQt.QtCore import Qt\n"
           "a = QgsProcessing.TypeRaster\nb = QgsProcessingParameterNumber.Integer\nc = Qt.AlignLeft\n"
           "ok = (QgsProcessing.SourceType.TypeRaster, Qt.AlignmentFlag.AlignLeft, QgsProcessing.TEMPORARY_OUTPUT)\n")
    assert sorted(f.split(": ")[1] for f in unscoped_enums(bad)) == [
        "QgsProcessing.TypeRaster", "QgsProcessingParameterNumber.Integer", "Qt.AlignLeft"]
    lines = ["from PyQt5.QtCore import QTimer", "dialog.exec_()", "QgsField('a', QVariant.Int)",
             "from qgis.PyQt.QtWidgets import QAction, QMenu", "param.FlagAdvanced"]
    assert all(any(p.search(line) for p, _ in QT5_ONLY) for line in lines)
    assert not any(p.search("QgsProcessingParameterDefinition.Flag.FlagAdvanced") for p, _ in QT5_ONLY)
    qgis3 = ["sink(fields, QgsWkbTypes.Type.Polygon)", "g == QgsWkbTypes.GeometryType.PolygonGeometry",
             "e.button() == Qt.MidButton", "supportsQt6=True"]
    assert all(any(p.search(line) for p, _ in QGIS3_ONLY) for line in qgis3)
    assert not any(p.search("Qgis.WkbType.Polygon, Qgis.GeometryType.Polygon") for p, _ in QGIS3_ONLY)
    assert problems_in('p = "~/.local/share/QGIS/QGIS3/profiles/default"', "x.py")
    assert not problems_in('p = [f"QGIS{v}/profiles" for v in (3, 4)]  # QGIS3/profiles and QGIS4/profiles', "x.py")


def problems_in(source: str, rel: str) -> list[str]:
    """Qt5-only idioms and QGIS-3-only forms in a source (its path `rel` from the repository)."""
    allowed = ALLOWED.get(rel, ())
    problems = [f"line {source[:m.start()].count(chr(10)) + 1}: {m.group(0)} ({why})"
                for pattern, why in QT5_ONLY + QGIS3_ONLY for m in pattern.finditer(source)
                if m.group(0) not in allowed]
    for number, line in enumerate(source.splitlines(), 1):
        if QGIS3_FOLDER.search(line) and "QGIS4" not in line:
            problems.append(f"line {number}: names QGIS 3's profile folder only; QGIS 4 reads QGIS4/profiles")
    return problems


@pytest.mark.parametrize("path", loaded_by_qgis(), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_qt5_only_idiom_nor_qgis3_only_form(path):
    source = _read(path)
    problems = problems_in(source, os.path.relpath(path, ROOT))
    problems += [f"{hit} is unscoped: name its enum" for hit in unscoped_enums(source)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", ["Makefile", "README.md"])
def test_set_up_and_docs_name_qgis4_beside_qgis3(name):
    lines = [f"line {n}" for n, line in enumerate(_read(os.path.join(ROOT, name)).splitlines(), 1)
             if QGIS3_FOLDER.search(line) and "QGIS4" not in line]
    assert not lines, f"{name} names QGIS 3's profile folder without QGIS 4's on {lines}"


def test_metadata_admits_qgis_4():
    from conftest import load_script

    assert load_script("package_plugin").metadata_problems(_read(os.path.join(ROOT, "metadata.txt"))) == []
