"""COCO mask results for :class:`~ghost_vision.metrics.CocoMeanAP` (``iou_type="segm"``): predicted mask
probabilities to compressed RLE, RLEs to COCO results, and the ground-truth check mask AP needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch import Tensor

__all__ = ["check_gt_segmentations", "masks_to_rles", "segmentations_to_coco_results"]


def masks_to_rles(masks: Tensor, threshold: float = 0.5) -> list[bytes]:
    """``N x 1 x H x W`` (or ``N x H x W``) mask probabilities -> the compressed COCO RLE ``counts`` of
    ``masks > threshold`` (pycocotools ``encode`` of the Fortran-ordered uint8 mask, as torchvision's
    reference ``prepare_for_coco_segmentation`` does)."""
    m = torch.as_tensor(masks).detach()
    if m.ndim == 4:
        if m.shape[1] != 1:
            raise ValueError(f"masks must be N x 1 x H x W (one channel), got {tuple(m.shape)}")
        m = m[:, 0]
    if m.ndim != 3:
        raise ValueError(f"masks must be N x 1 x H x W or N x H x W, got {tuple(m.shape)}")
    if m.shape[0] == 0:
        return []
    binary = (m > threshold).to("cpu", torch.uint8).numpy()  # thresholded where the masks are: 1 byte/pixel moves
    rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0)))
    return [r["counts"] for r in rles]


def category_id(label: Any, label_to_cat_id: Mapping[int, int], image_id: Any) -> int:
    """The COCO category id of a predicted ``label`` (box and mask results alike); a ``ValueError`` naming the
    image and the known labels when the map has none."""
    cat_id = label_to_cat_id.get(int(label))
    if cat_id is None:
        raise ValueError(
            f"image {image_id}: predicted label {int(label)} has no COCO category id "
            f"(known labels: {sorted(label_to_cat_id)}); pass label_to_cat_id"
        )
    return cat_id


def segmentations_to_coco_results(
    rles: Sequence[Sequence[Mapping[str, Any]]],
    scores: Sequence[Tensor],
    labels: Sequence[Tensor],
    image_ids: Sequence[int],
    label_to_cat_id: Mapping[int, int],
) -> list[dict[str, Any]]:
    """Per-image RLE masks → COCO ``segm`` results ``[{image_id, category_id, segmentation, score}]`` (no
    ``bbox``: pycocotools' ``loadRes`` would then take the box area for the area ranges)."""
    results: list[dict[str, Any]] = []
    for r, s, lab, img_id in zip(rles, scores, labels, image_ids, strict=True):
        s_list = torch.as_tensor(s).detach().to("cpu", torch.float64).reshape(-1).tolist()
        l_list = torch.as_tensor(lab).detach().cpu().reshape(-1).tolist()
        if not (len(r) == len(s_list) == len(l_list)):
            raise ValueError(f"image {img_id}: masks, scores and labels differ in length")
        for rle, score, label in zip(r, s_list, l_list, strict=True):
            results.append({"image_id": int(img_id), "category_id": category_id(label, label_to_cat_id, img_id),
                            "segmentation": dict(rle), "score": score})
    return results


def check_gt_segmentations(coco: COCO, ann_file: Any) -> None:
    """Mask AP reads every ground-truth ``segmentation``: a malformed one raises naming it (pycocotools would
    rasterise it wrongly or crash mid-evaluation)."""
    from ghost_vision.data.io import DataError
    from ghost_vision.data.masks import segmentation_problem

    where = ann_file if isinstance(ann_file, (str, Path)) else "COCO annotations"
    for a in coco.dataset["annotations"]:
        info = coco.imgs.get(a.get("image_id"), {})
        h, w = info.get("height"), info.get("width")
        if not (isinstance(h, int) and isinstance(w, int)):
            raise DataError(f"{where}: image id {a.get('image_id')} needs integer 'height' and 'width' for mask AP")
        problem = segmentation_problem(a.get("segmentation"), h, w)
        if problem is not None:
            raise DataError(f"{where}: image id {a.get('image_id')}, annotation id {a.get('id')}: malformed "
                            f"segmentation: {problem}")
