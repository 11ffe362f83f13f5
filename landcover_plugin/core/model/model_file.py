"""The model file: one .safetensors file with our JSON metadata under the key "landcover".

Loading parses the safetensors header ourselves before anything else, so a pickle,
a zip checkpoint or random bytes are refused with a clear sentence and nothing in
the file is ever executed (safetensors holds raw tensors only). A SHA-256 of the tensor
table, the metadata and the tensor data is recorded when a file is saved: a damaged
download or copy is refused, never run with weights a flipped byte changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import struct

from ..errors import ModelFileError
from .spec import ModelSpec, parse_spec
from .weights import restore_int8, stored_weights

METADATA_KEY = "landcover"
# A few windows of the training imagery (uint8 or the imagery's own dtype, (n, bands, h, w), raw
# values): int8 inference calibrates its activation ranges on them, so a model file carries the
# data its quantization needs and never falls back to random tensors.
CALIBRATION_KEY = "calibration.windows"
DIGEST_KEY = "landcover.sha256"
_MAX_HEADER = 100 * 1024 * 1024
_CHUNK = 1 << 20
logger = logging.getLogger("landcover.model")


def build_network(spec: ModelSpec):
    if spec.architecture == "dynamic_world":
        from .dynamic_world import DynamicWorldNet

        network = DynamicWorldNet(spec.in_channels, spec.num_classes)
    else:
        from .unet import UNet

        network = UNet(spec.in_channels, spec.num_classes, spec.base_width, spec.depth)
    network.input_transform = dict(spec.transform)  # how the engine turns raw values into the network's input
    network.edges = spec.edges
    return network


def save_model(path: str, network, spec: ModelSpec, half: bool = False, calibration=None,
               storage: str | None = None) -> None:
    """Write weights and metadata; the file appears whole or not at all.

    storage: "float32", "float16" (half the file; `half=True` says the same) or "int8" (the large
    convolutions' weights as 8-bit integers with a float32 scale per output channel, the rest as in
    float16: 0.6 of float16's size for the bundled U-Nets). Batch-norm statistics, and any tensor with
    values beyond float16's range, stay float32: the running variance after a decoder's first convolution
    can pass 65504, and as infinity it silently zeroes those channels. Loading restores float32 weights.
    calibration: windows of training imagery (n, bands, h, w) for int8 inference; by default
    those the network was loaded with, if any.
    """
    import torch

    parse_spec(spec.to_dict())  # never write a file we would refuse to load
    state = stored_weights(network, storage or ("float16" if half else "float32"))
    if calibration is None:
        calibration = getattr(network, "calibration_windows", None)
    if calibration is not None:
        if calibration.ndim != 4 or calibration.shape[1] != spec.in_channels:
            raise ModelFileError(f"Calibration windows must be (n, {spec.in_channels}, h, w), not "
                                 f"{tuple(calibration.shape)}.")
        state[CALIBRATION_KEY] = torch.from_numpy(calibration.copy()).contiguous()
    write_tensors(path, state, spec.to_dict())


def write_tensors(path: str, tensors: dict, doc: dict) -> None:
    """Write tensors and the model metadata `doc` with their checksum; the file appears whole or not at all
    (with the permissions of a new file, or those of the file it replaces)."""
    from safetensors.torch import save

    meta = {METADATA_KEY: json.dumps(doc)}
    blob = save(tensors, metadata=meta)
    header, start = _parse_header(blob[:8], lambda n: blob[8:8 + n], len(blob), "the new model file")
    meta[DIGEST_KEY] = _digest(header, [memoryview(blob)[start:]])
    blob = save(tensors, metadata=meta)
    umask = os.umask(0)
    os.umask(umask)
    mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o666 & ~umask
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(blob)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def rewrite(path: str, spec, tensors: dict | None = None) -> None:
    """Store `spec` as the model file's metadata (and `tensors` in place of those of the same names), the
    other tensors copied unchanged; a spec the engine would refuse to read is refused before anything is
    written."""
    from safetensors import safe_open

    doc = spec.to_dict()
    type(spec).from_dict(doc)
    with safe_open(path, "pt") as f:
        kept = {k: f.get_tensor(k) for k in f.keys()}
    write_tensors(path, {**kept, **(tensors or {})}, doc)


def _digest(header: dict, chunks) -> str:
    """SHA-256 of the tensor table and the metadata (canonical JSON, the digest itself left out) and the data."""
    table = {k: v for k, v in header.items() if k != "__metadata__"}
    meta = {k: v for k, v in (header.get("__metadata__") or {}).items() if k != DIGEST_KEY}
    h = hashlib.sha256(json.dumps([table, meta], sort_keys=True, separators=(",", ":")).encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _file_chunks(path: str, start: int):
    with open(path, "rb") as fh:
        fh.seek(start)
        while chunk := fh.read(_CHUNK):
            yield chunk


def _check_digest(path: str, header: dict, start: int) -> bool:
    """Refuse a file whose contents differ from the checksum saved with it; False for a file saved before model
    files carried one."""
    recorded = (header.get("__metadata__") or {}).get(DIGEST_KEY)
    if recorded is None:
        return False
    try:
        actual = _digest(header, _file_chunks(path, start))
    except OSError as exc:
        raise ModelFileError(f"The model file {_name(path)} cannot be read ({exc.strerror}).") from None
    if actual != recorded:
        raise ModelFileError(f"The model file {_name(path)} is damaged: its contents differ from the checksum "
                             "recorded when it was saved (a broken download or copy); download or copy it again.")
    return True


def read_spec(path: str) -> ModelSpec:
    """Read and validate the metadata, after checking the file against its checksum (no tensors are loaded)."""
    return _read_checked(path)[0]


def _read_checked(path: str) -> tuple[ModelSpec, bool]:
    """(the file's ModelSpec, whether a checksum was recorded and matched)."""
    header, start = _read_header(path)
    checked = _check_digest(path, header, start)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise ModelFileError(
            f"{_name(path)} is a safetensors file but not a land-cover model: "
            f"it has no \"{METADATA_KEY}\" metadata.")
    try:
        doc = json.loads(meta[METADATA_KEY])
    except (TypeError, ValueError):
        raise ModelFileError(f"The \"{METADATA_KEY}\" metadata of {_name(path)} is not valid JSON.") from None
    return parse_spec(doc, _name(path)), checked


def load_model(path: str):
    """Return (network in eval mode on the CPU, ModelSpec), or raise ModelFileError.

    The network's `calibration_windows` attribute holds the file's calibration windows (numpy), or None.
    """
    spec, checked = _read_checked(path)
    if not checked:
        logger.warning(f"{_name(path)} was saved before model files carried a checksum, so damage to it cannot be "
                       "detected; python scripts/model_metadata.py MODEL --checksum records one.")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"The weights in {_name(path)} cannot be read ({exc}).") from None
    calibration = state.pop(CALIBRATION_KEY, None)
    state = restore_int8(state, _name(path))
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
            f"({_architecture(spec)}, {spec.in_channels} bands, "
            f"{spec.num_classes} classes): {detail}.")
    network.load_state_dict(state, strict=True)
    network.eval()
    # A plain attribute, not a buffer: the windows are data about the network, not part of its state.
    network.calibration_windows = None if calibration is None else calibration.numpy()
    return network, spec


