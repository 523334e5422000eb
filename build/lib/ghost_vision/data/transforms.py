"""Augmentation presets (albumentations) for detection and segmentation, chosen by name.

``build_transforms(preset, **kwargs)`` returns a callable working on numpy arrays:

* detection presets: ``t(image=HxWx3 uint8, target=dict) -> (image, target)``. ``target["boxes"]`` is
  float32 N×4 xyxy in pixels, ``target["labels"]`` int64 N; every other per-box entry (a numpy array,
  tensor or list whose first dimension is N, e.g. ``difficult``, ``iscrowd``, ``area``) is filtered with the
  boxes; entries that are not per-box (``image_id``, or any key in :data:`NON_BOX_KEYS`) pass through.
  ``target["masks"]`` (uint8 N×H×W instance masks) goes through albumentations' ``masks`` with the image
  (nearest-neighbour, padded with 0) and is re-aligned with the boxes albumentations keeps (by each box's index
  carried in ``label_fields``); the dataset then drops instances whose mask came out empty.
* segmentation presets: ``t(image=HxWx3 uint8, mask=HxW integer) -> (image, mask)``; the mask keeps its
  dtype, is resampled with nearest neighbour and padded with ``ignore_index`` (255).

Images stay uint8 in [0, 255]; the dataset converts to float and the models normalise.

Presets (:data:`PRESETS`):

* ``"det_train"`` -- SSD style: photometric distortion (``A.ColorJitter``, random order), zoom-out (canvas
  1-4× filled with the mean colour, p=0.5), IoU-constrained random crop (modes {none, .1, .3, .5, .7, .9},
  boxes kept when their centre is inside, clipped), horizontal flip, resize to ``size`` (default 320).
  Keyword arguments: ``size``, ``fill``, ``max_zoom_out``, ``zoom_out_p``, ``flip_p``, ``photometric``,
  ``min_box_size``, ``min_ious`` (e.g. ``[null]`` never crops), ``seed``; ``size=None`` does not resize.
* ``"det_eval"`` -- resize to ``size`` (default 320); ``size=None`` is the identity (the detector resizes).
  Keyword arguments: ``size``, ``min_box_size``, ``seed``.
* ``"seg_train"`` -- photometric distortion, random scale ``scale`` (default (0.5, 2.0)), random crop
  ``crop_size`` (default 512) padded where the image is smaller (image with ``fill``, mask with
  ``ignore_index``), horizontal flip. Keyword arguments: ``crop_size``, ``scale``, ``fill``,
  ``ignore_index``, ``flip_p``, ``photometric``, ``seed``.
* ``"seg_eval"`` -- identity, or resize to ``size`` when given (mask with nearest). Keyword arguments:
  ``size``, ``seed``.
* ``"none"`` (or ``None``) -- identity for either task.

A ``size``/``crop_size`` is an int (square) or ``(height, width)``; YAML lists are accepted.

Seeding and DataLoader workers
------------------------------
albumentations 2.x ignores the global ``random``/``numpy`` state: each ``Compose`` owns its generators. Here,
``seed=s`` seeds them; with ``seed=None`` the seed is drawn from Python's global ``random`` when the preset is
built, so ``random.seed(s)`` (or Lightning's ``seed_everything(s)``) before ``build_transforms`` also gives
reproducible output. (All transforms of a pipeline share one generator pair: albumentations 2.0.8's
``Compose(seed=...)`` hands every transform an identically seeded generator of its own, which makes their
random decisions -- e.g. flip and zoom-out -- move in lockstep.)

A transform object copied into DataLoader worker processes would otherwise replay the same random stream in
every worker. So on its first call inside a worker (detected with ``torch.utils.data.get_worker_info()``)
the transform reseeds itself from ``(seed, worker_info.seed, random.getrandbits(32))``. PyTorch derives
``worker_info.seed`` from the main process' torch RNG for every epoch (``base_seed + worker_id``) and seeds
the worker's ``random`` with it; Lightning's ``seed_everything(s, workers=True)`` additionally reseeds
``random`` in each worker from the seed, the worker id and the global rank. Hence augmentations differ
between workers, epochs (unless ``persistent_workers=True``, where each worker's stream simply continues)
and, with Lightning, between ranks, and a run is reproducible given the same seed and worker count.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np

from ._box_ops import NON_BOX_KEYS, SSD_MIN_IOUS, MinIoURandomCrop, ZoomOut, is_per_box, select_boxes

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_MEAN_UINT8",
    "IMAGENET_STD",
    "NON_BOX_KEYS",
    "PRESETS",
    "DetectionTransform",
    "IdentityTransform",
    "MinIoURandomCrop",
    "SegmentationTransform",
    "ZoomOut",
    "build_transforms",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The ImageNet mean as uint8 RGB, the fill colour for zoom-out and segmentation padding.
IMAGENET_MEAN_UINT8: tuple[int, int, int] = (124, 116, 104)  # round(255 * IMAGENET_MEAN)

PRESETS: tuple[str, ...] = ("det_train", "det_eval", "seg_train", "seg_eval", "none")

# SSD photometric distortion ranges (torchvision's RandomPhotometricDistort uses the same).
_PHOTOMETRIC = {
    "brightness": (0.875, 1.125),
    "contrast": (0.5, 1.5),
    "saturation": (0.5, 1.5),
    "hue": (-0.05, 0.05),
}


# --------------------------------------------------------------------------------------------- helpers
def _hw(value: Any, name: str) -> tuple[int, int]:
    """An int (square) or (height, width) pair of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2:
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"{name} must be an int or (height, width) of ints, got {value!r}")
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{name} must be an int or (height, width) of ints, got {value!r}")
    if min(pair) <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return pair


