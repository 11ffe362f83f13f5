"""Training loop: windows centred on labels, class-balanced loss, AdamW with warm-up and cosine decay.

Single process or several under torchrun (DistributedDataParallel, a
DistributedSampler over the window indices of each epoch). Validation runs the
engine's own sliding-window code over the validation images (or held-out blocks),
so the metric kept with the model is the one users get. With a time budget the
schedule is fitted to it from measured step and validation times. Fine-tuning from
a model file can first re-estimate batch-norm statistics on the new imagery
(labelled or not) and keep them fixed, and train the encoder more slowly than the
decoder.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError, ModelFileError
from ..evaluation.metrics import confusion, scores
from ..inference.sliding import predict_array
from ..inference.windows import blend_weights
from ..io.class_table import head_rows
from ..model.classes import LandClass
from ..model.device import amp_dtype
from ..model.model_file import build_network, load_model, save_model
from ..model.predictor import Predictor
from ..model.spec import ModelSpec
from ..model.unet import fit_batchnorm
from .data import (
    Labelled,
    WindowSampler,
    augment_batch,
    calibration_windows,
    class_frequencies,
    class_weights,
    epoch_size,
)
from .losses import combined_loss
from .schedule import Schedule, fit_schedule

CALIBRATION_STEPS = 3  # steps timed before a time budget is turned into a schedule (the first is not counted)


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
    extra: dict = field(default_factory=dict)


def fine_tuning_config(cuda: bool, **overrides) -> TrainConfig:
    """Settings for adapting a model file to a user's labels in minutes (see the README's adaptation figures)."""
    base = dict(tile=256, batch_size=16 if cuda else 8, lr=2e-4, warmup_epochs=0.5, passes=1.0, rare_fraction=0.5,
                epochs=None, encoder_lr_factor=0.3, head_lr_factor=5.0, adapt_bn=True, fit_head=True, freeze_bn=True,
                color_jitter=0.1, workers=0, max_val_pixels=None if cuda else 3_000_000)
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**base)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Hooks:
    """How a run reports and is stopped: plain callables, so that QGIS's feedback or a terminal can serve."""

    log: Callable[[str], None] = _stderr
    progress: Callable[[float], None] = lambda fraction: None
    cancel: Callable[[], bool] = lambda: False
    bar: bool = True  # redraw a progress bar on stderr during each epoch


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


class _Windows(Dataset):
    def __init__(self, sampler: WindowSampler, n: int, epoch: int):
        self.sampler, self.n, self.epoch = sampler, n, epoch

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return self.sampler.draw(self.epoch, i)


def _collate(batch):
    return batch


def _dist():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


def band_stats(items: list[Labelled]) -> tuple[list[float], list[float]]:
    bands = items[0].image.shape[0]
    total = np.zeros(bands)
    sq = np.zeros(bands)
    n = 0
    for s in items:
        x = s.image.reshape(bands, -1).astype(np.float64)
        total += x.sum(1)
        sq += (x ** 2).sum(1)
        n += x.shape[1]
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean ** 2, 1e-6))
    return [round(float(v), 3) for v in mean], [round(float(v), 3) for v in std]


def _start_model(cfg: TrainConfig, classes, n_bands: int, log):
    """(state dict, spec) of the starting model file, fitted to these classes; None without one.

    Architecture comes from the model file. With another class table, every layer but
    the classifier head is kept, and the head keeps the rows of classes whose names match.
    """
    if not cfg.init:
        return None
    name = os.path.basename(cfg.init)
    try:
        net, spec = load_model(cfg.init)
    except ModelFileError as exc:
        raise InputError(f"The starting model: {exc}") from None
    if spec.in_channels != n_bands:
        raise InputError(f"The starting model {name} takes {spec.in_channels} bands, but {n_bands} are given; "
                         "choose bands to match it, or train from scratch.")
    cfg.base_width, cfg.depth = spec.base_width, spec.depth
    state = net.state_dict()  # float32 whatever the file stores: load_model built the network
    if [(c.id, c.name) for c in spec.classes] != [(c.id, c.name) for c in classes]:
        fresh = build_network(replace(spec, classes=tuple(classes))).state_dict()
        weight, bias = fresh["head.weight"].clone(), fresh["head.bias"].clone()
        rows = head_rows(classes, spec.classes)
        for new, old in rows:
            weight[new], bias[new] = state["head.weight"][old], state["head.bias"][old]
        state["head.weight"], state["head.bias"] = weight, bias
        kept = ", ".join(classes[new].name for new, _ in rows)
        log(f"other classes than {name}'s: its classifier head starts afresh"
            + (f", but for the rows of {kept}" if kept else ""))
    log(f"starting from {cfg.init} (base width {spec.base_width}, depth {spec.depth}, its normalisation)")
    return state, spec


