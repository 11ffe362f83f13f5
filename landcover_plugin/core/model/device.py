"""Choosing and preparing the torch device."""
from __future__ import annotations

import os

from ..errors import InputError

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


def device_names(name: str) -> list[str]:
    """The devices a job runs on, one process each where there are several: "cuda:all" (every
    GPU PyTorch sees), a comma-separated list ("cuda:0,cuda:1"; "cpu,cpu" runs two processes on
    the CPU, sharing its cores), or a single device name (see resolve_device)."""
    torch = torch_or_error()
    name = (name or "auto").strip()
    if name == "cuda:all":
        if not torch.cuda.is_available():
            raise InputError("All GPUs were asked for but no CUDA GPU is available to PyTorch; choose the cpu or "
                             "auto device.")
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    names = [n.strip() for n in name.split(",")]
    kinds = {resolve_device(n).type for n in names}
    if len(kinds) > 1:
        raise InputError(f"The devices \"{name}\" mix the CPU and GPUs; list devices of one kind.")
    return names


def resolve_device(name: str):
    """One device: auto, cpu, cuda (the current GPU) or cuda:N."""
    torch = torch_or_error()
    index = name[5:] if name.startswith("cuda:") else None
    if name not in DEVICES and not (index and index.isdigit()):
        raise InputError(f"Unknown device \"{name}\"; choose one of {', '.join(DEVICES)}, cuda:N (one GPU) or "
                         f"cuda:all (every GPU).")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is available to PyTorch; choose the cpu or auto device.")
    if index and int(index) >= torch.cuda.device_count():
        raise InputError(f"There is no GPU {index}: PyTorch sees {torch.cuda.device_count()}; choose cuda:0 to "
                         f"cuda:{torch.cuda.device_count() - 1}.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        # torch defaults to the physical cores it detects; a container may show
        # more logical CPUs than it is allowed to use.
        torch.set_num_threads(usable_cores())
    return torch.device(name)


def usable_cores() -> int:
    """The CPUs this process may run on (a container may show more than it is allowed to use)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def describe(device) -> str:
    torch = torch_or_error()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"


PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")  # fp16 appended: GPUs only


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels on this CPU (AVX512-BF16 or AMX): there bf16 is about twice fp32."""
    torch = torch_or_error()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def choose_precision(device, precision: str = "auto", int8_pays: bool = False, bf16_gpu: bool | None = None) -> str:
    """The precision that runs: "fp32", "bf16", "fp16" (GPUs) or "int8" (CPUs).

    auto: on a GPU fp16; on a CPU int8 where the caller found that it can run and repays its set-up
    (quantize.worth_int8: CPUs without bf16 kernels), else bf16 where the CPU has bf16 kernels, else
    fp32. fp16 keeps three more bits than bf16: on 60 OpenAerialMap chips the model never saw, its
    labels agreed with fp32's on 99.96% of pixels against all-bf16's 99.46%, and on an H100 the network
    ran faster in it (378 against 336 MP/s, batch 32). With the CPU held to AVX2, int8 ran the whole
    path at 0.355 MP/s against fp32's 0.251, labels agreeing with fp32's on 99.51% of pixels of
    imagery from other continents (scripts/bench.py precision); with bf16 kernels bf16 ran as fast.
    bf16_gpu: whether the GPU runs bf16, where another machine's GPU is meant (None: ask this one's).
    """
    torch = torch_or_error()
    if precision not in PRECISIONS:
        raise InputError(f"Unknown precision \"{precision}\"; choose one of {', '.join(PRECISIONS)}.")
    if device.type == "cuda":
        if precision == "int8":
            raise InputError("int8 runs on CPUs only; on a GPU choose the auto, fp16 or bf16 precision.")
        if precision == "bf16" and not (torch.cuda.is_bf16_supported() if bf16_gpu is None else bf16_gpu):
            return "fp16"
        return "fp16" if precision == "auto" else precision
    if precision == "fp16":
        raise InputError("fp16 runs on GPUs only (CPUs lack its fast kernels); on a CPU choose auto, fp32, bf16 "
                         "or int8.")
    if precision != "auto":
        return precision
    if int8_pays:
        return "int8"
    return "bf16" if cpu_has_bf16() else "fp32"


# Layers that bf16 runs in fp32 (unet.with_float_layers). bf16's 8-bit mantissa moved labels of imagery
# the land-cover model never saw: with every layer in bf16, 99.42% of 122 OpenAerialMap chips' labels
# agreed with fp32's and 99.49% of 56 DeepGlobe windows', short of the 99.5% asked of a faster
# precision. Tried block by block with the rest in bf16, only the second down block came near: in fp32
# 99.69% and 99.66%, but 11% slower; its first convolution alone gave 99.62% and 99.62% for 3% (the
# stem and the head together: 99.50% / 99.56%; the first down block: 99.30%). 2026-11-27, network alone.
BF16_FLOAT_LAYERS = ("downs.1.1.0",)


def amp_dtype(device, precision: str = "auto"):
    """Autocast dtype for a precision on the device, or None for full precision (and for int8,
    which runs a quantized network instead of autocast). "auto" here never means int8."""
    torch = torch_or_error()
    chosen = choose_precision(device, precision)
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(chosen)


def auto_batch(device, tile: int, base_width: int, compiled: bool = False) -> int:
    """Windows per forward pass. On a CPU two, except for a compiled network: compiled Dynamic World ran 1.3x
    faster one 512 px window at a time (0.289 against 0.222 MP/s on 2 AVX2 cores; its half-size maps of a
    window, 38 MB each, already overflow the caches), where an eager U-Net ran alike with one or two."""
    if device.type != "cuda":
        return 1 if compiled else 2
    torch = torch_or_error()
    free, _ = torch.cuda.mem_get_info(device)
    # Rough activation footprint of a U-Net forward pass in half precision:
    # about 40 feature maps of base width at full tile resolution.
    per_sample = tile * tile * base_width * 2 * 40
    return int(max(1, min(32, free * 0.5 // per_sample)))


def write_in_background(device) -> bool:
    """Outputs written by a thread of their own: beside a GPU, whose feeding thread must not wait on
    compression; not beside a CPU network, which needs the cores."""
    return device.type == "cuda"


def read_threads(device) -> int:
    """Threads reading windows ahead: one beside a CPU network (which needs the cores), several for a GPU."""
    if device.type != "cuda":
        return 1
    return max(1, min(4, (os.cpu_count() or 1) // 4))
