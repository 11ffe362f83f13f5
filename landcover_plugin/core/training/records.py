"""What a training run leaves: the model file with how it was made, the epochs' table and the plots."""
from __future__ import annotations

import csv
import logging
import os
from dataclasses import asdict

import numpy as np

from ..model.model_file import save_model

logger = logging.getLogger("landcover.training")


def save_best(out_path, net, spec, cfg, planned, row, data_note, command, init_row=None, calibration=None):
    info = {"data": data_note, "epoch": row["epoch"], "epochs_planned": planned,
            "config": {k: v for k, v in asdict(cfg).items() if k != "extra"}, **cfg.extra,
            "validation": {k: v for k, v in row.items() if k.startswith(("val_", "iou_"))},
            "command": command}
    if init_row is not None:
        info["starting_model_validation"] = {k: v for k, v in init_row.items() if k.startswith(("val_", "iou_"))}
    save_model(out_path, net, spec.with_training(**info), half=cfg.half_weights, calibration=calibration)


def write_history(path, history):
    keys = []
    for row in history:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=keys)
        w.writeheader()
        w.writerows(history)


def write_plots(log_dir, history, matrix, names):
    """Training curves and the best validation confusion matrix as PNGs (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no PNG plots")
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
