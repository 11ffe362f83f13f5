"""Run the network on batches of windows and return weighted class probabilities."""
from __future__ import annotations

import numpy as np

from .device import amp_dtype, torch_or_error
from .errors import InputError


class Predictor:
    def __init__(self, network, mean, std, weights: np.ndarray, device, batch_size: int, tta: bool = False):
        torch = torch_or_error()
        self.torch = torch
        self.device = device
        self.batch_size = batch_size
        self.tta = tta
        self.amp = amp_dtype(device)
        self.net = network.to(device).eval().to(memory_format=torch.channels_last)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.weights = torch.from_numpy(weights).to(device)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """batch: (n, bands, tile, tile) float32 -> (n, classes, tile, tile) float32 weighted probabilities."""
        out = []
        i = 0
        while i < len(batch):
            part = batch[i:i + self.batch_size]
            try:
                out.append(self._run(part))
                i += len(part)
            except self.torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise InputError("The GPU ran out of memory for a single window; choose a smaller "
                                     "tile size or the cpu device.") from None
                self.batch_size = max(1, self.batch_size // 2)
                self.torch.cuda.empty_cache()
        return np.concatenate(out) if len(out) > 1 else out[0]

    def _run(self, part: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(part))
        if self.device.type == "cuda":
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp or torch.float32,
                                                    enabled=self.amp is not None):
            probs = self._tta(x) if self.tta else torch.softmax(self.net(x).float(), dim=1)
            probs = probs * self.weights
        return probs.float().cpu().numpy()

    def _tta(self, x):
        """Mean probabilities over the 8 flips and quarter turns, each mapped back."""
        torch = self.torch
        total = None
        for flip in (False, True):
            xf = torch.flip(x, dims=(3,)) if flip else x
            for k in range(4):
                p = torch.softmax(self.net(torch.rot90(xf, k, dims=(2, 3))).float(), dim=1)
                p = torch.rot90(p, -k, dims=(2, 3))
                if flip:
                    p = torch.flip(p, dims=(3,))
                total = p if total is None else total + p
        return total / 8.0
