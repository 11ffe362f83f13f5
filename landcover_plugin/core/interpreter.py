"""Which Python program runs this interpreter's code in a process of its own (standard library only)."""
from __future__ import annotations

import os
import shutil
import sys


def python_program() -> str | None:
    """This interpreter's own program under sys.exec_prefix (a venv's, or QGIS's on Windows and macOS)
    where there is one. QGIS and qgis_process embed Python, so there sys.executable may be the QGIS
    program, or whatever python3 PATH finds first (a pyenv shim on the development machine), which
    lacks QGIS's packages. None when no program is found."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if os.name == "nt":
        candidates = [os.path.join(sys.exec_prefix, n) for n in ("python.exe", "pythonw.exe")]
    else:
        candidates = [os.path.join(sys.exec_prefix, "bin", n) for n in (f"python{version}", "python3")]
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        candidates.append(exe)
    for candidate in candidates:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which(f"python{version}")