def _architecture(spec) -> str:
    if spec.architecture == "unet":
        return f"unet, base width {spec.base_width}, depth {spec.depth}"
    return spec.architecture


def _name(path: str) -> str:
    return f"\"{os.path.basename(path)}\""


def _read_header(path: str) -> tuple[dict, int]:
    """(the safetensors header, where the tensor data starts), or ModelFileError."""
    try:
        with open(path, "rb") as fh:
            return _parse_header(fh.read(8), fh.read, os.fstat(fh.fileno()).st_size, _name(path))
    except OSError as exc:
        raise ModelFileError(f"The model file {_name(path)} cannot be read ({exc.strerror}).") from None


def _parse_header(head: bytes, read, size: int, name: str) -> tuple[dict, int]:
    """The header of a safetensors file whose first 8 bytes are `head`; read(n) gives the n bytes after."""
    if len(head) < 8:
        raise ModelFileError(f"{name} is too short to be a safetensors model file.")
    (n,) = struct.unpack("<Q", head)
    raw = read(n) if 0 < n <= min(_MAX_HEADER, size - 8) else b""
    # Only a file that is not a safetensors file is judged by its first bytes: a safetensors
    # header length can start with the byte 0x80 of a pickle too (a length of 0x1d80, say).
    if not raw.startswith(b"{"):
        if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
            raise ModelFileError(
                f"{name} is a pickle or PyTorch checkpoint, which is never loaded because it can "
                "run code; convert it to a .safetensors model file.")
        if not raw:
            raise ModelFileError(f"{name} is not a safetensors model file.")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ModelFileError(f"{name} is not a safetensors model file (its header is not JSON).") from None
    if not isinstance(header, dict):
        raise ModelFileError(f"{name} is not a safetensors model file.")
    return header, 8 + n
