"""Run the network on batches of windows and return weighted class probabilities."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import InputError
from .device import BF16_FLOAT_LAYERS, amp_dtype, torch_or_error
from .transforms import normalize


class Crop(NamedTuple):
    """A window crossing the raster's edge, for a network that sees only the raster: `part` (row0, row1,
    col0, col1) of the window lies inside the raster; the window read in its place (windows.inside_starts)
    has row r + shift[0] where the window has row r, and its part `read` inside the raster."""

    part: tuple
    shift: tuple
    read: tuple


class Predictor:
    def __init__(self, network, mean, std, weights: np.ndarray, device, batch_size: int, tta: bool = False,
                 precision: str = "auto", log=lambda m: None, compiled: bool = False):
        torch = torch_or_error()
        self.torch = torch
        self.device = device
        self.batch_size = batch_size
        self.tta = tta
        self.amp = amp_dtype(device, precision)
        from .unet import fused_for_inference, with_float_layers

        self.net = fused_for_inference(network).to(device).to(memory_format=torch.channels_last)
        if self.amp == torch.bfloat16:
            self.net = with_float_layers(self.net, BF16_FLOAT_LAYERS)
        self.int8 = None
        if precision == "int8":
            from .quantize import int8_network

            tile = weights.shape[-1]
            self.int8 = int8_network(network, self.net, tuple(mean), tuple(std), (batch_size, len(mean), tile, tile),
                                     log)
        self.compiled = None  # fp32 compiled for full windows of batches up to batch_size (compiled.py)
        if compiled and precision == "fp32" and device.type == "cpu":
            from .compiled import compiled_network

            tile = weights.shape[-1]
            self.compiled = compiled_network(network, self.net, tuple(mean), tuple(std),
                                             (batch_size, len(mean), tile, tile), log)
            self._compiled_shape = (batch_size, tile, tile)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.weights = torch.from_numpy(weights).to(device)
        self.transform = getattr(network, "input_transform", None)
        # windows crossing the raster's edge score only their part inside it (slide passes the crops: cut, or
        # read moved inside the raster where the network is compiled for whole windows)
        self.clip_edges = getattr(network, "edges", "mirror") == "network"
        self.alignment = getattr(network, "multiple", 1)  # where windows may start (inside_starts)
        self._staging = None  # pinned host buffer, reused so that every batch is not pinned anew
        self._copied = None  # CUDA event: the staging buffer's last copy to the device has finished

    def __call__(self, batch: np.ndarray, crops=None):
        """batch: (n, bands, tile, tile) of uint8, int16 or float32 -> weighted probabilities, a float32 tensor
        (n, classes, tile, tile) left on the device for blending there. crops: per window None, or its Crop,
        whose part alone gets scores (0 elsewhere), from the window read in its place (which is batch's)."""
        if crops is not None and any(c is not None for c in crops):
            return self._with_crops(batch, crops)
        return self._batched(batch, weighted=True)

    def _batched(self, batch: np.ndarray, weighted: bool):
        out = []
        i = 0
        while i < len(batch):
            part = batch[i:i + self.batch_size]
            try:
                out.append(self._run(part, weighted))
                i += len(part)
            except self.torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise InputError("The GPU ran out of memory for a single window; choose a smaller "
                                     "tile size or the cpu device.") from None
                self.batch_size = max(1, self.batch_size // 2)
                self.torch.cuda.empty_cache()
        return self.torch.cat(out) if len(out) > 1 else out[0]

    def _with_crops(self, batch: np.ndarray, crops):
        torch, tile = self.torch, batch.shape[-1]
        full = (0, tile, 0, tile)
        batched = [i for i, c in enumerate(crops) if c is None or c.read == full]
        probs = dict(zip(batched, self._batched(batch[batched], weighted=False))) if batched else {}
        results = {}
        for i, crop in enumerate(crops):
            if crop is None:
                results[i] = probs[i] * self.weights
                continue
            (r0, r1, c0, c1), (dy, dx), (q0, q1, p0, p1) = crop
            p = probs[i] if i in probs else self._inside(batch[i:i + 1, :, q0:q1, p0:p1])
            scores = torch.zeros((p.shape[0], tile, tile), dtype=torch.float32, device=self.device)
            # p covers the read window's rows q0.., the window's row r is the read window's r + dy
            scores[:, r0:r1, c0:c1] = p[:, r0 + dy - q0:r1 + dy - q0, c0 + dx - p0:c1 + dx - p0]
            results[i] = scores * self.weights
        return torch.stack([results[i] for i in range(len(batch))])

    def _inside(self, part: np.ndarray):
        """Probabilities (classes, h, w) of one window's part inside the raster, run at its own size."""
        return self._run(part, weighted=False)[0]

    def _run(self, part: np.ndarray, weighted: bool = True):
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(part))
        if self.device.type == "cuda" and tuple(x.shape[2:]) == tuple(self.weights.shape):
            if self._staging is None or self._staging.shape[1:] != x.shape[1:] or len(self._staging) < len(x):
                self._staging = torch.empty((max(len(x), self.batch_size), *x.shape[1:]), pin_memory=True)
            if self._copied is not None:
                self._copied.synchronize()
            staged = self._staging[:len(x)]
            staged.copy_(x)
            x = staged.to(self.device, non_blocking=True)
            self._copied = torch.cuda.Event()
            self._copied.record()
        x = normalize(x.to(self.device).float(), self.mean, self.std, self.transform)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                                                    enabled=self.amp is not None):
            probs = self._tta(x) if self.tta else torch.softmax(self._forward(x).float(), dim=1)
            return probs.float() * self.weights if weighted else probs.float()

    def _forward(self, x):
        if self.compiled is not None and x.shape[0] <= self._compiled_shape[0] \
                and tuple(x.shape[2:]) == self._compiled_shape[1:]:
            return self.compiled(x.contiguous(memory_format=self.torch.channels_last))
        if self.int8 is None or tuple(x.shape[2:]) != tuple(self.weights.shape):  # a window cut at the edge
            return self.net(x)
        # compiled for batches up to batch_size and channels-last strides, which TTA's turns do not keep
        return self.int8(x.contiguous(memory_format=self.torch.channels_last))

    def _tta(self, x):
        """Mean probabilities over the 8 flips and quarter turns, each mapped back."""
        torch = self.torch
        total = None
        for flip in (False, True):
            xf = torch.flip(x, dims=(3,)) if flip else x
            for k in range(4):
                p = torch.softmax(self._forward(torch.rot90(xf, k, dims=(2, 3))).float(), dim=1)
                p = torch.rot90(p, -k, dims=(2, 3))
                if flip:
                    p = torch.flip(p, dims=(3,))
                total = p if total is None else total + p
        return total / 8.0
