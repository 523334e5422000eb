"""Official-grade evaluation metrics (torchmetrics ``Metric`` subclasses, DDP-safe).

- :class:`CocoMeanAP`: COCO box (and, with ``iou_type=("bbox", "segm")``, mask) mAP/mAR through pycocotools'
  ``COCOeval``, identical to running it directly.
- :class:`VOCMeanAP`: Pascal VOC mAP@0.5 (VOC2007 11-point or VOC2010+ area), difficult objects ignored.
- :class:`SegmentationMetric`: mIoU / per-class IoU / pixel accuracy from one confusion matrix (Cityscapes).
- :class:`PerImageMean`: the mean of one value per image (e.g. the validation loss).

The COCO names load ``ghost_vision.metrics.coco`` (and pycocotools) on first use, so the segmentation and
VOC metrics work without pycocotools.

All of them drop entries whose image id repeats (``DistributedSampler`` padding, see
:func:`first_occurrence_mask`), so 1 and N processes agree.
"""

import importlib
from typing import TYPE_CHECKING, Any

from ghost_vision.metrics.per_image import PerImageMean, first_occurrence_mask
from ghost_vision.metrics.segmentation import (
    SegmentationMetric,
    confusion_matrix,
    scores_from_confusion_matrix,
)
from ghost_vision.metrics.voc import VOCMeanAP, voc_ap, voc_box_iou, voc_eval_class

if TYPE_CHECKING:  # loaded lazily, see __getattr__
    from ghost_vision.metrics.coco import (
        COCO_STAT_NAMES,
        CocoMeanAP,
        coco_evaluate,
        coco_mean_ap,
        detections_to_coco_results,
    )

__all__ = [
    "COCO_STAT_NAMES",
    "CocoMeanAP",
    "PerImageMean",
    "SegmentationMetric",
    "VOCMeanAP",
    "coco_evaluate",
    "coco_mean_ap",
    "confusion_matrix",
    "detections_to_coco_results",
    "first_occurrence_mask",
    "scores_from_confusion_matrix",
    "voc_ap",
    "voc_box_iou",
    "voc_eval_class",
]

_COCO = ("COCO_STAT_NAMES", "CocoMeanAP", "coco_evaluate", "coco_mean_ap", "detections_to_coco_results")


def __getattr__(name: str) -> Any:
    if name in _COCO:
        return getattr(importlib.import_module("ghost_vision.metrics.coco"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_COCO))
