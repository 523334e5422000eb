"""Lightning tasks: detection and segmentation training/evaluation, plus picture-writing callbacks."""

from .callbacks import DrawPredictions, TrainingCurves
from .common import NonFiniteLossError, build_model
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = [
    "DetectionTask",
    "DrawPredictions",
    "NonFiniteLossError",
    "SegmentationTask",
    "TrainingCurves",
    "build_model",
]
