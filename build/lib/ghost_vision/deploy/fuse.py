"""Inference rewrites for Ghost models: BatchNorm folding and lean Ghost modules/bottlenecks.

Everything here is exact algebra (up to float rounding), valid in eval mode only:

* ``BN(conv(x)) == conv'(x)`` with ``w' = w * s`` and ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``
  for ``BatchNorm2d`` and torchvision's ``FrozenBatchNorm2d``, wherever a conv feeds a BN: in any
  ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, SSDLite/LR-ASPP/DeepLab heads, FPN with norm), in
  the GhostNet stem and ``ConvBnAct``, and inside every Ghost module and bottleneck;
* :class:`FusedGhostModule` runs primary conv (+ReLU) -> cheap depthwise conv (+ReLU) with no
  ``nn.Identity``/``nn.Sequential`` dispatch and can hand out its two halves without concatenating them;
* :class:`FastGhostBottleneck` never concatenates: the expansion's halves go separately through the
  depthwise conv and the SE block into the projection (a sum of two 1x1 convs), whose halves are added
  *into* the shortcut; ``hardsigmoid`` is one op instead of ``relu6(x + 3) / 6`` and, at batch 1, the SE
  gate is folded into the projection's weight (``conv(x * g) == (w * g) x``).

Example:
    >>> import torch
    >>> from ghost_vision.models import create_ghostnet
    >>> from ghost_vision.deploy.fuse import fuse_model
    >>> model = create_ghostnet("ghostnet_100").eval()
    >>> fast = fuse_model(model, inplace=False)
    >>> x = torch.rand(1, 3, 224, 224)
    >>> bool((fast(x) - model(x)).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops.misc import FrozenBatchNorm2d

from ..models.ghostnet import GhostNet, GhostNetFeatures
from ..models.layers import (
    ConvBnAct,
    GhostBottleneck,
    GhostModule,
    GhostModuleV2,
    SqueezeExcite,
    dfc_gate,
    dfc_pool,
)
from ..models.layers_v3 import GhostBottleneckV3, GhostModuleV3, bn_scale_shift, reparameterize

__all__ = [
    "BN_TYPES",
    "FastGhostBottleneck",
    "FastSqueezeExcite",
    "FusedGhostModule",
    "FusedGhostModuleV2",
    "fold_bn",
    "fuse_model",
    "unfused_batchnorms",
]

BN_TYPES = (nn.BatchNorm2d, FrozenBatchNorm2d)


def _bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    if isinstance(bn, nn.BatchNorm2d) and bn.training:
        raise RuntimeError("BatchNorm is in training mode: call model.eval() before optimizing")
    return bn_scale_shift(bn)


def fold_bn(conv: nn.Conv2d, bn: nn.Module) -> nn.Conv2d:
    """A new ``Conv2d`` (with bias) computing ``bn(conv(x))``; the inputs are not modified.

    Example:
        >>> conv, bn = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8).eval()
        >>> x = torch.rand(1, 3, 16, 16)
        >>> torch.allclose(fold_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)
        True
    """
    scale, shift = _bn_scale_shift(bn)
    fused = copy.deepcopy(conv)
    w = conv.weight.detach()
    fused.weight = nn.Parameter((w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype), requires_grad=False)
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(scale)
    fused.bias = nn.Parameter((bias * scale + shift).to(w.dtype), requires_grad=False)
    return fused


def _fold_seq(seq: nn.Sequential) -> None:
    """Fold each ``Conv2d`` -> BN pair of a Sequential; the BN slot becomes ``nn.Identity`` (keeps indices)."""
    names = list(seq._modules)
    for a, b in zip(names, names[1:], strict=False):
        conv, bn = seq._modules[a], seq._modules[b]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, BN_TYPES):
            seq._modules[a] = fold_bn(conv, bn)
            seq._modules[b] = nn.Identity()


def _fused_chain(*mods: nn.Module) -> list[nn.Conv2d]:
    """Conv/BN modules in order -> folded convs."""
    out: list[nn.Conv2d] = []
    for m in mods:
        if isinstance(m, nn.Conv2d):
            out.append(m)
        elif isinstance(m, BN_TYPES):
            out[-1] = fold_bn(out[-1], m)
    return out


class FusedGhostModule(nn.Module):
    """A :class:`~ghost_vision.models.layers.GhostModule` with folded BatchNorms.

    ``forward`` returns ``cat([x1, cheap(x1)])[:, :out_chs]`` like the original; :meth:`split` returns the two
    halves without concatenating them and :meth:`add_into` adds them into a residual half by half.
    """

    def __init__(self, src: GhostModule) -> None:
        super().__init__()
        self.out_chs = src.out_chs
        self.primary, = _fused_chain(*src.primary_conv)
        self.cheap, = _fused_chain(*src.cheap_operation)
        self.init_chs = self.primary.out_channels
        self.act = isinstance(src.primary_conv[-1], nn.ReLU)

    def finish(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        """The halves from the primary conv's output (before its activation)."""
        if self.act:
            x1 = F.relu_(x1)
        x2 = self.cheap(x1)
        if self.act:
            x2 = F.relu_(x2)
        if self.out_chs < 2 * self.init_chs:
            x2 = x2[:, : self.out_chs - self.init_chs]
        return x1, x2

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``forward(x)`` as its two halves (intrinsic, ghost maps), not concatenated."""
        return self.finish(self.primary(x))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.split(x), dim=1)

    def add_into(self, x1: Tensor, x2: Tensor, residual: Tensor, reuse: bool) -> Tensor:
        """``cat([x1, x2]) + residual`` without the ``cat``; ``reuse=True`` writes into ``residual`` (a
        temporary of the caller)."""
        # plain ops for export/compile, and where autograd records (out= has no gradient)
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or x1.requires_grad or x2.requires_grad or (
            residual.requires_grad
        ):
            return torch.cat([x1, x2], dim=1) + residual
        n = self.init_chs
        if reuse:
            residual[:, :n] += x1
            residual[:, n:] += x2
            return residual
        out = torch.empty_like(residual)
        torch.add(residual[:, :n], x1, out=out[:, :n])
        torch.add(residual[:, n:], x2, out=out[:, n:])
        return out


class FusedGhostModuleV2(FusedGhostModule):
    """:class:`~ghost_vision.models.layers.GhostModuleV2` (DFC attention) with folded BatchNorms."""

    def __init__(self, src: GhostModuleV2) -> None:
        super().__init__(src)
        self.pool = src.pool
        self.short_conv = nn.Sequential(*_fused_chain(*src.short_conv))

    def gate(self, x: Tensor, size: list[int]) -> Tensor:
        """The DFC attention map for input ``x``, upsampled to ``size``."""
        return dfc_gate(self.short_conv(dfc_pool(x, self.pool)), size)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = self.finish(self.primary(x))
        g = self.gate(x, [x1.shape[-2], x1.shape[-1]])
        return x1 * g[:, : self.init_chs], x2 * g[:, self.init_chs :]


class FastSqueezeExcite(nn.Module):
    """:class:`~ghost_vision.models.layers.SqueezeExcite` with ``F.hardsigmoid`` (same values, one op)."""

    def __init__(self, src: SqueezeExcite) -> None:
        super().__init__()
        self.conv_reduce, self.conv_expand = src.conv_reduce, src.conv_expand

    def gate(self, x: Tensor) -> Tensor:
        return self.gate_from_mean(x.mean((2, 3), keepdim=True))

    def gate_from_mean(self, s: Tensor) -> Tensor:
        return F.hardsigmoid(self.conv_expand(F.relu_(self.conv_reduce(s))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


def frozen_param(t: Tensor) -> nn.Parameter:
    """A detached copy of ``t`` as an inference-only parameter (no gradient)."""
    return nn.Parameter(t.detach().clone(), requires_grad=False)


def _conv_slice(conv: nn.Conv2d, start: int, stop: int) -> nn.Conv2d:
    """Output channels ``start:stop`` of a depthwise convolution, as a depthwise convolution."""
    n = stop - start
    out = nn.Conv2d(n, n, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups=n,
                    bias=conv.bias is not None)
    out.weight = frozen_param(conv.weight[start:stop])
    if conv.bias is not None:
        out.bias = frozen_param(conv.bias[start:stop])
    return out


class FastGhostBottleneck(GhostBottleneck):
    """A :class:`~ghost_vision.models.layers.GhostBottleneck` with folded BatchNorms that never concatenates:
    the expansion's two halves stay apart through the depthwise conv and the SE block and meet in the
    projection's 1x1 conv as a sum of two convs (``W [a; b] == W_a a + W_b b``); the projection's halves are
    added into the shortcut in place. At batch 1 the SE gate is folded into those 1x1 weights
    (``conv(x * g) == (w * g) x``), scaling ``out x in`` weights instead of a ``C x H x W`` map.

    Concatenating a channels-last map copies it pixel by pixel; avoiding it is what makes this block faster
    than the plain one at every batch size. Still an instance of ``GhostBottleneck`` with ``ghost1``,
    ``conv_dw``, ``se``, ``ghost2``, ``shortcut`` and ``forward_from_expansion`` (SSDLite taps the expansion).
    """

    def __init__(self, src: GhostBottleneck, *, fold_se: bool = True) -> None:
        nn.Module.__init__(self)
        self.stride, self.has_dw = src.stride, src.has_dw
        self.ghost1 = _fast(src.ghost1)
        # bn_dw is nn.Identity in a reparameterized GhostNetV3 block (its conv_dw carries the bias)
        self.conv_dw = _fused_chain(src.conv_dw, src.bn_dw)[0] if src.conv_dw is not None else None
        self.bn_dw = None
        self.se = FastSqueezeExcite(src.se) if src.se is not None else None
        self.ghost2 = _fast(src.ghost2)
        self.shortcut = nn.Sequential(*_fused_chain(*src.shortcut))
        self.fold_se = fold_se
        n, mid = self.ghost1.init_chs, self.ghost1.out_chs
        self.dw_a = _conv_slice(self.conv_dw, 0, n) if self.conv_dw is not None else None
        self.dw_b = _conv_slice(self.conv_dw, n, mid) if self.conv_dw is not None else None
        if isinstance(self.ghost2, FusedGhostModuleV2):  # GhostBottleneck never builds one
            raise TypeError("a GhostModuleV2 projection's DFC attention needs the whole expansion; "
                            "FastGhostBottleneck computes the projection from the two halves")
        w = self.ghost2.primary.weight
        self.proj_a, self.proj_b = frozen_param(w[:, :n]), frozen_param(w[:, n:])

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.ghost1.split(x)
        return self._finish(x, a, b)

    def forward_from_expansion(self, x: Tensor, mid: Tensor) -> Tensor:
        n = self.ghost1.init_chs
        return self._finish(x, mid[:, :n], mid[:, n:])

    def _finish(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        n = self.ghost1.init_chs
        if self.dw_a is not None and self.dw_b is not None:
            a, b = self.dw_a(a), self.dw_b(b)
        wa, wb = self.proj_a, self.proj_b
        se = self.se
        if se is not None:
            s = torch.cat([a.mean((2, 3), keepdim=True), b.mean((2, 3), keepdim=True)], dim=1)
            gate = se.gate_from_mean(s)
            # a traced graph must not bake in the batch size; scripting keeps the test
            if self.fold_se and a.shape[0] == 1 and not torch.jit.is_tracing():
                wa = wa * gate[:, :n].reshape(1, n, 1, 1)
                wb = wb * gate[:, n:].reshape(1, -1, 1, 1)
            else:
                a, b = a * gate[:, :n], b * gate[:, n:]  # not in place: a/b may be a tapped expansion
        g2 = self.ghost2
        residual = x if len(self.shortcut) == 0 else self.shortcut(x)
        p = F.conv2d(a, wa, g2.primary.bias).add_(F.conv2d(b, wb))  # in place: a fresh conv output
        x1, x2 = g2.finish(p)
        return g2.add_into(x1, x2, residual, len(self.shortcut) > 0)


def _fast(m: GhostModule) -> FusedGhostModule:
    return FusedGhostModuleV2(m) if isinstance(m, GhostModuleV2) else FusedGhostModule(m)


def _rewrite(module: nn.Module, fold_se: bool) -> None:
    for name, child in list(module._modules.items()):
        if child is None or isinstance(child, (FusedGhostModule, FastGhostBottleneck)):
            continue
        if isinstance(child, GhostBottleneck):
            module._modules[name] = FastGhostBottleneck(child, fold_se=fold_se)
        elif isinstance(child, GhostModule):
            module._modules[name] = _fast(child)
        elif isinstance(child, SqueezeExcite):
            module._modules[name] = FastSqueezeExcite(child)
        else:
            _rewrite(child, fold_se)
    if isinstance(module, nn.Sequential):
        _fold_seq(module)
    pairs = {(GhostNet, GhostNetFeatures): ("conv_stem", "bn1"), ConvBnAct: ("conv", "bn1")}
    for cls, (c, b) in pairs.items():
        if isinstance(module, cls) and isinstance(getattr(module, b), BN_TYPES):
            setattr(module, c, fold_bn(getattr(module, c), getattr(module, b)))
            setattr(module, b, nn.Identity())


def unfused_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers still in ``model`` (empty after :func:`fuse_model` on our builders).

    Example:
        >>> from ghost_vision.models import ghostnet_050
        >>> model = ghostnet_050().eval()
        >>> len(unfused_batchnorms(model)) > 0, unfused_batchnorms(fuse_model(model))
        (True, [])
    """
    return [name for name, m in model.named_modules() if isinstance(m, BN_TYPES)]


