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
        # antialiased resampling has no bf16 kernel: under bf16 autocast it runs in float32
        x = F.interpolate(x.float(), size=(h // 2, w // 2), mode="bilinear", align_corners=False, antialias=True)
        x = self.block3(torch.cat([self.block2(self.block1(x)), self.side(x)], dim=1))
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return self.head(F.normalize(x, dim=1, eps=1e-6))  # x / max(|x|, 1e-6) = TF's max(sum x^2, 1e-12)
