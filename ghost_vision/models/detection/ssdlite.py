"""SSDLite with a GhostNet backbone, mirroring torchvision's ``ssdlite320_mobilenet_v3_large``."""

from __future__ import annotations

import warnings
from collections import OrderedDict
from functools import partial
from typing import Any, Dict, List  # noqa: UP035 - TorchScript reads these annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead, _extra_block, _normal_init

from ..factory import Weights, resolve_variant
from ..ghostnet import GhostNetFeatures
from ._utils import NUM_BACKBONE_UNITS, build_body, validate_trainable_layers

__all__ = ["SSDLiteFeatureExtractorGhostNet", "ssdlite320_ghostnet"]

_TAP_STAGE = 7  # blocks.7: the first (and only) block of the first stride-32 stage


class SSDLiteFeatureExtractorGhostNet(nn.Module):
    """The six SSDLite maps of a GhostNet: the ``ghost1`` expansion inside ``blocks.7`` (stride 16), the
    end of the network (stride 32), then four extra blocks (1x1 -> 3x3 depthwise stride 2 -> 1x1, ReLU6)
    of 512/256/256/128 channels. At 320 px the maps are 20, 10, 5, 3, 2 and 1 pixels wide.

    torchvision splits MobileNetV3 in a ``Sequential`` after the expansion; a Ghost bottleneck with stride
    2 also has a conv shortcut from its *input*, so the block is finished with
    :meth:`~ghost_vision.models.layers.GhostBottleneck.forward_from_expansion` instead.

    Example:
        >>> import torch
        >>> extractor = ssdlite320_ghostnet(width=0.5).backbone.eval()
        >>> isinstance(extractor, SSDLiteFeatureExtractorGhostNet)
        True
        >>> [tuple(f.shape[-2:]) for f in extractor(torch.rand(1, 3, 320, 320)).values()]
        [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    """

    def __init__(self, body: GhostNetFeatures, norm_layer: Any) -> None:
        super().__init__()
        if len(body.blocks) != 10 or len(body.blocks[_TAP_STAGE]) != 1:
            raise ValueError("the SSDLite extractor needs a full GhostNetFeatures (out_indices containing 4)")
        self.body = body
        last = body.stage_channels[-1]
        self.extra = nn.ModuleList(
            [
                _extra_block(last, 512, norm_layer),
                _extra_block(512, 256, norm_layer),
                _extra_block(256, 256, norm_layer),
                _extra_block(256, 128, norm_layer),
            ]
        )
        _normal_init(self.extra)

    @torch.jit.unused
    def expansion_taps(self) -> list[nn.Module]:
        """The bottlenecks whose expansion (``ghost1`` output) this extractor reads as a feature map: export
        rewrites must keep those channels as they are (:func:`ghost_vision.deploy.onnx_graph.optimize_for_onnx`)."""
        return list(self.body.blocks[_TAP_STAGE])

    def forward(self, x: Tensor) -> Dict[str, Tensor]:  # noqa: UP006 - an OrderedDict; typed for TorchScript
        x = self.body.forward_stem(x)
        output: List[Tensor] = []  # noqa: UP006
        for idx, stage in enumerate(self.body.blocks):
            if idx != 7:  # _TAP_STAGE (TorchScript cannot read module-level ints)
                x = stage(x)
            else:
                for tap in stage:  # a single bottleneck: tap its expansion, then finish it
                    if hasattr(tap, "forward_from_expansion"):  # static in TorchScript: skips ConvBnAct
                        mid = tap.ghost1(x)
                        output.append(mid)
                        x = tap.forward_from_expansion(x, mid)
        output.append(x)
        for block in self.extra:
            x = block(x)
            output.append(x)
        out: Dict[str, Tensor] = OrderedDict()  # noqa: UP006
        for i, v in enumerate(output):
            out[str(i)] = v
        return out


