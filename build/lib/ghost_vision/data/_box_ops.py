"""Box helpers for :mod:`ghost_vision.data.transforms`: per-box target fields and the SSD-style geometric
transforms that albumentations 2.0.8 does not provide.

Both are ordinary albumentations ``DualTransform`` subclasses, so they share the ``Compose``'s random
generators (seeding), bounding-box bookkeeping (label columns travel with the boxes) and mask handling.

* :class:`ZoomOut` -- SSD's "expand": place the image at a random position on a canvas ``r`` times larger
  (``r ~ U(1, max_ratio)``, the same ratio for both axes) filled with the mean colour. albumentations has
  ``Pad``/``PadIfNeeded``/``CropAndPad`` but none samples one canvas ratio for both axes and a uniform
  position on it, so this subclasses ``A.Pad`` and only replaces how the padding is drawn (the image, mask
  and box arithmetic are ``A.Pad``'s).
* :class:`MinIoURandomCrop` -- SSD's IoU-constrained random crop. albumentations' box-aware crops
  (``RandomSizedBBoxSafeCrop``, ``BBoxSafeRandomCrop``, ``AtLeastOneBBoxRandomCrop``) keep *all* or *at
  least one* box whole; none samples a minimum-IoU mode or keeps boxes by their centre, so this subclasses
  ``BaseCrop`` (whose image/mask cropping is reused) and adds the SSD sampling and centre rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A
import numpy as np
from albumentations.augmentations.crops.transforms import BaseCrop

# SSD's sampler: ``None`` keeps the whole image, a number is the minimum IoU that some kept box must have
# with the crop (as in the Caffe SSD samplers and torchvision's ``RandomIoUCrop``).
SSD_MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9)


#: Target entries never treated as per-box even when their length happens to equal the number of boxes.
NON_BOX_KEYS: frozenset[str] = frozenset(
    {"image_id", "orig_size", "size", "image_size", "file_name", "crowd_boxes", "crowd_labels", "id"}
)


def select_boxes(value: Any, keep: np.ndarray) -> Any:
    """Rows ``keep`` of a per-box entry (numpy array, torch tensor, list or tuple), keeping its type."""
    if isinstance(value, list):
        return [value[i] for i in keep]
    if isinstance(value, tuple):
        return tuple(value[i] for i in keep)
    if isinstance(value, np.ndarray):
        return value[keep]
    import torch  # only reached for tensors, so torch is already imported

    return value[torch.as_tensor(keep, dtype=torch.long)]


def is_per_box(key: str, value: Any, n: int) -> bool:
    """Whether target entry ``key`` holds one item per box (first dimension ``n``)."""
    if key in NON_BOX_KEYS:
        return False
    if isinstance(value, (list, tuple)):
        return len(value) == n
    shape = getattr(value, "shape", None)
    return shape is not None and len(shape) >= 1 and shape[0] == n


def centres_inside(boxes: np.ndarray, rect: Sequence[float]) -> np.ndarray:
    """Boolean mask of the xyxy boxes whose centre lies strictly inside the xyxy rectangle."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return (rect[0] < cx) & (cx < rect[2]) & (rect[1] < cy) & (cy < rect[3])


class ZoomOut(A.Pad):
    """SSD "expand": put the image on a ``U(1, max_ratio)``× larger canvas of colour ``fill``.

    The image lands at a uniformly random position; boxes are shifted with it, masks are padded with
    ``fill_mask``.
    """

    def __init__(
        self,
        max_ratio: float = 4.0,
        fill: tuple[float, ...] | float = 0,
        fill_mask: tuple[float, ...] | float = 255,
        p: float = 0.5,
    ):
        if not max_ratio >= 1.0:
            raise ValueError(f"ZoomOut max_ratio must be >= 1, got {max_ratio}")
        super().__init__(padding=0, fill=fill, fill_mask=fill_mask, p=p)
        self.max_ratio = float(max_ratio)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        ratio = self.py_random.uniform(1.0, self.max_ratio)
        canvas_h, canvas_w = int(height * ratio), int(width * ratio)
        top = int((canvas_h - height) * self.py_random.random())
        left = int((canvas_w - width) * self.py_random.random())
        return {
            "pad_top": top,
            "pad_bottom": canvas_h - height - top,
            "pad_left": left,
            "pad_right": canvas_w - width - left,
        }

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("max_ratio", "fill", "fill_mask")


