"""The models shipped in the plugin's models/ folder, and how a user's choice (a file, a bundled
model's key or name, or nothing) becomes a model file."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ModelFileError
from .model_file import read_spec
from .spec import ModelSpec

DEFAULT_MODEL_NAME = "landcover_default.safetensors"
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "models")


def default_model_path() -> str:
    """Where the bundled default model lives inside the plugin."""
    return os.path.join(MODELS_DIR, DEFAULT_MODEL_NAME)


@dataclass(frozen=True)
class BundledModel:
    key: str  # the file's stem: what scripts and qgis_process take
    path: str
    spec: ModelSpec

    @property
    def name(self) -> str:
        """The model's own name, offered in the toolbox."""
        return self.spec.name


def bundled_models() -> list[BundledModel]:
    """The models shipped in the plugin's models/ folder, the default first; unreadable files are left out."""
    found = []
    if os.path.isdir(MODELS_DIR):
        for f in sorted(os.listdir(MODELS_DIR), key=lambda f: (f != DEFAULT_MODEL_NAME, f)):
            if f.endswith(".safetensors"):
                path = os.path.join(MODELS_DIR, f)
                try:
                    found.append(BundledModel(f[:-len(".safetensors")], path, read_spec(path)))
                except ModelFileError:
                    continue
    return found


def find_bundled(value: str) -> BundledModel | None:
    """The bundled model whose key or name is `value` (case and surrounding spaces ignored)."""
    wanted = value.strip().casefold()
    return next((m for m in bundled_models() if wanted in (m.key.casefold(), m.name.casefold())), None)


def resolve_model_path(path: str | None) -> str:
    """A model file, a bundled model's key or name, or None for the bundled default; ModelFileError else."""
    if path:
        if os.path.isfile(path):
            return path
        bundled = find_bundled(path)
        if bundled is not None:
            return bundled.path
        names = ", ".join(f"{m.key} ({m.name})" for m in bundled_models()) or "none"
        raise ModelFileError(f"The model file {path} does not exist, and no bundled model has that name "
                             f"(bundled: {names}).")
    default = default_model_path()
    if not os.path.isfile(default):
        raise ModelFileError("No bundled default model is installed; give a model file "
                             "(train one with scripts/train.py).")
    return default
