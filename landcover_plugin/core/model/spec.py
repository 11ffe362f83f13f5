"""What a model file says about its network besides the weights: classes, bands, normalisation,
architecture, tiling and polygon defaults; parsed and checked from the file's JSON metadata."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..errors import ModelFileError
from .classes import LandClass, parse_classes

FORMAT_VERSION = 1
ARCHITECTURES = ("unet", "dynamic_world")
# Input transforms a model file can name (their constants are the file's mean and std): "standardize" is
# (x - mean) / std; "log_sigmoid" is sigmoid((log(1 + log_scale * x) - mean) / std), Dynamic World's.
TRANSFORMS = ("standardize", "log_sigmoid")


@dataclass(frozen=True)
class PolygonDefaults:
    """What the model's polygons should be unless the user says otherwise: a buildings model
    outlines buildings only, drops specks and straightens edges; a land-cover model keeps
    every class and every pixel's outline."""

    classes: tuple[int, ...] | None = None  # class ids polygonized; None: all
    min_area_m2: float = 0.0
    simplify_m: float = 0.0

    def to_dict(self) -> dict:
        return {"classes": list(self.classes) if self.classes is not None else None,
                "min_area_m2": self.min_area_m2, "simplify_m": self.simplify_m}


@dataclass(frozen=True)
class ModelSpec:
    """Everything the engine needs to know about a model besides its weights."""

    classes: tuple[LandClass, ...]
    bands: tuple[int | str, ...]  # 1-based band numbers, or band names matched to the raster's
    mean: tuple[float, ...]
    std: tuple[float, ...]
    base_width: int = 32
    depth: int = 4
    architecture: str = "unet"
    gsd: float | None = None
    tile_size: int = 512
    overlap: int = 64
    training: dict = field(default_factory=dict)
    name: str = "land-cover U-Net"
    polygons: PolygonDefaults = field(default_factory=lambda: PolygonDefaults())
    transform: dict = field(default_factory=lambda: {"name": "standardize"})
    alignment: int = 1  # window origins on multiples of this (a network that resamples by 2 needs 2)
    # at the raster's edges: "mirror" the raster (the U-Nets), or "network": the network's own zero padding, as
    # the model's whole-image runs had it (windows crossing an edge run on their part inside the raster)
    edges: str = "mirror"
    level: str | None = None  # the Sentinel-2 processing level the model reads ("L1C"), where it matters

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def with_training(self, **info) -> "ModelSpec":
        return replace(self, training={**self.training, **info})

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "architecture": {
                "name": self.architecture,
                "in_channels": self.in_channels,
                "num_classes": self.num_classes,
                "base_width": self.base_width,
                "depth": self.depth,
            },
            "classes": [c.to_dict() for c in self.classes],
            "input": {"bands": list(self.bands), "mean": list(self.mean), "std": list(self.std),
                      "transform": dict(self.transform), **({"level": self.level} if self.level else {})},
            "gsd": self.gsd,
            "alignment": self.alignment,
            "edges": self.edges,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "training": self.training,
            "polygons": self.polygons.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc) -> "ModelSpec":
        return parse_spec(doc)


def _int(doc, key, where, lo=None, hi=None) -> int:
    v = doc.get(key) if isinstance(doc, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo) or (hi is not None and v > hi):
        bound = f" from {lo} to {hi}" if hi is not None else f" of at least {lo}" if lo is not None else ""
        raise ModelFileError(f"The model metadata needs \"{key}\" in {where} as an integer{bound}.")
    return v