class MinIoURandomCrop(BaseCrop):
    """SSD's IoU-constrained random crop.

    Each call draws a mode from ``min_ious``; ``None`` keeps the whole image. Otherwise up to ``trials``
    crops are drawn with each side in ``[min_scale, 1]`` of the image side and aspect ratio (h/w) within
    ``aspect_ratio_range``; a crop is accepted when at least one box has its centre inside it and, among
    those, the best IoU with the crop is at least the mode (torchvision ``RandomIoUCrop`` / Caffe SSD rule).
    If no crop is accepted, a new mode is drawn (at most ``max_modes`` times, then the image is kept).
    Only boxes whose centre lies inside the crop are kept; they are clipped to it. Without boxes any crop
    satisfying the size constraints is accepted.
    """

    def __init__(
        self,
        min_ious: Sequence[float | None] = SSD_MIN_IOUS,
        min_scale: float = 0.3,
        aspect_ratio_range: tuple[float, float] = (0.5, 2.0),
        trials: int = 50,
        max_modes: int = 100,
        p: float = 1.0,
    ):
        super().__init__(p=p)
        if not min_ious:
            raise ValueError("MinIoURandomCrop needs at least one mode in min_ious")
        self.min_ious = tuple(None if m is None else float(m) for m in min_ious)
        self.min_scale = float(min_scale)
        self.aspect_ratio_range = (float(aspect_ratio_range[0]), float(aspect_ratio_range[1]))
        self.trials = int(trials)
        self.max_modes = int(max_modes)

    def _first_accepted(self, boxes: np.ndarray, height: int, width: int, min_iou: float):
        """The first of ``trials`` candidate crops (drawn at once, vectorised) meeting the SSD rule."""
        rng = self.random_generator
        u = rng.random((self.trials, 4))
        w = (self.min_scale + (1.0 - self.min_scale) * u[:, 0]) * width
        h = (self.min_scale + (1.0 - self.min_scale) * u[:, 1]) * height
        left = u[:, 2] * (width - w)
        top = u[:, 3] * (height - h)
        rects = np.stack([left, top, left + w, top + h], axis=1).astype(np.int64)  # truncated, as in SSD
        ok = (self.aspect_ratio_range[0] <= h / w) & (h / w <= self.aspect_ratio_range[1])
        ok &= (rects[:, 2] > rects[:, 0]) & (rects[:, 3] > rects[:, 1])
        if len(boxes):
            r = rects[:, None, :].astype(np.float64)  # T×1×4 against N boxes
            cx = (boxes[None, :, 0] + boxes[None, :, 2]) / 2
            cy = (boxes[None, :, 1] + boxes[None, :, 3]) / 2
            inside = (r[..., 0] < cx) & (cx < r[..., 2]) & (r[..., 1] < cy) & (cy < r[..., 3])
            b = boxes[None, :, :]
            iw = np.clip(np.minimum(b[..., 2], r[..., 2]) - np.maximum(b[..., 0], r[..., 0]), 0, None)
            ih = np.clip(np.minimum(b[..., 3], r[..., 3]) - np.maximum(b[..., 1], r[..., 1]), 0, None)
            inter = iw * ih
            area_b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            area_r = (r[..., 2] - r[..., 0]) * (r[..., 3] - r[..., 1])
            iou = inter / np.maximum(area_b[None, :] + area_r - inter, 1e-12)
            ok &= (np.where(inside, iou, -1.0).max(axis=1) >= min_iou) & inside.any(axis=1)
        hits = np.flatnonzero(ok)
        return tuple(int(v) for v in rects[hits[0]]) if len(hits) else None

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = (0, 0, width, height)
        bboxes = data.get("bboxes")
        boxes = np.zeros((0, 4)) if bboxes is None or len(bboxes) == 0 else np.asarray(bboxes)[:, :4]
        boxes = boxes * np.array([width, height, width, height], dtype=np.float64)  # normalised -> pixels
        for _ in range(self.max_modes):
            min_iou = self.min_ious[int(self.py_random.random() * len(self.min_ious))]
            if min_iou is None:
                return {"crop_coords": whole}
            rect = self._first_accepted(boxes, height, width, min_iou)
            if rect is not None:
                return {"crop_coords": rect}
        return {"crop_coords": whole}

    def apply_to_bboxes(
        self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any
    ) -> np.ndarray:
        if len(bboxes) == 0:
            return bboxes
        height, width = params["shape"][:2]
        px = np.asarray(bboxes)[:, :4] * np.array([width, height, width, height], dtype=np.float64)
        kept = np.asarray(bboxes)[centres_inside(px, crop_coords)]
        if len(kept) == 0:
            return kept
        out = super().apply_to_bboxes(kept, crop_coords, **params)  # shift + renormalise to the crop
        out[:, :4] = np.clip(out[:, :4], 0.0, 1.0)
        return out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_ious", "min_scale", "aspect_ratio_range", "trials", "max_modes")
