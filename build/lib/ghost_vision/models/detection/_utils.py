"""Shared helpers of the detection builders: freezing and norm-layer swapping."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..factory import Weights, create_ghostnet
from ..ghostnet import LEVEL_STAGES, GhostNetFeatures

__all__ = [
    "NUM_BACKBONE_UNITS",
    "validate_trainable_layers",
    "frozen_stages_for",
    "replace_batchnorm",
    "build_body",
]

#: Units that ``trainable_layers`` counts, from the input: the stem, then one unit per feature level
#: (``blocks.0`` | ``blocks.1-2`` | ``blocks.3-4`` | ``blocks.5-6`` | ``blocks.7-9``), i.e. the stem plus the
#: stages ending at strides 2, 4, 8, 16 and 32 -- the same 6 units as torchvision's MobileNetV3 extractors.
NUM_BACKBONE_UNITS = len(LEVEL_STAGES) + 1

def validate_trainable_layers(is_trained: bool, value: int | None, max_value: int, default: int) -> int:
    """torchvision's ``_validate_trainable_layers``: all layers train without pretrained weights."""
    if not is_trained:
        if value is not None:
            warnings.warn(
                "Changing trainable_backbone_layers has no effect if weights_backbone is not given, "
                f"falling back to trainable_backbone_layers={max_value} so that all layers are trainable",
                stacklevel=3,
            )
        value = max_value
    if value is None:
        value = default
    if not 0 <= value <= max_value:
        raise ValueError(f"trainable_backbone_layers should be in the range [0, {max_value}], got {value}")
    return value


def frozen_stages_for(trainable_layers: int, num_built_stages: int) -> int:
    """``GhostNetFeatures.frozen_stages`` that leaves the top ``trainable_layers`` units trainable."""
    if not 0 <= trainable_layers <= NUM_BACKBONE_UNITS:
        raise ValueError(
            f"trainable_layers should be in the range [0, {NUM_BACKBONE_UNITS}] (stem + 5 levels), "
            f"got {trainable_layers}"
        )
    frozen_units = NUM_BACKBONE_UNITS - trainable_layers
    if frozen_units == 0:
        return -1
    if frozen_units == 1:
        return 0
    return min(LEVEL_STAGES[frozen_units - 2] + 1, num_built_stages)


def replace_batchnorm(module: nn.Module, norm_layer: Callable[..., nn.Module]) -> nn.Module:
    """Swap every ``BatchNorm2d`` in ``module`` for ``norm_layer(num_features)``, keeping its statistics,
    affine parameters and ``eps`` (e.g. ``FrozenBatchNorm2d`` for a pretrained backbone). In place."""
    if norm_layer is nn.BatchNorm2d:
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            new = norm_layer(child.num_features)
            if hasattr(new, "eps"):
                new.eps = child.eps
            new.load_state_dict(child.state_dict(), strict=not isinstance(new, FrozenBatchNorm2d))
            new.to(child.weight.device)
            setattr(module, name, new)
        else:
            replace_batchnorm(child, norm_layer)
    return module


def build_body(
    name: str,
    *,
    weights: Weights,
    out_indices: Sequence[int],
    trainable_layers: int,
    norm_layer: Callable[..., nn.Module] | None,
    **backbone_kwargs,
) -> GhostNetFeatures:
    """A ``GhostNetFeatures`` with weights loaded, BatchNorm swapped and the bottom units frozen.

    ``norm_layer=None`` means ``FrozenBatchNorm2d`` when ``weights`` are given, else ``BatchNorm2d``.
    """
    num_built = LEVEL_STAGES[max(out_indices)] + 1
    frozen = frozen_stages_for(trainable_layers, num_built)
    body = create_ghostnet(
        name, weights=weights, features_only=True, out_indices=out_indices, frozen_stages=frozen, **backbone_kwargs
    )
    if norm_layer is None:
        norm_layer = FrozenBatchNorm2d if weights is not None else nn.BatchNorm2d
    replace_batchnorm(body, norm_layer)
    for m in body.frozen_modules():  # parameters of swapped-in norm layers are frozen too
        for p in m.parameters():
            p.requires_grad_(False)
    return body
