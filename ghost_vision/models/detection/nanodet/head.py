"""NanoDet-Plus's GFL head: joint class-quality scores and a distribution over box-side distances.

Generalized Focal Loss (Li et al., 2020) predicts, at every prior point, one sigmoid score per class that
doubles as the localisation quality (IoU), and for each of the four sides (left, top, right, bottom) a
discrete distribution over ``0..reg_max`` (in units of the level's stride) whose expectation is the
distance. torchvision has no GFL head, so the head, the distribution :class:`Integral` and the
distance <-> box conversions are written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List  # noqa: UP035 - TorchScript reads these annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from .neck import LeakyReLU, dw_separable_conv

__all__ = ["GFLHead", "Integral", "SimpleConvHead", "bbox2distance", "distance2bbox", "make_priors"]

#: The classification bias of a prior probability of 0.01: -log((1 - 0.01) / 0.01).
PRIOR_BIAS = -4.595


class Integral(nn.Module):
    """Expected value of each side's distribution: ``softmax(logits) . [0, 1, ..., reg_max]``.

    ``(..., 4 * (reg_max + 1))`` logits -> ``(..., 4)`` distances in stride units.

    Example:
        >>> import torch
        >>> logits = torch.full((1, 32), -1e4)
        >>> logits[0, [2, 8 + 3, 16 + 0, 24 + 7]] = 0.0  # one-hot at 2, 3, 0 and 7
        >>> Integral(7)(logits)
        tensor([[2., 3., 0., 7.]])
    """

    def __init__(self, reg_max: int = 7) -> None:
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape[:-1]
        x = F.softmax(x.reshape(-1, 4, self.reg_max + 1), dim=-1)
        return (x @ self.project.to(x)).reshape(shape + (4,))


def make_priors(sizes: Sequence[tuple[int, int]], strides: Sequence[int], *, device: torch.device | None = None,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Prior points of every level, finest first, row-major: ``(A, 3)`` rows ``(cx, cy, stride)``.

    The points are cell centres, ``((j + 0.5) * stride, (i + 0.5) * stride)`` (NanoDet-Plus uses the cells'
    top-left corners; centres make the "prior inside the box" test of the assigner symmetric).
    """
    out = []
    for (h, w), s in zip(sizes, strides):
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) * s
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) * s
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        out.append(torch.stack([xx.reshape(-1), yy.reshape(-1), torch.full_like(xx.reshape(-1), s)], -1))
    return torch.cat(out)