def ssdlite320_ghostnet(
    *,
    num_classes: int = 91,
    width: float = 1.0,
    weights_backbone: Weights = None,
    trainable_backbone_layers: int | None = None,
    backbone: str | None = None,
    reduced_tail: bool = False,
    **kwargs: Any,
) -> SSD:
    """SSDLite 320 on a GhostNet backbone: torchvision's ``SSD`` with ``SSDLiteHead`` and
    ``DefaultBoxGenerator``, built like ``ssdlite320_mobilenet_v3_large``.

    Feature map 1 is the ``ghost1`` expansion inside ``blocks.7`` (stride 16, the analogue of MobileNetV3's
    672-channel tap), map 2 the end of the network (stride 32), then four extra depthwise blocks: six maps
    (20, 10, 5, 3, 2, 1 at 320 px), 6 default boxes per location (aspect ratios 2 and 3, scales 0.2-0.95).

    Args:
        num_classes: classes including the background.
        width: GhostNet v1 width, 0.5, 1.0 or 1.3.
        weights_backbone: GhostNet weights for the backbone: a registered name (``"ghostnet_100.in1k"``),
            a checkpoint path or a state dict
            (see :func:`~ghost_vision.models.load_weights`). When given, the backbone's BatchNorms become
            ``FrozenBatchNorm2d``; otherwise, as in torchvision, they use eps 0.001 / momentum 0.03 and the
            convolutions get SSDLite's normal(0, 0.03) initialisation.
        trainable_backbone_layers: trainable units counted from the top, 0..6 (stem + 5 levels); default 6
            (all, as torchvision's SSDLite). Ignored (with a warning) without ``weights_backbone``.
        backbone: a variant name instead of ``width``, e.g. ``"ghostnetv2_100"``.
        reduced_tail: halve the stride-32 stages (480 channels at the stride-32 map instead of 960), as
            torchvision's SSDLite does when trained from scratch; needs ``weights_backbone=None``. It moves
            MACs from the stride-32 tail to the wider stride-16 part at a given cost (e.g. ``width=1.3``).
        **kwargs: passed to ``torchvision.models.detection.SSD`` (defaults: ``score_thresh=0.001``,
            ``nms_thresh=0.55``, ``detections_per_img=300``, ``topk_candidates=300``,
            ``image_mean=image_std=[0.5] * 3``).

    Example:
        >>> import torch
        >>> from ghost_vision.models.detection import ssdlite320_ghostnet
        >>> model = ssdlite320_ghostnet(num_classes=3).eval()
        >>> predictions = model([torch.rand(3, 320, 320), torch.rand(3, 500, 400)])
        >>> sorted(predictions[0])
        ['boxes', 'labels', 'scores']
    """
    name = resolve_variant(width, backbone)
    if reduced_tail and weights_backbone is not None:
        raise ValueError(
            "reduced_tail=True halves the backbone's stride-32 stages, which published weights do not fit: train it "
            "from scratch (weights_backbone=None), as torchvision's SSDLite does with its reduced tail"
        )
    if "size" in kwargs:
        warnings.warn("The size of the model is already fixed; ignoring the parameter.", stacklevel=2)
        kwargs.pop("size")
    trainable = validate_trainable_layers(
        weights_backbone is not None, trainable_backbone_layers, NUM_BACKBONE_UNITS, NUM_BACKBONE_UNITS
    )
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    body = build_body(
        name, weights=weights_backbone, out_indices=(4,), trainable_layers=trainable, norm_layer=None,
        reduced_tail=reduced_tail,
    )
    if weights_backbone is None:
        _normal_init(body)
        for m in body.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eps, m.momentum = 0.001, 0.03
    extractor = SSDLiteFeatureExtractorGhostNet(body, norm_layer)

    size = (320, 320)
    anchor_generator = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    out_channels = det_utils.retrieve_out_channels(extractor, size)
    num_anchors = anchor_generator.num_anchors_per_location()
    defaults = {
        "score_thresh": 0.001,
        "nms_thresh": 0.55,
        "detections_per_img": 300,
        "topk_candidates": 300,
        # rescale [0, 1] to [-1, 1]
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    return SSD(
        extractor,
        anchor_generator,
        size,
        num_classes,
        head=SSDLiteHead(out_channels, num_anchors, num_classes, norm_layer),
        **{**defaults, **kwargs},
    )
