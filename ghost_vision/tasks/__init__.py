"""Lightning tasks: detection and segmentation training/evaluation, plus picture-writing callbacks and
:class:`PreciseBN` (BatchNorm statistics re-estimated before validation).

:func:`load_task` loads any task checkpoint with the task class it records.
"""

from .base import BaseTask, NonFiniteLossError
from .callbacks import DrawPredictions, TrainingCurves
from .common import build_model
from .detection import DetectionTask
from .loading import load_task
from .precise_bn import PreciseBN
from .segmentation import SegmentationTask

__all__ = [
    "BaseTask",
    "DetectionTask",
    "DrawPredictions",
    "NonFiniteLossError",
    "PreciseBN",
    "SegmentationTask",
    "TrainingCurves",
    "build_model",
    "load_task",
]
