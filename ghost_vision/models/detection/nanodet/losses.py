"""The losses of Generalized Focal Loss (Li et al., 2020) as NanoDet-Plus weights them.

* Quality Focal Loss: binary cross-entropy against a soft target (the IoU of the predicted box with its
  ground truth for the assigned class, 0 elsewhere), scaled by ``|target - sigmoid(logit)| ** beta``;
* Distribution Focal Loss: cross-entropy on the two integer bins around each target distance, weighted by
  the distance to the other bin, so that the distribution concentrates around the target;
* GIoU loss: ``torchvision.ops.generalized_box_iou_loss``.

torchvision ships only the (binary-target) ``sigmoid_focal_loss``; QFL and DFL are written here.
:func:`mean_over_ranks` makes the loss normalisers (number of positives, box weight sum) those of the whole
distributed batch, as NanoDet's ``reduce_mean`` does.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss

__all__ = ["distribution_focal_loss", "giou_loss", "mean_over_ranks", "quality_focal_loss"]


def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, *, beta: float = 2.0) -> Tensor:
    """Quality Focal Loss per prior (summed over classes).

    Args:
        logits: ``(A, C)`` class logits.
        labels: ``(A,)`` the assigned class in ``0..C-1``, or ``-1`` (or anything outside) for background.
        scores: ``(A,)`` the quality target (IoU) of the assigned class; ignored for background.
        beta: the focusing exponent (2).

    Returns:
        ``(A,)`` losses.

    Example:
        >>> import torch
        >>> quality_focal_loss(torch.zeros(1, 2), torch.tensor([1]), torch.tensor([0.5]))  # 0.25 ln 2, 0
        tensor([0.1733])
    """
    target = torch.zeros_like(logits)
    pos = (labels >= 0) & (labels < logits.shape[1])
    target[pos, labels[pos]] = scores[pos].to(target.dtype)
    sigma = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * (target - sigma).abs().pow(beta)
    return loss.sum(dim=1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution Focal Loss per distance.

    Args:
        logits: ``(M, reg_max + 1)`` bin logits.
        target: ``(M,)`` target distances in ``[0, reg_max)`` (stride units).

    Returns:
        ``(M,)`` losses: ``(r - y) CE(l) + (y - l) CE(r)`` with ``l = floor(y)``, ``r = l + 1``.
    """
    left = target.long()
    right = left + 1
    w_left = right.to(target) - target
    w_right = target - left.to(target)
    return (F.cross_entropy(logits, left, reduction="none") * w_left
            + F.cross_entropy(logits, right, reduction="none") * w_right)


def giou_loss(boxes: Tensor, target: Tensor) -> Tensor:
    """``1 - GIoU`` per box pair (``torchvision.ops.generalized_box_iou_loss``), boxes ``(x1, y1, x2, y2)``."""
    return generalized_box_iou_loss(boxes, target, reduction="none")


def mean_over_ranks(x: Tensor) -> Tensor:
    """The mean of ``x`` over the processes of a distributed run (``x`` itself outside one), without gradient.

    A loss divided by its own process's count of positives and then averaged over processes (what DDP does to
    gradients) is not the loss of the whole batch: a process with few positives weighs as much as one with
    many. Divided by the mean count over processes, the averaged gradient is exactly the one-process gradient
    of the whole batch. Every process of the group must call this the same number of times.

    Example:
        >>> import torch
        >>> mean_over_ranks(torch.tensor(3.0))  # not distributed: unchanged
        tensor(3.)
    """
    x = x.detach()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
