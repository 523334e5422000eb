"""GhostNet building blocks, written to the paper and the official code.

Module and attribute names follow the official checkpoints (``huawei-noah/Efficient-AI-Backbones``) and
timm's ``ghostnet.py`` exactly, so their state dicts load with ``strict=True``. timm is not a runtime
dependency (and its blocks cannot dilate), which is why the blocks are written here.

Every spatial convolution takes a ``dilation`` so that a backbone can trade strides for dilation
(DeepLab-style ``output_stride``) while keeping the very same weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "make_divisible",
    "hard_sigmoid",
    "dfc_pool",
    "dfc_gate",
    "SqueezeExcite",
    "ConvBnAct",
    "GhostModule",
    "GhostModuleV2",
    "GhostBottleneck",
]


def make_divisible(v: float, divisor: int = 4, min_value: int | None = None) -> int:
    """Round ``v`` to a multiple of ``divisor`` without going more than 10 % below it."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def hard_sigmoid(x: Tensor) -> Tensor:
    """The gate of the official code: ``relu6(x + 3) / 6``."""
    return F.relu6(x + 3.0) / 6.0


def _dw_conv(channels: int, kernel: int | tuple[int, int], stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    return nn.Conv2d(
        channels,
        channels,
        (kh, kw),
        stride=stride,
        padding=(dilation * (kh - 1) // 2, dilation * (kw - 1) // 2),
        dilation=dilation,
        groups=channels,
        bias=False,
    )


def dfc_pool(x: Tensor, pool: int) -> Tensor:
    """The input of GhostNetV2's DFC attention branch: ``x`` averaged over ``pool x pool`` windows. Maps
    smaller than the window (tiny inputs) pool what they have instead of failing."""
    window = (min(pool, x.shape[-2]), min(pool, x.shape[-1]))
    return F.avg_pool2d(x, kernel_size=window, stride=window)


def dfc_gate(res: Tensor, size: list[int]) -> Tensor:
    """The DFC attention map: the branch's output ``res`` through a sigmoid, upsampled (nearest) to ``size``."""
    return F.interpolate(torch.sigmoid(res), size=size, mode="nearest")


class SqueezeExcite(nn.Module):
    """Squeeze-excite with the hard-sigmoid gate; reduced width ``make_divisible(c * ratio, 4)``."""

    def __init__(self, channels: int, se_ratio: float = 0.25) -> None:
        super().__init__()
        reduced = make_divisible(channels * se_ratio, 4)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act1(self.conv_reduce(s)))
        return x * hard_sigmoid(s)


class ConvBnAct(nn.Module):
    """1x1 conv -> BN -> ReLU (keys ``conv``, ``bn1``), the last stage ``blocks.9``."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act1(self.bn1(self.conv(x)))


class GhostModule(nn.Module):
    """Ghost module (ratio s=2, cheap kernel d=3).

    ``ceil(out / 2)`` intrinsic maps come from a 1x1 conv + BN (+ ReLU); as many "ghost" maps come from a
    3x3 depthwise conv + BN (+ ReLU) on them. The output is both, concatenated and cut to ``out_chs``.
    """

    def __init__(self, in_chs: int, out_chs: int, *, use_act: bool = True, dilation: int = 1) -> None:
        super().__init__()
        self.out_chs = out_chs
        init_chs = math.ceil(out_chs / 2)
        self.needs_slice = 2 * init_chs != out_chs  # only for odd widths
        self.primary_conv = nn.Sequential(
            nn.Conv2d(in_chs, init_chs, 1, bias=False),
            nn.BatchNorm2d(init_chs),
            nn.ReLU(inplace=True) if use_act else nn.Identity(),
        )
        self.cheap_operation = nn.Sequential(
            _dw_conv(init_chs, 3, dilation=dilation),
            nn.BatchNorm2d(init_chs),
            nn.ReLU(inplace=True) if use_act else nn.Identity(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.ghost(x)

    def ghost(self, x: Tensor) -> Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, : self.out_chs] if self.needs_slice else out


class GhostModuleV2(GhostModule):
    """Ghost module with GhostNetV2's decoupled fully-connected (DFC) attention (``short_conv``).

    The attention branch runs on a 2x2-average-pooled input: 1x1 conv + BN, (1,5) and (5,1) depthwise
    convs + BN; its sigmoid is upsampled (nearest, height and width separately) and gates the output.
    Under dilation ``d`` the pooling window becomes ``2d`` so the branch sees the same context as in
    the undilated network.
    """

    def __init__(self, in_chs: int, out_chs: int, *, use_act: bool = True, dilation: int = 1) -> None:
        super().__init__(in_chs, out_chs, use_act=use_act, dilation=dilation)
        self.pool = 2 * dilation
        self.short_conv = self.dfc_branch(in_chs, out_chs)

    @staticmethod
    def dfc_branch(in_chs: int, out_chs: int) -> nn.Sequential:
        """The DFC attention branch ``short_conv``: 1x1 conv + BN, (1,5) and (5,1) depthwise convs + BN."""
        return nn.Sequential(
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
            _dw_conv(out_chs, (1, 5)),
            nn.BatchNorm2d(out_chs),
            _dw_conv(out_chs, (5, 1)),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: Tensor) -> Tensor:
        res = self.short_conv(dfc_pool(x, self.pool))
        out = self.ghost(x)
        return out * dfc_gate(res, [out.shape[-2], out.shape[-1]])


class GhostBottleneck(nn.Module):
    """Ghost bottleneck: ghost1 (expand, ReLU) -> [k x k depthwise stride 2 + BN] -> [SE] -> ghost2
    (project, linear) + shortcut.

    ``dilation`` applies to the convolutions that run at the block's output resolution;
    ``in_dilation`` to those at its input resolution (differs only when a stride is turned into
    dilation, as in torchvision's ResNet ``replace_stride_with_dilation``).
    """

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        *,
        attn: bool = False,
        dilation: int = 1,
        in_dilation: int | None = None,
    ) -> None:
        super().__init__()
        in_dilation = dilation if in_dilation is None else in_dilation
        self.stride = stride
        module = GhostModuleV2 if attn else GhostModule
        self.ghost1 = module(in_chs, mid_chs, use_act=True, dilation=in_dilation)
        # A stride-2 block keeps its depthwise conv (and key names) when its stride became dilation.
        self.has_dw = stride > 1 or in_dilation != dilation
        if self.has_dw:
            self.conv_dw = _dw_conv(mid_chs, dw_kernel_size, stride=stride, dilation=in_dilation)
            self.bn_dw = nn.BatchNorm2d(mid_chs)
        else:
            self.conv_dw = None
            self.bn_dw = None
        self.se = SqueezeExcite(mid_chs, se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = GhostModule(mid_chs, out_chs, use_act=False, dilation=dilation)
        self.shortcut = self.make_shortcut(in_chs, out_chs, dw_kernel_size, stride, in_dilation, self.has_dw)

    @staticmethod
    def make_shortcut(
        in_chs: int, out_chs: int, dw_kernel_size: int, stride: int, in_dilation: int, has_dw: bool
    ) -> nn.Sequential:
        """Identity (an empty ``Sequential``) when shapes allow, else k x k depthwise + BN + 1x1 conv + BN."""
        if in_chs == out_chs and not has_dw:
            return nn.Sequential()
        return nn.Sequential(
            _dw_conv(in_chs, dw_kernel_size, stride=stride, dilation=in_dilation),
            nn.BatchNorm2d(in_chs),
            nn.Conv2d(in_chs, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from_expansion(x, self.ghost1(x))

    def forward_from_expansion(self, x: Tensor, mid: Tensor) -> Tensor:
        """Finish the block from its input ``x`` and ``ghost1``'s output ``mid``.

        Lets SSDLite tap the expansion inside ``blocks.7`` without running ``ghost1`` twice.
        """
        if self.conv_dw is not None:
            mid = self.bn_dw(self.conv_dw(mid))
        if self.se is not None:
            mid = self.se(mid)
        return self.ghost2(mid) + self.shortcut(x)
