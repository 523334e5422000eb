"""Ghost-PAN: NanoDet-Plus's neck, a path-aggregation network made of Ghost blocks.

Written here because NanoDet is not a library (it is a training repository with its own config system);
the blocks are ghost-vision's :class:`~ghost_vision.models.layers.GhostBottleneck` and torchvision's
``Conv2dNormActivation``.
"""

from __future__ import annotations

from functools import partial
from typing import List  # noqa: UP035 - TorchScript reads these annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import Conv2dNormActivation

from ...layers import GhostBottleneck

__all__ = ["GhostBlocks", "GhostPAN", "conv_bn_act", "dw_separable_conv"]

#: NanoDet's activation: LeakyReLU with slope 0.1.
LeakyReLU = partial(nn.LeakyReLU, negative_slope=0.1)


def conv_bn_act(in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> LeakyReLU(0.1), NanoDet's ``ConvModule``."""
    return Conv2dNormActivation(in_channels, out_channels, kernel_size, stride, activation_layer=LeakyReLU,
                                inplace=True)


def dw_separable_conv(in_channels: int, out_channels: int, kernel_size: int = 5, stride: int = 1) -> nn.Sequential:
    """Depthwise k x k conv -> BN -> LeakyReLU, then 1x1 conv -> BN -> LeakyReLU (NanoDet's ``DepthwiseConvModule``)."""
    return nn.Sequential(
        Conv2dNormActivation(in_channels, in_channels, kernel_size, stride, groups=in_channels,
                             activation_layer=LeakyReLU, inplace=True),
        conv_bn_act(in_channels, out_channels, 1),
    )


class GhostBlocks(nn.Sequential):
    """``num_blocks`` stride-1 Ghost bottlenecks (``dw_kernel_size=kernel_size``, mid width ``out * expand``);
    the first one maps ``in_channels`` to ``out_channels`` through its convolutional shortcut. NanoDet-Plus
    builds these blocks with LeakyReLU; ghost-vision's GhostBottleneck (ReLU) is reused so that the deploy
    rewrites (BN folding, concat-free Ghost modules) apply to the neck as well."""

    def __init__(self, in_channels: int, out_channels: int, *, expand: float = 1.0, kernel_size: int = 5,
                 num_blocks: int = 1) -> None:
        mid = int(out_channels * expand)
        super().__init__(*[
            GhostBottleneck(in_channels if i == 0 else out_channels, mid, out_channels, dw_kernel_size=kernel_size)
            for i in range(num_blocks)
        ])


class GhostPAN(nn.Module):
    """NanoDet-Plus's Ghost-PAN neck.

    Every input level is reduced to ``out_channels`` by a 1x1 conv; a top-down path (bilinear upsampling,
    concatenation, :class:`GhostBlocks`) and a bottom-up path (depthwise-separable stride-2 convs,
    concatenation, :class:`GhostBlocks`) follow; ``num_extra_levels`` more levels, each the sum of a
    stride-2 depthwise-separable conv of the top reduced input and one of the top output.

    Args:
        in_channels: channels of the input maps, finest first (e.g. strides 8, 16, 32).
        out_channels: width of every output (NanoDet-Plus-m: 96).
        kernel_size: depthwise kernel of the blocks and downsampling convs (5).
        expand: expansion of each :class:`GhostBlocks` (1.0).
        num_blocks: blocks of each :class:`GhostBlocks` (1).
        num_extra_levels: 0, or 1 extra stride-2 level above the top input (strides 8/16/32/64).

    Example:
        >>> import torch
        >>> neck = GhostPAN([40, 112, 960]).eval()
        >>> maps = [torch.rand(1, 40, 40, 40), torch.rand(1, 112, 20, 20), torch.rand(1, 960, 10, 10)]
        >>> [tuple(m.shape) for m in neck(maps)]
        [(1, 96, 40, 40), (1, 96, 20, 20), (1, 96, 10, 10), (1, 96, 5, 5)]
    """

    def __init__(self, in_channels: List[int], out_channels: int = 96, *, kernel_size: int = 5,  # noqa: UP006
                 expand: float = 1.0, num_blocks: int = 1, num_extra_levels: int = 1) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"GhostPAN needs at least two input levels, got in_channels={in_channels}")
        if num_extra_levels not in (0, 1):
            raise ValueError(f"num_extra_levels must be 0 or 1 (NanoDet-Plus's design), got {num_extra_levels}")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        n = len(in_channels)
        blocks = partial(GhostBlocks, 2 * out_channels, out_channels, expand=expand, kernel_size=kernel_size,
                         num_blocks=num_blocks)
        down = partial(dw_separable_conv, out_channels, out_channels, kernel_size, 2)
        self.reduce_layers = nn.ModuleList([conv_bn_act(c, out_channels, 1) for c in in_channels])
        self.top_down_blocks = nn.ModuleList([blocks() for _ in range(n - 1)])  # coarse to fine
        self.downsamples = nn.ModuleList([down() for _ in range(n - 1)])
        self.bottom_up_blocks = nn.ModuleList([blocks() for _ in range(n - 1)])
        self.extra_lvl_in_conv = nn.ModuleList([down() for _ in range(num_extra_levels)])
        self.extra_lvl_out_conv = nn.ModuleList([down() for _ in range(num_extra_levels)])

    def forward(self, inputs: List[Tensor]) -> List[Tensor]:  # noqa: UP006
        feats: List[Tensor] = []  # noqa: UP006
        for i, reduce in enumerate(self.reduce_layers):  # module list first: TorchScript needs its length
            feats.append(reduce(inputs[i]))
        # top-down: from the coarsest level, upsample and merge with the next finer one
        inner: List[Tensor] = [feats[-1]]  # noqa: UP006
        i = len(feats) - 2
        for block in self.top_down_blocks:
            low = feats[i]
            up = F.interpolate(inner[0], size=[low.shape[-2], low.shape[-1]], mode="bilinear", align_corners=False)
            inner.insert(0, block(torch.cat([up, low], 1)))
            i -= 1
        # bottom-up: downsample and merge with the next coarser top-down output
        outs: List[Tensor] = [inner[0]]  # noqa: UP006
        j = 1
        for downsample, block in zip(self.downsamples, self.bottom_up_blocks):
            outs.append(block(torch.cat([downsample(outs[-1]), inner[j]], 1)))
            j += 1
        for conv_in, conv_out in zip(self.extra_lvl_in_conv, self.extra_lvl_out_conv):
            outs.append(conv_in(feats[-1]) + conv_out(outs[-1]))
        return outs
