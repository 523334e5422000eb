"""COCO detection from the official on-disk format (image folder + ``instances_*.json``)."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from ._target import Transforms, finalize_detection, to_tensor_target
from ._validate import validate_coco
from .io import DataError, SkipCorrupt, SkippingDataset, read_image, require_file
from .masks import decode_segmentation

__all__ = ["CocoDetection", "load_coco_json"]


def load_coco_json(ann_file: str | Path, *, evaluation: bool = False) -> COCO:
    """Load and validate a COCO annotation file into a :class:`pycocotools.coco.COCO`.

    Every malformed record raises :class:`DataError` naming the file and the records (see
    :func:`ghost_vision.data._validate.validate_coco`; ``evaluation=True`` also requires ``area`` and
    ``iscrowd``, which pycocotools' COCOeval reads). Boxes under 1 px once clipped to their image (legal: COCO
    has them) are counted in one warning: training leaves them out, evaluation leaves them to pycocotools.

    Example:
        >>> coco = load_coco_json("coco/annotations/instances_val2017.json")  # doctest: +SKIP
        >>> len(coco.imgs), len(coco.anns)  # doctest: +SKIP
        (5000, 36781)
    """
    ann_file = require_file(ann_file, "COCO annotation file")
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON in COCO annotation file {ann_file}: {e}") from e
    except (OSError, UnicodeDecodeError, RecursionError) as e:
        raise DataError(f"cannot read COCO annotation file {ann_file}: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"COCO annotation file {ann_file}: top level must be an object, got {type(data).__name__}")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"COCO annotation file {ann_file}: missing or invalid '{key}' list")
    data.setdefault("annotations", [])
    counts = validate_coco(data, ann_file, evaluation=evaluation)
    if counts["degenerate"]:
        warnings.warn(
            f"{ann_file}: {counts['degenerate']} of {counts['boxes']} boxes are under 1 px wide or high once "
            "clipped to their image; they are left out of training targets (evaluation keeps them, as pycocotools "
            "does)",
            stacklevel=2,
        )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class CocoDetection(SkippingDataset):
    """COCO-format detection dataset (pycocotools-based).

    Labels are the **sorted** category ids mapped to ``1..K`` (0 is background), so
    ``num_classes == K + 1``; :attr:`label_to_cat_id` / :attr:`cat_id_to_label` map back and forth and
    :attr:`classes` holds the K category names. ``target["image_id"]`` is the original COCO image id.
    Crowd regions (``iscrowd=1``) are not training boxes: they are returned as ``target["crowd_boxes"]``
    / ``target["crowd_labels"]``. Annotations with category ids missing from ``categories`` are dropped
    with one warning. ``target["orig_size"]`` is the ``(H, W)`` of the image as read (before transforms).

    With ``masks=True`` ``target["masks"]`` holds the instance masks (uint8 ``N x H x W``, one per box, decoded
    from polygons or RLE by pycocotools as ``COCO.annToMask``) for the non-crowd annotations, as torchvision's
    reference ``ConvertCocoPolysToMask`` does; the transforms move them with the image, and an instance whose
    box or mask is gone after them is dropped whole. A malformed segmentation raises :class:`DataError` naming
    the file, image id and annotation id (or, with ``skip_corrupt=True``, skips that image and counts it).

    Example:
        >>> ds = CocoDetection("coco/val2017", "coco/annotations/instances_val2017.json")  # doctest: +SKIP
        >>> image, target = ds[0]  # doctest: +SKIP
        >>> image.shape, target["boxes"].shape, ds.num_classes  # doctest: +SKIP
        (torch.Size([3, 480, 640]), torch.Size([N, 4]), 81)
    """

    def __init__(
        self,
        img_dir: str | Path,
        ann_file: str | Path,
        *,
        transforms: Transforms | None = None,
        remove_empty: bool = False,
        skip_corrupt: bool = False,
        masks: bool = False,
    ) -> None:
        self.img_dir = Path(img_dir)
        self.masks = bool(masks)
        self.ann_file = Path(ann_file)
        if not self.img_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.img_dir}")
        self.coco = load_coco_json(self.ann_file)
        self.transforms = transforms
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        self.label_to_cat_id: dict[int, int] = {i + 1: int(c["id"]) for i, c in enumerate(cats)}
        self.cat_id_to_label: dict[int, int] = {v: k for k, v in self.label_to_cat_id.items()}
        self.classes: tuple[str, ...] = tuple(str(c.get("name", c["id"])) for c in cats)

        unknown = [a for a in self.coco.dataset["annotations"] if a.get("category_id") not in self.cat_id_to_label]
        if unknown:
            ids = sorted({str(a.get("category_id")) for a in unknown})
            warnings.warn(
                f"{self.ann_file}: dropping {len(unknown)} annotation(s) with unknown category id(s) "
                f"{', '.join(ids[:20])}{' ...' if len(ids) > 20 else ''}",
                stacklevel=2,
            )
        self.num_unknown_annotations = len(unknown)

        self.ids: list[int] = sorted(int(i) for i in self.coco.imgs)
        if remove_empty:
            self.ids = [i for i in self.ids if self._has_valid_box(i)]
        self._skip = SkipCorrupt(skip_corrupt, f"CocoDetection({self.ann_file})", len(self.ids))

    @property
    def num_classes(self) -> int:
        """Number of classes including background (K + 1)."""
        return len(self.classes) + 1

    def _has_valid_box(self, image_id: int) -> bool:
        info = self.coco.imgs[image_id]
        w, h = float(info.get("width", np.inf)), float(info.get("height", np.inf))
        for a in self.coco.imgToAnns.get(image_id, []):
            if a.get("iscrowd", 0) or a.get("category_id") not in self.cat_id_to_label:
                continue
            x, y, bw, bh = (float(v) for v in a["bbox"])
            if min(x + bw, w) - max(x, 0.0) >= 1 and min(y + bh, h) - max(y, 0.0) >= 1:
                return True
        return False

    def _annotations(self, image_id: int, image_hw: tuple[int, int]) -> dict[str, np.ndarray]:
        boxes, labels, crowd, masks = [], [], [], []
        h, w = image_hw
        for a in self.coco.imgToAnns.get(image_id, []):
            label = self.cat_id_to_label.get(a.get("category_id"))
            if label is None:
                continue
            x, y, bw, bh = (float(v) for v in a["bbox"])  # 4 finite numbers, w, h >= 0: validated at load
            boxes.append((x, y, x + bw, y + bh))
            labels.append(label)
            crowd.append(bool(a.get("iscrowd", 0)))
            if self.masks:  # crowd masks too, so that a crowd box follows the same drop rule; not returned
                masks.append(decode_segmentation(a.get("segmentation"), h, w, where=str(self.ann_file),
                                                 image_id=image_id, ann_id=a.get("id")))
        out = {
            "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, dtype=np.int64),
            "iscrowd": np.asarray(crowd, dtype=bool),
        }
        if self.masks:
            out["masks"] = np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)
        return out

    def _load(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = read_image(self.img_dir / info["file_name"])
        orig_size = image.shape[:2]
        if self.masks and (info.get("height"), info.get("width")) != orig_size:
            raise DataError(
                f"{self.ann_file}: image id {image_id} ({info['file_name']}) is {orig_size[1]}x{orig_size[0]} but "
                f"the file says width {info.get('width')}, height {info.get('height')}: masks would not align"
            )
        target = self._annotations(image_id, orig_size)
        per_box = ("labels", "iscrowd", "masks") if self.masks else ("labels", "iscrowd")
        tensor, t = finalize_detection(image, target, self.transforms, per_box=per_box)
        crowd = t["iscrowd"].astype(bool)
        out = to_tensor_target(
            {"boxes": t["boxes"][~crowd], "labels": t["labels"][~crowd], "crowd_boxes": t["boxes"][crowd],
             "crowd_labels": t["labels"][crowd]},
            {"boxes": torch.float32, "labels": torch.int64, "crowd_boxes": torch.float32,
             "crowd_labels": torch.int64},
        )
        if self.masks:
            out["masks"] = torch.from_numpy(np.ascontiguousarray(t["masks"][~crowd], dtype=np.uint8))
        out["image_id"] = torch.tensor(image_id, dtype=torch.int64)
        out["orig_size"] = torch.tensor(orig_size, dtype=torch.int64)
        return tensor, out

    def sample_files(self, index: int) -> tuple[str, ...]:
        return (str(self.img_dir / self.coco.imgs[self.ids[index]]["file_name"]),)
