"""Training loop: random windows, class-balanced loss, AdamW with warm-up and cosine decay.

Single process or several under torchrun (DistributedDataParallel, a
DistributedSampler over the window indices of each epoch). Validation runs the
engine's own sliding-window code over whole validation images, so the metric kept
with the model is the one users get.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .classes import LandClass
from .device import amp_dtype
from .errors import InputError, ModelFileError
from .losses import combined_loss
from .metrics import confusion, scores
from .model_file import ModelSpec, build_network, load_model, save_model
from .predictor import Predictor
from .sliding import predict_array
from .train_data import Labelled, WindowSampler, augment_batch, class_frequencies, class_weights, epoch_size
from .windows import blend_weights


@dataclass
class TrainConfig:
    tile: int = 256  # training windows
    infer_tile: int = 512  # the model file's default tile and overlap, also used for validation
    infer_overlap: int = 64
    base_width: int = 32
    depth: int = 4
    epochs: int = 40
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    passes: float = 1.0  # an epoch draws this many times the training pixels in windows
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
    extra: dict = field(default_factory=dict)


class _Windows(Dataset):
    def __init__(self, sampler: WindowSampler, n: int):
        self.sampler, self.n, self.epoch = sampler, n, 0

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


def _log(msg: str, rank: int = 0) -> None:
    if rank == 0:
        print(msg, file=sys.stderr, flush=True)


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


def _start_model(cfg: TrainConfig, classes, n_bands: int, rank: int):
    """(state dict, spec) of the --init model, fitted to these classes; None without --init.

    Architecture comes from the model file. With other classes than the file's, every
    layer but the classifier head is kept and the head starts afresh.
    """
    if not cfg.init:
        return None
    try:
        net, spec = load_model(cfg.init)
    except ModelFileError as exc:
        raise InputError(f"--init: {exc}") from None
    if spec.in_channels != n_bands:
        raise InputError(f"--init: {os.path.basename(cfg.init)} takes {spec.in_channels} bands, but "
                         f"{n_bands} are given; choose --bands to match it.")
    cfg.base_width, cfg.depth = spec.base_width, spec.depth
    state = net.state_dict()  # float32 whatever the file stores: load_model built the network
    if [(c.id, c.name) for c in spec.classes] != [(c.id, c.name) for c in classes]:
        fresh = build_network(replace(spec, classes=tuple(classes))).state_dict()
        state["head.weight"], state["head.bias"] = fresh["head.weight"], fresh["head.bias"]
        _log(f"--init: other classes than {os.path.basename(cfg.init)}'s; its classifier head starts afresh", rank)
    _log(f"--init: starting from {cfg.init} (base width {spec.base_width}, depth {spec.depth}, its normalisation)",
         rank)
    return state, spec


def evaluate(network, spec: ModelSpec, items: list[Labelled], device, tile: int, overlap: int, batch: int = 4):
    """Confusion matrix (with its unclassified column) over whole images, blended as the engine does."""
    ids = [c.id for c in spec.classes]
    predictor = Predictor(network, spec.mean, spec.std, blend_weights(tile, overlap), device, batch)
    total = np.zeros((len(ids), len(ids) + 1), np.int64)
    lut = np.array(ids, np.uint8)
    for s in items:
        pred = lut[predict_array(predictor, s.image, len(ids), tile, overlap)]
        total += confusion(s.mask, pred, ids)
    return total


def train(cfg: TrainConfig, train_items, val_items, classes: tuple[LandClass, ...], bands, out_path: str,
          log_dir: str, resume: bool = False, data_note: str = "", command: str = "") -> dict:
    world, rank = _dist()
    distributed = world > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() and cfg.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was asked for but no CUDA GPU is available; use --device cpu.")
    use_cuda = torch.cuda.is_available() and cfg.device != "cpu"
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(cfg.seed)
    os.makedirs(log_dir, exist_ok=True)

    ids = [c.id for c in classes]
    names = [c.name for c in classes]
    start = _start_model(cfg, classes, len(bands), rank)
    # A fine-tuned network keeps the input normalisation its features were learnt with.
    mean, std = (list(start[1].mean), list(start[1].std)) if start else band_stats(train_items)
    spec = ModelSpec(classes=tuple(classes), bands=tuple(bands), mean=tuple(mean), std=tuple(std),
                     base_width=cfg.base_width, depth=cfg.depth, tile_size=cfg.infer_tile, overlap=cfg.infer_overlap,
                     gsd=cfg.gsd, name=cfg.name)
    # Labels are remapped to output channels 0..n-1 for the loss; 255 stays ignored.
    remap = np.full(256, 255, np.uint8)
    remap[ids] = np.arange(len(ids))
    freq = class_frequencies(train_items, ids)
    weights = torch.tensor(class_weights(freq, cfg.class_weight_power), dtype=torch.float32, device=device)
    _log(f"classes {names}; training pixel shares {np.round(freq, 4).tolist()}; loss weights "
         f"{np.round(weights.cpu().numpy(), 3).tolist()}", rank)

    sampler = WindowSampler(train_items, ids, cfg.tile, cfg.rare_fraction,
                            (1 - cfg.scale_jitter, 1 + cfg.scale_jitter), cfg.seed)
    windows = _Windows(sampler, epoch_size(train_items, cfg.tile, cfg.passes))
    dsampler = torch.utils.data.distributed.DistributedSampler(windows, world, rank, shuffle=True, seed=cfg.seed) \
        if distributed else None
    loader = DataLoader(windows, batch_size=cfg.batch_size, shuffle=dsampler is None, sampler=dsampler,
                        num_workers=cfg.workers, collate_fn=_collate, drop_last=False,
                        persistent_workers=False, generator=torch.Generator().manual_seed(cfg.seed))

    net = build_network(spec)
    if start:
        net.load_state_dict(start[0], strict=True)
    net = net.to(device).to(memory_format=torch.channels_last)
    model = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if use_cuda else None) \
        if distributed else net
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(loader))
    plan = {"epochs": cfg.epochs}  # shortened after the first epoch when --max-minutes says so
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        total = steps_per_epoch * plan["epochs"]
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    loss_fn = combined_loss(cfg.loss, weights)
    # The CPU trains in bf16 too where oneDNN has bf16 kernels (about twice as fast on AVX512-BF16).
    amp = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    lut = torch.from_numpy(remap.astype(np.int64)).to(device)

    ckpt_path = os.path.join(log_dir, "checkpoint.pt")
    history, start_epoch, best = [], 0, float("-inf")
    if resume:
        if not os.path.exists(ckpt_path):
            raise InputError(f"--resume: there is no checkpoint in {log_dir}.")
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, best = int(state["epoch"]) + 1, float(state["best_miou"])
        history = json.loads(state["history"])
        _log(f"resumed after epoch {start_epoch} (best validation mIoU {best:.4f})", rank)

    csv_path = os.path.join(log_dir, "epochs.csv")
    t_start = time.perf_counter()
    best_matrix = None

    def validate(row):
        """Validation confusion and mean IoU of the network as it is now; adds their columns to row."""
        matrix = evaluate(net, spec, val_items, device, cfg.infer_tile, cfg.infer_overlap)
        s = scores(matrix, names)
        row.update(val_miou=round(s["miou"], 5), val_accuracy=round(s["accuracy"], 5),
                   **{f"iou_{n}": (None if s["iou"][n] is None else round(s["iou"][n], 5)) for n in names})
        return matrix, s["miou"]

    if start and val_items and not resume and rank == 0:
        # Epoch 0 is the model fine-tuning starts from: if no epoch beats it, it stays the best.
        row = {"epoch": 0, "train_loss": float("nan"), "lr": 0.0, "seconds": 0.0}
        best_matrix, best = validate(row)
        history.append(row)
        _log(" ".join(f"{k}={v}" for k, v in row.items()) + " (the --init model)", rank)
        _save(out_path, net, spec, cfg, plan["epochs"], row, data_note, command)
    if distributed:
        torch.distributed.barrier()
    epoch = start_epoch
    while epoch < plan["epochs"]:
        windows.epoch = epoch
        if dsampler is not None:
            dsampler.set_epoch(epoch)
        model.train()
        t0 = time.perf_counter()
        losses = []
        for step, batch in enumerate(loader):
            imgs = [torch.from_numpy(b[0]).to(device, non_blocking=True).float() for b in batch]
            msks = [torch.from_numpy(b[1]).to(device, non_blocking=True) for b in batch]
            x, y = augment_batch(imgs, msks, [b[2] for b in batch], [b[3] for b in batch], cfg.tile,
                                 cfg.color_jitter, cfg.seed * 100003 + epoch * 1009 + step)
            x = ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
            y = lut[y]
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            if rank == 0 and (step % 10 == 0 or step + 1 == steps_per_epoch):
                done = (step + 1) / steps_per_epoch
                bar = "#" * int(20 * done)
                print(f"\repoch {epoch + 1}/{plan['epochs']} [{bar:<20}] {step + 1}/{steps_per_epoch} "
                      f"loss {np.mean(losses[-20:]):.4f}", end="", file=sys.stderr, flush=True)
        if rank == 0:
            print(file=sys.stderr)
        train_loss = float(np.mean(losses)) if losses else float("nan")
        if distributed:
            t = torch.tensor([train_loss], device=device)
            torch.distributed.all_reduce(t)
            train_loss = float(t) / world
        row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "lr": round(sched.get_last_lr()[0], 7),
               "seconds": round(time.perf_counter() - t0, 1)}
        if rank == 0:
            if val_items:
                matrix, metric = validate(row)
            else:
                matrix, metric = None, -train_loss
            history.append(row)
            _log(" ".join(f"{k}={v}" for k, v in row.items()), rank)
            if metric > best:
                best, best_matrix = metric, matrix
                _save(out_path, net, spec, cfg, plan["epochs"], row, data_note, command)
                _log(f"saved {out_path} (best so far)", rank)
            _write_csv(csv_path, history)
            torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch, "best_miou": best, "history": json.dumps(history)}, ckpt_path)
        if distributed:
            torch.distributed.barrier()
        if cfg.max_minutes and epoch - start_epoch < 2:
            # The cosine schedule should end when the time does. The first epoch pays for
            # start-up (workers, cuDNN autotuning), so the plan is made again after the second.
            spent = time.perf_counter() - t_start
            last = time.perf_counter() - t0
            fit = int(max(0.0, cfg.max_minutes * 60 - spent) / max(last, 1e-6))
            plan["epochs"] = max(epoch + 1, min(cfg.epochs, epoch + 1 + fit))
            _log(f"{last:.1f} s for the last epoch: {plan['epochs']} epochs fit in {cfg.max_minutes} minutes", rank)
        epoch += 1
    if rank == 0:
        _plots(log_dir, history, best_matrix, names)
    if distributed:
        torch.distributed.destroy_process_group()
    return {"best": best, "history": history}


def _save(out_path, net, spec, cfg, planned, row, data_note, command):
    best_row = dict(row)
    info = {"data": data_note, "epoch": row["epoch"], "epochs_planned": planned,
            "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, **cfg.extra,
            "validation": {k: v for k, v in best_row.items() if k.startswith(("val_", "iou_"))},
            "command": command}
    save_model(out_path, net, spec.with_training(**info), half=cfg.half_weights)


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
        _log("matplotlib is not installed: no PNG plots")
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
