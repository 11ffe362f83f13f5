"""fp32 inference on CPUs compiled ahead of time, for the networks where eager PyTorch spends its time between
the convolutions: Dynamic World runs Mish after each of its 24 convolutions, a pass over the feature map each,
which Inductor fuses into the kernels around it. The inference form (batch norms folded, channels-last) is
compiled for the engine's full windows into a package kept between runs (quantize.cache_dir("fp32")); windows
cut at the raster's edges run eagerly. The arithmetic is fp32 as eager's, in another order: probabilities
within 1e-5 of eager's."""
from __future__ import annotations

from . import quantize

# Measured on the 2-core development CPU (AVX2, no bf16 kernels), Dynamic World's network alone on 512 px
# windows: eager 0.092 MP/s; compiled 0.128, with Mish's one-exp form (dynamic_world.Mish) 0.171, without the
# full-size map before the head (dynamic_world.upsampled_head) and with the downsample's taps fused 0.222, one
# window a pass (device.auto_batch) 0.289 (2026-12-08). End to end on a 3.0 MP raster: eager 35.1 s, compiled
# 18.9 s with the package cached, 54.8 s with every cache empty (compiling 36 s). So auto compiles from
# COMPILE_MIN_PIXELS, where the time saved (5.4 s a MP) has repaid a cold compile; the decision, never the
# cache, says whether it runs compiled (so the map is the same on every run).
COMPILED_ARCHITECTURES = ("dynamic_world",)
SCHEME = "fp32, batch norms folded, Mish as x n / (n + 2)"  # in the packages' cache names
COMPILE_MIN_PIXELS = 7_000_000


def compiled_pays(spec, pixels: int, compiler: bool | None) -> bool:
    """Whether a CPU run in fp32 compiles the network: an architecture it was measured to help, a raster large
    enough to repay the compile, and a C++ compiler on every machine that runs it."""
    if spec.architecture not in COMPILED_ARCHITECTURES or pixels < COMPILE_MIN_PIXELS:
        return False
    return quantize.compiler_available() if compiler is None else compiler


def compiled_network(source, fused, mean, std, shape, log=lambda m: None):
    """A callable running `fused` (the inference form of `source`) compiled, on normalised channels-last fp32
    inputs of `shape` (batch, bands, tile, tile) or a shorter batch."""
    shape = tuple(shape)
    path = quantize.package_path(source, mean, std, shape, "fp32", SCHEME)
    return quantize.cached_package(source, ("fp32", shape), path, lambda p: quantize.write_package(fused, shape, p),
                                   log, "Compiling the network for this CPU")
