"""The state a run resumes from (`--resume`): network, optimiser, schedule, step and the best epoch so far,
written after every epoch as LOG_DIR/checkpoint.pt (tensors and plain values only: loaded with
weights_only, nothing in it is executed)."""
from __future__ import annotations

import json
import os

import torch

from ..errors import InputError

NAME = "checkpoint.pt"


def save_checkpoint(log_dir: str, net, opt, sched, epoch: int, step: int, best: float, best_epoch, best_state,
                    history: list) -> None:
    path = os.path.join(log_dir, NAME)
    tmp = path + ".tmp"
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "epoch": epoch, "step": step, "best_miou": best, "best_epoch": best_epoch, "best_state": best_state,
                "history": json.dumps(history)}, tmp)
    os.replace(tmp, path)  # a run stopped while writing keeps the previous epoch's checkpoint


def load_checkpoint(log_dir: str | None, net, opt, sched, device) -> dict:
    """Restore network, optimiser and schedule in place; the rest of the state as a dict (epoch, step, best,
    best_epoch, best_state, history)."""
    path = os.path.join(log_dir or "", NAME)
    if not log_dir or not os.path.exists(path):
        raise InputError(f"--resume: there is no checkpoint in {log_dir}.")
    state = torch.load(path, map_location=device, weights_only=True)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return {"epoch": int(state["epoch"]), "step": int(state["step"]), "best": float(state["best_miou"]),
            "best_epoch": int(state["best_epoch"]), "best_state": state["best_state"],
            "history": json.loads(state["history"])}
