"""Rewrites for onnxruntime: exact, and shaped for its NCHWc convolution layout.

onnxruntime's CPU provider runs convolutions in a blocked layout ("NCHWc", blocks of 16 channels with
AVX-512, 8 with AVX2). A ``Concat`` stays in that layout only when every input's channel count is a multiple
of the block; otherwise it converts both inputs back to NCHW and its output forward again. A Ghost module
concatenates ``init = out / 2`` intrinsic and ``init`` ghost maps, and most of GhostNet's ``init`` widths
(8, 12, 20, 36, 60, 92, 100, ...) are not multiples of 16: profiled on SSDLite-Ghost, the 32 concatenations
and their reorders took 6.4 ms of 17 (the convolutions 12.3 ms), which is what made the exported model
1.56x slower than SSDLite-MobileNetV3 with equal convolution time.

:class:`ConcatFreeGhostModule` computes a Ghost module without any concatenation:

    y = act(conv1x1(x, [W; W], [b; b]))          # the intrinsic maps, twice
    out = act(dwconv3x3(y, [delta; K], [0; c]))  # delta = identity kernel, K/c = the cheap operation

The first half is ``act(act(p)) == act(p)`` (ReLU is idempotent; no activation in a projection), the second
``act(K * p + c)``: the Ghost module, exactly. It costs the primary 1x1 conv twice and a depthwise pass over
the intrinsic half, so :func:`optimize_for_onnx` uses it only where the concatenation is not block-aligned.

onnxruntime's int8 depthwise convolution (``QLinearConv``, channels-last) also works in blocks of 16 channels,
with a slow remainder: measured on a VNNI CPU at 80x80, 72 channels cost 5.3 us per channel and 80 channels
2.7; 24 channels 7.3 and 32 channels 3.5. A bottleneck's expansion (``ghost1`` -> depthwise conv -> SE ->
``ghost2``'s 1x1) never leaves the block, so :func:`optimize_for_onnx` pads it to a multiple of 16 channels
with zero filters (``channel_multiple``): the extra channels are exactly 0 and the next 1x1 conv gives them
zero weights. SSDLite-Ghost 1.0 int8: 6 of its 16 expansions padded (72 -> 80, 120 -> 128, 200 -> 208,
184 -> 192), core 5-9% faster; fp32 (NCHWc already rounds channels up to its block) unchanged.

Example:
    >>> import torch
    >>> from ghost_vision.models import create_ghostnet
    >>> from ghost_vision.deploy.onnx_graph import optimize_for_onnx
    >>> model = create_ghostnet("ghostnet_050").eval()
    >>> onnx_ready = optimize_for_onnx(model)  # then ghost_vision.deploy.export.export_onnx(onnx_ready, ...)
    >>> x = torch.rand(2, 3, 64, 64)
    >>> bool((onnx_ready(x) - model(x)).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import GhostBottleneck, dfc_gate, dfc_pool
from .fuse import (
    FastGhostBottleneck,
    FastSqueezeExcite,
    FusedGhostModule,
    FusedGhostModuleV2,
    frozen_param,
    fuse_model,
)

__all__ = ["ConcatFreeGhostModule", "OnnxGhostBottleneck", "optimize_for_onnx"]


class ConcatFreeGhostModule(nn.Module):
    """A fused Ghost module computed as ``dwconv([delta; K])(conv1x1([W; W])(x))``: no ``Concat`` node."""

    def __init__(self, src: FusedGhostModule) -> None:
        super().__init__()
        n, out = src.init_chs, src.out_chs
        m = out - n  # ghost maps kept (n, or n - 1 for odd widths)
        p, c = src.primary, src.cheap
        self.primary = nn.Conv2d(p.in_channels, out, 1)
        self.primary.weight = frozen_param(torch.cat([p.weight, p.weight[:m]]))
        self.primary.bias = frozen_param(torch.cat([p.bias, p.bias[:m]]))
        self.cheap = nn.Conv2d(out, out, c.kernel_size, padding=c.padding, dilation=c.dilation, groups=out)
        delta = torch.zeros(n, 1, *c.kernel_size, dtype=c.weight.dtype)
        delta[:, :, c.kernel_size[0] // 2, c.kernel_size[1] // 2] = 1.0
        self.cheap.weight = frozen_param(torch.cat([delta, c.weight[:m]]))
        self.cheap.bias = frozen_param(torch.cat([torch.zeros(n, dtype=c.bias.dtype), c.bias[:m]]))
        self.act = src.act
        self.short_conv = src.short_conv if isinstance(src, FusedGhostModuleV2) else None
        self.pool = src.pool if isinstance(src, FusedGhostModuleV2) else 0

    def forward(self, x: Tensor) -> Tensor:
        y = self.primary(x)
        if self.act:
            y = F.relu(y)
        out = self.cheap(y)
        if self.act:
            out = F.relu(out)
        if self.short_conv is not None:
            out = out * dfc_gate(self.short_conv(dfc_pool(x, self.pool)), [out.shape[-2], out.shape[-1]])
        return out


class _GapSqueezeExcite(FastSqueezeExcite):
    """SE with ``adaptive_avg_pool2d(x, 1)`` (ONNX ``GlobalAveragePool``, which stays NCHWc) for the mean, and
    the hard-sigmoid folded into the expand conv: ``hardsigmoid(z) = clamp(z / 6 + 0.5, 0, 1)``, so the gate is
    ``Conv -> Clip(0, 1)``. onnxruntime's int8 quantizer fuses that ``Clip`` into the ``QLinearConv`` (its
    output range is the gate's), where a ``HardSigmoid`` would stay fp32 between a ``DequantizeLinear`` and a
    ``QuantizeLinear``."""

    def __init__(self, src: nn.Module) -> None:
        super().__init__(src)
        e = self.conv_expand
        self.conv_expand = nn.Conv2d(e.in_channels, e.out_channels, 1)
        self.conv_expand.weight, self.conv_expand.bias = frozen_param(e.weight / 6), frozen_param(_bias(e) / 6 + 0.5)

    def gate(self, x: Tensor) -> Tensor:
        return self.gate_from_mean(F.adaptive_avg_pool2d(x, 1))

    def gate_from_mean(self, s: Tensor) -> Tensor:
        return torch.clamp(self.conv_expand(F.relu(self.conv_reduce(s))), 0.0, 1.0)


class OnnxGhostBottleneck(GhostBottleneck):
    """The bottleneck as one straight graph for export: ghost1 -> [dwconv] -> [SE] -> ghost2 + shortcut, with
    folded BatchNorms and each Ghost module concat-free or not (see :func:`optimize_for_onnx`)."""

    def __init__(self, src: FastGhostBottleneck, align: int) -> None:
        nn.Module.__init__(self)
        self.stride, self.has_dw = src.stride, src.has_dw
        self.ghost1 = _export_module(src.ghost1, align)
        self.conv_dw, self.bn_dw = src.conv_dw, None
        self.se = _GapSqueezeExcite(src.se) if src.se is not None else None
        self.ghost2 = _export_module(src.ghost2, align)
        self.shortcut = src.shortcut

    def forward_from_expansion(self, x: Tensor, mid: Tensor) -> Tensor:
        if self.conv_dw is not None:
            mid = self.conv_dw(mid)
        if self.se is not None:
            mid = self.se(mid)
        return self.ghost2(mid) + self.shortcut(x)

    def pad_expansion(self, multiple: int) -> bool:
        """Pad the expansion (``ghost1``'s output, the depthwise conv, the SE block, ``ghost2``'s input) to a
        multiple of ``multiple`` channels with zero filters; the output is unchanged. Only a concat-free
        ``ghost1`` without a DFC gate (GhostNet v1) is padded; returns whether the block changed."""
        g1 = self.ghost1
        if not isinstance(g1, ConcatFreeGhostModule) or g1.short_conv is not None:
            return False
        c = g1.cheap.out_channels
        n = -(-c // multiple) * multiple
        if n == c:
            return False
        g1.primary, g1.cheap = _pad_out(g1.primary, n), _pad_out(g1.cheap, n)
        if self.conv_dw is not None:
            self.conv_dw = _pad_out(self.conv_dw, n)
        if self.se is not None:  # the padded channels' gate (clamp(0, 0, 1) = 0) multiplies a zero map
            self.se.conv_reduce, self.se.conv_expand = _pad_in(self.se.conv_reduce, n), _pad_out(self.se.conv_expand, n)
        self.ghost2.primary = _pad_in(self.ghost2.primary, n)
        return True


def _bias(conv: nn.Conv2d) -> Tensor:
    """The convolution's bias, zeros where it has none."""
    return conv.bias if conv.bias is not None else conv.weight.new_zeros(conv.out_channels)


