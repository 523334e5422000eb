"""One model registry: every network of the package, and torchvision's MobileNetV3 peers, by name.

Kinds:

* ``"backbone"``: the GhostNet variants of :data:`~ghost_vision.models.VARIANTS` (read when asked, so a
  variant added to that table is listed without an edit here); ``get_model("ghostnet_100")`` is the
  ImageNet classifier, ``features_only=True`` the feature backbone (see
  :func:`~ghost_vision.models.create_ghostnet`).
* ``"detector"``: SSDLite, the FPN detectors (Faster R-CNN, RetinaNet, FCOS, Mask R-CNN) and NanoDet-Plus.
* ``"segmenter"``: DeepLab-lite and LR-ASPP.
* ``"peer"``: torchvision's MobileNetV3 counterparts the benchmarks (docs/benchmarks.md) compare with, plus
  ``mobilenet_v3_large_features`` (the trunk, peer of the GhostNet feature backbone) and
  ``maskrcnn_mobilenet_v3_large_fpn`` (peer of ``maskrcnn_ghostnet_fpn``).

Like the GhostNet builders, a peer is randomly initialised unless asked otherwise: ``weights`` and
``weights_backbone`` default to ``None`` (torchvision's builders would download ImageNet backbone weights);
pass ``weights_backbone="DEFAULT"`` for a pretrained one. A peer takes the input its Ghost counterpart takes
(:mod:`ghost_vision.models.peers`): torchvision's segmenters come wrapped in
:class:`~ghost_vision.models.peers.NormalizedInput` (the mean/std of their weights' ``transforms()``), so
they take [0, 1] RGB like the Ghost segmenters (``normalize=False``: torchvision's model as is). Any other torchvision builder name
(``torchvision.models.list_models()``, e.g. ``fasterrcnn_resnet50_fpn``) is built the same way, without
being listed.

Example:
    >>> from ghost_vision.models import get_model, list_models
    >>> list_models(kind="segmenter")
    ['deeplabv3_ghostnet', 'lraspp_ghostnet']
    >>> model = get_model("ssdlite320_ghostnet", num_classes=3, width=0.5)
    >>> type(model).__name__
    'SSD'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from . import factory
from .detection import (
    fasterrcnn_ghostnet_fpn,
    fcos_ghostnet_fpn,
    maskrcnn_ghostnet_fpn,
    maskrcnn_mobilenet_v3_large_fpn,
    nanodet_plus_ghostnet,
    retinanet_ghostnet_fpn,
    ssdlite320_ghostnet,
)
from .peers import NormalizedInput, is_segmentation_builder, peer_transforms
from .segmentation import deeplabv3_ghostnet, lraspp_ghostnet

__all__ = ["KINDS", "get_model", "list_models", "model_kind"]

KINDS = ("backbone", "detector", "segmenter", "peer")

_DETECTORS: dict[str, Callable[..., nn.Module]] = {
    "ssdlite320_ghostnet": ssdlite320_ghostnet,
    "fasterrcnn_ghostnet_fpn": fasterrcnn_ghostnet_fpn,
    "retinanet_ghostnet_fpn": retinanet_ghostnet_fpn,
    "fcos_ghostnet_fpn": fcos_ghostnet_fpn,
    "maskrcnn_ghostnet_fpn": maskrcnn_ghostnet_fpn,
    "nanodet_plus_ghostnet": nanodet_plus_ghostnet,
}
_SEGMENTERS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv3_ghostnet": deeplabv3_ghostnet,
    "lraspp_ghostnet": lraspp_ghostnet,
}
#: torchvision builders of the MobileNetV3 peers (``mobilenet_v3_large_features`` is defined below,
#: ``maskrcnn_mobilenet_v3_large_fpn`` in :mod:`ghost_vision.models.detection.maskrcnn`: torchvision has neither).
_PEERS = (
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "mobilenet_v3_large_features",
    "ssdlite320_mobilenet_v3_large",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "maskrcnn_mobilenet_v3_large_fpn",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)


def _mobilenet_v3_large_features(*, weights: Any = None, **kwargs: Any) -> nn.Module:
    """torchvision's MobileNetV3-Large trunk (``.features``), the peer of ``GhostNetFeatures``."""
    from torchvision.models import mobilenet_v3_large

    return mobilenet_v3_large(weights=weights, **kwargs).features