def _range(value: Any, name: str, low: float = 0.0) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (min, max) pair of numbers, got {value!r}") from None
    if not low < lo <= hi:
        raise ValueError(f"{name} must satisfy {low} < min <= max, got {value!r}")
    return lo, hi


def _prob(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _fill(value: Any) -> tuple[float, ...] | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, Sequence) and len(value) == 3 and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    raise ValueError(f"fill must be a number or an RGB triple, got {value!r}")


def _photometric(enabled: Any) -> list[A.BasicTransform]:
    if not isinstance(enabled, bool):
        raise ValueError(f"photometric must be true or false, got {enabled!r}")
    return [A.ColorJitter(**_PHOTOMETRIC, p=0.5)] if enabled else []


def _min_ious(value: Any) -> tuple[float | None, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) > 0
    ok = ok and all(v is None or (isinstance(v, (int, float)) and 0.0 <= v <= 1.0) for v in value)
    if not ok:
        raise ValueError(
            f"min_ious must be a non-empty list of None (no crop) or IoUs in [0, 1], got {value!r}"
        )
    return tuple(value)


def _check_image(image: Any) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        desc = f"{type(image).__name__} {getattr(image, 'shape', '')} {getattr(image, 'dtype', '')}"
        raise ValueError(f"image must be a HxWx3 uint8 numpy array, got {desc.strip()}")
    return image


