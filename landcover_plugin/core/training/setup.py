"""Everything a training run holds before its first step: device, model spec, data, network, optimiser,
schedule, loss."""
from __future__ import annotations

import math
import os
from dataclasses import replace

import numpy as np
import torch

from ..errors import InputError
from ..model.device import amp_dtype
from ..model.model_file import build_network
from ..model.spec import ModelSpec
from .averaging import LastEpochs
from .budget import Budget
from .config import TrainConfig
from .data import (
    WindowSampler,
    band_stats,
    calibration_windows,
    class_frequencies,
    class_weights,
    epoch_size,
    val_subset,
)
from .fine_tune import param_groups, start_model
from .loader import world_and_rank
from .losses import combined_loss
from .schedule import Schedule


def init_device(cfg: TrainConfig, distributed: bool):
    """The torch device of this process (a rank's own GPU under torchrun), the process group joined."""
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is available; use the cpu device.")
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    return device


def model_spec(cfg: TrainConfig, start, classes, bands, train_items) -> ModelSpec:
    """The model file's spec; a fine-tuned network keeps the input normalisation its features were learnt
    with, and a buildings model stays one (its polygon defaults)."""
    mean, std = (list(start[1].mean), list(start[1].std)) if start else band_stats(train_items)
    spec = ModelSpec(classes=tuple(classes), bands=tuple(bands), mean=tuple(mean), std=tuple(std),
                     base_width=cfg.base_width, depth=cfg.depth, tile_size=cfg.infer_tile,
                     overlap=cfg.infer_overlap, gsd=cfg.gsd, name=cfg.name)
    outlined = start[1].polygons.classes if start else None
    if start and (outlined is None or set(outlined) <= {c.id for c in classes}):
        spec = replace(spec, polygons=start[1].polygons)
    return spec


class RunSetup:
    """A run's set-up; trainer._Run adds the steps, epochs and the choice of the best."""

    def __init__(self, cfg, train_items, val_items, classes, bands, out_path, log_dir, data_note, command, hooks):
        self.cfg, self.out_path, self.log_dir, self.hooks = cfg, out_path, log_dir, hooks
        self.data_note, self.command = data_note, command
        self.world, self.rank = world_and_rank()
        self.distributed = self.world > 1
        self.device = init_device(cfg, self.distributed)
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        self.ids, self.names = [c.id for c in classes], [c.name for c in classes]
        self.start = start_model(cfg, classes, len(bands), self.log)
        self.spec = model_spec(cfg, self.start, classes, bands, train_items)
        self._setup_data(train_items, val_items)
        self._setup_training()
        self.history, self.best, self.best_epoch, self.best_state, self.best_row = [], float("-inf"), None, None, None
        self.averaged = LastEpochs(cfg.average_last)
        self.best_matrix = self.init_matrix = self.init_row = None
        self.step, self.epochs_done, self.cancelled = 0, 0, False

    def _setup_data(self, train_items, val_items) -> None:
        cfg = self.cfg
        freq = class_frequencies(train_items, self.ids)
        weights = class_weights(freq, cfg.class_weight_power)
        self.log(f"classes {self.names}; labelled training pixels per class {np.round(freq, 4).tolist()}; "
                 f"loss weights {np.round(weights, 3).tolist()}")
        self.loss_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        # Labels are remapped to output channels 0..n-1 for the loss; 255 stays ignored.
        remap = np.full(256, 255, np.int64)
        remap[self.ids] = np.arange(len(self.ids))
        self.lut = torch.from_numpy(remap).to(self.device)
        self.train_items = train_items
        self.calibration = calibration_windows(train_items, seed=cfg.seed)  # carried by the file, for int8
        self.sampler = WindowSampler(train_items, self.ids, cfg.tile, cfg.rare_fraction,
                                     (1 - cfg.scale_jitter, 1 + cfg.scale_jitter), cfg.seed)
        self.val = val_subset(val_items, cfg.max_val_pixels, cfg.seed)
        if len(self.val) < len(val_items):
            self.log(f"validation scores {len(self.val)} of the {len(val_items)} held-out blocks each epoch "
                     f"(at most {cfg.max_val_pixels / 1e6:g} megapixels of imagery)")

    def _setup_training(self) -> None:
        """Network, optimiser, schedule, loss and mixed precision."""
        cfg, device = self.cfg, self.device
        self.net = build_network(self.spec)
        if self.start:
            self.net.load_state_dict(self.start[0], strict=True)
        self.net = self.net.to(device).to(memory_format=torch.channels_last)
        self.model = torch.nn.parallel.DistributedDataParallel(
            self.net, device_ids=[device] if device.type == "cuda" else None) if self.distributed else self.net
        self.opt = torch.optim.AdamW(param_groups(self.net, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        data_steps = max(1, math.ceil(epoch_size(self.train_items, cfg.tile, cfg.passes)
                                      / (cfg.batch_size * self.world)))
        self.budget = Budget(cfg, data_steps, sum(s.mask.size for s in self.val), self.rank, self._share_plan)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.budget.lr_factor)
        self.loss_fn = combined_loss(cfg.loss, self.loss_weights)
        # The CPU trains in bf16 too where oneDNN has bf16 kernels (about twice as fast on AVX512-BF16).
        self.amp = amp_dtype(device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.mean_t = torch.tensor(self.spec.mean, device=device).view(1, -1, 1, 1)
        self.std_t = torch.tensor(self.spec.std, device=device).view(1, -1, 1, 1)

    def log(self, msg: str) -> None:
        if self.rank == 0:
            self.hooks.log(msg)

    def _normalise(self, x):
        """Float pixels on the device to the network's input: the model's normalisation, channels-last."""
        return ((x - self.mean_t) / self.std_t).contiguous(memory_format=torch.channels_last)

    def _share_plan(self, plan: Schedule) -> Schedule:
        if not self.distributed:
            return plan
        t = torch.tensor([plan.epochs, plan.steps_per_epoch], device=self.device)
        torch.distributed.broadcast(t, 0)
        return Schedule(int(t[0]), int(t[1]))
