"""The input transforms a model file names (spec.transform), applied by the engine as data, not code.

"standardize": (x - mean) / std, the U-Nets'. "log_sigmoid": sigmoid((log(1 + s x) - mean) / std),
Dynamic World's sigmoid(5 (log(1 + 0.005 x) - p30) / p70 - 1) with its constants folded into
mean = p30 + p70 / 5 and std = p70 / 5 (scripts/convert_dynamic_world.py).
"""
from __future__ import annotations

import numpy as np


def normalize(x, mean, std, transform: dict | None):
    """Raw values (a float tensor, bands on axis 1) -> the network's input; mean and std broadcast to x."""
    if transform and transform.get("name") == "log_sigmoid":
        import torch

        return torch.sigmoid((torch.log1p(x * transform["log_scale"]) - mean) / std)
    return (x - mean) / std


def neutral_values(spec) -> tuple[float, ...]:
    """Per band, the raw value the transform maps to the middle of its range (the standardised 0): what
    nodata pixels are filled with, so they look like nothing in particular."""
    if spec.transform.get("name") == "log_sigmoid":
        return tuple(float(v) for v in np.expm1(np.array(spec.mean)) / spec.transform["log_scale"])
    return tuple(spec.mean)
