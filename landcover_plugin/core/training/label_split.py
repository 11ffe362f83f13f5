"""Hold out part of the labelled area for validation, by square blocks rather than pixels.

Neighbouring pixels look alike, so a pixel-wise split would score a model on pixels it
has all but seen. Blocks of a few hundred pixels are held out whole; their imagery stays
in the training images (unlabelled there), their labels only score the model. Rare
classes are served first, so each class present in two or more blocks gets validation
pixels while keeping most of its training pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..model.classes import NODATA_CLASS
from .data import Labelled

MIN_BLOCKS = 8  # labelled blocks a split needs; below this the block size halves (not under 64 px)


@dataclass(frozen=True)
class Block:
    item: int
    y: int
    x: int
    size: int


def block_counts(items: list[Labelled], class_ids, size: int) -> tuple[list[Block], np.ndarray]:
    """Every block holding labels, and its labelled pixels per class (blocks x classes)."""
    blocks, rows = [], []
    ids = list(class_ids)
    for i, s in enumerate(items):
        h, w = s.mask.shape
        for y in range(0, h, size):
            for x in range(0, w, size):
                counts = np.bincount(s.mask[y:y + size, x:x + size].ravel(), minlength=256)[ids]
                if counts.any():
                    blocks.append(Block(i, y, x, size))
                    rows.append(counts)
    return blocks, np.array(rows, np.int64).reshape(len(rows), len(ids))


def choose_blocks(counts: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Indices of blocks whose labelled pixels make about `share` of the total, classes served rarest first.

    A block is skipped when taking it would leave a class with less than half of its
    pixels for training.
    """
    totals = counts.sum(axis=0)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(counts))
    taken = np.zeros(len(counts), bool)
    val = np.zeros_like(totals)

    def take(b) -> bool:
        after = val + counts[b]
        if np.any(after > totals * 0.5):
            return False
        taken[b] = True
        val[:] = after
        return True

    for c in np.argsort(totals):
        if totals[c] == 0:
            continue
        for b in order:
            if val[c] >= share * totals[c]:
                break
            if not taken[b] and counts[b, c] > 0:
                take(b)
    for b in order:
        if val.sum() >= share * totals.sum():
            break
        if not taken[b]:
            take(b)
    return np.flatnonzero(taken)


def spatial_split(items: list[Labelled], class_ids, share: float, block: int = 256, context: int = 64,
                  seed: int = 0) -> tuple[list[Labelled], list[Labelled]]:
    """(training items, validation items): held-out blocks unlabelled in training; each validation item
    is one block with `context` pixels of imagery around it (unlabelled), so the network sees what it
    would see in a whole image."""
    if share <= 0:
        return items, []
    if share > 0.5:
        raise InputError(f"The validation share is {share}; hold out at most half of the labels (0 to 0.5).")
    blocks, counts = block_counts(items, class_ids, block)
    while len(blocks) < MIN_BLOCKS and block > 64:
        block //= 2
        blocks, counts = block_counts(items, class_ids, block)
    chosen = choose_blocks(counts, share, seed) if len(blocks) >= 2 else np.array([], int)
    if not len(chosen):
        raise InputError("The labels are too few or too close together to hold any out for validation; "
                         "digitize labels in more places, or set the validation share to 0.")
    masks = [s.mask.copy() for s in items]
    val = []
    for b in (blocks[k] for k in chosen):
        s = items[b.item]
        h, w = s.mask.shape
        y0, x0 = max(0, b.y - context), max(0, b.x - context)
        y1, x1 = min(h, b.y + b.size + context), min(w, b.x + b.size + context)
        mask = np.full((y1 - y0, x1 - x0), NODATA_CLASS, np.uint8)
        by1, bx1 = min(h, b.y + b.size), min(w, b.x + b.size)
        mask[b.y - y0:by1 - y0, b.x - x0:bx1 - x0] = s.mask[b.y:by1, b.x:bx1]
        masks[b.item][b.y:by1, b.x:bx1] = NODATA_CLASS
        val.append(Labelled(f"{s.name}@{b.y},{b.x}", s.image[:, y0:y1, x0:x1], mask))
    train = [Labelled(s.name, s.image, m) for s, m in zip(items, masks)]
    return train, val
