"""Losses for imbalanced land-cover classes; pixels labelled 255 are ignored."""
from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE = 255


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice, averaged over the classes present in the batch's labels or predictions."""
    probs = torch.softmax(logits.float(), dim=1)
    valid = (target != IGNORE).unsqueeze(1)
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1) * valid[:, 0], logits.shape[1])
    onehot = onehot.permute(0, 3, 1, 2).float() * valid
    probs = probs * valid
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    # Classes predicted but absent from the labels count too, or false alarms would cost nothing here.
    predicted = F.one_hot(logits.argmax(dim=1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    present = (onehot.sum(dim=(0, 2, 3)) > 0) | (predicted.sum(dim=(0, 2, 3)) > 0)
    dice = (2 * inter + eps) / (total + eps)
    return 1 - dice[present].mean() if present.any() else logits.sum() * 0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, weight=None, gamma: float = 2.0) -> torch.Tensor:
    ce = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE, reduction="none")
    pt = torch.exp(-F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="none"))
    valid = target != IGNORE
    return ((1 - pt) ** gamma * ce)[valid].mean() if valid.any() else logits.sum() * 0


def combined_loss(kind: str, weight=None):
    """Weighted cross-entropy plus Dice ("dice") or focal loss ("focal")."""
    if kind not in ("dice", "focal"):
        raise ValueError(f"unknown loss {kind!r}; choose dice or focal")

    def loss(logits, target):
        if not (target != IGNORE).any():
            # a batch with nothing labelled: cross-entropy's mean would be 0/0 and poison the weights
            return logits.sum() * 0
        ce = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE)
        extra = dice_loss(logits, target) if kind == "dice" else focal_loss(logits, target, weight)
        return ce + extra

    return loss
