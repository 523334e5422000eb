"""Builders for the GhostNet family, in the style of torchvision's builders and timm's variant tables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from .ghostnet import GhostNet, GhostNetFeatures
from .pretrained import get_weights, list_weights, load_named_weights, weight_loading_skipped
from .weights import load_weights

__all__ = [
    "VARIANTS",
    "list_models",
    "create_ghostnet",
    "ghostnet_050",
    "ghostnet_100",
    "ghostnet_130",
    "ghostnetv2_100",
    "ghostnetv2_130",
    "ghostnetv2_160",
]

#: name -> (version, width). Names are timm's, so checkpoints and docs line up.
VARIANTS: dict[str, tuple[int, float]] = {
    "ghostnet_050": (1, 0.5),
    "ghostnet_100": (1, 1.0),
    "ghostnet_130": (1, 1.3),
    "ghostnetv2_100": (2, 1.0),
    "ghostnetv2_130": (2, 1.3),
    "ghostnetv2_160": (2, 1.6),
}

Weights = str | os.PathLike | Mapping[str, Tensor] | None


def list_models() -> list[str]:
    """Names accepted by :func:`create_ghostnet` (and the detection/segmentation builders)."""
    return list(VARIANTS)


def resolve_weights(weights: Weights, variant: str) -> str | os.PathLike | Mapping[str, Tensor] | None:
    """What :func:`load_weights` should read for ``weights=`` of a ``variant`` model.

    A registered name (:func:`~ghost_vision.models.list_weights`) becomes its state dict (downloaded and
    verified once, then cached); ``"timm"`` means timm's hub copy ``"<variant>.in1k"``; paths and state
    dicts pass through. A string that is neither a registered name nor an existing file raises
    ``FileNotFoundError`` listing the names registered for the variant.
    """
    if not isinstance(weights, str):
        return weights
    name = f"{variant}.in1k" if weights == "timm" else weights
    if name in list_weights():
        entry = get_weights(name)
        if entry.variant != variant:
            raise ValueError(
                f"weights {name!r} are for {entry.variant}, not {variant}; "
                f"weights for {variant}: {list_weights(variant) or 'none published'}"
            )
        return load_named_weights(name)
    if weights == "timm":
        raise ValueError(f"weights='timm': timm publishes no ImageNet weights for {variant}; "
                         f"registered weights for it: {list_weights(variant) or 'none'}")
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"weights {weights!r} is neither a registered name nor an existing file. Names for {variant}: "
            f"{list_weights(variant) or 'none published'} (all: ghost_vision.models.list_weights()); or pass the "
            "path of an official/timm checkpoint or a ghost-vision .ckpt."
        )
    return weights


def create_ghostnet(
    name: str,
    *,
    weights: Weights = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (1, 2, 3, 4),
    output_stride: int = 32,
    frozen_stages: int = -1,
    norm_eval: bool = False,
    num_classes: int = 1000,
    drop_rate: float = 0.2,
    in_chans: int = 3,
) -> GhostNet | GhostNetFeatures:
    """Build a GhostNet variant by name (see :data:`VARIANTS`).

    Args:
        name: ``ghostnet_050/100/130`` (v1) or ``ghostnetv2_100/130/160`` (v2, DFC attention).
        weights: ``None``, a registered name such as ``"ghostnet_100.in1k"`` (see
            :func:`~ghost_vision.models.list_weights`; downloaded once into the torch hub cache and
            verified), a checkpoint path, a state dict, or ``"timm"`` (same as ``"<name>.in1k"``).
        features_only: return a :class:`GhostNetFeatures` backbone instead of the classifier.
        out_indices, output_stride, frozen_stages, norm_eval: feature backbone options
            (see :class:`GhostNetFeatures`).
        num_classes, drop_rate: classifier options.
        in_chans: input channels.

    Example:
        >>> import torch
        >>> from ghost_vision.models import create_ghostnet
        >>> backbone = create_ghostnet("ghostnet_100", features_only=True)
        >>> [tuple(f.shape) for f in backbone(torch.rand(1, 3, 320, 320)).values()]
        [(1, 24, 80, 80), (1, 40, 40, 40), (1, 112, 20, 20), (1, 960, 10, 10)]
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown GhostNet variant {name!r}; choose one of {list_models()}")
    version, width = VARIANTS[name]
    if features_only:
        model: GhostNet | GhostNetFeatures = GhostNetFeatures(
            version=version, width=width, out_indices=out_indices, output_stride=output_stride,
            frozen_stages=frozen_stages, norm_eval=norm_eval, in_chans=in_chans,
        )
    else:
        model = GhostNet(version=version, width=width, num_classes=num_classes, drop_rate=drop_rate,
                         in_chans=in_chans)
    if weights is not None and not weight_loading_skipped():
        load_weights(model, resolve_weights(weights, name))
    return model


def _builder(name: str):
    version, width = VARIANTS[name]

    def build(*, weights: Weights = None, features_only: bool = False, **kwargs: Any) -> GhostNet | GhostNetFeatures:
        return create_ghostnet(name, weights=weights, features_only=features_only, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"GhostNet{'V2' if version == 2 else ''} {width}x (``{name}``); keyword arguments as for "
        f":func:`create_ghostnet`.\n\n"
        f"    Example:\n"
        f"        >>> from ghost_vision.models import {name}\n"
        f"        >>> net = {name}()  # ImageNet classifier, timm/official key layout\n"
        f"        >>> backbone = {name}(features_only=True, output_stride=16)\n"
    )
    return build


ghostnet_050 = _builder("ghostnet_050")
ghostnet_100 = _builder("ghostnet_100")
ghostnet_130 = _builder("ghostnet_130")
ghostnetv2_100 = _builder("ghostnetv2_100")
ghostnetv2_130 = _builder("ghostnetv2_130")
ghostnetv2_160 = _builder("ghostnetv2_160")
