"""Dynamic World's network (Brown et al. 2022), written from its TensorFlow SavedModel's graph.

A 3x3 stem at full size, an antialiased bilinear 2x downsample, three depthwise-separable
residual blocks with Mish at half size (a side branch of the downsampled stem joins the
third), a bilinear upsample, L2 normalisation over the channels and a 1x1 head giving
logits. BatchNorm epsilon 1e-3 and 'SAME' zero padding as in TensorFlow. The 2x resample
makes the output depend on pixel parity, hence the model's window alignment of 2.
scripts/convert_dynamic_world.py maps the SavedModel's variables onto this module.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

STEM, SIDE, WIDTHS = 64, 48, (96, 144, 144)


class Mish(nn.Module):
    """Mish, x tanh(softplus(x)), written for a compiler as x n / (n + 2) with n = e^x (e^x + 2): one exp where
    tanh(log1p(exp(x))) costs three transcendental functions (in cache 1.2 against 4.3 ns a value on an AVX2
    core). Eager PyTorch would run that form as five passes over the feature map, so eagerly it is F.mish."""

    def forward(self, x):
        if not (torch.compiler.is_compiling() or torch.compiler.is_exporting()):
            return F.mish(x)
        e = torch.exp(torch.clamp(x, max=20.0))  # from 20 on n / (n + 2) is 1 in float32, and e^40 stays finite
        n = e * (e + 2)
        return x * n / (n + 2)


class ConvBNMish(nn.Sequential):
    """Conv (with bias) -> BatchNorm -> Mish; depthwise when `depthwise`, else pointwise or the 3x3 stem."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, depthwise: bool = False):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=cin if depthwise else 1),
            nn.BatchNorm2d(cout, eps=1e-3),
            Mish(),
        )


def separable(cin: int, cout: int) -> nn.Sequential:
    """Pointwise 1x1 then depthwise 3x3, each with BN and Mish."""
    return nn.Sequential(ConvBNMish(cin, cout), ConvBNMish(cout, cout, 3, depthwise=True))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.main = nn.Sequential(separable(cin, cout), separable(cout, cout), separable(cout, cout))
        self.shortcut = ConvBNMish(cin, cout)

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


