"""Datasets in their real on-disk formats, synthetic data and Lightning DataModules.

Detection samples are ``(image float32 3xHxW in [0, 1], target)`` with ``target["boxes"]`` (float32 Nx4 xyxy,
0-based pixels), ``target["labels"]`` (int64 1..K, 0 = background) and ``target["image_id"]``; segmentation
samples are ``(image, mask int64 HxW)`` with 255 ignored (:class:`SegmentationFolder` reads your own
image/mask folders). The DataModules (which import Lightning) are
loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from .cityscapes import CITYSCAPES_CLASSES, CityscapesSegmentation, label_ids_to_train_ids
from .coco import CocoDetection
from .folder import SegmentationFolder
from .io import DataError, read_image
from .synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COCO_CATEGORY_IDS,
    SYNTHETIC_FOLDER_CLASSES,
    write_synthetic_cityscapes,
    write_synthetic_coco,
    write_synthetic_folder,
    write_synthetic_voc,
)
from .voc import VOC_CLASSES, VOCDetection, VOCSegmentation

_LAZY = {
    "CityscapesDataModule": "datamodules",
    "CocoDataModule": "datamodules",
    "IndexedDataset": "datamodules",
    "VOCDetectionDataModule": "datamodules",
    "VOCSegmentationDataModule": "datamodules",
    "detection_collate": "datamodules",
    "SegmentationFolderDataModule": "folder_datamodule",
    "segmentation_collate": "loading",
    "SyntheticCityscapesDataModule": "synthetic_datamodules",
    "SyntheticCocoDataModule": "synthetic_datamodules",
    "SyntheticSegmentationFolderDataModule": "synthetic_datamodules",
    "SyntheticVOCDetectionDataModule": "synthetic_datamodules",
    "SyntheticVOCSegmentationDataModule": "synthetic_datamodules",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CITYSCAPES_CLASSES",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COCO_CATEGORY_IDS",
    "SYNTHETIC_FOLDER_CLASSES",
    "VOC_CLASSES",
    "CityscapesSegmentation",
    "CocoDetection",
    "DataError",
    "SegmentationFolder",
    "VOCDetection",
    "VOCSegmentation",
    "label_ids_to_train_ids",
    "read_image",
    "write_synthetic_cityscapes",
    "write_synthetic_coco",
    "write_synthetic_folder",
    "write_synthetic_voc",
    *_LAZY,
]
