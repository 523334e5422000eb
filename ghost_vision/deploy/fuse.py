"""Inference rewrites for Ghost models: BatchNorm folding and lean Ghost modules/bottlenecks.

Everything here is exact algebra (up to float rounding), valid in eval mode only:

* ``BN(conv(x)) == conv'(x)`` with ``w' = w * s`` and ``b' = (b - mean) * s + beta``, ``s = gamma / sqrt(var + eps)``
  for ``BatchNorm2d`` and torchvision's ``FrozenBatchNorm2d``, wherever a conv feeds a BN: in any
  ``nn.Sequential`` (torchvision's ``Conv2dNormActivation``, SSDLite/LR-ASPP/DeepLab heads, FPN with norm), in
  the GhostNet stem and ``ConvBnAct``, and inside every Ghost module and bottleneck;
* :class:`FusedGhostModule` runs primary conv (+ReLU) -> cheap depthwise conv (+ReLU) -> concat with no
  ``nn.Identity``/``nn.Sequential`` dispatch and no slice when the width is even;
* :class:`FastGhostBottleneck` adds the shortcut *into the halves* of the projection (one pass instead of
  ``cat`` + ``add``), uses ``hardsigmoid`` (one op instead of ``relu6(x + 3) / 6``) in the SE gate and,
  at batch 1, folds the SE gate into the next 1x1 convolution's weight (``conv(x * g) == (w * g) x``),
  which scales ``out x in`` weights instead of a ``C x H x W`` map.

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

from ..models.ghostnet import _GhostTrunk
from ..models.layers import ConvBnAct, GhostBottleneck, GhostModule, GhostModuleV2, SqueezeExcite

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
    if isinstance(bn, nn.BatchNorm2d):
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("cannot fold a BatchNorm2d without running statistics (track_running_stats=False)")
        if bn.training:
            raise RuntimeError("BatchNorm is in training mode: call model.eval() before optimizing")
    var, mean, eps = bn.running_var.double(), bn.running_mean.double(), bn.eps
    scale = torch.rsqrt(var + eps)
    if getattr(bn, "weight", None) is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if getattr(bn, "bias", None) is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


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

    ``forward`` returns ``cat([x1, cheap(x1)])[:, :out_chs]`` like the original; :meth:`forward_add` adds a
    residual directly into the two halves.
    """

    def __init__(self, src: GhostModule) -> None:
        super().__init__()
        self.out_chs = src.out_chs
        self.primary, = _fused_chain(*src.primary_conv)
        self.cheap, = _fused_chain(*src.cheap_operation)
        self.init_chs = self.primary.out_channels
        self.act = isinstance(src.primary_conv[-1], nn.ReLU)

    def halves(self, x: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.primary
        x1 = p(x) if weight is None else F.conv2d(x, weight, p.bias)
        if self.act:
            x1 = F.relu_(x1)
        x2 = self.cheap(x1)
        if self.act:
            x2 = F.relu_(x2)
        if self.out_chs < 2 * self.init_chs:
            x2 = x2[:, : self.out_chs - self.init_chs]
        return x1, x2

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(self.halves(x), dim=1)

    def forward_add(self, x: Tensor, residual: Tensor, *, reuse: bool, weight: Tensor | None = None) -> Tensor:
        """``forward(x) + residual``; ``reuse=True`` writes into ``residual`` (a temporary of the caller)."""
        x1, x2 = self.halves(x, weight)
        n = self.init_chs
        if torch.jit.is_tracing() or torch.jit.is_scripting():  # export: plain ops, no out= views
            return torch.cat([x1, x2], dim=1) + residual
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

    def _gate(self, x: Tensor, size: torch.Size) -> Tensor:
        window = (min(self.pool, x.shape[-2]), min(self.pool, x.shape[-1]))
        res = self.short_conv(F.avg_pool2d(x, kernel_size=window, stride=window))
        return F.interpolate(torch.sigmoid(res), size=size, mode="nearest")

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out.mul_(self._gate(x, out.shape[-2:]))

    def forward_add(self, x: Tensor, residual: Tensor, *, reuse: bool, weight: Tensor | None = None) -> Tensor:
        out = torch.cat(self.halves(x, weight), dim=1).mul_(self._gate(x, residual.shape[-2:]))
        return out.add_(residual)


class FastSqueezeExcite(nn.Module):
    """:class:`~ghost_vision.models.layers.SqueezeExcite` with ``F.hardsigmoid`` (same values, one op)."""

    def __init__(self, src: SqueezeExcite) -> None:
        super().__init__()
        self.conv_reduce, self.conv_expand = src.conv_reduce, src.conv_expand

    def gate(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3), keepdim=True)
        return F.hardsigmoid(self.conv_expand(F.relu_(self.conv_reduce(s))))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(x)