# ------------------------------------------------------------------------------------------ callables
class _Seeded:
    """Holds a Compose and keeps its random state seeded per process / DataLoader worker."""

    def __init__(self, preset: str, compose: A.Compose | None, seed: int | None):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"seed must be an int or None, got {seed!r}")
        self.preset = preset
        self.compose = compose
        self.seed = int(seed) if seed is not None else random.getrandbits(32)
        self._reseed(self.seed)
        self._owner = (os.getpid(), None)

    def _reseed(self, entropy: int | Sequence[int]) -> None:
        if self.compose is None:
            return
        seq = np.random.SeedSequence(entropy)
        # One shared generator pair for the whole pipeline (see the module docstring for why).
        self.compose.set_random_state(
            np.random.default_rng(seq), random.Random(int(seq.generate_state(1)[0]))
        )

    def _sync_worker(self) -> None:
        data_mod = sys.modules.get("torch.utils.data")
        info = data_mod.get_worker_info() if data_mod is not None else None
        key = (os.getpid(), None if info is None else (info.id, info.seed))
        if key != self._owner:
            self._owner = key
            if info is not None:
                self._reseed([self.seed, int(info.seed) % 2**63, random.getrandbits(32)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(preset={self.preset!r}, seed={self.seed}, compose={self.compose!r})"


class DetectionTransform(_Seeded):
    """``t(image=, target=) -> (image, target)`` with boxes xyxy in pixels (see the module docstring)."""

    def __call__(self, *, image: np.ndarray, target: Mapping[str, Any] | None = None):
        _check_image(image)
        self._sync_worker()
        if target is None:
            if self.compose is None:
                return image, None
            empty = np.zeros((0, 4), np.float32)
            return self.compose(image=image, bboxes=empty, box_index=np.zeros(0, np.int64))["image"], None
        if "boxes" not in target:
            raise KeyError("detection target needs a 'boxes' entry (N×4 xyxy pixels)")
        boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4)
        n = len(boxes)
        if self.compose is None:
            return image, dict(target)
        masks = target.get("masks")
        extra: dict[str, Any] = {}
        if masks is not None:
            masks = np.asarray(masks, dtype=np.uint8)
            if masks.shape != (n, *image.shape[:2]):
                raise ValueError(f"target['masks'] must be N x H x W = {(n, *image.shape[:2])}, got {masks.shape}")
            extra = {"masks": masks} if n else {}
        out = self.compose(image=image, bboxes=boxes, box_index=np.arange(n, dtype=np.int64), **extra)
        # albumentations drops boxes but transforms every mask: the box index carried through label_fields
        # re-aligns the instance masks with the kept boxes
        keep = np.asarray(out["box_index"], dtype=np.int64).reshape(-1)
        new_boxes = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        new_target: dict[str, Any] = {}
        for key, value in target.items():
            if key == "boxes":
                new_target[key] = new_boxes
            elif key == "masks":
                h, w = out["image"].shape[:2]
                new_target[key] = np.asarray(out["masks"], np.uint8)[keep] if n else np.zeros((0, h, w), np.uint8)
            elif is_per_box(key, value, n):
                new_target[key] = select_boxes(value, keep)
            else:
                new_target[key] = value
        return out["image"], new_target


class SegmentationTransform(_Seeded):
    """``t(image=, mask=) -> (image, mask)``; the mask keeps its dtype (see the module docstring)."""

    def __call__(self, *, image: np.ndarray, mask: np.ndarray | None = None):
        _check_image(image)
        self._sync_worker()
        if self.compose is None:
            return image, mask
        if mask is None:
            return self.compose(image=image)["image"], None
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape[:2]}")
        dtype = mask.dtype
        if not np.issubdtype(dtype, np.integer) and dtype != np.bool_:
            raise ValueError(f"mask must hold integer class ids, got dtype {dtype}")
        # OpenCV cannot resize int64 masks; class ids (and 255) fit uint8 or, failing that, uint16.
        lo, hi = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ValueError(f"mask values must lie in [0, 65535], got [{lo}, {hi}]")
        work = mask.astype(np.uint8 if hi <= 255 else np.uint16)
        out = self.compose(image=image, mask=work)
        return out["image"], out["mask"].astype(dtype, copy=False)


class IdentityTransform:
    """Returns its inputs unchanged: ``t(image=, target=)`` or ``t(image=, mask=)``."""

    def __init__(self, preset: str = "none"):
        self.preset = preset

    def __call__(self, *, image: np.ndarray, target: Any = None, mask: Any = None):
        if target is not None and mask is not None:
            raise ValueError("pass either target (detection) or mask (segmentation), not both")
        return image, (mask if mask is not None else target)

    def __repr__(self) -> str:
        return f"IdentityTransform(preset={self.preset!r})"


# -------------------------------------------------------------------------------------------- presets
def _bbox_params(min_box_size: Any) -> A.BboxParams:
    if isinstance(min_box_size, bool) or not isinstance(min_box_size, (int, float)) or min_box_size < 0:
        raise ValueError(f"min_box_size must be a number >= 0, got {min_box_size!r}")
    return A.BboxParams(
        format="pascal_voc",
        label_fields=["box_index"],
        clip=True,
        filter_invalid_bboxes=True,
        min_width=float(min_box_size),
        min_height=float(min_box_size),
    )