def _pad_out(conv: nn.Conv2d, n: int) -> nn.Conv2d:
    """``conv`` with ``n`` output channels, the added ones zero filters with zero bias (a depthwise conv gets
    ``n`` groups, i.e. ``n`` inputs as well)."""
    dw = conv.groups > 1
    out = nn.Conv2d(n if dw else conv.in_channels, n, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    groups=n if dw else 1)
    w, b = conv.weight, _bias(conv)
    out.weight = frozen_param(torch.cat([w, w.new_zeros(n - w.shape[0], *w.shape[1:])]))
    out.bias = frozen_param(torch.cat([b, b.new_zeros(n - b.shape[0])]))
    return out


def _pad_in(conv: nn.Conv2d, n: int) -> nn.Conv2d:
    """``conv`` (not grouped) reading ``n`` input channels, the added ones with zero weights."""
    out = nn.Conv2d(n, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    bias=conv.bias is not None)
    w = conv.weight
    out.weight = frozen_param(torch.cat([w, w.new_zeros(w.shape[0], n - w.shape[1], *w.shape[2:])], 1))
    if conv.bias is not None:
        out.bias = frozen_param(conv.bias)
    return out


def _export_module(m: FusedGhostModule, align: int) -> nn.Module:
    aligned = align > 0 and m.init_chs % align == 0 and m.out_chs == 2 * m.init_chs
    return m if aligned else ConcatFreeGhostModule(m)


