"""Starting from a model file: its weights fitted to the user's class table, batch-norm statistics
re-estimated on the new imagery, the classifier head fitted on fixed features, and learning rates
per part of the network."""
from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import torch

from ..errors import InputError, ModelFileError
from ..io.class_table import head_rows
from ..model.model_file import build_network, load_model
from ..model.unet import fit_batchnorm
from .config import TrainConfig
from .data import Labelled, WindowSampler


def start_model(cfg: TrainConfig, classes, n_bands: int, log):
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
    if spec.architecture != "unet":
        raise InputError(f"Training starts from U-Net models only; {name} ({spec.name}) is not one. Choose another "
                         "starting model or train from scratch.")
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


def freeze_batchnorm(net) -> None:
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def param_groups(net, cfg: TrainConfig) -> list[dict]:
    """Encoder (stem and down path), decoder and head, each at its own learning rate."""
    groups = {"encoder": [], "decoder": [], "head": []}
    for name, p in net.named_parameters():
        part = "encoder" if name.startswith(("stem.", "downs.")) else "head" if name.startswith("head.") else "decoder"
        groups[part].append(p)
    factor = {"encoder": cfg.encoder_lr_factor, "decoder": 1.0, "head": cfg.head_lr_factor}
    return [{"params": ps, "lr": cfg.lr * factor[k]} for k, ps in groups.items() if ps]
