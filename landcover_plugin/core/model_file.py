"""The model file: one .safetensors file with our JSON metadata under the key "landcover".

Loading parses the safetensors header ourselves before anything else, so a pickle,
a zip checkpoint or random bytes are refused with a clear sentence and nothing in
the file is ever executed (safetensors holds raw tensors only).
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field, replace

from .classes import LandClass, parse_classes
from .errors import ModelFileError

FORMAT_VERSION = 1
METADATA_KEY = "landcover"
# A few windows of the training imagery (uint8 or the imagery's own dtype, (n, bands, h, w), raw
# values): int8 inference calibrates its activation ranges on them, so a model file carries the
# data its quantization needs and never falls back to random tensors.
CALIBRATION_KEY = "calibration.windows"
ARCHITECTURES = ("unet",)
_MAX_HEADER = 100 * 1024 * 1024


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
    bands: tuple[int, ...]
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
            "input": {"bands": list(self.bands), "mean": list(self.mean), "std": list(self.std)},
            "gsd": self.gsd,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "training": self.training,
            "polygons": self.polygons.to_dict(),
        }

    @classmethod
    def from_dict(cls, doc) -> "ModelSpec":
        return _parse_spec(doc)


def build_network(spec: ModelSpec):
    from .unet import UNet

    return UNet(spec.in_channels, spec.num_classes, spec.base_width, spec.depth)


FLOAT16_MAX = 65504.0


def save_model(path: str, network, spec: ModelSpec, half: bool = False, calibration=None) -> None:
    """Write weights and metadata; the file appears whole or not at all.

    half: store weights as float16 (half the file). Batch-norm statistics, and any tensor
    with values beyond float16's range, stay float32: the running variance after a
    decoder's first convolution can pass 65504, and as infinity it silently zeroes
    those channels.
    calibration: windows of training imagery (n, bands, h, w) for int8 inference; by default
    those the network was loaded with, if any.
    """
    import torch
    from safetensors.torch import save_file

    _parse_spec(spec.to_dict())  # never write a file we would refuse to load
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if half:
        state = {k: v.half() if _fits_float16(k, v) else v.float() if v.is_floating_point() else v
                 for k, v in state.items()}
    if calibration is None:
        calibration = getattr(network, "calibration_windows", None)
    if calibration is not None:
        if calibration.ndim != 4 or calibration.shape[1] != spec.in_channels:
            raise ModelFileError(f"Calibration windows must be (n, {spec.in_channels}, h, w), not "
                                 f"{tuple(calibration.shape)}.")
        state[CALIBRATION_KEY] = torch.from_numpy(calibration.copy()).contiguous()
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        save_file(state, tmp, metadata={METADATA_KEY: json.dumps(spec.to_dict())})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # safetensors creates files readable by their owner only
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fits_float16(name: str, tensor) -> bool:
    if not tensor.is_floating_point() or name.endswith(("running_mean", "running_var")):
        return False
    return bool(tensor.float().abs().max() <= FLOAT16_MAX) if tensor.numel() else True


def read_spec(path: str) -> ModelSpec:
    """Read and validate only the metadata (fast; no tensors are loaded)."""
    header = _read_header(path)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise ModelFileError(
            f"{_name(path)} is a safetensors file but not a land-cover model: "
            f"it has no \"{METADATA_KEY}\" metadata.")
    try:
        doc = json.loads(meta[METADATA_KEY])
    except (TypeError, ValueError):
        raise ModelFileError(f"The \"{METADATA_KEY}\" metadata of {_name(path)} is not valid JSON.") from None
    return _parse_spec(doc, _name(path))


def load_model(path: str):
    """Return (network in eval mode on the CPU, ModelSpec), or raise ModelFileError.

    The network's `calibration_windows` attribute holds the file's calibration windows (numpy), or None.
    """
    spec = read_spec(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"The weights in {_name(path)} cannot be read ({exc}).") from None
    calibration = state.pop(CALIBRATION_KEY, None)
    network = build_network(spec)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all()))
    if broken:
        raise ModelFileError(
            f"The weights in {_name(path)} contain infinite or NaN values ({broken[:3]}); the model is damaged "
            f"(a float16 overflow, or training that diverged) and would give wrong classes.")
    if missing or extra or wrong:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra
                  else f"wrong shape for {wrong[:3]}")
        raise ModelFileError(
            f"The weights in {_name(path)} do not match its declared architecture "
            f"(unet, base width {spec.base_width}, depth {spec.depth}, {spec.in_channels} bands, "
            f"{spec.num_classes} classes): {detail}.")
    network.load_state_dict(state, strict=True)
    network.eval()
    # A plain attribute, not a buffer: the windows are data about the network, not part of its state.
    network.calibration_windows = None if calibration is None else calibration.numpy()
    return network, spec


def _name(path: str) -> str:
    return f"\"{os.path.basename(path)}\""


def _read_header(path: str) -> dict:
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{_name(path)} is too short to be a safetensors model file.")
            (n,) = struct.unpack("<Q", head)
            raw = fh.read(n) if 0 < n <= min(_MAX_HEADER, size - 8) else b""
    except OSError as exc:
        raise ModelFileError(f"The model file {_name(path)} cannot be read ({exc.strerror}).") from None
    # Only a file that is not a safetensors file is judged by its first bytes: a safetensors
    # header length can start with the byte 0x80 of a pickle too (a length of 0x1d80, say).
    if not raw.startswith(b"{"):
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            raise ModelFileError(
                f"{_name(path)} is a pickle or PyTorch checkpoint, which is never loaded because it can "
                "run code; convert it to a .safetensors model file.")
        if not raw:
            raise ModelFileError(f"{_name(path)} is not a safetensors model file.")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{_name(path)} is not a safetensors model file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{_name(path)} is not a safetensors model file.")
    return header


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


def _parse_spec(doc, where: str = "model file") -> ModelSpec:
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
    base = _int(arch, "base_width", "architecture", 1, 1024)
    depth = _int(arch, "depth", "architecture", 1, 7)
    classes = parse_classes(doc.get("classes"), where)
    if len(classes) != n_cls:
        raise ModelFileError(f"{where} declares {n_cls} classes but lists {len(classes)}.")
    inp = doc.get("input")
    if not isinstance(inp, dict):
        raise ModelFileError(f"The metadata of {where} has no \"input\" section (bands, mean, std).")
    bands = inp.get("bands")
    if (not isinstance(bands, list) or len(bands) != in_ch
            or not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in bands)):
        raise ModelFileError(f"The model metadata needs input.bands as {in_ch} band numbers (1-based).")
    mean = _numbers(inp.get("mean"), in_ch, "mean")
    std = _numbers(inp.get("std"), in_ch, "std")
    if any(s <= 0 for s in std):
        raise ModelFileError("The model metadata has a zero or negative input.std.")
    gsd = doc.get("gsd")
    if gsd is not None and (not isinstance(gsd, (int, float)) or isinstance(gsd, bool) or not 0 < gsd < 1e6):
        raise ModelFileError("The model metadata's gsd must be a positive number of metres or null.")
    tile = _int(doc, "tile_size", "the metadata", 2 ** depth, 8192)
    overlap = _int(doc, "overlap", "the metadata", 0, tile // 2 - 1)
    training = doc.get("training", {})
    if not isinstance(training, dict):
        raise ModelFileError("The model metadata's training section must be an object.")
    name = doc.get("name") if isinstance(doc.get("name"), str) else "land-cover U-Net"
    return ModelSpec(classes=classes, bands=tuple(bands), mean=mean, std=std, base_width=base, depth=depth,
                     gsd=float(gsd) if gsd is not None else None, tile_size=tile, overlap=overlap,
                     training=training, name=name, polygons=_parse_polygons(doc.get("polygons"), classes))


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


DEFAULT_MODEL_NAME = "landcover_default.safetensors"
MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")


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
