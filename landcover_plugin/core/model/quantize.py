"""int8 inference on CPUs: post-training quantization calibrated on the model file's own windows.

The network is exported with dynamic batch and window size, observed on the calibration
windows the model file carries (training imagery, never random data), converted to int8
(torchao's PT2E flow with the X86 Inductor quantizer) and compiled ahead of time by Inductor
into a package (a shared library whose kernels use the CPU's VNNI/AMX int8 instructions) for
one input shape. Compiling takes tens of seconds, loading a package about one, so packages
are kept between runs in `cache_dir()`, named by everything that shapes them (weights,
calibration windows, normalisation, input shape, torch and torchao versions, CPU), and the
engine chooses int8 by itself for a raster only where that pays (`precision.decide`).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import weakref

from ..errors import InputError

# Measured on the 2-core development CPU held to AVX2 (no bf16 kernels), whole path at 2048²: int8
# 0.355 MP/s against fp32's 0.251, 1.2 s saved per megapixel; quantizing and compiling a package took
# 15-30 s once per machine and model, loading a cached one 1.3 s. So auto chooses int8 from 2 MP, compiling
# the package on the first such run: whether a package happens to be cached never changes the precision,
# so it never changes the map (it once did: 2 MP with a package, 32 MP without). Where the CPU has bf16
# kernels bf16 ran about as fast as int8 (0.446-0.470 against 0.357-0.536 MP/s, interleaved runs,
# 2026-11-27) in less memory with nothing to compile, so auto keeps bf16 there.
INT8_MIN_PIXELS = 2_000_000
# auto uses int8 only for a model whose file records that int8 labels agreed with fp32's on at least
# this share of pixels of real imagery it was not trained on (training.int8.agreement, from
# scripts/bench.py precision); see the model cards for the bundled models' figures.
INT8_MIN_AGREEMENT = 0.995
# Layers kept in floating point: the encoder's first two levels (the stem, at full resolution, and the
# first down block, at half). Quantizing them moved the most labels of imagery the model never saw:
# with every layer int8, 99.09% of the labels of 32 OpenAerialMap chips agreed with fp32's; with these
# four convolutions in fp32 99.51% (all 122 chips: 99.509%), the whole encoder 99.60%, the decoder
# 99.21%, the stem alone 99.36%. They cost int8 about 13% of its speed (0.535 -> 0.463 MP/s here).
FLOAT_LAYERS = ("stem.", "downs.0.")
# Tried and left (2026-12-07, 122 chips, CPU held to AVX2, bundled model with its 8-bit weights): weight scales
# allowed below the quantizer's floor of 2^-12 (batch-norm folding leaves most channels of the deep layers
# under it, so they are rounded to a few dozen steps): 99.489% against the default's 99.501%.
# how packages are built, beside the arithmetic (in their cache names: a package built otherwise is not reused)
PACKAGE = "aot-inductor, channels-last, batch 1 to the shape's"
SCHEME = ("x86-inductor, per-channel weights, histogram activations, float " + "+".join(FLOAT_LAYERS)
          + ", upsampling as int8 1x1 + depth-to-space")


def faithful(spec) -> bool:
    """Whether the model file records an int8 agreement with fp32 good enough for auto to use int8, measured
    with the quantization that runs now (another scheme moves other labels)."""
    record = spec.training.get("int8") if isinstance(spec.training, dict) else None
    if not isinstance(record, dict) or record.get("scheme") != SCHEME:
        return False
    agreement = record.get("agreement")
    return isinstance(agreement, (int, float)) and agreement >= INT8_MIN_AGREEMENT


def cache_dir(kind: str = "int8") -> str:
    """Where compiled packages are kept: `int8` (or `fp32`) in LANDCOVER_CACHE_DIR, else in the user's
    cache folder (~/.cache/landcover_plugin), which outlives a reboot as /tmp does not."""
    base = os.environ.get("LANDCOVER_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "landcover_plugin")
    return os.path.join(base, kind)


def compiler_available() -> bool:
    """Inductor compiles int8 kernels with the system's C++ compiler; QGIS installs rarely bring one."""
    import shutil

    return any(shutil.which(c) for c in ("g++", "c++", "clang++", "cl"))


def int8_available() -> bool:
    """torchao is importable and a C++ compiler is there: what int8 needs besides the model's windows."""
    import logging

    if not compiler_available():
        return False

    # torchao warns at import about its CUDA kernels (mxfp8, cutlass) that a CPU build of torch cannot
    # load, and torch about an enum torchao registers: neither concerns int8 on a CPU
    quiet = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.ERROR)
    try:
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    except ImportError:
        return False
    finally:
        for q, level in zip(quiet, levels):
            q.setLevel(level)
    return True


def package_path(network, mean, std, shape, kind: str = "int8", scheme: str = SCHEME) -> str:
    """The cache file of `network`'s int8 (or compiled fp32: compiled.py) package for inputs of `shape`, built
    by `scheme` (a package built otherwise is not reused)."""
    import numpy as np
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    windows = getattr(network, "calibration_windows", None) if kind == "int8" else None
    h.update(b"" if windows is None else np.ascontiguousarray(windows).tobytes())
    h.update(_code_of(network))
    try:
        import torchao

        ao = torchao.__version__ if kind == "int8" else None
    except ImportError:
        ao = None
    h.update(json.dumps([scheme, PACKAGE, list(mean), list(std), list(shape),
                         torch.__version__, ao, torch.backends.cpu.get_cpu_capability()]).encode())
    return os.path.join(cache_dir(kind), h.hexdigest()[:32] + ".pt2")


