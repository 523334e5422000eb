"""NanoDet-Plus's dynamic soft-label assigner (a SimOTA-style dynamic-k matcher with a soft-label cost).

Not in torchvision (its ``Matcher`` is IoU-threshold based), so it is written here, after NanoDet-Plus's
``DynamicSoftLabelAssigner``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_iou

__all__ = ["AssignResult", "DynamicSoftLabelAssigner"]

_INF = 1e8


@dataclass
class AssignResult:
    """``gt_inds``: ``(A,)`` index of the matched ground truth, ``-1`` for background; ``ious``: ``(A,)`` IoU
    of the prediction with its match (0 for background), the quality target of Quality Focal Loss."""

    gt_inds: Tensor
    ious: Tensor

    @property
    def pos(self) -> Tensor:
        return self.gt_inds >= 0


class DynamicSoftLabelAssigner:
    """Match prior points to ground-truth boxes from the current predictions.

    Candidates of a box are the priors whose point lies inside it. Their cost is

        ``cost = sum_c BCE(logit_c, t_c) * |t_c - sigmoid(logit_c)| ** 2  +  iou_weight * -log(IoU + 1e-7)``

    with the soft label ``t`` = IoU of the predicted box for the box's class, 0 for the others. Each box
    takes its ``k`` cheapest candidates, ``k = max(1, int(sum of its top-``topk`` IoUs))``; a prior taken by
    several boxes keeps the cheapest. A prior is only a candidate of the boxes it lies in (NanoDet-Plus
    only requires it to lie in some box).

    Args:
        topk: candidates whose IoUs set ``k`` (13).
        iou_weight: weight of the IoU cost (3).

    Example:
        >>> import torch
        >>> priors = torch.tensor([[5.0, 5.0, 8.0], [30.0, 30.0, 8.0]])
        >>> boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [25.0, 25.0, 35.0, 35.0]])
        >>> result = DynamicSoftLabelAssigner()(torch.zeros(2, 2), priors, boxes, boxes, torch.tensor([0, 1]))
        >>> result.gt_inds.tolist(), result.ious.tolist()
        ([0, 1], [1.0, 1.0])
    """

    def __init__(self, topk: int = 13, iou_weight: float = 3.0) -> None:
        self.topk, self.iou_weight = topk, iou_weight

    @torch.no_grad()
    def __call__(self, logits: Tensor, priors: Tensor, pred_boxes: Tensor, gt_boxes: Tensor,
                 gt_labels: Tensor) -> AssignResult:
        """Assign one image.

        Args:
            logits: ``(A, C)`` class logits (detached).
            priors: ``(A, 3)`` rows ``(cx, cy, stride)``.
            pred_boxes: ``(A, 4)`` decoded predicted boxes (detached).
            gt_boxes: ``(G, 4)`` ``(x1, y1, x2, y2)``.
            gt_labels: ``(G,)`` classes in ``0..C-1``.
        """
        num_priors, num_gt = priors.shape[0], gt_boxes.shape[0]
        gt_inds = torch.full((num_priors,), -1, dtype=torch.long, device=priors.device)
        ious = priors.new_zeros(num_priors)
        if num_gt == 0 or num_priors == 0:
            return AssignResult(gt_inds, ious)
        centers = priors[:, None, :2]
        inside = torch.cat([centers - gt_boxes[None, :, :2], gt_boxes[None, :, 2:] - centers], -1).amin(-1) > 0
        valid = inside.any(1)
        if not valid.any():
            return AssignResult(gt_inds, ious)
        v_logits, v_inside = logits[valid].float(), inside[valid]
        pair_ious = box_iou(pred_boxes[valid].float(), gt_boxes.float())  # (V, G)
        iou_cost = -torch.log(pair_ious + 1e-7)
        onehot = F.one_hot(gt_labels.long(), logits.shape[1]).float()  # (G, C)
        soft = onehot[None] * pair_ious[..., None]  # (V, G, C)
        x = v_logits[:, None].expand_as(soft)
        cls_cost = (F.binary_cross_entropy_with_logits(x, soft, reduction="none")
                    * (soft - x.sigmoid()).abs().pow(2.0)).sum(-1)
        cost = cls_cost + self.iou_weight * iou_cost + _INF * (~v_inside)
        matched_gt, matched_iou, fg = self._dynamic_k(cost, pair_ious, v_inside)
        idx = valid.nonzero().squeeze(1)[fg]
        gt_inds[idx] = matched_gt
        ious[idx] = matched_iou.to(ious)
        return AssignResult(gt_inds, ious)

    def _dynamic_k(self, cost: Tensor, pair_ious: Tensor, inside: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        matching = torch.zeros_like(cost, dtype=torch.bool)
        topk_ious = pair_ious.topk(min(self.topk, pair_ious.shape[0]), dim=0).values
        ks = topk_ious.sum(0).int().clamp(min=1).tolist()
        for g, k in enumerate(ks):
            pos = cost[:, g].topk(k, largest=False).indices
            matching[pos, g] = True
        matching &= inside  # never a prior outside the box (k larger than the candidates inside)
        multiple = matching.sum(1) > 1
        if multiple.any():
            best = cost[multiple].argmin(1)
            matching[multiple] = False
            matching[multiple.nonzero().squeeze(1), best] = True
        fg = matching.any(1)
        matched_gt = matching[fg].float().argmax(1)
        matched_iou = pair_ious[fg].gather(1, matched_gt[:, None]).squeeze(1)
        return matched_gt, matched_iou, fg