def _rewrite(module: nn.Module, align: int) -> None:
    for name, child in list(module._modules.items()):
        if isinstance(child, FastGhostBottleneck):
            module._modules[name] = OnnxGhostBottleneck(child, align)
        elif isinstance(child, FusedGhostModule):
            module._modules[name] = _export_module(child, align)
        elif child is not None and not isinstance(child, (OnnxGhostBottleneck, ConcatFreeGhostModule)):
            _rewrite(child, align)


def optimize_for_onnx(model: nn.Module, *, inplace: bool = False, align: int = 16,
                      channel_multiple: int = 16) -> nn.Module:
    """The model to hand to the ONNX exporter: BatchNorm folded (:func:`~ghost_vision.deploy.fuse.fuse_model`,
    no batch-1 tricks), straight bottlenecks, :class:`ConcatFreeGhostModule` wherever a Ghost module's
    halves are not a multiple of ``align`` channels (``align=0``: everywhere; ``align=1``: nowhere), and each
    bottleneck's expansion padded to a multiple of ``channel_multiple`` channels
    (:meth:`OnnxGhostBottleneck.pad_expansion`; ``1``: never) unless a module reads it as a feature map
    (an ``expansion_taps()`` method names those, e.g. the SSDLite extractor's).

    Outputs equal the plain model's within float rounding; eval mode only.

    Example:
        >>> import torch
        >>> from ghost_vision.models import ghostnet_050
        >>> model = ghostnet_050().eval()
        >>> graph = optimize_for_onnx(model, align=0)  # every Ghost module concat-free
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.no_grad():
        ...     bool(torch.allclose(graph(x), model(x), atol=1e-4))
        True
    """
    model = fuse_model(model, inplace=inplace, fold_se=False)
    _rewrite(model, align)
    if channel_multiple > 1:
        taps = {id(t) for m in model.modules() if hasattr(m, "expansion_taps") for t in m.expansion_taps()}
        for m in model.modules():
            if isinstance(m, OnnxGhostBottleneck) and id(m) not in taps:
                m.pad_expansion(channel_multiple)
    return model.eval()  # the modules built by the rewrite start in training mode
