"""Final step shared by the datasets: transforms on numpy, then clipping, filtering and tensors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

Transforms = Callable[..., tuple[np.ndarray, Any]]


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 (or float in [0, 1]) -> float32 ``3 x H x W`` in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image after transforms, got shape {image.shape}")
    if not image.flags.writeable or not image.flags.c_contiguous:
        image = np.array(image, order="C")
    t = torch.from_numpy(image).permute(2, 0, 1)
    if image.dtype == np.uint8:
        return t.float().div_(255.0)
    return t.float()


def finalize_detection(
    image: np.ndarray,
    target: dict[str, np.ndarray],
    transforms: Transforms | None,
    per_box: Sequence[str],
) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """Apply ``transforms`` then clip boxes to the image and drop those under 1 px wide or high.

    ``per_box`` names the arrays of ``target`` that are filtered along with ``boxes``; when it names ``masks``
    (``N x H x W``), instances whose mask is empty after the transforms are dropped too. Returns the image
    tensor and the filtered numpy target (the caller converts to tensors and adds ids).
    """
    if transforms is not None:
        image, target = transforms(image=image, target=target)
    h, w = image.shape[:2]
    boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)
    if "masks" in per_box:  # an instance whose mask the transforms emptied goes with its box
        masks = np.asarray(target["masks"])
        keep &= masks.reshape(len(masks), -1).any(axis=1) if masks.size else np.zeros(len(masks), bool)
    out = dict(target)
    out["boxes"] = boxes[keep]
    for key in per_box:
        out[key] = np.asarray(target[key])[keep]
    return image_to_tensor(image), out


def to_tensor_target(target: dict[str, np.ndarray], dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """Convert the listed numpy arrays to tensors of the given dtypes (boxes always ``N x 4``)."""
    out = {}
    for key, dtype in dtypes.items():
        arr = np.asarray(target[key])
        t = torch.as_tensor(arr).to(dtype)
        if key.endswith("boxes"):
            t = t.reshape(-1, 4)
        out[key] = t
    return out
