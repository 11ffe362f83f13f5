"""A configurable U-Net that accepts any input size.

Sizes that are not multiples of 2**depth are padded inside forward() and the
output cropped back, so a caller never has to know about the network's stride.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class Down(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(cin, cout))


class Up(nn.Module):
    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cskip, 2, stride=2)
        self.conv = DoubleConv(2 * cskip, cout)

    def forward(self, x, skip):
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, base_width: int = 32, depth: int = 4):
        super().__init__()
        if depth < 1:
            raise ValueError("depth must be at least 1")
        widths = [base_width * 2 ** i for i in range(depth + 1)]
        self.depth = depth
        self.stem = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(Down(widths[i], widths[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i], widths[i]) for i in reversed(range(depth)))
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    @property
    def multiple(self) -> int:
        return 2 ** self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            # reflect needs the pad to be smaller than the side; tiny inputs replicate.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up in self.ups:
            y = up(y, skips.pop())
        return self.head(y)[..., :h, :w]


def fused_for_inference(net: nn.Module) -> nn.Module:
    """A copy of `net` in eval mode with every BatchNorm folded into the convolution before it.

    Batch norm is a per-channel affine map at inference, so folding it into the
    convolution's weights and bias gives the same outputs (to rounding) without a
    separate pass over every feature map (~15% of CPU time for a base-32 U-Net).
    The caller's network is left untouched: it may still be training.
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(net).eval()
    for module in fused.modules():
        if isinstance(module, nn.Sequential):
            children = list(module.children())
            for i in range(len(children) - 1):
                conv, bn = children[i], children[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    module[i] = fuse_conv_bn_eval(conv, bn)
                    module[i + 1] = nn.Identity()
    return fused


class DepthToSpaceUp(nn.Module):
    """A 2 x 2, stride-2 transposed convolution rewritten as a 1 x 1 convolution to four times the channels
    followed by depth-to-space: the same outputs (to rounding), in a form int8 covers (its quantizer has
    no transposed convolution, which would run in fp32 at every decoder level). The 1 x 1's outputs are
    ordered (row offset, column offset, channel), not PixelShuffle's (channel, row, column): in
    channels-last memory each output pixel's channels are then one contiguous run, so the rearrangement
    fused into the decoder's concatenation runs vectorised (PixelShuffle's order made that kernel 2.5x
    slower than the transposed convolution it replaced)."""

    def __init__(self, transposed: nn.ConvTranspose2d):
        super().__init__()
        cin, cout, kh, kw = transposed.weight.shape
        if (kh, kw) != (2, 2) or transposed.stride != (2, 2) or transposed.padding != (0, 0):
            raise ValueError("only 2 x 2 transposed convolutions of stride 2 without padding are rewritten")
        self.channels = cout
        self.conv = nn.Conv2d(cin, 4 * cout, 1)
        with torch.no_grad():
            # out[o, 2i + a, 2j + b] = sum_c x[c, i, j] * w[c, o, a, b]: output channel (a, b, o) of the 1 x 1
            self.conv.weight.copy_(transposed.weight.permute(2, 3, 1, 0).reshape(4 * cout, cin, 1, 1))
            bias = transposed.bias if transposed.bias is not None else torch.zeros(cout)
            self.conv.bias.copy_(bias.repeat(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n, _, h, w = y.shape
        y = y.view(n, 2, 2, self.channels, h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, self.channels, 2 * h, 2 * w)


def with_depth_to_space(net: nn.Module) -> nn.Module:
    """A copy of `net` whose decoder upsamples with DepthToSpaceUp instead of transposed convolutions."""
    import copy

    out = copy.deepcopy(net)
    for up in getattr(out, "ups", ()):
        up.up = DepthToSpaceUp(up.up)
    return out


class InFloat(nn.Module):
    """`module` run in fp32 inside an autocast region: its inputs cast up, autocast off for its layers."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(xs[0].device.type, enabled=False):
            return self.module(*(x.float() for x in xs))


def with_float_layers(net: nn.Module, names: tuple) -> nn.Module:
    """A copy of `net` whose submodules `names` (e.g. "downs.1"; absent ones skipped: shallower networks)
    run in fp32 under autocast."""
    import copy

    out = copy.deepcopy(net)
    for name in names:
        try:
            child = out.get_submodule(name)
        except AttributeError:
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(out.get_submodule(parent) if parent else out, leaf, InFloat(child))
    return out


def fit_batchnorm(net: nn.Module, images) -> nn.Module:
    """Set every BatchNorm's statistics to those of `images` (normalised, N x C x H x W, or an iterable of
    such batches, averaged alike); returns net in eval mode.

    A U-Net with random weights and default statistics answers one class everywhere.
    With statistics fitted to real imagery its output varies across an image like a
    trained model's, which is what benchmarks and blending tests need from it. A trained
    network moved to imagery of another sensor or region is refitted the same way (AdaBN).
    """
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches seen
    net.train()
    with torch.no_grad():
        for batch in [images] if isinstance(images, torch.Tensor) else images:
            net(batch)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    return net.eval()
