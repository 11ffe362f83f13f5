#!/usr/bin/env python3
"""Build the plugin's zip as QGIS installs it, and check it as plugins.qgis.org does on upload.

    python3 scripts/package_plugin.py --out dist/landcover_plugin-0.6.0.zip   # build, then check
    python3 scripts/package_plugin.py --check dist/landcover_plugin-0.6.0.zip # check a zip only

The zip holds one folder, landcover_plugin/, with metadata.txt (from the repository's top) and LICENSE
inside. The checks are those the plugin repository applies (size at most 25,000,000 bytes, no .pyc or
__pycache__, no path outside the folder, __init__.py, metadata.txt with its required keys, LICENSE) and
the one QGIS 4 applies when it lists plugins: a qgisMaximumVersion of 4.x. Standard library only, so it
runs with the system Python before any virtual environment exists.
"""
from __future__ import annotations

import argparse
import configparser
import io
import os
import re
import sys
import zipfile
from urllib.parse import urlparse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "landcover_plugin"
MAX_BYTES = 25_000_000  # the plugin repository's upload limit
REQUIRED = ("name", "description", "version", "qgisMinimumVersion", "author", "email", "about", "tracker",
            "repository")
FORBIDDEN_DIRS = ("__pycache__", ".git", "__MACOSX")


def plugin_files(root: str = ROOT) -> list[tuple[str, str]]:
    """(file on disk, name in the zip) for everything the plugin folder ships, metadata.txt included."""
    found = []
    for folder, dirs, files in os.walk(os.path.join(root, PACKAGE)):
        dirs[:] = sorted(d for d in dirs if d not in FORBIDDEN_DIRS)
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                path = os.path.join(folder, name)
                found.append((path, os.path.relpath(path, root).replace(os.sep, "/")))
    found.append((os.path.join(root, "metadata.txt"), f"{PACKAGE}/metadata.txt"))
    return found


def build(out: str, root: str = ROOT) -> str:
    """Write the zip (whole or not at all) and return its path."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".part"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for path, name in plugin_files(root):
            z.write(path, name)
    os.replace(tmp, out)
    return out


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def metadata_problems(text: str) -> list[str]:
    """What the plugin repository or QGIS 4 would refuse in a metadata.txt."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        return [f"metadata.txt cannot be parsed: {exc}"]
    if not parser.has_section("general"):
        return ["metadata.txt has no [general] section"]
    meta = dict(parser.items("general"))
    problems = [f"metadata.txt lacks {key}" for key in REQUIRED if not meta.get(key, "").strip()]
    maximum = meta.get("qgisMaximumVersion", "")
    if not maximum or not (4,) <= _version(maximum)[:1] < (5,):
        problems.append(f"qgisMaximumVersion is {maximum or 'missing'}: QGIS 4 lists only plugins whose maximum is "
                        "4.x (without one the ceiling is the minimum's major + .99)")
    if meta.get("qgisMinimumVersion") and _version(meta["qgisMinimumVersion"]) > (3, 22):
        problems.append(f"qgisMinimumVersion {meta['qgisMinimumVersion']} leaves out QGIS 3.22, which we support")
    if "/" in meta.get("author", ""):
        problems.append("the author contains a slash")
    for key in ("tracker", "repository", "homepage"):
        url = urlparse(meta.get(key, "") or "")
        if key in meta and not (url.scheme and url.netloc):
            problems.append(f"{key} is not a URL")
    if "supportsQt6" in meta:
        problems.append("supportsQt6 is deprecated and ignored: qgisMaximumVersion says it")
    return problems


def zip_problems(path: str) -> list[str]:
    """What the plugin repository's upload check or QGIS 4 would refuse in the zip at `path`."""
    size = os.path.getsize(path)
    problems = [f"the zip is {size:,} bytes, over the plugin repository's {MAX_BYTES:,}"] if size > MAX_BYTES else []
    try:
        z = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return problems + ["not a zip file"]
    with z:
        names = z.namelist()
        for name in names:
            parts = name.split("/")
            if ".." in parts or name.startswith("/"):
                problems.append(f"{name} has path information")
            if name.endswith((".pyc", ".pyo")) or any(d in parts for d in FORBIDDEN_DIRS):
                problems.append(f"{name} is a compiled file or a forbidden folder")
        bad = z.testzip()
        if bad:
            problems.append(f"{bad} is damaged in the zip")
        tops = sorted({n.split("/")[0] for n in names})
        if tops != [PACKAGE]:
            return problems + [f"the zip must hold one folder, {PACKAGE}/, not {tops}"]
        for needed in ("__init__.py", "metadata.txt", "LICENSE"):
            if f"{PACKAGE}/{needed}" not in names:
                problems.append(f"{PACKAGE}/{needed} is missing")
        if f"{PACKAGE}/metadata.txt" in names:
            text = io.TextIOWrapper(z.open(f"{PACKAGE}/metadata.txt"), encoding="utf-8").read()
            problems += metadata_problems(text)
            icon = re.search(r"^icon=(.+)$", text, re.M)
            if icon and f"{PACKAGE}/{icon.group(1).strip()}" not in names:
                problems.append(f"the icon {icon.group(1).strip()} is not in the zip")
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", help="zip to build, then check")
    group.add_argument("--check", help="zip to check")
    args = p.parse_args(argv)
    path = build(args.out) if args.out else args.check
    problems = zip_problems(path)
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if not problems:  # the path alone on the last line, for scripts that take it from there
        print(f"{os.path.getsize(path):,} bytes, ready for plugins.qgis.org and QGIS 3.22 to 4.x:\n{path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