def fuse_model(model: nn.Module, *, inplace: bool = False, fold_se: bool = True) -> nn.Module:
    """Fold every BatchNorm that follows a convolution and swap Ghost modules/bottlenecks/SE blocks for
    their fused versions, wherever they sit in ``model``; GhostNetV3 blocks are first re-parameterized
    (:func:`~ghost_vision.models.reparameterize`). The model must be in eval mode.

    Example:
        >>> import torch
        >>> from ghost_vision.models import ghostnet_050
        >>> model = ghostnet_050().eval()
        >>> fused = fuse_model(model)
        >>> unfused_batchnorms(fused)
        []
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.no_grad():
        ...     bool(torch.allclose(fused(x), model(x), atol=1e-4))
        True
    """
    bad = [n for n, m in model.named_modules() if m.training and isinstance(m, BN_TYPES)]
    if model.training or bad:
        raise RuntimeError(
            "optimize()/fuse_model() folds BatchNorm statistics and is for inference only: call model.eval() "
            f"first (modules in training mode: {bad[:3] or ['<root>']})"
        )
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, (GhostBottleneck, GhostModule, GhostBottleneckV3, GhostModuleV3)):
        raise TypeError("pass a model containing Ghost blocks, not a bare block (it cannot be replaced in place)")
    reparameterize(model)  # GhostNetV3's training branches -> v1/v2 blocks with biased convs
    _rewrite(model, fold_se)
    for p in model.parameters():  # inference only: folded weights are not the trained parameters any more
        p.requires_grad_(False)
    return model.eval()  # the modules built by the rewrite start in training mode
