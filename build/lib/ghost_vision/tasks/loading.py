"""Loading a task checkpoint with the task class it records (:func:`load_task`).

Kept apart from ``base.py`` so that imports point one way: this module knows the built-in tasks (for
checkpoints written before the class was recorded), ``base.py`` knows none of them.
"""

from __future__ import annotations

import importlib
import inspect
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .base import TASK_KEY, BaseTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

__all__ = ["load_task"]


def _task_class(path: str) -> type[BaseTask]:
    module_name, _, attr = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ValueError(f"cannot import the checkpoint's task class {path!r}: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, BaseTask)):
        raise ValueError(f"the checkpoint's task class {path!r} is not a ghost_vision task (BaseTask subclass)")
    return cls


def _infer_task_class(path: Path, hparams: Mapping[str, Any]) -> type[BaseTask]:
    """For checkpoints written before the task class was recorded: the one built-in task whose
    ``__init__`` accepts every saved hyperparameter (DetectionTask has ``metric``, SegmentationTask
    ``ignore_index``/``aux_weight``)."""
    keys = set(hparams) - {"initialized_from"}
    fits = [cls for cls in (DetectionTask, SegmentationTask) if keys <= set(inspect.signature(cls).parameters)]
    if len(fits) != 1:
        raise ValueError(
            f"{path}: the checkpoint does not record its task class ({TASK_KEY!r}) and its hyperparameters "
            f"{sorted(keys)} fit {'both built-in tasks' if fits else 'no built-in task'}; load it with "
            "YourTask.load_from_checkpoint(path) instead"
        )
    warnings.warn(
        f"{path} was written before checkpoints recorded their task class; loading it as {fits[0].__name__} "
        "(the task whose arguments match its hyperparameters). Re-save it to record the class.",
        UserWarning, stacklevel=3,
    )
    return fits[0]


def load_task(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> BaseTask:
    """Load the task a checkpoint holds (``DetectionTask``, ``SegmentationTask`` or a subclass), with the
    class recorded in the checkpoint (``checkpoint["ghost_vision_task"]``).

    A checkpoint written before the class was recorded loads as the built-in task whose ``__init__``
    accepts all its hyperparameters, with a ``UserWarning``; if none or both fit, a ``ValueError`` names
    the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a checkpoint of a ghost_vision task, or its class cannot be imported.

    Example:
        >>> task = load_task("runs/ssdlite_ghost_shapes/checkpoints/last.ckpt")  # doctest: +SKIP
        >>> model = task.eval().model  # doctest: +SKIP
    """
    path = Path(ckpt_path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ValueError(f"{path} is not a Lightning checkpoint of a ghost_vision task (no 'state_dict' and "
                         "'hyper_parameters'); for a bare state dict use ghost_vision.models.load_weights")
    recorded = ckpt.get(TASK_KEY)
    cls = _task_class(recorded) if recorded else _infer_task_class(path, ckpt["hyper_parameters"])
    return cls.load_from_checkpoint(path, map_location=map_location)
