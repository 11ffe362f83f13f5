"""The precision a run uses, decided once before its work is split, from what the machines that run it have.

One rule for a run in this process, in a process per device and in blocks on a Dask cluster: the
decision (never "auto") goes to every part, so that each computes its rows alike and the class raster
is the same whichever path ran it. The reason goes to the log, the class raster's tags and the report.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import quantize
from .device import choose_precision, cpu_has_bf16, torch_or_error


@dataclass(frozen=True)
class Hardware:
    """What the devices that run a job have; for a cluster, what all its workers have."""

    kind: str  # "cpu", "cuda", or "mixed" (a cluster of GPU and CPU workers)
    bf16: bool  # bf16 kernels on every CPU (or bf16 on every GPU)
    int8: bool | None  # int8 can run on every CPU (torchao and a C++ compiler); None: this machine, not yet asked
    compiler: bool | None = None  # a C++ compiler on every machine (compiled fp32); None: this machine's

    @staticmethod
    def of(device, ask_int8: bool = False) -> Hardware:
        """The hardware of one torch device of this machine. Whether int8 can run is asked only with ask_int8
        (a cluster worker's facts) or when a decision needs it: importing torchao takes seconds that a small
        raster should not pay."""
        if device.type == "cuda":
            return Hardware("cuda", bool(torch_or_error().cuda.is_bf16_supported()), False)
        return Hardware("cpu", cpu_has_bf16(), quantize.int8_available() if ask_int8 else None,
                        quantize.compiler_available())

    @staticmethod
    def common(each: list[Hardware]) -> Hardware:
        """What every one of several machines has (a cluster's workers)."""
        kinds = {h.kind for h in each}
        return Hardware(kinds.pop() if len(kinds) == 1 else "mixed", all(h.bf16 for h in each),
                        all(h.int8 for h in each),
                        None if any(h.compiler is None for h in each) else all(h.compiler for h in each))


@dataclass(frozen=True)
class Decision:
    precision: str  # fp32, bf16, fp16 or int8
    why: str  # for the log and the report
    compiled: bool = False  # fp32 on CPUs, the network compiled for this CPU (compiled.py)

    @property
    def reason(self) -> str:
        """Why, with how it runs: for the log, the class raster's tags and the report."""
        if not self.compiled:
            return self.why
        from .compiled import COMPILE_MIN_PIXELS

        return (f"{self.why}; compiled for this CPU, as for every raster of at least {COMPILE_MIN_PIXELS / 1e6:g} MP "
                "with this network")

    def describe(self) -> str:
        return f"{self.precision} ({self.reason})"


def decide(requested: str, hardware: Hardware, network, spec, pixels: int) -> Decision:
    """The precision that runs a raster of `pixels` with `network` (from load_model) on `hardware`, and whether
    fp32 runs compiled."""
    from .compiled import compiled_pays

    decision = _precision(requested, hardware, network, spec, pixels)
    if decision.precision == "fp32" and hardware.kind == "cpu" and compiled_pays(spec, pixels, hardware.compiler):
        return Decision("fp32", decision.why, compiled=True)
    return decision


def _precision(requested: str, hardware: Hardware, network, spec, pixels: int) -> Decision:
    if requested != "auto":
        if hardware.kind == "mixed":
            return Decision(requested, "asked for")
        return Decision(choose_precision(_device(hardware), requested, bf16_gpu=hardware.bf16), "asked for")
    if hardware.kind == "mixed":
        return Decision("fp32", "auto: the cluster's workers mix GPUs and CPUs, and fp32 is what both compute alike")
    half, why = half_faithful(spec)
    if hardware.kind == "cuda":
        if not half:
            return Decision("fp32", f"auto: {why}")
        return Decision(choose_precision(_device(hardware), "auto"), "auto: the GPU's half precision")
    pays, why_not = int8_verdict(hardware, network, spec, pixels)
    if pays:
        agreement = spec.training["int8"]["agreement"]
        return Decision("int8", f"auto: the CPU has no bf16 kernels, int8 labels agreed with fp32's on "
                                f"{100 * agreement:.2f}% of held-out pixels, and the raster has {pixels / 1e6:.1f} MP, "
                                f"at least the {quantize.INT8_MIN_PIXELS / 1e6:g} MP from which int8 repays its set-up")
    if hardware.bf16:
        if not half:
            return Decision("fp32", f"auto: {why}")
        return Decision("bf16", "auto: the CPU has bf16 kernels, where bf16 runs about as fast as int8")
    return Decision("fp32", f"auto: the CPU has no bf16 kernels, and int8 does not run here: {why_not}")


def half_faithful(spec) -> tuple[bool, str]:
    """Whether auto may run the model in half precision: unless its file records a bf16 agreement with fp32
    under int8's bar (99.5%), as Dynamic World's does (its sigmoid inputs and resampling lose labels)."""
    record = spec.training.get("bf16") if isinstance(spec.training, dict) else None
    agreement = record.get("agreement") if isinstance(record, dict) else None
    if isinstance(agreement, (int, float)) and agreement < quantize.INT8_MIN_AGREEMENT:
        return False, f"the model file records bf16 labels agreeing with fp32's on only {100 * agreement:.2f}%"
    return True, ""


def int8_verdict(hardware: Hardware, network, spec, pixels: int) -> tuple[bool, str]:
    """(whether auto runs int8 on these CPUs, and if not why not). The same for every machine that holds the
    same model and raster: never whether a package happens to be compiled already."""
    if not quantize.faithful(spec):
        return False, "the model file records no int8 agreement with fp32 of at least 99.5% on held-out imagery"
    if getattr(network, "calibration_windows", None) is None:
        return False, "the model file carries no calibration windows"
    if pixels < quantize.INT8_MIN_PIXELS:
        return False, (f"the raster has {pixels / 1e6:.2f} MP, under the {quantize.INT8_MIN_PIXELS / 1e6:g} MP "
                       "from which int8 repays its set-up")
    if hardware.bf16:
        return False, "the CPU has bf16 kernels"
    if not (quantize.int8_available() if hardware.int8 is None else hardware.int8):
        return False, "it needs torchao and a C++ compiler"
    return True, ""


def _device(hardware: Hardware):
    return torch_or_error().device(hardware.kind)
