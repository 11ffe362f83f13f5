"""QGIS 4 (Qt6) loads the plugin only if its code runs on PyQt6: no Qt5-only idiom may come back.

Two checks over every source QGIS loads (the plugin and the scripts run inside QGIS):
- the idioms QGIS's Qt6 migration guide lists, by pattern (PyQt5 imports, exec_, QVariant types...);
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


# compat.py is where the one Qt5 form lives, behind its Qt6 form
ALLOWED = {os.path.join("landcover_plugin", "processing", "compat.py"): ("QtWidgets import QAction",)}


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


@pytest.mark.parametrize("path", loaded_by_qgis(), ids=lambda p: os.path.relpath(p, ROOT))
def test_no_qt5_only_idiom(path):
    source = _read(path)
    allowed = ALLOWED.get(os.path.relpath(path, ROOT), ())
    problems = [f"line {source[:m.start()].count(chr(10)) + 1}: {m.group(0)} ({why})"
                for pattern, why in QT5_ONLY for m in pattern.finditer(source) if m.group(0) not in allowed]
    problems += [f"{hit} is unscoped: name its enum" for hit in unscoped_enums(source)]
    assert not problems, "\n".join(problems)


def test_metadata_says_qt6():
    metadata = _read(os.path.join(ROOT, "metadata.txt"))
    assert re.search(r"^supportsQt6=(True|yes)$", metadata, re.M)
