"""Choosing and preparing the torch device."""
from __future__ import annotations

import os

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def torch_or_error():
    """Import torch, or explain how to install it."""
    try:
        import torch
    except ImportError:
        raise InputError(
            "PyTorch is not installed in this Python; install the CPU build with "
            "\"python3 -m pip install torch\" (see the README for QGIS on Windows and macOS).") from None
    return torch


def resolve_device(name: str):
    torch = torch_or_error()
    if name not in DEVICES:
        raise InputError(f"Unknown device \"{name}\"; choose one of {', '.join(DEVICES)}.")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is available to PyTorch; choose the cpu or auto device.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        # torch defaults to the physical cores it detects; a container may show
        # more logical CPUs than it is allowed to use.
        n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        torch.set_num_threads(max(1, n))
    return torch.device(name)


def describe(device) -> str:
    torch = torch_or_error()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


PRECISIONS = ("auto", "fp32")


def amp_dtype(device, precision: str = "auto"):
    """Mixed-precision dtype for the device, or None for full precision.

    CUDA: bf16 (fp16 where bf16 is missing). CPU: bf16 where oneDNN has bf16 kernels
    (AVX512-BF16 or AMX): about twice as fast as fp32, and its labels agreed with fp32's on
    99.7-99.9% of pixels of held-out Dubai images (scripts/bench.py precision).
    """
    torch = torch_or_error()
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision \"{precision}\"; choose one of {', '.join(PRECISIONS)}.")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None
    except (AttributeError, RuntimeError):
        return None


def auto_batch(device, tile: int, base_width: int) -> int:
    if device.type != "cuda":
        return 2
    torch = torch_or_error()
    free, _ = torch.cuda.mem_get_info(device)
    # Rough activation footprint of a U-Net forward pass in half precision:
    # about 40 feature maps of base width at full tile resolution.
    per_sample = tile * tile * base_width * 2 * 40
    return int(max(1, min(32, free * 0.5 // per_sample)))


def read_threads(device) -> int:
    """Threads reading windows ahead: one beside a CPU network (which needs the cores), several for a GPU."""
    if device.type != "cuda":
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // 4))