def _code_of(network) -> bytes:
    """The source of the module defining `network`'s class: the graph a package holds is traced from that code,
    so a plugin whose network code changed (Dynamic World's compiled forms) builds its packages anew."""
    module = sys.modules.get(type(network).__module__)
    path = getattr(module, "__file__", None)
    if not path or not os.path.isfile(path):
        return type(network).__qualname__.encode()
    with open(path, "rb") as f:
        return f.read()


# loaded packages by source network and input shape: evaluating many images loads once
_loaded: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def int8_network(source, fused, mean, std, shape, log=lambda m: None):
    """A callable running `fused` (the inference form of `source`, a network from load_model) in int8
    on normalised channels-last inputs of `shape` (batch, bands, tile, tile), or of a shorter batch.

    Loaded from the cache where the package exists, else quantized on the calibration windows
    `source` carries, compiled and stored there first.
    """
    shape = tuple(shape)
    windows = getattr(source, "calibration_windows", None)
    return cached_package(source, ("int8", shape), package_path(source, mean, std, shape),
                          lambda path: _compile(fused, windows, mean, std, shape, path), log,
                          "Quantizing the network to int8 and compiling it for this CPU")


def cached_package(source, key, path: str, build, log, doing: str):
    """The package `path` of `source`, loaded once per process and key; built by `build(path)` first where the
    cache does not hold it."""
    per_key = _loaded.setdefault(source, {})
    if key not in per_key:
        if not os.path.exists(path):
            log(f"{doing} (once; kept in {os.path.dirname(path)})...")
            build(path)
        per_key[key] = _load(path, lambda: build(path))
    return per_key[key]


def _load(path: str, recompile):
    """Load a package; one that cannot be loaded (damaged, or left by another build) is compiled again."""
    import torch

    try:
        return torch._inductor.aoti_load_package(path)
    except (RuntimeError, OSError, ValueError):
        os.remove(path)
        recompile()
        return torch._inductor.aoti_load_package(path)


def _compile(network, windows, mean, std, shape, path: str) -> None:
    if windows is None or len(windows) == 0:
        raise InputError("This model file carries no calibration windows, which int8 needs; add them with "
                         "scripts/model_metadata.py MODEL --calibration IMAGES MASKS, or choose auto, fp32 or bf16.")
    if not compiler_available():
        raise InputError("int8 compiles the network for this CPU and needs a C++ compiler (g++ on Linux, Xcode's "
                         "clang on macOS, Visual Studio's cl on Windows) on the PATH; choose auto, fp32 or bf16.")
    if not int8_available():
        raise InputError("int8 needs the torchao package (pip install torchao==0.18.0 into QGIS's Python); "
                         "choose the auto, fp32 or bf16 precision.")
    import torch

    with torch.no_grad():
        write_package(quantized(network, windows, mean, std), shape, path)


def write_package(module, shape, path: str) -> None:
    """Compile `module` with AOTInductor for channels-last inputs of `shape` (or a shorter batch) into the
    package `path`, which appears whole or not at all."""
    import torch

    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.tmp-{os.getpid()}.pt2"  # AOTInductor wants the .pt2 ending
    try:
        with torch.no_grad():
            # compiled code assumes its example's memory layout: channels-last, as the engine feeds it
            example = torch.zeros(shape).contiguous(memory_format=torch.channels_last)
            # any batch up to shape's: a raster's last, short batch runs as it is instead of padded
            dynamic = ({0: torch.export.Dim("batch", min=1, max=shape[0])},) if shape[0] > 1 else None
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
            # freezing makes the weights constants, so that Inductor prepacks them for its int8 kernels
            with torch._inductor.config.patch(freezing=True):
                torch._inductor.aoti_compile_and_package(program, package_path=tmp)
        os.replace(tmp, path)  # whole or not at all: another process may be reading the cache
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def quantized(network, windows, mean, std):
    """`network` (inference form, its upsampling rewritten as unet.DepthToSpaceUp) quantized to int8,
    FLOAT_LAYERS apart, observed on the raw `windows`:
    a graph module of quantize and dequantize steps around the convolutions, before compilation."""
    import torch
    from torch.export import Dim
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    from .transforms import normalize
    from .unet import with_depth_to_space

    transform = getattr(network, "input_transform", None)
    network = with_depth_to_space(network)
    x = torch.from_numpy(windows.astype("float32"))
    x = normalize(x, torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1), transform)
    batch, rows, cols = Dim("batch", min=1, max=4096), Dim("rows", min=1, max=1024), Dim("cols", min=1, max=1024)
    with torch.no_grad():
        # calibrated on windows of another size than the tiles: the export keeps sizes dynamic
        exported = torch.export.export(network, (x[:2],), dynamic_shapes=({0: batch, 2: 16 * rows, 3: 16 * cols},))
        quantizer = xiq.X86InductorQuantizer()
        quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
        for name, module in network.named_modules():
            if name.startswith(FLOAT_LAYERS) and isinstance(module, torch.nn.Conv2d):
                quantizer.set_module_name_qconfig(name, None)
        observed = prepare_pt2e(exported.module(), quantizer)
        observed(x)
        return convert_pt2e(observed)