def evaluate(network, spec: ModelSpec, items: list[Labelled], device, tile: int, overlap: int, batch: int = 4):
    """Confusion matrix (with its unclassified column) over whole images, blended as the engine does.

    An image smaller than the tile (a held-out block) is one window of its own size.
    """
    ids = [c.id for c in spec.classes]
    total = np.zeros((len(ids), len(ids) + 1), np.int64)
    lut = np.array(ids, np.uint8)
    predictors = {}
    m = 2 ** spec.depth
    for s in items:
        h, w = s.mask.shape
        t, o = (tile, overlap) if max(h, w) > tile else (-(-max(h, w) // m) * m, 0)
        if (t, o) not in predictors:
            predictors[t, o] = Predictor(network, spec.mean, spec.std, blend_weights(t, o), device, batch)
        pred = lut[predict_array(predictors[t, o], s.image, len(ids), t, o)]
        total += confusion(s.mask, pred, ids)
    return total


def adapt_batchnorm(net, items: list[Labelled], normalise, tile: int, device, windows: int = 48, seed: int = 0,
                    batch: int = 8) -> None:
    """Re-estimate every batch norm's statistics on windows drawn anywhere in `items`, labelled or not.

    A network moved to imagery of another sensor or region sees other colour and texture
    statistics; features normalised with the new ones suit the layers after them far
    better (AdaBN, Li et al. 2016), before any label is used.
    """
    rng = np.random.default_rng(seed)
    t = min(tile, *(min(s.mask.shape) for s in items))
    areas = np.array([s.mask.size for s in items], np.float64)
    picks = rng.choice(len(items), size=windows, p=areas / areas.sum())
    crops = []
    for i in picks:
        h, w = items[i].mask.shape
        y, x = int(rng.integers(h - t + 1)), int(rng.integers(w - t + 1))
        crops.append(items[i].image[:, y:y + t, x:x + t])
    fit_batchnorm(net, (normalise(torch.from_numpy(np.stack(crops[k:k + batch])).to(device).float())
                        for k in range(0, len(crops), batch)))


def fit_head(net, sampler: WindowSampler, lut, normalise, device, weights=None, windows: int = 48,
             pixels: int = 200_000, iterations: int = 300, seed: int = 0, batch: int = 8) -> float:
    """Fit the 1x1 classifier head to labelled pixels on the network's fixed features; returns the fit's loss.

    A head that starts random (a new class table) or was fitted to another region needs
    many slow steps of the whole network to catch up; a logistic regression on the
    features of a few dozen labelled windows takes seconds and gives the fine-tuning a
    head that already separates the classes (linear probing, then fine-tuning: Kumar et
    al. 2022).
    """
    captured = []
    hook = net.head.register_forward_hook(lambda m, inp, out: captured.append(inp[0].detach()))
    feats, labels = [], []
    net.eval()
    try:
        with torch.no_grad():
            draws = [sampler.draw(1 << 30, i) for i in range(windows)]  # an epoch training never reaches
            for k in range(0, windows, batch):
                part = draws[k:k + batch]
                size = min(d[2] for d in part)
                x = torch.from_numpy(np.stack([d[0][:, :size, :size] for d in part])).to(device).float()
                y = lut[torch.from_numpy(np.stack([d[1][:size, :size] for d in part])).to(device).long()]
                captured.clear()
                net(normalise(x))
                f = captured[0].float().permute(0, 2, 3, 1).reshape(-1, captured[0].shape[1])
                keep = y.reshape(-1) != 255
                feats.append(f[keep])
                labels.append(y.reshape(-1)[keep])
    finally:
        hook.remove()
    x, y = torch.cat(feats), torch.cat(labels)
    if len(y) > pixels:
        pick = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:pixels].to(y.device)
        x, y = x[pick], y[pick]
    head = net.head
    w = head.weight.detach().float().reshape(head.out_channels, -1).clone().requires_grad_(True)
    b = head.bias.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    loss = torch.zeros(())
    for _ in range(iterations):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.t() + b, y, weight=weights)
        loss.backward()
        opt.step()
    with torch.no_grad():
        head.weight.copy_(w.reshape(head.weight.shape))
        head.bias.copy_(b)
    return float(loss.detach())