def _numbers(values, n, what) -> tuple[float, ...]:
    if (not isinstance(values, list) or len(values) != n
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ModelFileError(f"The model metadata needs input.{what} as a list of {n} numbers, one per band.")
    return tuple(float(v) for v in values)


def parse_spec(doc, where: str = "model file") -> ModelSpec:
    if not isinstance(doc, dict):
        raise ModelFileError(f"The metadata of {where} is not a JSON object.")
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise ModelFileError(f"{where} uses model format {version}; update the plugin to read it.")
        raise ModelFileError(f"The metadata of {where} has no valid format_version (expected {FORMAT_VERSION}).")
    arch = doc.get("architecture")
    if not isinstance(arch, dict) or arch.get("name") not in ARCHITECTURES:
        raise ModelFileError(f"{where} declares an unknown architecture; supported: {', '.join(ARCHITECTURES)}.")
    in_ch = _int(arch, "in_channels", "architecture", 1, 64)
    n_cls = _int(arch, "num_classes", "architecture", 1, 255)
    unet = arch["name"] == "unet"
    base = _int(arch, "base_width", "architecture", 1, 1024) if unet else 32
    depth = _int(arch, "depth", "architecture", 1, 7) if unet else 1
    classes = parse_classes(doc.get("classes"), where)
    if len(classes) != n_cls:
        raise ModelFileError(f"{where} declares {n_cls} classes but lists {len(classes)}.")
    inp = doc.get("input")
    if not isinstance(inp, dict):
        raise ModelFileError(f"The metadata of {where} has no \"input\" section (bands, mean, std).")
    bands = _bands(inp.get("bands"), in_ch)
    mean = _numbers(inp.get("mean"), in_ch, "mean")
    std = _numbers(inp.get("std"), in_ch, "std")
    if any(s <= 0 for s in std):
        raise ModelFileError("The model metadata has a zero or negative input.std.")
    gsd = doc.get("gsd")
    if gsd is not None and (not isinstance(gsd, (int, float)) or isinstance(gsd, bool) or not 0 < gsd < 1e6):
        raise ModelFileError("The model metadata's gsd must be a positive number of metres or null.")
    alignment = _int(doc, "alignment", "the metadata", 1, 64) if "alignment" in doc else 1
    tile = _int(doc, "tile_size", "the metadata", max(2 ** depth, 2 * alignment), 8192)
    overlap = _int(doc, "overlap", "the metadata", 0, tile // 2 - 1)
    training = doc.get("training", {})
    if not isinstance(training, dict):
        raise ModelFileError("The model metadata's training section must be an object.")
    name = doc.get("name") if isinstance(doc.get("name"), str) else "land-cover U-Net"
    return ModelSpec(classes=classes, bands=bands, mean=mean, std=std, base_width=base, depth=depth,
                     architecture=arch["name"], gsd=float(gsd) if gsd is not None else None, tile_size=tile,
                     overlap=overlap, training=training, name=name,
                     polygons=_parse_polygons(doc.get("polygons"), classes),
                     transform=_transform(inp.get("transform")), alignment=alignment, edges=_edges(doc),
                     level=_level(inp.get("level")))


def _edges(doc) -> str:
    edges = doc.get("edges", "mirror")
    if edges not in ("mirror", "network"):
        raise ModelFileError("The model metadata's edges must be \"mirror\" or \"network\".")
    return edges


def _level(level) -> str | None:
    if level not in (None, "L1C", "L2A"):
        raise ModelFileError("The model metadata's input.level must be \"L1C\", \"L2A\" or absent.")
    return level


def _bands(bands, n) -> tuple[int | str, ...]:
    numbers = isinstance(bands, list) and all(isinstance(b, int) and not isinstance(b, bool) and b >= 1
                                              for b in bands)
    names = isinstance(bands, list) and all(isinstance(b, str) and b.strip() for b in bands)
    if not (numbers or names) or len(bands) != n or len(set(bands)) != n:
        raise ModelFileError(f"The model metadata needs input.bands as {n} different band numbers (1-based) or "
                             f"band names.")
    return tuple(bands)


def _transform(doc) -> dict:
    if doc is None:
        return {"name": "standardize"}
    if not isinstance(doc, dict) or doc.get("name") not in TRANSFORMS:
        raise ModelFileError(f"The model metadata's input.transform must name one of {', '.join(TRANSFORMS)}.")
    if doc["name"] == "log_sigmoid":
        scale = doc.get("log_scale")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not 0 < scale < 1e6:
            raise ModelFileError("The model metadata's log_sigmoid transform needs a positive log_scale.")
        return {"name": "log_sigmoid", "log_scale": float(scale)}
    return {"name": "standardize"}


def _parse_polygons(doc, classes) -> PolygonDefaults:
    if doc is None:
        return PolygonDefaults()
    if not isinstance(doc, dict):
        raise ModelFileError("The model metadata's polygons section must be an object.")
    ids = doc.get("classes")
    known = {c.id for c in classes}
    if ids is not None and (not isinstance(ids, list) or not ids or not set(ids) <= known):
        raise ModelFileError(f"The model metadata's polygons.classes must list class ids of the model "
                             f"({sorted(known)}) or be null.")
    values = []
    for key in ("min_area_m2", "simplify_m"):
        v = doc.get(key, 0.0)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1e9:
            raise ModelFileError(f"The model metadata's polygons.{key} must be a number >= 0.")
        values.append(float(v))
    return PolygonDefaults(tuple(ids) if ids is not None else None, *values)
