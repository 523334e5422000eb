"""Per-image bookkeeping every metric shares: an image id counts once, whatever the number of processes.

Under DDP, ``DistributedSampler`` pads the split with repeated images; a metric that kept them would give
another number on N processes than on one. This module needs only torch and torchmetrics (no pycocotools).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

__all__ = ["PerImageMean", "first_occurrence_mask"]


def first_occurrence_mask(ids: Tensor | Sequence[int]) -> Tensor:
    """Boolean mask keeping the first occurrence of every id (``DistributedSampler`` padding repeats
    samples; after an all-gather, rank order decides which copy is first).

    Example:
        >>> first_occurrence_mask([3, 1, 3, 2, 1]).tolist()
        [True, True, False, True, False]
    """
    seen: set[int] = set()
    keep = []
    for i in torch.as_tensor(ids).reshape(-1).tolist():
        keep.append(i not in seen)
        seen.add(i)
    return torch.tensor(keep, dtype=torch.bool)


class PerImageMean(Metric):
    """Mean of one value per image over the split, each image id counted once.

    Averaging per batch (``self.log(..., sync_dist=True)``) would count padded duplicates twice and give
    another number than one process. Values are kept with their ids, the first occurrence of an id is used
    and the sum is taken in id order, so 1 and N processes agree to the last bit.

    Example:
        >>> m = PerImageMean()
        >>> m.update(torch.tensor([1.0, 3.0]), torch.tensor([0, 1]))
        >>> m.update(torch.tensor([1.0]), torch.tensor([0]))  # a padded repeat of image 0
        >>> float(m.compute())
        2.0
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("values", default=[], dist_reduce_fx="cat")
        self.add_state("ids", default=[], dist_reduce_fx="cat")

    def update(self, values: Tensor, ids: Tensor) -> None:
        self.values.append(values.detach().double().reshape(-1))
        self.ids.append(torch.as_tensor(ids, device=values.device).reshape(-1).long())

    def compute(self) -> Tensor:
        if isinstance(self.ids, list) and not self.ids:
            return torch.tensor(float("nan"), dtype=torch.float64)
        ids, values = dim_zero_cat(self.ids).cpu(), dim_zero_cat(self.values).cpu()
        keep = first_occurrence_mask(ids)
        ids, values = ids[keep], values[keep]
        return values[torch.argsort(ids)].mean()
