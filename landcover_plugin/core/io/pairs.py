"""Pair image files with their mask files by name."""
from __future__ import annotations

import os
import re

from ..errors import InputError

IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
# Suffixes that name a mask, and the image suffixes they pair with: x.jpg/x.png,
# x_sat.jpg/x_mask.png (DeepGlobe), x.jpg/x_m.png.
_MASK_SUFFIX = re.compile(r"(_mask|_m|_label|_labels|_gt)$", re.IGNORECASE)
_IMAGE_SUFFIX = re.compile(r"(_sat|_image|_img|_rgb)$", re.IGNORECASE)


def _stem_key(name: str, pattern) -> str:
    stem = os.path.splitext(name)[0]
    return pattern.sub("", stem).lower()


def _files(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        raise InputError(f"The folder {folder} does not exist.")
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def pair_files(image_dir: str, mask_dir: str | None = None) -> list[tuple[str, str]]:
    """(image, mask) paths matched by stem; masks may sit in their own folder or beside the images."""
    mask_dir = mask_dir or image_dir
    masks = {}
    for f in _files(mask_dir):
        stem = os.path.splitext(f)[0]
        if mask_dir != image_dir or _MASK_SUFFIX.search(stem):
            masks.setdefault(_stem_key(f, _MASK_SUFFIX), os.path.join(mask_dir, f))
    pairs = []
    for f in _files(image_dir):
        stem = os.path.splitext(f)[0]
        if mask_dir == image_dir and _MASK_SUFFIX.search(stem):
            continue
        key = _stem_key(f, _IMAGE_SUFFIX)
        mask = masks.get(key) or masks.get(os.path.splitext(f)[0].lower())
        if mask:
            pairs.append((os.path.join(image_dir, f), mask))
    if not pairs:
        raise InputError(f"No image/mask pairs found in {image_dir}" + (f" and {mask_dir}" if mask_dir != image_dir
                                                                         else "") +
                         "; masks need the image's name, optionally ending in _mask or _m.")
    return pairs


def pairs_from(images: str, masks: str | None = None) -> list[tuple[str, str]]:
    """What a command line names: one image file and its mask file, or folders for pair_files."""
    if os.path.isfile(images):
        if not masks or not os.path.isfile(masks):
            raise InputError(f"Give a mask file after the image file {images}.")
        return [(images, masks)]
    return pair_files(images, masks)