def _freeze_batchnorm(net) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def _param_groups(net, cfg: TrainConfig) -> list[dict]:
    """Encoder (stem and down path), decoder and head, each at its own learning rate."""
    groups = {"encoder": [], "decoder": [], "head": []}
    for name, p in net.named_parameters():
        part = "encoder" if name.startswith(("stem.", "downs.")) else "head" if name.startswith("head.") else "decoder"
        groups[part].append(p)
    factor = {"encoder": cfg.encoder_lr_factor, "decoder": 1.0, "head": cfg.head_lr_factor}
    return [{"params": ps, "lr": cfg.lr * factor[k]} for k, ps in groups.items() if ps]


def val_subset(items: list[Labelled], max_pixels: int | None, seed: int) -> list[Labelled]:
    """A fixed random subset of validation items holding at most max_pixels of imagery (all when None)."""
    if not max_pixels or sum(s.mask.size for s in items) <= max_pixels:
        return items
    order = np.random.default_rng(seed).permutation(len(items))
    out, total = [], 0
    for k in order:
        if total + items[k].mask.size > max_pixels and out:
            continue
        out.append(items[k])
        total += items[k].mask.size
    return out


class _StepBatches:
    """Window indices of each step, endlessly: an epoch is as many steps as the schedule says, and each
    rank of a distributed run takes its own indices."""

    def __init__(self, batch: int, world: int, rank: int):
        self.batch, self.world, self.rank = batch, world, rank

    def __iter__(self):
        step = 0
        while True:
            first = (step * self.world + self.rank) * self.batch
            yield list(range(first, first + self.batch))
            step += 1


def train(cfg: TrainConfig, train_items, val_items, classes: tuple[LandClass, ...], bands, out_path: str,
          log_dir: str | None = None, resume: bool = False, data_note: str = "", command: str = "",
          hooks: Hooks | None = None) -> TrainResult:
    """Train, keep the epoch that scores best on validation, and write it to out_path.

    Nothing is written before the first epoch ends. Cancelled (hooks.cancel) after that,
    the best model so far is written and the result says cancelled.
    """
    run = _Run(cfg, train_items, val_items, classes, bands, out_path, log_dir, data_note, command,
               hooks or Hooks())
    try:
        return run.execute(resume)
    finally:
        if run.distributed:
            torch.distributed.destroy_process_group()


