"""Training data: labelled rasters in memory, random windows, augmentation.

Images are kept whole (never cut to files); each training window is centred on a
labelled pixel: with probability `rare_fraction` one of a class picked with probability
growing as the class gets rarer, else one of any class in proportion to its labelled
pixels. So sparse labels (a few polygons over a large image) are all the windows see.
Every draw is a pure function of (seed, epoch, index), so runs are reproducible and
ranks of a distributed run can split the indices of an epoch with a DistributedSampler.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..model.classes import NODATA_CLASS


@dataclass
class Labelled:
    name: str
    image: np.ndarray  # (bands, H, W), native dtype
    mask: np.ndarray  # (H, W) uint8 class ids, 255 ignored


def read_image(path: str, bands=None) -> np.ndarray:
    """(bands, H, W) array of a raster or plain image; rasterio when present, else Pillow for PNG/JPEG."""
    try:
        import rasterio
    except ImportError:
        rasterio = None
    if rasterio is not None:
        import warnings

        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                with rasterio.open(path) as ds:
                    return ds.read(list(bands) if bands else None)
            except rasterio.errors.RasterioIOError as exc:
                raise InputError(f"{path} cannot be read as an image ({exc}).") from None
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return arr[[b - 1 for b in bands]] if bands else arr


def load_pairs(pairs, bands, class_ids) -> list[Labelled]:
    """Read image/mask pairs; masks must match their image's size and hold known class ids or 255."""
    allowed = np.zeros(256, bool)
    allowed[list(class_ids)] = True
    allowed[NODATA_CLASS] = True
    out = []
    for image_path, mask_path in pairs:
        image = read_image(image_path, bands)
        mask = read_image(mask_path)
        if mask.shape[0] != 1:
            mask = mask[:1]
        mask = mask[0].astype(np.uint8)
        if mask.shape != image.shape[1:]:
            raise InputError(f"The mask {os.path.basename(mask_path)} is {mask.shape[1]} x {mask.shape[0]} pixels "
                             f"but its image is {image.shape[2]} x {image.shape[1]}.")
        bad = np.unique(mask[~allowed[mask]])
        if bad.size:
            raise InputError(f"The mask {os.path.basename(mask_path)} holds class ids {bad[:5].tolist()} that are "
                             f"not in the class table; fix the mask or the classes file.")
        out.append(Labelled(os.path.splitext(os.path.basename(image_path))[0], image, mask))
    return out


def split(items: list[Labelled], val_pattern: str | None, val_fraction: float, seed: int):
    """(train, val) by file: names matching val_pattern go to validation, else a seeded fraction of groups.

    A pattern with a capturing group splits by that group (e.g. the Dubai tile:
    "tile(7)_" puts every part of tile 7 in validation).
    """
    if val_pattern:
        rx = re.compile(val_pattern)
        val = [s for s in items if rx.search(s.name)]
        train = [s for s in items if not rx.search(s.name)]
        if not val:
            raise InputError(f"--val-pattern {val_pattern!r} matches none of the {len(items)} image names "
                             f"(e.g. {items[0].name!r}); it is searched in names without folder or extension.")
    else:
        names = sorted(s.name for s in items)
        rng = np.random.default_rng(seed)
        k = max(1, round(len(names) * val_fraction)) if len(names) > 1 and val_fraction > 0 else 0
        chosen = set(rng.choice(names, size=k, replace=False).tolist()) if k else set()
        val = [s for s in items if s.name in chosen]
        train = [s for s in items if s.name not in chosen]
    if not train:
        raise InputError("No training images are left after the validation split; loosen --val-pattern.")
    return train, val


def class_frequencies(items: list[Labelled], class_ids) -> np.ndarray:
    counts = np.zeros(256, np.int64)
    for s in items:
        counts += np.bincount(s.mask.ravel(), minlength=256)
    c = counts[list(class_ids)].astype(np.float64)
    return c / max(c.sum(), 1)


def class_weights(freq: np.ndarray, power: float = 0.5, cap: float = 10.0) -> np.ndarray:
    """Inverse-frequency weights (to a power), mean 1, capped so a nearly absent class cannot dominate."""
    w = np.where(freq > 0, 1.0 / np.maximum(freq, 1e-12) ** power, 0.0)
    w = w / max(w[w > 0].mean(), 1e-12) if (w > 0).any() else np.ones_like(w)
    return np.minimum(w, cap)


