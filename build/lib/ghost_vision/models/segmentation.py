"""Semantic segmentation on a dilated GhostNet: DeepLab-lite and LR-ASPP, torchvision-style builders.

torchvision's ``ASPP``/``DeepLabHead`` use full 3x3 atrous convolutions with 256 channels, which cost more
than the whole GhostNet backbone. Only what has to differ for the "lite" design is written here (separable
atrous branches, configurable width, the DeepLabV3+ decoder that torchvision lacks, ImageNet normalisation
inside the model); the image-pooling branch (``ASPPPooling``), the auxiliary ``FCNHead`` and the
``LRASPPHead`` are torchvision's own modules.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPPPooling
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPPHead

from .factory import Weights, create_ghostnet, resolve_variant
from .ghostnet import GhostNetFeatures

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeepLabLiteHead",
    "DeepLabPlusDecoder",
    "GhostDeepLabV3",
    "GhostLRASPP",
    "LiteASPP",
    "SeparableConvBnReLU",
    "deeplabv3_ghostnet",
    "lraspp_ghostnet",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BACKBONE_KWARGS = ("frozen_stages", "norm_eval")
# Feature levels of GhostNetFeatures (0..4 = strides 2, 4, 8, 16, 32 before dilation).
_STRIDE4, _STRIDE8, _STRIDE16, _DEEPEST = 1, 2, 3, 4


def _conv_bn_relu(in_ch: int, out_ch: int) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class SeparableConvBnReLU(nn.Sequential):
    """3x3 depthwise (atrous) conv + BN + ReLU, then 1x1 conv + BN + ReLU (the DeepLabV3+ separable conv).

    Written here because torchvision's ``ASPPConv`` is a dense 3x3 conv (9x the MACs of the 1x1 part).
    """

    def __init__(self, in_ch: int, out_ch: int, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, in_ch, 3, padding=dilation, dilation=dilation, groups=in_ch, bias=False),
            nn.BatchNorm2d(in_ch),
            nn.ReLU(inplace=True),
            *_conv_bn_relu(in_ch, out_ch),
        )


class LiteASPP(nn.Module):
    """ASPP with depthwise-separable atrous branches.

    Branches: a 1x1 conv, one :class:`SeparableConvBnReLU` per atrous rate and torchvision's image-pooling
    branch; their concatenation is projected by a 1x1 conv + BN + ReLU and dropout (as torchvision's
    ``ASPP.project``).
    """

    def __init__(
        self, in_ch: int, atrous_rates: Sequence[int], out_ch: int = 128, dropout: float = 0.1
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [nn.Sequential(*_conv_bn_relu(in_ch, out_ch))]
        branches += [SeparableConvBnReLU(in_ch, out_ch, int(r)) for r in atrous_rates]
        branches.append(ASPPPooling(in_ch, out_ch))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*_conv_bn_relu(len(branches) * out_ch, out_ch), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabLiteHead(nn.Sequential):
    """ASPP -> separable 3x3 conv -> 1x1 classifier: torchvision's ``DeepLabHead`` made separable."""

    def __init__(
        self, in_ch: int, num_classes: int, atrous_rates: Sequence[int], channels: int = 128,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(
            LiteASPP(in_ch, atrous_rates, channels, dropout),
            SeparableConvBnReLU(channels, channels),
            nn.Conv2d(channels, num_classes, 1),
        )


class DeepLabPlusDecoder(nn.Module):
    """DeepLabV3+ decoder (Chen et al., 2018) on top of :class:`LiteASPP`.

    The stride-4 feature is reduced to ``low_reduce`` channels (1x1 conv + BN + ReLU), concatenated with the
    bilinearly upsampled ASPP output and refined by two separable 3x3 convs before the 1x1 classifier.
    ``forward(high, low)`` returns logits at the resolution of ``low``.
    """

    def __init__(
        self, high_ch: int, low_ch: int, num_classes: int, atrous_rates: Sequence[int], channels: int = 128,
        low_reduce: int = 48, dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.aspp = LiteASPP(high_ch, atrous_rates, channels, dropout)
        self.low_proj = nn.Sequential(*_conv_bn_relu(low_ch, low_reduce))
        self.fuse = nn.Sequential(
            SeparableConvBnReLU(channels + low_reduce, channels),
            SeparableConvBnReLU(channels, channels),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        x = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, self.low_proj(low)], dim=1))
        return self.classifier(x)