def distance2bbox(points: Tensor, distance: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """Boxes ``(x1, y1, x2, y2)`` from points ``(..., 2)`` and distances ``(..., 4)`` (left, top, right,
    bottom), clipped to ``max_shape = (h, w)`` when given."""
    x1y1 = points - distance[..., :2]
    x2y2 = points + distance[..., 2:]
    if max_shape is not None:
        h, w = max_shape
        x1y1 = torch.stack([x1y1[..., 0].clamp(0, w), x1y1[..., 1].clamp(0, h)], -1)
        x2y2 = torch.stack([x2y2[..., 0].clamp(0, w), x2y2[..., 1].clamp(0, h)], -1)
    return torch.cat([x1y1, x2y2], -1)


def bbox2distance(points: Tensor, bbox: Tensor, max_dis: float | None = None) -> Tensor:
    """The inverse of :func:`distance2bbox`: ``(left, top, right, bottom)``, clamped to ``[0, max_dis]``."""
    d = torch.cat([points - bbox[..., :2], bbox[..., 2:] - points], -1)
    return d.clamp(min=0) if max_dis is None else d.clamp(min=0, max=max_dis)


def _init_convs(module: nn.Module, std: float = 0.01) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _flatten_levels(outs: List[Tensor]) -> Tensor:  # noqa: UP006
    return torch.cat([o.flatten(2) for o in outs], 2).permute(0, 2, 1)


class GFLHead(nn.Module):
    """NanoDet-Plus's head: per level, a stack of depthwise-separable convs (BN, LeakyReLU) and a 1x1 conv
    predicting ``num_classes`` class-quality logits and ``4 * (reg_max + 1)`` distribution logits
    (shared conv stack for both, NanoDet-Plus's ``share_cls_reg``; levels do not share weights).

    Args:
        num_classes: foreground classes (sigmoid scores, no background).
        in_channels: input width (96).
        feat_channels: stack width (96).
        num_convs: convs per stack (2).
        kernel_size: depthwise kernel (5).
        num_levels: input maps (4: strides 8, 16, 32, 64).
        reg_max: the distributions cover ``0..reg_max`` strides (7).

    ``forward(maps)`` returns ``(N, A, num_classes + 4 * (reg_max + 1))``, levels finest first, row-major.

    Example:
        >>> import torch
        >>> head = GFLHead(3).eval()
        >>> head([torch.rand(1, 96, s, s) for s in (40, 20, 10, 5)]).shape
        torch.Size([1, 2125, 35])
    """

    def __init__(self, num_classes: int, in_channels: int = 96, feat_channels: int = 96, *, num_convs: int = 2,
                 kernel_size: int = 5, num_levels: int = 4, reg_max: int = 7) -> None:
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        self.cls_convs = nn.ModuleList([
            nn.Sequential(*[dw_separable_conv(in_channels if i == 0 else feat_channels, feat_channels, kernel_size)
                            for i in range(num_convs)])
            for _ in range(num_levels)
        ])
        self.gfl_cls = nn.ModuleList([nn.Conv2d(feat_channels, num_classes + 4 * (reg_max + 1), 1)
                                      for _ in range(num_levels)])
        _init_convs(self)
        for conv in self.gfl_cls:
            nn.init.constant_(conv.bias[:num_classes], PRIOR_BIAS)

    def forward(self, feats: List[Tensor]) -> Tensor:  # noqa: UP006
        outs: List[Tensor] = []  # noqa: UP006
        for i, (convs, pred) in enumerate(zip(self.cls_convs, self.gfl_cls)):  # TorchScript: module lists first
            outs.append(pred(convs(feats[i])))
        return _flatten_levels(outs)


class Scale(nn.Module):
    """A learnable scalar factor."""

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class SimpleConvHead(nn.Module):
    """The assist head of NanoDet-Plus's Assign Guidance Module (training only): separate class and box
    towers of ``num_convs`` 3x3 convs (GroupNorm, LeakyReLU) shared across levels, a 3x3 class conv, a 3x3
    distribution conv and a learnable scale per level. Same output layout as :class:`GFLHead`.
    NanoDet-Plus-m: 192 channels (the concatenation of the main and the assist neck), 4 convs."""

    def __init__(self, num_classes: int, in_channels: int = 192, feat_channels: int = 192, *, num_convs: int = 4,
                 num_levels: int = 4, reg_max: int = 7) -> None:
        super().__init__()
        self.num_classes, self.reg_max = num_classes, reg_max
        groups = math.gcd(32, feat_channels)

        def tower() -> nn.Sequential:
            return nn.Sequential(*[
                Conv2dNormActivation(in_channels if i == 0 else feat_channels, feat_channels, 3,
                                     norm_layer=lambda c: nn.GroupNorm(groups, c), activation_layer=LeakyReLU,
                                     inplace=True)
                for i in range(num_convs)
            ])

        self.cls_convs, self.reg_convs = tower(), tower()
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in range(num_levels)])
        _init_convs(self)
        nn.init.constant_(self.gfl_cls.bias, PRIOR_BIAS)

    def forward(self, feats: List[Tensor]) -> Tensor:  # noqa: UP006
        outs: List[Tensor] = []  # noqa: UP006
        for i, scale in enumerate(self.scales):
            x = feats[i]
            cls = self.gfl_cls(self.cls_convs(x))
            reg = scale(self.gfl_reg(self.reg_convs(x))).float()
            outs.append(torch.cat([cls, reg], 1))
        return _flatten_levels(outs)