class DynamicWorldNet(nn.Module):
    """(N, 9, H, W) normalised bands -> (N, 9, H, W) logits; any H, W >= 2."""

    multiple = 2  # the window alignment its resample needs

    def __init__(self, in_channels: int = 9, num_classes: int = 9):
        super().__init__()
        self.stem = ConvBNMish(in_channels, STEM, 3)
        self.block1 = ResidualBlock(STEM, WIDTHS[0])
        self.block2 = ResidualBlock(WIDTHS[0], WIDTHS[1])
        self.side = separable(STEM, SIDE)
        self.block3 = ResidualBlock(WIDTHS[1] + SIDE, WIDTHS[2])
        self.head = nn.Conv2d(WIDTHS[2], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = self.stem(x)
        x = downsample2x(x.float())  # antialiased resampling has no bf16 kernel: under bf16 autocast, float32
        x = self.block3(torch.cat([self.block2(self.block1(x)), self.side(x)], dim=1))
        if (h, w) == (2 * x.shape[-2], 2 * x.shape[-1]):
            return upsampled_head(x, self.head)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(F.normalize(x, dim=1, eps=1e-6))  # x / max(|x|, 1e-6) = TF's max(sum x^2, 1e-12)


_TRIANGLE = (0.125, 0.375, 0.375, 0.125)  # antialiased bilinear 2x: a triangle filter twice the pixel wide


def downsample2x(x: torch.Tensor) -> torch.Tensor:
    """Antialiased bilinear 2x downsampling, as F.interpolate(..., antialias=True) does it. Compiled, as the
    triangle filter's sixteen taps on the channels-last map, which the compiler fuses into one pass (where the
    library's kernel wanted the channels-first layout: two transposes of the full-size map; 0.13 s of a 2.3 s
    batch). At the edges the filter loses a tap whose weight is 1/8 and is renormalised, as PyTorch's is."""
    h, w = x.shape[-2:]
    compiling = torch.compiler.is_compiling() or torch.compiler.is_exporting()
    if not compiling or h % 2 or w % 2 or min(h, w) < 4:
        return F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", align_corners=False, antialias=True)
    p = F.pad(x, (1, 1, 1, 1))
    rows = sum(k * p[..., a:a + h:2, :] for a, k in enumerate(_TRIANGLE))
    y = sum(k * rows[..., b:b + w:2] for b, k in enumerate(_TRIANGLE))
    edge_rows = torch.ones(h // 2, 1, dtype=x.dtype, device=x.device)
    edge_rows[0] = edge_rows[-1] = 8 / 7
    edge_cols = torch.ones(w // 2, dtype=x.dtype, device=x.device)
    edge_cols[0] = edge_cols[-1] = 8 / 7
    return y * (edge_rows * edge_cols)


# Bilinear 2x upsampling (align_corners=False) weighs the two nearest half-size pixels of each axis 1/4 and 3/4
# (nearer 3/4): even output rows take rows i-1 and i, odd ones i and i+1; edges repeat the last row.
_PHASES = ((0, 0.25, 0.75), (1, 0.75, 0.25))  # (offset into the edge-padded map, weight of its row, of the next)


def upsampled_head(x: torch.Tensor, head: nn.Conv2d) -> torch.Tensor:
    """head(normalize(upsample2x(x))) without the full-size 144-channel map, which cost 40% of the compiled
    network's time (2 AVX2 cores): the 1x1 head and the upsample are linear, so W u = upsample(W x); and the
    squared norm of u = sum_k a_k x_k is sum_jk a_j a_k x_j.x_k, from five maps of neighbours' dot products at
    half size. The same function to rounding; in float32 (the dot products lose too much in bf16)."""
    z = F.interpolate(F.conv2d(x, head.weight), scale_factor=2.0, mode="bilinear", align_corners=False)
    p = F.pad(x.float(), (1, 1, 1, 1), mode="replicate")
    maps = (_dot(p, p),
            _dot(p[..., :, :-1], p[..., :, 1:]),  # each pixel with the one to its right
            _dot(p[..., :-1, :], p[..., 1:, :]),  # with the one below
            _dot(p[..., :-1, :-1], p[..., 1:, 1:]) + _dot(p[..., :-1, 1:], p[..., 1:, :-1]))  # the two diagonals
    h, w = x.shape[-2:]
    # (n, 1, h, 2, w, 2): each row phase's two column phases, interleaved into the full-size map
    n2 = torch.stack([torch.stack([_phase_norm(maps, rows, cols, h, w) for cols in _PHASES], dim=-1)
                      for rows in _PHASES], dim=-3).reshape(x.shape[0], 1, 2 * h, 2 * w)
    return z / n2.sqrt().clamp_min(1e-6) + head.bias.view(1, -1, 1, 1)


def _phase_norm(maps, rows, cols, h: int, w: int) -> torch.Tensor:
    """|u|^2 at the output pixels of one row and column phase: u = a e x00 + a f x01 + b e x10 + b f x11."""
    square, across, down, diagonals = maps
    (r, a, b), (c, e, f) = rows, cols

    def at(m, dr=0, dc=0):
        return m[..., r + dr:r + dr + h, c + dc:c + dc + w]

    return (a * a * (e * e * at(square) + f * f * at(square, 0, 1) + 2 * e * f * at(across))
            + b * b * (e * e * at(square, 1) + f * f * at(square, 1, 1) + 2 * e * f * at(across, 1))
            + 2 * a * b * (e * e * at(down) + f * f * at(down, 0, 1) + e * f * at(diagonals)))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=1, keepdim=True)