class _GhostSegmentationModel(nn.Module):
    """Backbone + ImageNet normalisation + upsampling of the logits to the input size."""

    def __init__(self, backbone: GhostNetFeatures, needed_levels: Sequence[int], normalize: bool) -> None:
        super().__init__()
        levels = sorted(backbone.out_indices)
        missing = sorted(set(needed_levels) - set(levels))
        if missing:
            raise ValueError(f"{type(self).__name__} needs backbone levels {sorted(set(needed_levels))}; "
                             f"out_indices {tuple(backbone.out_indices)} lack {missing}")
        self.backbone = backbone
        self.normalize = bool(normalize)
        self._keys = {level: str(i) for i, level in enumerate(levels)}
        self._channels = dict(zip(levels, backbone.out_channels, strict=True))
        # Not persistent: state dicts are the same with and without normalisation.
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _features(self, x: Tensor) -> dict[int, Tensor]:
        if self.normalize:
            x = (x - self.mean) / self.std
        feats = self.backbone(x)
        return {level: feats[key] for level, key in self._keys.items()}

    @staticmethod
    def _resize(logits: Tensor, size: Sequence[int]) -> Tensor:
        # NCHW in and out: few-channel bilinear upsampling is faster in NCHW than channels-last (which
        # the fast path's convolutions return), and callers get a plain contiguous map
        return F.interpolate(logits.contiguous(), size=size, mode="bilinear", align_corners=False)


