"""GhostNet v1 / v2 / v3 classifiers and multi-scale feature backbones.

The architecture table, channel rounding and module names are those of the official code and of timm,
so ``load_state_dict(timm_model.state_dict(), strict=True)`` works for every variant. GhostNetV3 is built
in its re-parameterisable training form (:mod:`ghost_vision.models.layers_v3`); ``model.reparameterize()``
fuses it into the inference form.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Dict  # noqa: UP035 - TorchScript resolves typing.Dict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvBnAct, GhostBottleneck, make_divisible
from .layers_v3 import GhostBottleneckV3, reparameterize

__all__ = ["GhostNet", "GhostNetFeatures", "GHOSTNET_CFG", "LEVEL_STAGES", "LEVEL_STRIDES", "stage_cfgs"]

# [kernel, expansion, out, SE ratio, stride] per bottleneck; one inner list per stage blocks.0..blocks.8.
GHOSTNET_CFG: list[list[list[float]]] = [
    [[3, 16, 16, 0, 1]],
    [[3, 48, 24, 0, 2]],
    [[3, 72, 24, 0, 1]],
    [[5, 72, 40, 0.25, 2]],
    [[5, 120, 40, 0.25, 1]],
    [[3, 240, 80, 0, 2]],
    [[3, 200, 80, 0, 1], [3, 184, 80, 0, 1], [3, 184, 80, 0, 1], [3, 480, 112, 0.25, 1], [3, 672, 112, 0.25, 1]],
    [[5, 672, 160, 0.25, 2]],
    [[5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1], [5, 960, 160, 0, 1], [5, 960, 160, 0.25, 1]],
]
# Feature levels: the *last* stage at each resolution (strides 2, 4, 8, 16, 32).
LEVEL_STAGES: tuple[int, ...] = (0, 2, 4, 6, 9)
LEVEL_STRIDES: tuple[int, ...] = (2, 4, 8, 16, 32)
NUM_STAGES = len(GHOSTNET_CFG) + 1  # + the final 1x1 ConvBnAct (blocks.9)
# the stride-32 stages of GHOSTNET_CFG (blocks.7, blocks.8; blocks.9 follows the last one), halved by ``reduced_tail``
_TAIL_STAGES = range(LEVEL_STAGES[-2] + 1, len(GHOSTNET_CFG))


def stage_cfgs(*, reduced_tail: bool = False) -> list[list[list[float]]]:
    """:data:`GHOSTNET_CFG`, or with ``reduced_tail`` its stride-32 tail at half the channels as torchvision's
    ``mobilenet_v3_large(reduced_tail=True)`` (the stride-2 bottleneck keeps its 672 expansion and outputs 80,
    the later ones expand to 480; the final 1x1 stage has 480): the from-scratch SSDLite form."""
    if not reduced_tail:
        return GHOSTNET_CFG
    return [
        [[k, exp if i == 0 and s == 2 else exp // 2, c // 2, se, s] for i, (k, exp, c, se, s) in enumerate(cfg)]
        if idx in _TAIL_STAGES else cfg
        for idx, cfg in enumerate(GHOSTNET_CFG)
    ]


def _check_common(version: int, width: float) -> None:
    if version not in (1, 2, 3):
        raise ValueError(f"GhostNet version must be 1, 2 or 3, got {version!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0 (e.g. 0.5, 1.0, 1.3), got {width!r}")


class _GhostTrunk(nn.Module):
    """Stem + ``blocks`` (shared by the classifier and the feature backbone, same key names)."""

    def _build_trunk(
        self, *, version: int, width: float, in_chans: int, num_stages: int, dilations: Sequence[int],
        reduced_tail: bool = False,
    ) -> None:
        cfgs = stage_cfgs(reduced_tail=reduced_tail)
        stem_chs = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_chans, stem_chs, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.act1 = nn.ReLU(inplace=True)
        prev, layer_idx, stage_out = stem_chs, 0, []
        stages: list[nn.Module] = []
        for stage_idx, cfg in enumerate(cfgs[: min(num_stages, len(cfgs))]):
            layers = []
            for k, exp, c, se, s in cfg:
                out_chs, mid_chs = make_divisible(c * width, 4), make_divisible(exp * width, 4)
                in_dil, dil = dilations[stage_idx], dilations[stage_idx + 1]
                stride = int(s) if in_dil == dil else 1
                if version == 3:  # timm: DFC attention ("shortcut" mode) from the third bottleneck on
                    block: nn.Module = GhostBottleneckV3(
                        prev, mid_chs, out_chs, int(k), stride, se,
                        mode="shortcut" if layer_idx > 1 else "original", dilation=dil, in_dilation=in_dil,
                    )
                else:
                    block = GhostBottleneck(
                        prev, mid_chs, out_chs, int(k), stride, se,
                        attn=version == 2 and layer_idx > 1, dilation=dil, in_dilation=in_dil,
                    )
                layers.append(block)
                in_dil = dil
                prev, layer_idx = out_chs, layer_idx + 1
            stages.append(nn.Sequential(*layers))
            stage_out.append(prev)
        if num_stages == NUM_STAGES:
            last = make_divisible(cfgs[-1][-1][1] * width, 4)
            stages.append(nn.Sequential(ConvBnAct(prev, last)))
            stage_out.append(last)
        self.blocks = nn.Sequential(*stages)
        self.stage_channels = stage_out

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.act1(self.bn1(self.conv_stem(x)))

    @torch.jit.unused
    def reparameterize(self) -> _GhostTrunk:
        """Fuse GhostNetV3's training branches into the inference form in place (no-op for v1/v2); returns
        ``self``. See :func:`ghost_vision.models.reparameterize`."""
        return reparameterize(self)


class GhostNet(_GhostTrunk):
    """GhostNet image classifier (v1, v2 with DFC attention, or v3 in its re-parameterisable training
    form), key-compatible with timm/official.

    Args:
        version: 1 (GhostNet), 2 (GhostNetV2) or 3 (GhostNetV3; call :meth:`reparameterize` to deploy).
        width: channel multiplier (0.5, 1.0, 1.3 for v1; 1.0, 1.3, 1.6 for v2; 0.5-1.6 for v3).
        num_classes: classifier outputs (1000 for ImageNet).
        drop_rate: dropout before the classifier.
        in_chans: input channels.

    Example:
        >>> import torch
        >>> net = GhostNet(version=2, width=1.0, num_classes=10).eval()
        >>> net(torch.rand(1, 3, 224, 224)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self, *, version: int = 1, width: float = 1.0, num_classes: int = 1000, drop_rate: float = 0.2,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        _check_common(version, width)
        self.version, self.width, self.num_classes, self.drop_rate = version, width, num_classes, drop_rate
        self._build_trunk(
            version=version, width=width, in_chans=in_chans, num_stages=NUM_STAGES, dilations=[1] * 11
        )
        self.num_features = self.stage_channels[-1]
        self.conv_head = nn.Conv2d(self.num_features, 1280, 1, bias=True)
        self.act2 = nn.ReLU(inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(1280, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: Tensor) -> Tensor:
        return self.blocks(self.forward_stem(x))

    def forward_head(self, x: Tensor) -> Tensor:
        x = self.flatten(self.act2(self.conv_head(x.mean((2, 3), keepdim=True))))
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return self.classifier(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class GhostNetFeatures(_GhostTrunk):
    """GhostNet as a multi-scale backbone for dense heads.

    ``forward(x)`` returns an ``OrderedDict`` keyed ``"0"``, ``"1"``, ... with the maps of the levels
    in ``out_indices``; level ``i`` (0..4) is the output of the last stage at stride ``2 ** (i + 1)``
    (at 1.0x: 16, 24, 40, 112 and 960 channels) and has spatial size ``ceil(H / stride)``. Stages after
    the deepest requested level are not built.

    Args:
        version: 1, 2 or 3, as for :class:`GhostNet`.
        width: width multiplier, as for :class:`GhostNet`.
        in_chans: input channels.
        out_indices: feature levels to return, each in 0..4.
        output_stride: 32, 16 or 8; below 32 the later strides become dilation (same weights).
        frozen_stages: -1 freezes nothing; 0 the stem; ``k >= 1`` the stem and ``blocks.0 .. blocks.k-1``
            (no gradients, their BatchNorms stay in eval mode).
        norm_eval: keep every BatchNorm in eval mode, also in ``train()``.
        reduced_tail: halve the channels of the stride-32 stages (see :func:`stage_cfgs`; 480 instead of
            960 at the end), as torchvision's SSDLite does from scratch; published weights do not fit it.

    Example:
        >>> import torch
        >>> backbone = GhostNetFeatures(width=0.5, out_indices=(2, 3), output_stride=16)
        >>> backbone.strides, [tuple(f.shape) for f in backbone(torch.rand(1, 3, 128, 128)).values()]
        ([8, 16], [(1, 20, 16, 16), (1, 56, 8, 8)])
    """

    def __init__(
        self, *, version: int = 1, width: float = 1.0, out_indices: Sequence[int] = (1, 2, 3, 4),
        output_stride: int = 32, frozen_stages: int = -1, norm_eval: bool = False, in_chans: int = 3,
        reduced_tail: bool = False,
    ) -> None:
        super().__init__()
        _check_common(version, width)
        out_indices = tuple(int(i) for i in out_indices)
        if not out_indices or any(i not in range(5) for i in out_indices) or len(set(out_indices)) != len(out_indices):
            raise ValueError(
                f"out_indices must be distinct levels from 0..4 (strides 2, 4, 8, 16, 32), got {out_indices}"
            )
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be one of 8, 16, 32, got {output_stride!r}")
        num_stages = LEVEL_STAGES[max(out_indices)] + 1
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in -1..{num_stages} for this backbone, got {frozen_stages}")
        # dilations[s] is the dilation at the input of stage s (index 0 = stem output, stride 2).
        dilations, stride, dil = [1], 2, 1
        for cfg in GHOSTNET_CFG:
            for *_, s in cfg:
                if s > 1 and stride >= output_stride:
                    dil *= int(s)
                elif s > 1:
                    stride *= int(s)
            dilations.append(dil)
        dilations.append(dil)
        self._build_trunk(
            version=version, width=width, in_chans=in_chans, num_stages=num_stages, dilations=dilations,
            reduced_tail=reduced_tail,
        )
        self.version, self.width, self.reduced_tail = version, width, reduced_tail
        self.out_indices = out_indices
        self.output_stride = output_stride
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        self._return = {LEVEL_STAGES[i]: str(n) for n, i in enumerate(sorted(out_indices))}
        self.out_channels = [self.stage_channels[LEVEL_STAGES[i]] for i in sorted(out_indices)]
        self.strides = [min(LEVEL_STRIDES[i], output_stride) for i in sorted(out_indices)]
        self._freeze()

    def frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv_stem, self.bn1, *list(self.blocks)[: self.frozen_stages]]

    def _freeze(self) -> None:
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> GhostNetFeatures:
        super().train(mode)
        if mode:
            frozen = self.modules() if self.norm_eval else (x for m in self.frozen_modules() for x in m.modules())
            for m in frozen:
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: Tensor) -> Dict[str, Tensor]:  # noqa: UP006 - an OrderedDict; typed for TorchScript
        x = self.forward_stem(x)
        out: Dict[str, Tensor] = OrderedDict()  # noqa: UP006
        for idx, stage in enumerate(self.blocks):
            x = stage(x)
            if idx in self._return:
                out[self._return[idx]] = x
        return out
