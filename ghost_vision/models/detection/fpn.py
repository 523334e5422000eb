"""GhostNet + FPN: a torchvision ``BackboneWithFPN`` and the Faster R-CNN / RetinaNet / FCOS builders."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops.feature_pyramid_network import (
    ExtraFPNBlock,
    FeaturePyramidNetwork,
    LastLevelMaxPool,
    LastLevelP6P7,
)

from ..factory import Weights, check_variant, resolve_variant
from ..ghostnet import GhostNetFeatures
from ._utils import NUM_BACKBONE_UNITS, build_body, validate_trainable_layers

__all__ = [
    "GhostNetFPNBackbone",
    "ghostnet_fpn_backbone",
    "fasterrcnn_ghostnet_fpn",
    "retinanet_ghostnet_fpn",
    "fcos_ghostnet_fpn",
]

DEFAULT_RETURNED_LAYERS = (2, 3, 4)  # strides 8, 16, 32 (torchvision's RetinaNet/FCOS choice)
FASTERRCNN_RETURNED_LAYERS = (3, 4)  # strides 16, 32: the last two levels, as torchvision's mobilenet FPN


class GhostNetFPNBackbone(BackboneWithFPN):
    """A :class:`~torchvision.models.detection.backbone_utils.BackboneWithFPN` whose ``body`` is a
    :class:`~ghost_vision.models.GhostNetFeatures` (which already returns an ``OrderedDict`` keyed
    ``"0"``, ``"1"``, ...). Same attributes (``body``, ``fpn``, integer ``out_channels``) and state-dict
    layout (``body.conv_stem.weight``, ``fpn.inner_blocks.0.0.weight``, ...) as torchvision's.
    ``strides`` lists the stride of every output map (FPN levels, then the extra blocks').

    Example:
        >>> backbone = ghostnet_fpn_backbone("ghostnet_050", returned_layers=[3, 4])  # the builder makes this class
        >>> isinstance(backbone, GhostNetFPNBackbone), backbone.out_channels, backbone.strides
        (True, 256, [16, 32, 64])
    """

    def __init__(
        self,
        body: GhostNetFeatures,
        out_channels: int = 256,
        extra_blocks: ExtraFPNBlock | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
    ) -> None:
        nn.Module.__init__(self)
        if extra_blocks is None:
            extra_blocks = LastLevelMaxPool()
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            in_channels_list=list(body.out_channels),
            out_channels=out_channels,
            extra_blocks=extra_blocks,
            norm_layer=norm_layer,
        )
        self.out_channels = int(out_channels)
        extra = {LastLevelMaxPool: 1, LastLevelP6P7: 2}.get(type(extra_blocks), 0)
        self.strides: list[int] = list(body.strides) + [body.strides[-1] * 2 ** (i + 1) for i in range(extra)]

    @property
    def level_names(self) -> list[str]:
        """Keys of the FPN levels proper (the body's ``"0"``, ``"1"``, ...; not the extra block's ``"pool"``):
        the ``featmap_names`` an RoI pooler must be given."""
        return [str(i) for i in range(len(self.body.out_channels))]


def ghostnet_fpn_backbone(
    name: str = "ghostnet_100",
    *,
    weights: Weights = None,
    trainable_layers: int = 3,
    returned_layers: Sequence[int] | None = None,
    extra_blocks: ExtraFPNBlock | None = None,
    norm_layer: Callable[..., nn.Module] | None = None,
    out_channels: int = 256,
    **backbone_kwargs: Any,
) -> GhostNetFPNBackbone:
    """A GhostNet (any v1/v2 variant) with an FPN on top, ready for torchvision's detectors.

    Args:
        name: a variant of :data:`~ghost_vision.models.VARIANTS` (``ghostnet_050/100/130``,
            ``ghostnetv2_100/130/160``).
        weights: backbone weights: a registered name (``"ghostnet_100.in1k"``, see
            :func:`~ghost_vision.models.list_weights`), a checkpoint path or a state dict.
        trainable_layers: trainable units counted from the top, 0..6. The 6 units are the stem and the
            5 feature levels (``blocks.0``, ``blocks.1-2``, ``blocks.3-4``, ``blocks.5-6``, ``blocks.7-9``);
            6 trains everything, 0 freezes the whole backbone. As in torchvision's ``mobilenet_backbone``
            it applies with or without weights.
        returned_layers: feature levels fed to the FPN, each in 0..4 (level ``i`` has stride
            ``2 ** (i + 1)``, like ResNet's ``layer{i}``); default ``[2, 3, 4]`` (strides 8, 16, 32).
        extra_blocks: an FPN extra block; default ``LastLevelMaxPool()`` (adds ``"pool"``).
        norm_layer: the backbone's normalisation; default ``FrozenBatchNorm2d`` when ``weights`` are given
            (as torchvision does for pretrained backbones), else ``BatchNorm2d``.
        out_channels: FPN channels.
        **backbone_kwargs: passed to :func:`~ghost_vision.models.create_ghostnet` (e.g. ``output_stride``,
            ``norm_eval``).

    Returns:
        a ``BackboneWithFPN`` returning an ``OrderedDict`` ``"0"``, ``"1"``, ..., ``"pool"`` of
        ``out_channels`` maps.

    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import ghostnet_fpn_backbone
        >>> backbone = ghostnet_fpn_backbone("ghostnet_100", trainable_layers=6)
        >>> [(k, tuple(v.shape)) for k, v in backbone(torch.rand(1, 3, 320, 320)).items()]
        [('0', (1, 256, 40, 40)), ('1', (1, 256, 20, 20)), ('2', (1, 256, 10, 10)), ('pool', (1, 256, 5, 5))]
    """
    check_variant(name)  # trainable_layers is checked by build_body
    returned = list(DEFAULT_RETURNED_LAYERS if returned_layers is None else returned_layers)
    if not returned or min(returned) < 0 or max(returned) > 4 or sorted(set(returned)) != returned:
        raise ValueError(f"returned_layers must be increasing levels in the range [0, 4], got {returned_layers}")
    body = build_body(
        name, weights=weights, out_indices=returned, trainable_layers=trainable_layers, norm_layer=norm_layer,
        **backbone_kwargs,
    )
    return GhostNetFPNBackbone(body, out_channels, extra_blocks)


def _detector_backbone(
    width: float,
    backbone: str | None,
    weights_backbone: Weights,
    trainable_backbone_layers: int | None,
    returned_layers: Sequence[int] | None,
    extra_blocks: ExtraFPNBlock | None,
) -> GhostNetFPNBackbone:
    name = resolve_variant(width, backbone)
    trainable = validate_trainable_layers(
        weights_backbone is not None, trainable_backbone_layers, NUM_BACKBONE_UNITS, 3
    )
    return ghostnet_fpn_backbone(
        name, weights=weights_backbone, trainable_layers=trainable, returned_layers=returned_layers,
        extra_blocks=extra_blocks,
    )


_COMMON_ARGS = """
    Args:
        num_classes: classes including the background.
        width: GhostNet v1 width, 0.5, 1.0 or 1.3.
        weights_backbone: GhostNet weights (a registered name, a checkpoint path or a state dict); when given the
            backbone's BatchNorms become ``FrozenBatchNorm2d``.
        trainable_backbone_layers: trainable backbone units counted from the top, 0..6 (stem + 5 levels,
            see :func:`ghostnet_fpn_backbone`); default 3 with ``weights_backbone``, else all 6 (other
            values warn and are ignored without weights, as in torchvision).
        backbone: a variant name instead of ``width``, e.g. ``"ghostnetv2_100"``.
        returned_layers: levels fed to the FPN, each in 0..4 (level ``i`` at stride ``2 ** (i + 1)``); default
            ``[3, 4]`` for Faster R-CNN, ``[2, 3, 4]`` for RetinaNet and FCOS. The anchors follow the levels.
{extra}        **kwargs: passed to the torchvision detector class (``min_size``, ``max_size``, thresholds, ...).
            The defaults are torchvision's (``min_size=800, max_size=1333``); for a 320 px model like
            ``fasterrcnn_mobilenet_v3_large_320_fpn`` pass ``min_size=320, max_size=640``.
"""


def fasterrcnn_ghostnet_fpn(
    *,
    num_classes: int = 91,
    width: float = 1.0,
    weights_backbone: Weights = None,
    trainable_backbone_layers: int | None = None,
    backbone: str | None = None,
    returned_layers: Sequence[int] | None = None,
    **kwargs: Any,
) -> FasterRCNN:
    """Faster R-CNN on :func:`ghostnet_fpn_backbone`, built like torchvision's
    ``fasterrcnn_mobilenet_v3_large_fpn``: the FPN runs on the last two levels by default (strides 16 and
    32, plus ``"pool"`` at 64; torchvision's ``mobilenet_backbone`` also returns its last two stages) and
    every level gets anchors of sizes 32-512 with aspect ratios 0.5, 1, 2.
    {args}
    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import fasterrcnn_ghostnet_fpn
        >>> model = fasterrcnn_ghostnet_fpn(num_classes=3, min_size=320, max_size=640).eval()
        >>> predictions = model([torch.rand(3, 320, 320), torch.rand(3, 256, 384)])
        >>> sorted(predictions[0])
        ['boxes', 'labels', 'scores']
    """
    if returned_layers is None:
        returned_layers = FASTERRCNN_RETURNED_LAYERS
    bb = _detector_backbone(width, backbone, weights_backbone, trainable_backbone_layers, returned_layers, None)
    return FasterRCNN(bb, num_classes, rpn_anchor_generator=rcnn_anchor_generator(len(bb.strides)), **kwargs)


def rcnn_anchor_generator(num_maps: int) -> AnchorGenerator:
    """The RPN anchors of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``: sizes 32-512 with aspect ratios
    0.5, 1, 2 on each of the ``num_maps`` output maps (shared by the Faster and Mask R-CNN builders)."""
    anchor_sizes = ((32, 64, 128, 256, 512),) * num_maps
    return AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * num_maps)


def retinanet_ghostnet_fpn(
    *,
    num_classes: int = 91,
    width: float = 1.0,
    weights_backbone: Weights = None,
    trainable_backbone_layers: int | None = None,
    backbone: str | None = None,
    returned_layers: Sequence[int] | None = None,
    head_norm: bool = False,
    **kwargs: Any,
) -> RetinaNet:
    """RetinaNet on :func:`ghostnet_fpn_backbone` with ``LastLevelP6P7`` (P3-P7 by default), built like
    torchvision's ``retinanet_resnet50_fpn``: anchors of ``4 * stride`` times ``2 ** (0, 1/3, 2/3)`` per
    level (32-512 for strides 8-128) with aspect ratios 0.5, 1, 2.
    {args}
    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import retinanet_ghostnet_fpn
        >>> model = retinanet_ghostnet_fpn(num_classes=3, min_size=320, max_size=640).eval()
        >>> predictions = model([torch.rand(3, 320, 320)])
        >>> sorted(predictions[0])
        ['boxes', 'labels', 'scores']
    """
    bb = _detector_backbone(
        width, backbone, weights_backbone, trainable_backbone_layers, returned_layers, LastLevelP6P7(256, 256)
    )
    anchor_sizes = tuple((4 * s, int(4 * s * 2 ** (1.0 / 3)), int(4 * s * 2 ** (2.0 / 3))) for s in bb.strides)
    anchor_generator = AnchorGenerator(anchor_sizes, ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    if head_norm:
        if "head" in kwargs:
            raise ValueError("retinanet_ghostnet_fpn: pass head= or head_norm=True, not both")
        kwargs["head"] = RetinaNetHead(bb.out_channels, anchor_generator.num_anchors_per_location()[0], num_classes,
                                       norm_layer=partial(nn.GroupNorm, 32))
    return RetinaNet(bb, num_classes, anchor_generator=anchor_generator, **kwargs)


def fcos_ghostnet_fpn(
    *,
    num_classes: int = 91,
    width: float = 1.0,
    weights_backbone: Weights = None,
    trainable_backbone_layers: int | None = None,
    backbone: str | None = None,
    returned_layers: Sequence[int] | None = None,
    **kwargs: Any,
) -> FCOS:
    """FCOS on :func:`ghostnet_fpn_backbone` with ``LastLevelP6P7`` (P3-P7 by default), built like
    torchvision's ``fcos_resnet50_fpn``: one anchor point per location, of size = the level's stride.
    {args}
    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import fcos_ghostnet_fpn
        >>> model = fcos_ghostnet_fpn(num_classes=3, min_size=320, max_size=640).eval()
        >>> predictions = model([torch.rand(3, 320, 320)])
        >>> sorted(predictions[0])
        ['boxes', 'labels', 'scores']
    """
    bb = _detector_backbone(
        width, backbone, weights_backbone, trainable_backbone_layers, returned_layers, LastLevelP6P7(256, 256)
    )
    anchor_generator = AnchorGenerator(tuple((s,) for s in bb.strides), ((1.0,),) * len(bb.strides))
    return FCOS(bb, num_classes, anchor_generator=anchor_generator, **kwargs)


_EXTRA_ARGS = {retinanet_ghostnet_fpn: """\
        head_norm: ``GroupNorm(32)`` after each of the head's tower convs, as in torchvision's
            ``retinanet_resnet50_fpn_v2``. Use it to train without ImageNet weights: the plain head's four
            convs (weights of std 0.01, no normalization) pass almost no signal from an untrained backbone,
            and the classifier stays at its background prior (measured on the shapes: docs/int8.md).
"""}
for _fn in (fasterrcnn_ghostnet_fpn, retinanet_ghostnet_fpn, fcos_ghostnet_fpn):
    if _fn.__doc__:  # None under python -OO
        _fn.__doc__ = _fn.__doc__.replace("{args}", _COMMON_ARGS.replace("{extra}", _EXTRA_ARGS.get(_fn, "")))
del _fn
