"""What a training run is told (TrainConfig), how it reports and is stopped (Hooks), and what it gives
back (TrainResult)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class TrainConfig:
    tile: int = 256  # training windows
    infer_tile: int = 512  # the model file's default tile and overlap, also used for validation
    infer_overlap: int = 64
    base_width: int = 32
    depth: int = 4
    epochs: int | None = 40  # None: as many as the time budget allows
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0  # at most a tenth of all steps
    passes: float = 1.0  # an epoch draws this many times the labelled training pixels in windows
    rare_fraction: float = 0.5
    scale_jitter: float = 0.25  # windows are cut at tile * (1 +- this) and resized to tile
    color_jitter: float = 0.2
    loss: str = "dice"
    class_weight_power: float = 0.5
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    half_weights: bool = False  # store weights as float16 in the model file (half the size)
    gsd: float | None = None
    max_minutes: float | None = None  # fit the schedule to this much time, and stop by then
    name: str = "land-cover U-Net"
    init: str | None = None  # a model file to start from (fine-tuning); its architecture and normalisation are kept
    encoder_lr_factor: float = 1.0  # the encoder's learning rate, relative to lr
    head_lr_factor: float = 1.0  # the classifier head's
    adapt_bn: bool = False  # re-estimate batch-norm statistics on the training imagery before training
    fit_head: bool = False  # fit the classifier head to the labels on fixed features before training
    freeze_bn: bool = False  # keep batch-norm statistics fixed while training
    max_val_pixels: int | None = None  # score at most this many pixels of validation imagery per epoch
    average_last: int = 0  # also try the mean of the weights of the last this many epochs (checkpoint averaging)
    # after training, measure int8 against fp32 on the validation blocks and record it in the file, so that
    # auto may run the model in int8 on CPUs without bf16 kernels (evaluation/int8_agreement.py)
    int8_check: bool = False
    extra: dict = field(default_factory=dict)


def fine_tuning_config(cuda: bool, **overrides) -> TrainConfig:
    """Settings for adapting a model file to a user's labels in minutes (see the README's adaptation figures)."""
    base = dict(tile=256, batch_size=16 if cuda else 8, lr=2e-4, warmup_epochs=0.5, passes=1.0, rare_fraction=0.5,
                epochs=None, encoder_lr_factor=0.3, head_lr_factor=5.0, adapt_bn=True, fit_head=True, freeze_bn=True,
                color_jitter=0.1, workers=0, max_val_pixels=None if cuda else 3_000_000)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


logger = logging.getLogger("landcover.training")


@dataclass
class Hooks:
    """How a run reports and is stopped: plain callables, so that QGIS's feedback or a terminal can serve."""

    log: Callable[[str], None] = logger.info
    progress: Callable[[float], None] = lambda fraction: None
    cancel: Callable[[], bool] = lambda: False
    # after each training step: (epoch, epochs, steps done in the epoch, steps in the epoch, recent mean loss)
    step: Callable[[int, int, int, int, float], None] | None = None


@dataclass
class TrainResult:
    best: float  # best validation mean IoU (or minus the training loss without validation)
    best_epoch: int | None  # 0: the starting model was never beaten; None: nothing was written
    history: list
    init_row: dict | None  # the starting model on the validation area (epoch 0)
    init_matrix: np.ndarray | None
    best_matrix: np.ndarray | None
    epochs_done: int
    cancelled: bool = False

    @property
    def written(self) -> bool:
        return self.best_epoch is not None