class FastGhostBottleneck(GhostBottleneck):
    """A :class:`~ghost_vision.models.layers.GhostBottleneck` with folded BatchNorms, lean Ghost modules, the
    residual added into the projection's halves and (batch 1) the SE gate folded into ``ghost2``'s weight.

    Still an instance of ``GhostBottleneck`` with ``ghost1``/``forward_from_expansion`` (SSDLite taps the
    expansion) and the same attribute names.
    """

    def __init__(self, src: GhostBottleneck, *, fold_se: bool = True) -> None:
        nn.Module.__init__(self)
        self.stride, self.has_dw, self.fold_se = src.stride, src.has_dw, fold_se
        self.ghost1 = _fast(src.ghost1)
        self.conv_dw = fold_bn(src.conv_dw, src.bn_dw) if src.conv_dw is not None else None
        self.bn_dw = None
        self.se = FastSqueezeExcite(src.se) if src.se is not None else None
        self.ghost2 = _fast(src.ghost2)
        self.shortcut = nn.Sequential(*_fused_chain(*src.shortcut))

    def forward(self, x: Tensor) -> Tensor:
        return self._finish(x, self.ghost1(x), self.conv_dw, self.se, None)

    def forward_from_expansion(self, x: Tensor, mid: Tensor) -> Tensor:
        return self._finish(x, mid, self.conv_dw, self.se, None)

    def _finish(
        self, x: Tensor, mid: Tensor, conv_dw: nn.Module | None, se: FastSqueezeExcite | None,
        weight: Tensor | None,
    ) -> Tensor:
        if conv_dw is not None:
            mid = conv_dw(mid)
        if se is not None:
            if (
                self.fold_se
                and mid.shape[0] == 1
                and not isinstance(self.ghost2, FusedGhostModuleV2)
                and not torch.jit.is_tracing()  # a traced graph must not bake in the batch size
            ):
                gate = se.gate(mid)  # (1, C, 1, 1) scales the input channels of the 1x1 conv
                weight = (self.ghost2.primary.weight if weight is None else weight) * gate.view(1, -1, 1, 1)
            else:
                mid = se(mid)
        if len(self.shortcut) == 0:
            return self.ghost2.forward_add(mid, x, reuse=False, weight=weight)
        return self.ghost2.forward_add(mid, self.shortcut(x), reuse=True, weight=weight)


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
    pairs = {_GhostTrunk: ("conv_stem", "bn1"), ConvBnAct: ("conv", "bn1")}
    for cls, (c, b) in pairs.items():
        if isinstance(module, cls) and isinstance(getattr(module, b), BN_TYPES):
            setattr(module, c, fold_bn(getattr(module, c), getattr(module, b)))
            setattr(module, b, nn.Identity())


def unfused_batchnorms(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers still in ``model`` (empty after :func:`fuse_model` on our builders)."""
    return [name for name, m in model.named_modules() if isinstance(m, BN_TYPES)]


def fuse_model(model: nn.Module, *, inplace: bool = False, fold_se: bool = True) -> nn.Module:
    """Fold every BatchNorm that follows a convolution and swap Ghost modules/bottlenecks/SE blocks for
    their fused versions, wherever they sit in ``model``. The model must be in eval mode."""
    bad = [n for n, m in model.named_modules() if m.training and isinstance(m, BN_TYPES)]
    if model.training or bad:
        raise RuntimeError(
            "optimize()/fuse_model() folds BatchNorm statistics and is for inference only: call model.eval() "
            f"first (modules in training mode: {bad[:3] or ['<root>']})"
        )
    if not inplace:
        model = copy.deepcopy(model)
    if isinstance(model, (GhostBottleneck, GhostModule)):
        raise TypeError("pass a model containing Ghost blocks, not a bare block (it cannot be replaced in place)")
    _rewrite(model, fold_se)
    return model