class WindowSampler:
    """Draws training windows: (image (bands, T, T), mask (T, T)) as numpy arrays."""

    def __init__(self, items: list[Labelled], class_ids, tile: int, rare_fraction: float = 0.0,
                 scale_range=(1.0, 1.0), seed: int = 0, points_per_class: int = 20000):
        self.items, self.tile, self.rare_fraction, self.scale_range, self.seed = items, tile, rare_fraction, \
            scale_range, seed
        self.class_ids = list(class_ids)
        areas = np.array([s.mask.size for s in items], np.float64)
        self.p_item = areas / areas.sum()
        freq = class_frequencies(items, class_ids)
        present = freq > 0
        # rarer classes are picked more often: probability ~ freq^-0.5 over the classes present
        pick = np.where(present, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
        self.p_class = pick / pick.sum() if pick.sum() else None
        self.p_labelled = freq / freq.sum() if freq.sum() else None
        rng = np.random.default_rng(seed)
        self.points = []  # per class: (item index, y, x) of sample pixels of that class
        for cid in self.class_ids:
            pts = []
            for i, s in enumerate(items):
                ys, xs = np.nonzero(s.mask == cid)
                if len(ys):
                    take = rng.choice(len(ys), size=min(len(ys), points_per_class // len(items) + 1), replace=False)
                    pts.append(np.stack([np.full(len(take), i), ys[take], xs[take]], 1))
            self.points.append(np.concatenate(pts) if pts else np.zeros((0, 3), np.int64))

    def draw(self, epoch: int, index: int):
        rng = np.random.default_rng((self.seed, epoch, index))
        scale = rng.uniform(*self.scale_range)
        size = max(8, int(round(self.tile * scale)))
        centre = None
        if self.rare_fraction > 0 and self.p_class is not None and rng.random() < self.rare_fraction:
            c = rng.choice(len(self.class_ids), p=self.p_class)
            if len(self.points[c]):
                i, cy, cx = self.points[c][rng.integers(len(self.points[c]))]
                centre = (int(i), int(cy), int(cx))
        if centre is None and self.p_labelled is not None:
            # Centred on a labelled pixel: with sparse labels (a few polygons over a large image)
            # windows drawn anywhere would mostly hold nothing to learn from.
            c = rng.choice(len(self.class_ids), p=self.p_labelled)
            i, cy, cx = self.points[c][rng.integers(len(self.points[c]))]
            centre = (int(i), int(cy), int(cx))
        if centre is None:
            i = int(rng.choice(len(self.items), p=self.p_item))
            h, w = self.items[i].mask.shape
            centre = (i, int(rng.integers(h)), int(rng.integers(w)))
        i, cy, cx = centre
        item = self.items[i]
        h, w = item.mask.shape
        # the window may stick out where the image is small; the outside is ignored (255)
        y0 = int(np.clip(cy - size // 2 + rng.integers(-size // 4, size // 4 + 1), min(0, h - size), max(0, h - size)))
        x0 = int(np.clip(cx - size // 2 + rng.integers(-size // 4, size // 4 + 1), min(0, w - size), max(0, w - size)))
        img = np.zeros((item.image.shape[0], size, size), item.image.dtype)
        msk = np.full((size, size), NODATA_CLASS, np.uint8)
        ys, xs = slice(max(y0, 0), min(y0 + size, h)), slice(max(x0, 0), min(x0 + size, w))
        img[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = item.image[:, ys, xs]
        msk[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = item.mask[ys, xs]
        flips = rng.integers(0, 8)
        return img, msk, size, int(flips)


def dihedral(x, k: int):
    """One of the 8 flips/quarter turns of a (..., H, W) torch tensor."""
    import torch

    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def augment_batch(images, masks, sizes, flips, tile: int, jitter: float, rng_seed: int):
    """Resize scale-jittered crops to tile, flip/rotate, and jitter brightness, contrast and colour.

    images: list of (bands, s, s) float tensors; masks: list of (s, s) uint8 tensors.
    Returns (N, bands, tile, tile) float, (N, tile, tile) int64.
    """
    import torch
    from torch.nn import functional as F

    g = torch.Generator().manual_seed(rng_seed)
    out_i, out_m = [], []
    for img, msk, s, k in zip(images, masks, sizes, flips):
        if s != tile:
            img = F.interpolate(img[None], size=(tile, tile), mode="bilinear", align_corners=False)[0]
            msk = F.interpolate(msk[None, None].float(), size=(tile, tile), mode="nearest")[0, 0].to(torch.uint8)
        out_i.append(dihedral(img, k))
        out_m.append(dihedral(msk, k))
    x = torch.stack(out_i)
    y = torch.stack(out_m).long()
    if jitter > 0:
        n, c = x.shape[:2]
        mean = x.mean(dim=(2, 3), keepdim=True)
        contrast = (1 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * jitter).to(x.device)
        brightness = ((torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * jitter * 40).to(x.device)
        colour = (1 + (torch.rand(n, c, 1, 1, generator=g) * 2 - 1) * jitter * 0.5).to(x.device)
        x = ((x - mean) * contrast + mean) * colour + brightness
    return x, y


def calibration_windows(items: list[Labelled], n: int = 16, size: int = 128, seed: int = 0) -> np.ndarray:
    """n windows of the training imagery, raw values (n, bands, size, size), for int8 calibration.

    Centred on labelled pixels where there are labels, so that sparse polygons over a large
    raster still give windows of the ground the model was taught; smaller images are padded
    with their edge values.
    """
    rng = np.random.default_rng(seed)
    areas = np.array([np.count_nonzero(s.mask != NODATA_CLASS) or s.mask.size for s in items], np.float64)
    out = []
    for i in rng.choice(len(items), size=n, p=areas / areas.sum()):
        item = items[i]
        ys, xs = np.nonzero(item.mask != NODATA_CLASS)
        if not len(ys):
            ys, xs = np.indices(item.mask.shape).reshape(2, -1)
        k = rng.integers(len(ys))
        h, w = item.mask.shape
        y0 = int(np.clip(ys[k] - size // 2, 0, max(0, h - size)))
        x0 = int(np.clip(xs[k] - size // 2, 0, max(0, w - size)))
        win = item.image[:, y0:y0 + size, x0:x0 + size]
        pad = ((0, 0), (0, size - win.shape[1]), (0, size - win.shape[2]))
        out.append(np.pad(win, pad, mode="edge") if any(p[1] for p in pad) else win)
    return np.ascontiguousarray(np.stack(out))


def epoch_size(items: list[Labelled], tile: int, passes: float) -> int:
    """Windows per epoch so that an epoch covers the labelled training pixels `passes` times."""
    pixels = sum(int(np.count_nonzero(s.mask != NODATA_CLASS)) for s in items)
    return max(1, math.ceil(passes * pixels / (tile * tile)))


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
