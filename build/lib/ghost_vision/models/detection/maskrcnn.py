"""Mask R-CNN on the GhostNet FPN, and its MobileNetV3-Large-FPN peer built the same way.

Both are torchvision's :class:`~torchvision.models.detection.MaskRCNN` with the RPN anchors of
``fasterrcnn_mobilenet_v3_large_fpn`` and RoI poolers (:class:`~torchvision.ops.MultiScaleRoIAlign`) given the
backbone's real FPN level names. torchvision's default poolers name levels ``"0"``-``"3"`` and silently skip
names a backbone lacks, so a two-level FPN would still "work" with a wrong list; here the names come from the
backbone itself (``"0"``, ``"1"``, ... of the returned levels; never the extra block's ``"pool"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.ops import MultiScaleRoIAlign

from ..factory import Weights
from .fpn import _COMMON_ARGS, FASTERRCNN_RETURNED_LAYERS, _detector_backbone, rcnn_anchor_generator

__all__ = ["maskrcnn_ghostnet_fpn", "maskrcnn_mobilenet_v3_large_fpn", "maskrcnn_on_fpn"]


def maskrcnn_on_fpn(
    backbone: nn.Module,
    level_names: Sequence[str],
    num_classes: int,
    *,
    mask_head_convs: int = 4,
    **kwargs: Any,
) -> MaskRCNN:
    """torchvision's ``MaskRCNN`` on an FPN ``backbone`` whose levels proper are ``level_names``.

    RPN anchors: sizes 32-512, ratios 0.5/1/2 on every output map (levels + ``"pool"``); box RoIAlign 7x7 and
    mask RoIAlign 14x14 (sampling ratio 2, torchvision's) over ``level_names``; a mask head of
    ``mask_head_convs`` 3x3 convs of 256 channels (torchvision's is 4; 0 feeds the pooled features straight to
    the predictor's deconvolution). ``kwargs`` go to ``MaskRCNN``.

    Example:
        >>> from ghost_vision.models.detection import ghostnet_fpn_backbone, maskrcnn_on_fpn
        >>> backbone = ghostnet_fpn_backbone("ghostnet_050")
        >>> model = maskrcnn_on_fpn(backbone, backbone.level_names, num_classes=3, mask_head_convs=2)
        >>> len(model.roi_heads.mask_head), model.roi_heads.mask_roi_pool.featmap_names == backbone.level_names
        (2, True)
    """
    if isinstance(mask_head_convs, bool) or not isinstance(mask_head_convs, int) or mask_head_convs < 0:
        raise ValueError(f"mask_head_convs must be an int >= 0, got {mask_head_convs!r}")
    names = [str(n) for n in level_names]
    if not names:
        raise ValueError("level_names must name at least one FPN level")
    num_maps = len(names) + 1  # + the LastLevelMaxPool map ("pool")
    kwargs.setdefault("rpn_anchor_generator", rcnn_anchor_generator(num_maps))
    kwargs.setdefault("box_roi_pool", MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2))
    kwargs.setdefault("mask_roi_pool", MultiScaleRoIAlign(featmap_names=names, output_size=14, sampling_ratio=2))
    if mask_head_convs != 4:  # torchvision builds the 4-conv head itself
        kwargs.setdefault("mask_head", MaskRCNNHeads(backbone.out_channels, [256] * mask_head_convs, 1))
    return MaskRCNN(backbone, num_classes, **kwargs)


def maskrcnn_ghostnet_fpn(
    *,
    num_classes: int = 91,
    width: float = 1.0,
    backbone: str | None = None,
    weights_backbone: Weights = None,
    trainable_backbone_layers: int | None = None,
    returned_layers: Sequence[int] | None = None,
    mask_head_convs: int = 4,
    **kwargs: Any,
) -> MaskRCNN:
    """Mask R-CNN on :func:`~ghost_vision.models.detection.ghostnet_fpn_backbone`, built like
    :func:`~ghost_vision.models.detection.fasterrcnn_ghostnet_fpn` (FPN on levels 3 and 4, strides 16 and 32,
    plus ``"pool"``; the same anchors) with torchvision's mask branch (RoIAlign 14x14 on the FPN levels, 4
    convs, a deconvolution, one 28x28 mask per class).
    {args}
        mask_head_convs: 3x3 convs of the mask head (torchvision: 4); fewer is the "mobile" setting.

    Returns:
        a ``MaskRCNN``: in eval mode each prediction holds ``boxes``, ``labels``, ``scores`` and ``masks``
        (``N x 1 x H x W`` probabilities at the input image's size).

    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import maskrcnn_ghostnet_fpn
        >>> model = maskrcnn_ghostnet_fpn(num_classes=3, min_size=320, max_size=640).eval()
        >>> predictions = model([torch.rand(3, 320, 320)])
        >>> sorted(predictions[0])
        ['boxes', 'labels', 'masks', 'scores']
        >>> model.roi_heads.mask_roi_pool.featmap_names
        ['0', '1']
    """
    if returned_layers is None:
        returned_layers = FASTERRCNN_RETURNED_LAYERS
    bb = _detector_backbone(width, backbone, weights_backbone, trainable_backbone_layers, returned_layers, None)
    return maskrcnn_on_fpn(bb, bb.level_names, num_classes, mask_head_convs=mask_head_convs, **kwargs)


def maskrcnn_mobilenet_v3_large_fpn(
    *,
    num_classes: int = 91,
    weights_backbone: Any = None,
    trainable_backbone_layers: int | None = None,
    mask_head_convs: int = 4,
    **kwargs: Any,
) -> MaskRCNN:
    """The MobileNetV3-Large peer of :func:`maskrcnn_ghostnet_fpn`: torchvision has no such builder, so this
    builds the backbone exactly as ``fasterrcnn_mobilenet_v3_large_fpn`` does (``mobilenet_backbone`` with an FPN
    on the last two stages, ``FrozenBatchNorm2d`` and 3 trainable stages when pretrained) and the same heads.

    Args:
        num_classes: classes including the background.
        weights_backbone: torchvision MobileNetV3-Large weights (e.g. ``"DEFAULT"``; downloads), or ``None``.
        trainable_backbone_layers: 0..6, default 3 with weights, else 6 (torchvision's rule).
        mask_head_convs: 3x3 convs of the mask head (torchvision: 4).
        **kwargs: passed to ``MaskRCNN`` (``min_size``, ``max_size``, thresholds, ...).

    Example:
        >>> model = maskrcnn_mobilenet_v3_large_fpn(num_classes=3)
        >>> model.roi_heads.mask_roi_pool.featmap_names
        ['0', '1']
    """
    from torchvision.models import MobileNet_V3_Large_Weights, mobilenet_v3_large
    from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _validate_trainable_layers
    from torchvision.ops import misc as misc_nn_ops

    weights_backbone = MobileNet_V3_Large_Weights.verify(weights_backbone)
    is_trained = weights_backbone is not None
    trainable = _validate_trainable_layers(is_trained, trainable_backbone_layers, 6, 3)
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if is_trained else nn.BatchNorm2d
    trunk = mobilenet_v3_large(weights=weights_backbone, norm_layer=norm_layer)
    bb = _mobilenet_extractor(trunk, True, trainable)
    names = list(bb.body.return_layers.values())  # IntermediateLayerGetter: {module index: "0"/"1"}
    return maskrcnn_on_fpn(bb, names, num_classes, mask_head_convs=mask_head_convs, **kwargs)


if maskrcnn_ghostnet_fpn.__doc__:  # None under python -OO
    maskrcnn_ghostnet_fpn.__doc__ = maskrcnn_ghostnet_fpn.__doc__.replace(
        "{args}", _COMMON_ARGS.rstrip("\n").replace("``[2, 3, 4]`` for RetinaNet and FCOS", "``[3, 4]`` here too")
    )
