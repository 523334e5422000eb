"""Pieces shared by the Lightning tasks: model resolution, optimizer groups and LR schedules."""

from __future__ import annotations

import importlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "WarmupSchedule",
    "build_model",
    "param_groups",
    "build_optimizer",
    "build_scheduler",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "step", "poly", "constant")


def build_model(model: str | Mapping[str, Any], num_classes: int, **extra: Any) -> nn.Module:
    """Build a network from a registry name or a ``{"class_path": ..., "init_args": {...}}`` mapping.

    Names go to :func:`ghost_vision.models.get_model` (the package's backbones, detectors, segmenters, and
    torchvision's builders such as the MobileNetV3 peers, randomly initialised unless ``weights``/
    ``weights_backbone`` are given), so the peers train with the same recipe. ``num_classes`` is passed
    to the builder.

    Example:
        >>> type(build_model("lraspp_ghostnet", num_classes=3, width=0.5)).__name__
        'GhostLRASPP'
        >>> type(build_model({"class_path": "torchvision.models.segmentation.lraspp_mobilenet_v3_large",
        ...                   "init_args": {"weights_backbone": None}}, num_classes=3)).__name__
        'LRASPP'
    """
    if isinstance(model, str):
        from ghost_vision.models import get_model

        return get_model(model, num_classes=num_classes, **extra)
    if "class_path" not in model:
        raise ValueError(f"model mapping needs a 'class_path' key, got keys {sorted(model)}")
    module_name, _, attr = str(model["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import model class_path {model['class_path']!r}: {exc}") from exc
    return cls(num_classes=num_classes, **dict(model.get("init_args") or {}), **extra)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two groups: weights with decay; norms' parameters and all biases without (standard practice)."""
    decay, no_decay = [], []
    for mod in module.modules():
        is_norm = isinstance(mod, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            (no_decay if is_norm or name.endswith("bias") or p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(
    module: nn.Module, *, name: str, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    groups = param_groups(module, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


class WarmupSchedule:
    """The LR factor of step ``step``: linear warm-up from ``warmup_factor`` over ``warmup_steps``, then
    ``cosine``, ``step`` (``gamma`` at fractions ``milestones`` of training), ``poly`` (``(1 - t) ** power``)
    or ``constant``.

    A callable object rather than a closure so that ``LambdaLR.state_dict()`` saves it, and so that the
    warm-up can be set once the number of batches per epoch is known (:meth:`set_warmup`).
    """

    def __init__(self, name: str, *, total_steps: int, warmup_steps: int, warmup_factor: float = 0.001,
                 milestones: tuple[float, ...] = (0.67, 0.89), gamma: float = 0.1, power: float = 0.9,
                 min_lr_ratio: float = 0.0) -> None:
        if name not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {name!r}")
        self.name, self.total_steps = name, max(1, int(total_steps))
        self.warmup_factor, self.milestones, self.gamma = float(warmup_factor), tuple(milestones), float(gamma)
        self.power, self.min_lr_ratio = float(power), float(min_lr_ratio)
        self.set_warmup(warmup_steps)

    def set_warmup(self, warmup_steps: int) -> None:
        """Warm-up length in steps, clamped to ``[0, total_steps - 1]``."""
        self.warmup_steps = min(max(0, int(warmup_steps)), self.total_steps - 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
            return self.warmup_factor * (1 - alpha) + alpha
        t = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.name == "cosine":
            return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
        if self.name == "poly":
            return max(self.min_lr_ratio, (1 - t) ** self.power)
        if self.name == "step":
            return self.gamma ** sum(t >= m for m in self.milestones)
        return 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    name: str,
    total_steps: int,
    warmup_steps: int,
    warmup_factor: float = 0.001,
    milestones: tuple[float, ...] = (0.67, 0.89),
    gamma: float = 0.1,
    power: float = 0.9,
    min_lr_ratio: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped every optimizer step with a :class:`WarmupSchedule` (see there)."""
    schedule = WarmupSchedule(name, total_steps=total_steps, warmup_steps=warmup_steps, warmup_factor=warmup_factor,
                              milestones=milestones, gamma=gamma, power=power, min_lr_ratio=min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