class GhostDeepLabV3(_GhostSegmentationModel):
    """DeepLab-lite: GhostNet (output stride 16 or 8) + separable ASPP (+ DeepLabV3+ decoder).

    Input: float RGB in [0, 1], ``N x 3 x H x W`` (any ``H``, ``W``); with ``normalize=True`` the model
    applies the ImageNet mean/std itself (torchvision's segmentation models expect normalised input).
    Output: ``OrderedDict`` with ``"out"`` (``N x num_classes x H x W`` logits) and, with ``aux_loss``,
    ``"aux"`` (an FCN head on the stride-16 feature, also at ``H x W``).

    Args:
        backbone: a :class:`GhostNetFeatures` returning level 4 (ASPP input), level 1 with ``decoder`` and
            level 3 with ``aux_loss``.
        num_classes: output classes.
        decoder: fuse the stride-4 feature (DeepLabV3+); otherwise logits come from the ASPP stride.
        aux_loss: add the auxiliary FCN head.
        atrous_rates: ASPP rates; default ``(6, 12, 18)`` at output stride 16, doubled at 8.
        aspp_channels: width of the ASPP branches and the decoder (128 keeps 1/3 of torchvision's MACs).
        dropout: dropout after the ASPP projection.
        normalize: apply ImageNet mean/std to the input.

    As in torchvision, the image-pooling branch normalises a 1x1 map, so training needs batches of >= 2.

    Example:
        >>> import torch
        >>> model = deeplabv3_ghostnet(num_classes=4, width=0.5).eval()  # the builder makes this class
        >>> isinstance(model, GhostDeepLabV3), model(torch.rand(1, 3, 64, 96))["out"].shape
        (True, torch.Size([1, 4, 64, 96]))
    """

    def __init__(
        self, backbone: GhostNetFeatures, num_classes: int, *, decoder: bool = True, aux_loss: bool = False,
        atrous_rates: Sequence[int] | None = None, aspp_channels: int = 128, dropout: float = 0.1,
        normalize: bool = True,
    ) -> None:
        needed = [_DEEPEST] + [_STRIDE4] * decoder + [_STRIDE16] * aux_loss
        super().__init__(backbone, needed, normalize)
        if atrous_rates is None:
            atrous_rates = tuple(r * 16 // backbone.output_stride for r in (6, 12, 18))
        if aspp_channels < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(f"aspp_channels must be >= 1 and dropout in [0, 1), got {aspp_channels}, {dropout}")
        channels = self._channels
        self.atrous_rates = tuple(int(r) for r in atrous_rates)
        self.classifier: nn.Module
        if decoder:
            self.classifier = DeepLabPlusDecoder(
                channels[_DEEPEST], channels[_STRIDE4], num_classes, self.atrous_rates, aspp_channels,
                dropout=dropout,
            )
        else:
            self.classifier = DeepLabLiteHead(
                channels[_DEEPEST], num_classes, self.atrous_rates, aspp_channels, dropout
            )
        self.aux_classifier = FCNHead(channels[_STRIDE16], num_classes) if aux_loss else None
        self.decoder = bool(decoder)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        size = x.shape[-2:]
        feats = self._features(x)
        if self.decoder:
            logits = self.classifier(feats[_DEEPEST], feats[_STRIDE4])
        else:
            logits = self.classifier(feats[_DEEPEST])
        result: OrderedDict[str, Tensor] = OrderedDict(out=self._resize(logits, size))
        if self.aux_classifier is not None:
            result["aux"] = self._resize(self.aux_classifier(feats[_STRIDE16]), size)
        return result


class GhostLRASPP(_GhostSegmentationModel):
    """LR-ASPP (Howard et al., 2019) on GhostNet: torchvision's ``LRASPPHead`` with low = the stride-8
    feature (level 2) and high = the deepest feature dilated to stride 16 (level 4).

    Input and output as for :class:`GhostDeepLabV3` (``"out"`` only; no auxiliary head).

    Example:
        >>> import torch
        >>> model = lraspp_ghostnet(num_classes=4, width=0.5).eval()  # the builder makes this class
        >>> isinstance(model, GhostLRASPP), model(torch.rand(1, 3, 64, 96))["out"].shape
        (True, torch.Size([1, 4, 64, 96]))
    """

    def __init__(
        self, backbone: GhostNetFeatures, num_classes: int, *, inter_channels: int = 128, normalize: bool = True
    ) -> None:
        super().__init__(backbone, [_STRIDE8, _DEEPEST], normalize)
        channels = self._channels
        self.classifier = LRASPPHead(channels[_STRIDE8], channels[_DEEPEST], num_classes, inter_channels)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self._features(x)
        logits = self.classifier({"low": feats[_STRIDE8], "high": feats[_DEEPEST]})
        return OrderedDict(out=self._resize(logits, x.shape[-2:]))


def _check_num_classes(num_classes: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")


def _make_backbone(
    width: float, kwargs: dict[str, Any], weights: Weights, out_indices: Sequence[int], output_stride: int
) -> GhostNetFeatures:
    name = resolve_variant(width, kwargs.pop("backbone", None))
    extra = {k: kwargs.pop(k) for k in _BACKBONE_KWARGS if k in kwargs}
    return create_ghostnet(name, weights=weights, features_only=True, out_indices=tuple(sorted(out_indices)),
                           output_stride=output_stride, **extra)


def deeplabv3_ghostnet(
    *, num_classes: int = 21, width: float = 1.0, output_stride: int = 16, aux_loss: bool = False,
    decoder: bool = True, weights_backbone: Weights = None, **kwargs: Any,
) -> GhostDeepLabV3:
    """DeepLab-lite on a dilated GhostNet (see :class:`GhostDeepLabV3`).

    A separable-ASPP DeepLabV3 (DeepLabV3+ with ``decoder=True``). At 512x1024 with 19 classes it needs
    5.50 G MACs and 3.45 M parameters, 0.28x the MACs of torchvision's ``deeplabv3_mobilenet_v3_large``
    (19.65 G, 11.0 M); docs/segmentation.md has the table.

    Unlike torchvision's segmentation models it takes **[0, 1] RGB** and normalises with the ImageNet
    mean/std itself; pass ``normalize=False`` to feed already normalised tensors.

    Args:
        num_classes: output classes (>= 1).
        width: GhostNet v1 width, 0.5, 1.0 or 1.3.
        output_stride: 16 or 8 (the backbone's later strides become dilation).
        aux_loss: also return ``"aux"`` logits from an FCN head on the stride-16 feature.
        decoder: DeepLabV3+ decoder on the stride-4 feature (``False``: plain DeepLabV3 head).
        weights_backbone: GhostNet weights: a registered name (``"ghostnet_100.in1k"``, see
            :func:`~ghost_vision.models.list_weights`), a path or a state dict, see :func:`create_ghostnet`.
        **kwargs: ``backbone`` (a variant name such as ``"ghostnetv2_100"``, overriding ``width``),
            ``frozen_stages``, ``norm_eval`` (backbone options), and ``atrous_rates``, ``aspp_channels``
            (default 128), ``dropout``, ``normalize`` for :class:`GhostDeepLabV3`.

    Raises:
        ValueError: for an unknown width/backbone, ``output_stride`` not 8/16, or ``num_classes < 1``.

    Example:
        >>> import torch
        >>> from ghost_vision.models.segmentation import deeplabv3_ghostnet
        >>> model = deeplabv3_ghostnet(num_classes=19, aux_loss=True).eval()
        >>> with torch.no_grad():
        ...     result = model(torch.rand(1, 3, 129, 257))  # [0, 1] RGB, any size
        >>> tuple(result["out"].shape), tuple(result["aux"].shape)
        ((1, 19, 129, 257), (1, 19, 129, 257))
    """
    _check_num_classes(num_classes)
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride!r}")
    levels = [_DEEPEST] + [_STRIDE4] * bool(decoder) + [_STRIDE16] * bool(aux_loss)
    backbone = _make_backbone(width, kwargs, weights_backbone, levels, output_stride)
    return GhostDeepLabV3(backbone, num_classes, decoder=decoder, aux_loss=aux_loss, **kwargs)


def lraspp_ghostnet(
    *, num_classes: int = 21, width: float = 1.0, weights_backbone: Weights = None, **kwargs: Any
) -> GhostLRASPP:
    """Lite R-ASPP (torchvision's ``LRASPPHead``) on GhostNet dilated to output stride 16.

    Low-level branch: the stride-8 feature; high-level branch: the last 1x1 stage (960 channels at 1.0x)
    at stride 16. Like :func:`deeplabv3_ghostnet` it takes **[0, 1] RGB** and normalises internally
    (``normalize=False`` to opt out); torchvision's ``lraspp_mobilenet_v3_large`` expects normalised input.

    Args:
        num_classes: output classes (>= 1).
        width: GhostNet v1 width, 0.5, 1.0 or 1.3.
        weights_backbone: GhostNet weights (a registered name such as ``"ghostnet_100.in1k"``, a path or a
            state dict).
        **kwargs: ``backbone``, ``frozen_stages``, ``norm_eval`` (as for :func:`deeplabv3_ghostnet`),
            ``inter_channels`` (default 128) and ``normalize`` for :class:`GhostLRASPP`.

    Raises:
        ValueError: for an unknown width/backbone or ``num_classes < 1``.

    Example:
        >>> import torch
        >>> from ghost_vision.models.segmentation import lraspp_ghostnet
        >>> model = lraspp_ghostnet(num_classes=19).eval()
        >>> with torch.no_grad():
        ...     out = model(torch.rand(1, 3, 129, 257))["out"]
        >>> tuple(out.shape)
        (1, 19, 129, 257)
    """
    _check_num_classes(num_classes)
    backbone = _make_backbone(width, kwargs, weights_backbone, (_STRIDE8, _DEEPEST), 16)
    return GhostLRASPP(backbone, num_classes, **kwargs)
