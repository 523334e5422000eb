"""Builders for the GhostNet family, in the style of torchvision's builders and timm's variant tables."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import Tensor

from .ghostnet import GhostNet, GhostNetFeatures
from .pretrained import get_weights, list_weights, load_named_weights, weight_loading_skipped
from .variants import VARIANTS, WIDTH_RANGE, variant_config, variant_name
from .weights import load_weights

__all__ = [
    "VARIANTS",
    "create_ghostnet",
    "resolve_variant",
    "ghostnet_050",
    "ghostnet_100",
    "ghostnet_130",
    "ghostnetv2_100",
    "ghostnetv2_130",
    "ghostnetv2_160",
    "ghostnetv3_050",
    "ghostnetv3_100",
    "ghostnetv3_130",
    "ghostnetv3_160",
]

Weights = str | os.PathLike | Mapping[str, Tensor] | None


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
    reduced_tail: bool = False,
) -> GhostNet | GhostNetFeatures:
    """Build a GhostNet variant by name (see :data:`VARIANTS`).

    Args:
        name: ``ghostnet_050/100/130`` (v1), ``ghostnetv2_100/130/160`` (v2, DFC attention) or
            ``ghostnetv3_050/100/130/160`` (v3, built in its multi-branch training form: call
            :func:`~ghost_vision.models.reparameterize` before deploying). Any other width is written the
            same way, ``ghostnet[v2|v3]_NNN`` with NNN = width × 100 (e.g. ``ghostnet_110``); such widths have
            no published weights.
        weights: ``None``, a registered name such as ``"ghostnet_100.in1k"`` (see
            :func:`~ghost_vision.models.list_weights`; downloaded once into the torch hub cache and
            verified), a checkpoint path, a state dict, or ``"timm"`` (same as ``"<name>.in1k"``).
        features_only: return a :class:`GhostNetFeatures` backbone instead of the classifier.
        out_indices: feature levels to return, each in 0..4 (see :class:`GhostNetFeatures`).
        output_stride: 32, 16 or 8 (feature backbone; below 32 the later strides become dilation).
        frozen_stages: stages without gradients, BatchNorms in eval mode (feature backbone).
        norm_eval: keep every BatchNorm in eval mode (feature backbone).
        num_classes: classifier outputs.
        drop_rate: dropout before the classifier.
        in_chans: input channels.
        reduced_tail: half-width stride-32 stages (feature backbone; see
            :func:`~ghost_vision.models.ghostnet.stage_cfgs`); trained from scratch, no weights fit it.

    Example:
        >>> import torch
        >>> from ghost_vision.models import create_ghostnet
        >>> backbone = create_ghostnet("ghostnet_100", features_only=True)
        >>> [tuple(f.shape) for f in backbone(torch.rand(1, 3, 320, 320)).values()]
        [(1, 24, 80, 80), (1, 40, 40, 40), (1, 112, 20, 20), (1, 960, 10, 10)]
    """
    check_variant(name)
    version, width = variant_config(name)
    if reduced_tail and (weights is not None or not features_only):
        raise ValueError(
            f"reduced_tail=True halves the stride-32 stages of {name}: it is a feature backbone to train from "
            "scratch (features_only=True, weights=None); published weights have the full tail"
        )
    if features_only:
        model: GhostNet | GhostNetFeatures = GhostNetFeatures(
            version=version, width=width, out_indices=out_indices, output_stride=output_stride,
            frozen_stages=frozen_stages, norm_eval=norm_eval, in_chans=in_chans, reduced_tail=reduced_tail,
        )
    else:
        model = GhostNet(version=version, width=width, num_classes=num_classes, drop_rate=drop_rate,
                         in_chans=in_chans)
    if weights is not None and not weight_loading_skipped():
        load_weights(model, resolve_weights(weights, name))
    return model


def check_variant(name: str, *, argument: str = "name") -> None:
    """Raise a ``ValueError`` naming the choices unless ``name`` is a variant (a key of :data:`VARIANTS` or a
    custom width ``ghostnet[v2|v3]_NNN``, see :func:`~ghost_vision.models.variant_config`)."""
    if variant_config(name) is None:
        raise ValueError(
            f"unknown GhostNet variant {argument}={name!r}; choose one of {list(VARIANTS)}, or another width as "
            f"ghostnet[v2|v3]_NNN with NNN = width x 100 from {WIDTH_RANGE[0]:g} to {WIDTH_RANGE[1]:g} "
            "(e.g. 'ghostnet_110'; no published weights)"
        )


def resolve_variant(width: float, backbone: str | None = None) -> str:
    """The variant a task builder uses: ``backbone`` when given, else the GhostNet v1 variant of ``width``.

    The one width -> variant rule of the detection and segmentation builders. ``width`` is matched to
    1e-9 against the v1 widths of :data:`VARIANTS`; another width that is a whole number of hundredths
    gives the custom name (``1.1`` -> ``ghostnet_110``, no published weights). With ``backbone`` it must
    be left at 1.0 or agree with the backbone's width.

    Example:
        >>> resolve_variant(0.5), resolve_variant(1.1), resolve_variant(1.0, "ghostnetv2_130")
        ('ghostnet_050', 'ghostnet_110', 'ghostnetv2_130')
    """
    if isinstance(width, bool) or not isinstance(width, (int, float)):
        raise ValueError(f"width must be a number, got {width!r}")
    if backbone is not None:
        check_variant(backbone, argument="backbone")
        own = variant_config(backbone)[1]
        if abs(width - 1.0) > 1e-9 and abs(width - own) > 1e-9:
            raise ValueError(f"width={width} contradicts backbone={backbone!r} (width {own}); pass one of them")
        return backbone
    name = variant_name(1, float(width))
    if name is None:
        v1 = sorted(w for version, w in VARIANTS.values() if version == 1)
        others = [name for name, (version, _) in VARIANTS.items() if version != 1]
        raise ValueError(
            f"width must be one of {v1} (GhostNet v1, published weights) or another multiple of 0.01 from "
            f"{WIDTH_RANGE[0]:g} to {WIDTH_RANGE[1]:g} (no published weights), got {width!r}; for another "
            f"version pass backbone= one of {others} (or ghostnetv2_NNN / ghostnetv3_NNN)"
        )
    return name


def _builder(name: str):
    version, width = VARIANTS[name]

    def build(*, weights: Weights = None, features_only: bool = False, **kwargs: Any) -> GhostNet | GhostNetFeatures:
        return create_ghostnet(name, weights=weights, features_only=features_only, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (
        f"GhostNet{f'V{version}' if version > 1 else ''} {width}x (``{name}``); keyword arguments as for "
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
ghostnetv3_050 = _builder("ghostnetv3_050")
ghostnetv3_100 = _builder("ghostnetv3_100")
ghostnetv3_130 = _builder("ghostnetv3_130")
ghostnetv3_160 = _builder("ghostnetv3_160")
