"""How a model file holds its weights: float32, float16 or 8 bits, always loaded as float32."""
from __future__ import annotations

from ..errors import ModelFileError

FLOAT16_MAX = 65504.0
# A weight stored in 8 bits is three tensors: the int8 values (name), a float32 scale per output channel
# (name + INT8_SCALE_SUFFIX) and, per channel, where its largest magnitude is and that value exactly
# (INT8_PEAK_INDEX_SUFFIX, INT8_PEAK_SUFFIX). weight = values * scale, the peak put back. The grid is int8
# inference's (symmetric, per output channel, scale = peak / 127.5). Measured on the bundled land-cover
# model (122 OpenAerialMap chips, CPU held to AVX2): int8 inference's labels agreed with fp32's on 99.501%
# of pixels with these weights (99.502% with float16 weights), on 99.385% with a plain scale of peak / 127
# and no peak kept, under the 99.5% from which auto runs a model in int8.
INT8_SCALE_SUFFIX = ":int8_scale"
INT8_PEAK_SUFFIX = ":int8_peak"
INT8_PEAK_INDEX_SUFFIX = ":int8_peak_index"
STORAGES = ("float32", "float16", "int8")
# In "int8" storage, convolutions with fewer weights than this stay float16: in the land-cover U-Net those
# are the layers at full, half and quarter resolution and the head (10% of its weights), whose rounding
# moved the most labels. All in 8 bits, 98.58% of the labels of 40 OpenAerialMap chips stayed as they were
# with float16 weights (worst chip 94.2%); with these kept, 99.91% (worst 99.80%), for 0.7 MB more.
# Transposed convolutions stay float16 too: int8 inference quantizes them along other axes. As shipped
# (16% of the weights in float16), 99.923% of all 122 chips' labels (worst 99.83%).
INT8_MIN_WEIGHTS = 200_000


def stored_weights(network, storage: str) -> dict:
    """The network's state as the file stores it in `storage` (see model_file.save_model)."""
    import torch

    if storage not in STORAGES:
        raise ModelFileError(f"Unknown weight storage \"{storage}\"; choose one of {', '.join(STORAGES)}.")
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    if storage == "int8":  # from the float32 values, not their float16 rounding
        transposed = {f"{n}.weight" for n, m in network.named_modules() if isinstance(m, torch.nn.ConvTranspose2d)}
        state = _int8_weights(state, transposed)
    if storage != "float32":
        state = {k: v.half() if _fits_float16(k, v) else v.float() if v.is_floating_point() else v
                 for k, v in state.items()}
    return state


def _int8_weights(state: dict, transposed: set) -> dict:
    """Convolution weights (4-d, at least INT8_MIN_WEIGHTS of them, not `transposed`) in 8 bits: int8 values on
    the symmetric grid of their output channel (its first axis), the scales, and each channel's peak."""
    import torch

    out = {}
    for name, tensor in state.items():
        if tensor.ndim != 4 or not tensor.is_floating_point() or tensor.numel() < INT8_MIN_WEIGHTS or \
                name in transposed:
            out[name] = tensor
            continue
        w = tensor.float().reshape(len(tensor), -1)
        peak, where = w.abs().max(1)
        scale = peak.clamp_min(1e-30) / 127.5
        out[name] = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8).reshape(tensor.shape)
        out[name + INT8_SCALE_SUFFIX] = scale.contiguous()
        out[name + INT8_PEAK_SUFFIX] = w.gather(1, where[:, None])[:, 0].contiguous()
        out[name + INT8_PEAK_INDEX_SUFFIX] = where.to(torch.int32).contiguous()
    return out


def restore_int8(state: dict, name: str) -> dict:
    """Weights stored in 8 bits back to float32; parts that do not fit together are damage."""
    import torch

    for key in [k for k in state if k.endswith(INT8_SCALE_SUFFIX)]:
        name = key[:-len(INT8_SCALE_SUFFIX)]
        scale, peak = state.pop(key), state.pop(name + INT8_PEAK_SUFFIX, None)
        where, weight = state.pop(name + INT8_PEAK_INDEX_SUFFIX, None), state.get(name)
        channels = len(weight) if weight is not None else -1
        fits = weight is not None and weight.dtype == torch.int8 and weight.ndim >= 2 and peak is not None and \
            where is not None and scale.dtype == peak.dtype == torch.float32 and where.dtype == torch.int32 and \
            tuple(scale.shape) == tuple(peak.shape) == tuple(where.shape) == (channels,) and \
            bool(scale.isfinite().all()) and bool(((where >= 0) & (where < weight[0].numel())).all())
        if not fits:
            raise ModelFileError(f"The weights in {name} are damaged: the 8-bit weight {name} and its "
                                 f"scales do not fit together.")
        w = weight.reshape(channels, -1).float() * scale[:, None]
        w.scatter_(1, where.long()[:, None], peak[:, None])
        state[name] = w.reshape(weight.shape)
    return state


def _fits_float16(name: str, tensor) -> bool:
    if not tensor.is_floating_point() or name.endswith(("running_mean", "running_var", INT8_SCALE_SUFFIX,
                                                        INT8_PEAK_SUFFIX)):
        return False
    return bool(tensor.float().abs().max() <= FLOAT16_MAX) if tensor.numel() else True