def _det_train(
    size: Any = 320,
    fill: Any = IMAGENET_MEAN_UINT8,
    max_zoom_out: float = 4.0,
    zoom_out_p: float = 0.5,
    flip_p: float = 0.5,
    photometric: bool = True,
    min_box_size: float = 1.0,
    min_ious: Any = SSD_MIN_IOUS,
    seed: int | None = None,
) -> DetectionTransform:
    # size=None keeps the augmented image's size: for detectors that resize themselves (Faster R-CNN).
    resize = [] if size is None else [
        A.Resize(*_hw(size, "size"), interpolation=cv2.INTER_LINEAR, area_for_downscale="image")
    ]
    if isinstance(max_zoom_out, bool) or not isinstance(max_zoom_out, (int, float)) or max_zoom_out < 1:
        raise ValueError(f"max_zoom_out must be a number >= 1, got {max_zoom_out!r}")
    pipeline = [
        *_photometric(photometric),
        ZoomOut(max_ratio=float(max_zoom_out), fill=_fill(fill), fill_mask=0, p=_prob(zoom_out_p, "zoom_out_p")),
        MinIoURandomCrop(min_ious=_min_ious(min_ious)),
        A.HorizontalFlip(p=_prob(flip_p, "flip_p")),
        *resize,
    ]
    return DetectionTransform("det_train", A.Compose(pipeline, bbox_params=_bbox_params(min_box_size)), seed)


def _det_eval(size: Any = 320, min_box_size: float = 0.0, seed: int | None = None) -> DetectionTransform:
    if size is None:
        _bbox_params(min_box_size)  # validate anyway
        return DetectionTransform("det_eval", None, seed)
    height, width = _hw(size, "size")
    resize = A.Resize(height, width, interpolation=cv2.INTER_LINEAR, area_for_downscale="image")
    return DetectionTransform("det_eval", A.Compose([resize], bbox_params=_bbox_params(min_box_size)), seed)


def _seg_train(
    crop_size: Any = 512,
    scale: Any = (0.5, 2.0),
    fill: Any = IMAGENET_MEAN_UINT8,
    ignore_index: int = 255,
    flip_p: float = 0.5,
    photometric: bool = True,
    seed: int | None = None,
) -> SegmentationTransform:
    crop_h, crop_w = _hw(crop_size, "crop_size")
    lo, hi = _range(scale, "scale")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not 0 <= ignore_index <= 65535:
        raise ValueError(f"ignore_index must be an int in [0, 65535], got {ignore_index!r}")
    pipeline = [
        # Photometric first, so that padded pixels keep exactly the fill colour.
        *_photometric(photometric),
        A.RandomScale(
            scale_limit=(lo - 1.0, hi - 1.0),  # albumentations samples 1 + U(lo, hi)
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            area_for_downscale="image",
            p=1.0,
        ),
        A.RandomCrop(
            crop_h,
            crop_w,
            pad_if_needed=True,
            pad_position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=_fill(fill),
            fill_mask=ignore_index,
        ),
        A.HorizontalFlip(p=_prob(flip_p, "flip_p")),
    ]
    return SegmentationTransform("seg_train", A.Compose(pipeline, mask_interpolation=cv2.INTER_NEAREST), seed)


def _seg_eval(size: Any = None, seed: int | None = None) -> SegmentationTransform:
    if size is None:
        return SegmentationTransform("seg_eval", None, seed)
    height, width = _hw(size, "size")
    resize = A.Resize(height, width, interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST)
    return SegmentationTransform("seg_eval", A.Compose([resize], mask_interpolation=cv2.INTER_NEAREST), seed)


def _none(seed: int | None = None) -> IdentityTransform:
    return IdentityTransform("none")


_BUILDERS: dict[str, Callable[..., Callable]] = {
    "det_train": _det_train,
    "det_eval": _det_eval,
    "seg_train": _seg_train,
    "seg_eval": _seg_eval,
    "none": _none,
}


def build_transforms(preset: str | None, **kwargs: Any) -> Callable:
    """Build the augmentation preset ``preset`` (one of :data:`PRESETS`, or ``None`` for the identity).

    Raises ``ValueError`` for an unknown preset (listing the valid names), an unknown keyword argument
    (listing the preset's arguments) or an invalid value.
    """
    name = "none" if preset is None else preset
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(
            f"unknown transform preset {preset!r}; valid presets: {', '.join(PRESETS)} (or None)"
        )
    builder = _BUILDERS[name]
    accepted = builder.__code__.co_varnames[: builder.__code__.co_argcount]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown argument(s) {', '.join(unknown)} for transform preset {name!r}; "
            f"accepted: {', '.join(accepted)}"
        )
    return builder(**kwargs)
