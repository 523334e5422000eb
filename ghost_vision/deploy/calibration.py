"""Calibration images for int8 quantization (:func:`ghost_vision.deploy.quantize.quantize`).

A calibration source is a tensor batch (``N x 3 x H x W`` or a list of ``3 x H x W`` float images in [0, 1]),
an image folder (read in sorted order, recursively) or a DataModule (its validation split, the images as its
eval transform gives them). The images are the *model's* input: the model's own pre-processing (a detector's
resize/normalize, a segmenter's normalisation) is applied afterwards, exactly as at inference.

Example:
    >>> import torch
    >>> images = calibration_images(torch.rand(4, 3, 64, 64), num_images=2)
    >>> len(images), tuple(images[0].shape)
    (2, (3, 64, 64))
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["CalibrationError", "IMAGE_SUFFIXES", "calibration_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

#: the smallest side a Ghost network takes (its output stride is 32)
MIN_SIDE = 32


class CalibrationError(ValueError):
    """The calibration set cannot be used (empty, unreadable, wrong channel count or size)."""


def _check(images: list[Tensor], where: str) -> list[Tensor]:
    if not images:
        raise CalibrationError(f"the calibration set {where} is empty: give at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, Tensor) or img.dim() != 3:
            shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise CalibrationError(f"calibration image {i} of {where} has shape {shape}; expected 3 x H x W")
        if img.shape[0] != 3:
            raise CalibrationError(f"calibration image {i} of {where} has {img.shape[0]} channels; the models take "
                                   "3 (RGB): convert grey or RGBA images to RGB")
        if min(img.shape[-2:]) < MIN_SIDE:
            raise CalibrationError(f"calibration image {i} of {where} is {img.shape[-2]}x{img.shape[-1]} px; the "
                                   f"network needs at least {MIN_SIDE} px per side (its output stride)")
        if not img.is_floating_point():
            raise CalibrationError(f"calibration image {i} of {where} is {img.dtype}; give float images in [0, 1]")
    return images


def _read_folder(root: Path, num_images: int) -> list[Tensor]:
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CalibrationError(f"the calibration folder {root} holds no image files ({', '.join(IMAGE_SUFFIXES)})")
    out = []
    for path in files[:num_images]:
        try:
            with Image.open(path) as im:
                out.append(pil_to_tensor(im.convert("RGB")).float() / 255.0)
        except OSError as exc:
            raise CalibrationError(f"cannot read the calibration image {path}: {exc}") from exc
    return out


def _from_datamodule(dm: Any, num_images: int) -> list[Tensor]:
    if getattr(dm, "val_dataset", None) is None:
        dm.setup("validate")
    ds = getattr(dm, "val_dataset", None)
    if ds is None:
        raise CalibrationError(f"{type(dm).__name__} has no validation split (val_dataset) to calibrate on")
    out = []
    for i in range(min(num_images, len(ds))):
        item = ds[i]
        if item is None:  # an unreadable sample that the dataset skips
            continue
        out.append(item[0] if isinstance(item, (tuple, list)) else item)
    return out


def calibration_images(source: Any, *, num_images: int = 200) -> list[Tensor]:
    """Up to ``num_images`` float ``3 x H x W`` images from a tensor batch, a list of images, an image folder
    or a DataModule (its validation split).

    Raises:
        CalibrationError: an empty set, an image that is not ``3 x H x W`` float (grey, RGBA, a batch of
            the wrong rank) or smaller than 32 px, a folder without images, a DataModule without validation
            split.
    """
    if num_images < 1:
        raise CalibrationError(f"num_images={num_images}: calibrate on at least one image")
    if isinstance(source, Tensor):
        if source.dim() == 3:
            raise CalibrationError(f"the calibration tensor has shape {tuple(source.shape)}; give a batch N x 3 x H x W "
                                   "(unsqueeze(0) for one image)")
        if source.dim() != 4:
            raise CalibrationError(f"the calibration tensor has shape {tuple(source.shape)}; expected N x 3 x H x W")
        return _check(list(source[:num_images]), "(a tensor)")
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        if not root.is_dir():
            raise CalibrationError(f"the calibration folder {root} does not exist (give an image folder, a tensor "
                                   "batch or a DataModule)")
        return _check(_read_folder(root, num_images), str(root))
    if isinstance(source, Sequence):
        return _check(list(source[:num_images]), "(a list)")
    if hasattr(source, "setup") and (hasattr(source, "val_dataloader") or hasattr(source, "val_dataset")):
        return _check(_from_datamodule(source, num_images), f"({type(source).__name__}'s validation split)")
    raise CalibrationError(f"cannot calibrate on a {type(source).__name__}: give a tensor batch, an image folder "
                           "or a DataModule")
