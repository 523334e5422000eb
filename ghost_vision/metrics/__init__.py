"""Official-grade evaluation metrics (torchmetrics ``Metric`` subclasses, DDP-safe).

- :class:`CocoMeanAP`: COCO box mAP/mAR through pycocotools' ``COCOeval``, identical to running it directly.
- :class:`VOCMeanAP`: Pascal VOC mAP@0.5 (VOC2007 11-point or VOC2010+ area), difficult objects ignored.
- :class:`SegmentationMetric`: mIoU / per-class IoU / pixel accuracy from one confusion matrix (Cityscapes).

All three drop entries whose image id repeats (``DistributedSampler`` padding), so 1 and N processes agree.
"""

from ghost_vision.metrics.coco import (
    COCO_STAT_NAMES,
    CocoMeanAP,
    coco_evaluate,
    coco_mean_ap,
    detections_to_coco_results,
    first_occurrence_mask,
)
from ghost_vision.metrics.segmentation import (
    SegmentationMetric,
    confusion_matrix,
    scores_from_confusion_matrix,
)
from ghost_vision.metrics.voc import VOCMeanAP, voc_ap, voc_box_iou, voc_eval_class

__all__ = [
    "COCO_STAT_NAMES",
    "CocoMeanAP",
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