def _torchvision_builder(name: str) -> Callable[..., nn.Module] | None:
    import torchvision.models

    own = {"mobilenet_v3_large_features": _mobilenet_v3_large_features,
           "maskrcnn_mobilenet_v3_large_fpn": maskrcnn_mobilenet_v3_large_fpn}
    if name in own:
        return own[name]
    try:
        return torchvision.models.get_model_builder(name)
    except ValueError:  # torchvision's "Unknown model name"
        return None


def _torchvision_model(builder: Callable[..., nn.Module], **kwargs: Any) -> nn.Module:
    # random initialisation by default, as for the GhostNet builders: no download unless asked for
    params = inspect.signature(builder).parameters
    for key in ("weights", "weights_backbone"):
        if key in params:
            kwargs.setdefault(key, None)
    return builder(**kwargs)


def _registered() -> dict[str, str]:
    """name -> kind, in listing order (backbones read from ``VARIANTS`` now, not at import)."""
    names = {name: "backbone" for name in factory.VARIANTS}
    names.update({name: "detector" for name in _DETECTORS})
    names.update({name: "segmenter" for name in _SEGMENTERS})
    names.update({name: "peer" for name in _PEERS})
    return names


def list_models(kind: str | None = None) -> list[str]:
    """Names :func:`get_model` builds, all or of one ``kind`` (``"backbone"``, ``"detector"``,
    ``"segmenter"``, ``"peer"``).

    Example:
        >>> list_models(kind="backbone")[:3]
        ['ghostnet_050', 'ghostnet_100', 'ghostnet_130']
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)} or None, got {kind!r}")
    return [name for name, k in _registered().items() if kind is None or k == kind]


def model_kind(name: str) -> str | None:
    """The kind of a listed name, ``None`` for anything else.

    Example:
        >>> model_kind("ssdlite320_ghostnet"), model_kind("ghostnetv3_100"), model_kind("resnet50")
        ('detector', 'backbone', None)
    """
    return _registered().get(name)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name with the builder's keyword arguments.

    Args:
        name: one of :func:`list_models`, or any other torchvision builder name.
        **kwargs: the builder's arguments, e.g. ``num_classes``, ``width``/``backbone`` and
            ``weights_backbone`` for detectors and segmenters, ``features_only`` for a backbone.

    Raises:
        ValueError: for an unknown name, listing the known ones.

    Example:
        >>> from ghost_vision.models import get_model
        >>> backbone = get_model("ghostnet_050", features_only=True)
        >>> backbone.out_channels
        [12, 20, 56, 480]
    """
    if not isinstance(name, str):
        raise ValueError(f"model name must be a string, got {name!r}")
    if factory.variant_config(name) is not None:  # a named variant or a custom width (ghostnet_110)
        return factory.create_ghostnet(name, **kwargs)
    builder = _DETECTORS.get(name) or _SEGMENTERS.get(name)
    if builder is not None:
        return builder(**kwargs)
    tv_builder = _torchvision_builder(name)
    if tv_builder is not None:
        if not is_segmentation_builder(tv_builder):
            return _torchvision_model(tv_builder, **kwargs)
        # torchvision's segmenters expect normalised input; ours take [0, 1] RGB like the Ghost segmenters
        normalize = kwargs.pop("normalize", True)
        model = _torchvision_model(tv_builder, **kwargs)
        if not normalize:
            return model
        preprocessing = peer_transforms(name, kwargs.get("weights"))
        return NormalizedInput(model, mean=preprocessing.mean, std=preprocessing.std)
    raise ValueError(
        f"unknown model builder {name!r}: choose one of {list_models()} (see ghost_vision.models.list_models), "
        "or any torchvision.models builder name"
    )