class _Run:
    """One training run: set-up here, then execute(): validate the start, epochs, keep the best, write it."""

    def __init__(self, cfg, train_items, val_items, classes, bands, out_path, log_dir, data_note, command, hooks):
        self.cfg, self.out_path, self.log_dir, self.hooks = cfg, out_path, log_dir, hooks
        self.data_note, self.command = data_note, command
        self.world, self.rank = _dist()
        self.distributed = self.world > 1
        if self.distributed:
            backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
            torch.distributed.init_process_group(backend)
        if cfg.device == "cuda" and not torch.cuda.is_available():
            raise InputError("CUDA was asked for but no CUDA GPU is available; use the cpu device.")
        use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
        if use_cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True
        torch.manual_seed(cfg.seed)
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)

        self.ids, self.names = [c.id for c in classes], [c.name for c in classes]
        self.start = _start_model(cfg, classes, len(bands), self.log)
        # A fine-tuned network keeps the input normalisation its features were learnt with.
        mean, std = (list(self.start[1].mean), list(self.start[1].std)) if self.start else band_stats(train_items)
        self.spec = ModelSpec(classes=tuple(classes), bands=tuple(bands), mean=tuple(mean), std=tuple(std),
                              base_width=cfg.base_width, depth=cfg.depth, tile_size=cfg.infer_tile,
                              overlap=cfg.infer_overlap, gsd=cfg.gsd, name=cfg.name)
        outlined = self.start[1].polygons.classes if self.start else None
        if self.start and (outlined is None or set(outlined) <= set(self.ids)):
            self.spec = replace(self.spec, polygons=self.start[1].polygons)  # a buildings model stays one
        freq = class_frequencies(train_items, self.ids)
        weights = class_weights(freq, cfg.class_weight_power)
        self.log(f"classes {self.names}; labelled training pixels per class {np.round(freq, 4).tolist()}; "
                 f"loss weights {np.round(weights, 3).tolist()}")
        weights = self.loss_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
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

        self.net = build_network(self.spec)
        if self.start:
            self.net.load_state_dict(self.start[0], strict=True)
        self.net = self.net.to(self.device).to(memory_format=torch.channels_last)
        self.model = torch.nn.parallel.DistributedDataParallel(
            self.net, device_ids=[self.device] if use_cuda else None) if self.distributed else self.net
        self.opt = torch.optim.AdamW(_param_groups(self.net, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
        windows = epoch_size(train_items, cfg.tile, cfg.passes)
        self.data_steps = max(1, math.ceil(windows / (cfg.batch_size * self.world)))
        self.plan = Schedule(cfg.epochs or 1, self.data_steps)
        self.total_steps = self.plan.steps
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.loss_fn = combined_loss(cfg.loss, weights)
        # The CPU trains in bf16 too where oneDNN has bf16 kernels (about twice as fast on AVX512-BF16).
        self.amp = amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.mean_t = torch.tensor(mean, device=self.device).view(1, -1, 1, 1)
        self.std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)

        self.history, self.best, self.best_epoch, self.best_state, self.best_row = [], float("-inf"), None, None, None
        self.averaged = []  # (epoch, weights) of the last epochs, for checkpoint averaging
        self.best_matrix = self.init_matrix = self.init_row = None
        self.step, self.epochs_done, self.cancelled = 0, 0, False
        self.step_s = self.val_s = None
        self.t_start = time.perf_counter()

    def log(self, msg: str) -> None:
        if self.rank == 0:
            self.hooks.log(msg)

    def _normalise(self, x):
        """Float pixels on the device to the network's input: the model's normalisation, channels-last."""
        return ((x - self.mean_t) / self.std_t).contiguous(memory_format=torch.channels_last)

    def _lr_factor(self, step: int) -> float:
        warm = max(1, min(int(self.cfg.warmup_epochs * self.plan.steps_per_epoch), self.total_steps // 10))
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, self.total_steps - warm))))

    # --- the run -------------------------------------------------------------------------------------

    def execute(self, resume: bool) -> TrainResult:
        epoch = self._resume() if resume else 0
        if not resume and self.val and self.rank == 0:
            # Epoch 0 is the starting model: if no epoch beats it, it stays the best.
            row = {"epoch": 0, "train_loss": float("nan"), "lr": 0.0, "seconds": 0.0}
            self.init_matrix, metric = self._validate(row)
            self.init_row = row
            self._record(row, " (the starting model)")
            self._keep_if_best(0, metric, self.init_matrix, row, write=False)
        if self.start and self.cfg.adapt_bn and not resume:
            t0 = time.perf_counter()
            adapt_batchnorm(self.net, self.train_items, self._normalise, self.cfg.tile, self.device, seed=self.cfg.seed)
            self.log(f"batch-norm statistics re-estimated on the training imagery ({time.perf_counter() - t0:.1f} s)")
        if self.cfg.fit_head and not resume:
            t0 = time.perf_counter()
            probe = WindowSampler(self.train_items, self.ids, self.cfg.tile, self.cfg.rare_fraction, (1.0, 1.0),
                                  self.cfg.seed)
            loss = fit_head(self.net, probe, self.lut, self._normalise, self.device, self.loss_weights,
                            seed=self.cfg.seed)
            self.log(f"classifier head fitted to the labels on the network's features (loss {loss:.3f}, "
                     f"{time.perf_counter() - t0:.1f} s)")
        if self.distributed:
            torch.distributed.barrier()
        first = epoch
        while epoch < self.plan.epochs:
            losses, seconds = self._epoch(epoch, calibrate=epoch == first)
            if self.cancelled:
                break  # a part of an epoch is not an epoch: the best model so far stands
            self._end_epoch(epoch, losses, seconds)
            epoch += 1
            if self.cancelled or self._out_of_time():
                break
            self._replan(epoch)
        self._finish()
        return TrainResult(self.best, self.best_epoch if self.epochs_done else None, self.history, self.init_row,
                           self.init_matrix, self.best_matrix, self.epochs_done, self.cancelled)

    def _resume(self) -> int:
        path = os.path.join(self.log_dir or "", "checkpoint.pt")
        if not self.log_dir or not os.path.exists(path):
            raise InputError(f"--resume: there is no checkpoint in {self.log_dir}.")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.net.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.best, self.best_epoch = float(state["best_miou"]), int(state["best_epoch"])
        self.best_state = state["best_state"]
        self.history = json.loads(state["history"])
        self.best_row = next((r for r in self.history if r["epoch"] == self.best_epoch), None)
        self.init_row = next((r for r in self.history if r["epoch"] == 0), None)
        self.step = int(state["step"])
        epoch = int(state["epoch"]) + 1
        self.epochs_done = epoch
        self.log(f"resumed after epoch {epoch} (best validation mIoU {self.best:.4f})")
        return epoch

    def _epoch(self, epoch: int, calibrate: bool) -> tuple[list[float], float]:
        """One epoch of training steps; returns the step losses and the seconds it took."""
        cfg = self.cfg
        self.model.train()
        if cfg.freeze_bn:
            _freeze_batchnorm(self.net)
        loader = DataLoader(_Windows(self.sampler, 1 << 40, epoch), batch_sampler=_StepBatches(
            cfg.batch_size, self.world, self.rank), num_workers=cfg.workers, collate_fn=_collate)
        batches = iter(loader)
        t0 = time.perf_counter()
        losses, timed = [], []
        k = 0
        while k < self.plan.steps_per_epoch:
            if self.hooks.cancel():
                self.cancelled = True
                self.log(f"cancelled during epoch {epoch + 1}")
                break
            ts = time.perf_counter()
            losses.append(self._train_step(next(batches), epoch, k))
            timed.append(time.perf_counter() - ts)
            k += 1
            if calibrate and k == 1 and self.cfg.max_minutes and not self.epochs_done:
                self._check_budget(timed[0], t0)
            if calibrate and k == CALIBRATION_STEPS and self.cfg.max_minutes:
                self.step_s = float(np.mean(timed[1:]))
                self._fit_budget(epoch, t0)
            self.hooks.progress(min(1.0, self.step / max(1, self.total_steps)))
            if self.hooks.bar and self.rank == 0 and (k % 10 == 0 or k == self.plan.steps_per_epoch):
                done = k / self.plan.steps_per_epoch
                print(f"\repoch {epoch + 1}/{self.plan.epochs} [{'#' * int(20 * done):<20}] "
                      f"{k}/{self.plan.steps_per_epoch} loss {np.mean(losses[-20:]):.4f}", end="", file=sys.stderr,
                      flush=True)
            if self.cfg.max_minutes and time.perf_counter() - self.t_start > self.cfg.max_minutes * 60:
                break  # the estimate was short: end here rather than overrun the budget
        if self.hooks.bar and self.rank == 0 and losses:
            print(file=sys.stderr)
        del batches, loader
        if timed[1:]:
            self.step_s = float(np.mean(timed[1:]))
        return losses, time.perf_counter() - t0

    def _train_step(self, batch, epoch: int, k: int) -> float:
        cfg, device = self.cfg, self.device
        imgs = [torch.from_numpy(b[0]).to(device, non_blocking=True).float() for b in batch]
        msks = [torch.from_numpy(b[1]).to(device, non_blocking=True) for b in batch]
        x, y = augment_batch(imgs, msks, [b[2] for b in batch], [b[3] for b in batch], cfg.tile, cfg.color_jitter,
                             cfg.seed * 100003 + epoch * 1009 + k)
        x = self._normalise(x)
        y = self.lut[y]
        with torch.autocast(device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.loss_fn(self.model(x), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.step += 1
        return float(loss.detach())

    def _end_epoch(self, epoch: int, losses: list[float], seconds: float) -> None:
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if self.distributed:
            t = torch.tensor([train_loss], device=self.device)
            torch.distributed.all_reduce(t)
            train_loss = float(t) / self.world
        lr = self.cfg.lr * self._lr_factor(self.step)  # the decoder's; the encoder's and head's are scaled
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "lr": round(lr, 7), "seconds": round(seconds, 1)}
        self.epochs_done = epoch + 1
        if self.rank == 0:
            matrix, metric = self._validate(row) if self.val else (None, -train_loss)
            self._record(row)
            if self._keep_if_best(epoch + 1, metric, matrix, row, write=True):
                self.log(f"saved {self.out_path} (best so far)")
            if self.cfg.average_last:
                self._add_to_average(epoch + 1)
            if self.log_dir:
                _write_csv(os.path.join(self.log_dir, "epochs.csv"), self.history)
                torch.save({"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                            "scheduler": self.sched.state_dict(), "epoch": epoch, "step": self.step,
                            "best_miou": self.best, "best_epoch": self.best_epoch, "best_state": self.best_state,
                            "history": json.dumps(self.history)}, os.path.join(self.log_dir, "checkpoint.pt"))
        if self.distributed:
            torch.distributed.barrier()

    def _record(self, row: dict, note: str = "") -> None:
        """An epoch's row (or the starting model's, or an average's) into the history and the log."""
        self.history.append(row)
        self.log(" ".join(f"{k}={v}" for k, v in row.items()) + note)

    def _validate(self, row: dict):
        """Validation confusion and mean IoU of the network as it is now; adds their columns to row."""
        t0 = time.perf_counter()
        matrix = evaluate(self.net, self.spec, self.val, self.device, self.cfg.infer_tile, self.cfg.infer_overlap)
        s = scores(matrix, self.names)
        row.update(val_miou=round(s["miou"], 5), val_accuracy=round(s["accuracy"], 5),
                   **{f"iou_{n}": (None if s["iou"][n] is None else round(s["iou"][n], 5)) for n in self.names})
        self.val_s = time.perf_counter() - t0
        return matrix, s["miou"]

    def _keep_if_best(self, epoch: int, metric: float, matrix, row: dict, write: bool) -> bool:
        if metric <= self.best:
            return False
        self.best, self.best_epoch, self.best_matrix, self.best_row = metric, epoch, matrix, row
        self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
        if write:
            self._write()
        return write

    def _write(self) -> None:
        net = build_network(self.spec)
        net.load_state_dict(self.best_state)
        _save(self.out_path, net, self.spec, self.cfg, self.plan.epochs, self.best_row, self.data_note,
              self.command, self.init_row, self.calibration)

    # --- the time budget ---------------------------------------------------------------------------------

    def _estimated_val_s(self) -> float:
        if self.val_s is not None or not self.val:
            return self.val_s or 0.0
        # Inference costs about a third of a training step per pixel.
        pixels = sum(s.mask.size for s in self.val)
        return self.step_s * pixels / (self.cfg.batch_size * self.cfg.tile ** 2) / 3

    def _fit_budget(self, epoch: int, epoch_t0: float) -> None:
        """Fit the rest of the run (this epoch included) into what is left of the budget."""
        self._fit_rest(epoch, epoch_t0, self.step - CALIBRATION_STEPS, strict=True)
        self.log(f"{self.step_s:.2f} s a step, {self._estimated_val_s():.1f} s to validate: {self.plan.epochs} "
                 f"epochs of {self.plan.steps_per_epoch} steps fit in {self.cfg.max_minutes:g} minutes")

    def _check_budget(self, first_step_s: float, epoch_t0: float) -> None:
        """Stop early, before anything is written, when one epoch cannot fit what is left of the budget.

        The first step pays for start-up, so it counts at half its time here.
        """
        left = self.cfg.max_minutes * 60 - (epoch_t0 - self.t_start)
        self.step_s = first_step_s / 2
        fit_schedule(left, self.step_s, self._estimated_val_s(), self.data_steps, None)

    def _replan(self, epoch: int) -> None:
        """After each epoch, with measured step and validation times, fit the epochs left again."""
        if self.cfg.max_minutes:
            self._fit_rest(epoch, time.perf_counter(), self.step, strict=False)

    def _fit_rest(self, epoch: int, since: float, steps_before: int, strict: bool) -> None:
        """Plan epochs `epoch`.. into the budget left at `since` (a perf_counter time); steps_before:
        the steps taken before epoch `epoch`. strict: raise when not even one epoch fits, else end here."""
        if self.rank == 0:
            left = self.cfg.max_minutes * 60 * 0.98 - (since - self.t_start)
            epochs = None if self.cfg.epochs is None else self.cfg.epochs - epoch
            try:
                fitted = fit_schedule(left, self.step_s, self._estimated_val_s(), self.data_steps, epochs)
                self.plan = Schedule(epoch + fitted.epochs, fitted.steps_per_epoch)
            except InputError:
                if strict:
                    raise
                self.plan = Schedule(epoch, self.plan.steps_per_epoch)  # no time for another epoch
        self._share_plan()
        self.total_steps = steps_before + (self.plan.epochs - epoch) * self.plan.steps_per_epoch

    def _share_plan(self) -> None:
        if self.distributed:
            t = torch.tensor([self.plan.epochs, self.plan.steps_per_epoch], device=self.device)
            torch.distributed.broadcast(t, 0)
            self.plan = Schedule(int(t[0]), int(t[1]))

    def _out_of_time(self) -> bool:
        if not self.cfg.max_minutes:
            return False
        return time.perf_counter() - self.t_start > self.cfg.max_minutes * 60 * 0.98

    def _add_to_average(self, epoch: int) -> None:
        """Keep this epoch's weights among the last average_last (every epoch: the plan may still grow)."""
        self.averaged.append((epoch, {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()
                                      if v.is_floating_point()}))
        del self.averaged[:-self.cfg.average_last]

    def _try_average(self) -> None:
        """The mean of the last epochs' weights, kept where it validates better than every single epoch (or,
        without validation, always: averaging is then the recipe's choice)."""
        if len(self.averaged) < 2 or self.cancelled:
            return
        epochs = [e for e, _ in self.averaged]
        state = self.net.state_dict()
        mean = {k: sum(s[k].double() for _, s in self.averaged) / len(self.averaged) for k in self.averaged[0][1]}
        self.net.load_state_dict({k: mean[k].to(v.dtype) if k in mean else v for k, v in state.items()})
        label = f"mean of epochs {epochs[0]}-{epochs[-1]}"
        row = {"epoch": f"avg{epochs[0]}-{epochs[-1]}", "train_loss": float("nan"), "lr": 0.0, "seconds": 0.0}
        if self.val:
            matrix, metric = self._validate(row)
            self._record(row, f" ({label})")
        else:
            matrix, metric = None, float("inf")
        if self._keep_if_best(epochs[-1], metric, matrix, row, write=True):
            self.log(f"saved {self.out_path}: the {label}")

    def _finish(self) -> None:
        if self.rank != 0:
            return
        self._try_average()
        if self.epochs_done and self.best_epoch == 0:
            self._write()  # the starting model was never beaten: it is the result
        if self.cancelled:
            if self.epochs_done:
                self.log(f"cancelled after {self.epochs_done} epoch(s): wrote the best model so far (epoch "
                         f"{self.best_epoch}) to {self.out_path}")
            else:
                self.log("cancelled before the first epoch ended: no model was written")
        if self.log_dir:
            _write_csv(os.path.join(self.log_dir, "epochs.csv"), self.history)
            _plots(self.log_dir, self.history, self.best_matrix, self.names)


def _save(out_path, net, spec, cfg, planned, row, data_note, command, init_row=None, calibration=None):
    info = {"data": data_note, "epoch": row["epoch"], "epochs_planned": planned,
            "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, **cfg.extra,
            "validation": {k: v for k, v in row.items() if k.startswith(("val_", "iou_"))},
            "command": command}
    if init_row is not None:
        info["starting_model_validation"] = {k: v for k, v in init_row.items() if k.startswith(("val_", "iou_"))}
    save_model(out_path, net, spec.with_training(**info), half=cfg.half_weights, calibration=calibration)


def _write_csv(path, history):
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def _plots(log_dir, history, matrix, names):
    """Training curves and the best validation confusion matrix as PNGs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _stderr("matplotlib is not installed: no PNG plots")
        return
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(epochs, [r["train_loss"] for r in history])
    ax[0].set(title="training loss", xlabel="epoch")
    if history and "val_miou" in history[0]:
        ax[1].plot(epochs, [r["val_miou"] for r in history], label="mean IoU", linewidth=2)
        for n in names:
            ax[1].plot(epochs, [r.get(f"iou_{n}") or np.nan for r in history], label=n, alpha=0.7)
        ax[1].legend(fontsize=7)
    ax[1].set(title="validation IoU", xlabel="epoch", ylim=(0, 1))
    fig.tight_layout()
    fig.savefig(os.path.join(log_dir, "curves.png"), dpi=100)
    plt.close(fig)
    if matrix is not None:
        m = matrix[:, :len(names)].astype(float)
        norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        for i in range(len(names)):
            for j in range(len(names)):
                ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
        ax.set(xlabel="predicted", ylabel="reference", title="validation confusion (row-normalised)")
        fig.tight_layout()
        fig.savefig(os.path.join(log_dir, "confusion.png"), dpi=100)
        plt.close(fig)
