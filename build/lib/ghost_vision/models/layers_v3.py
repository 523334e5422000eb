"""GhostNetV3 blocks: re-parameterisable multi-branch training form, fused into GhostNet v1/v2 blocks.

Written to timm 1.0.31's ``GhostModuleV3`` / ``GhostBottleneckV3`` (itself the official
``ghostnetv3_pytorch/ghostnetv3.py``) with the same attribute names, so timm's training-form state dicts load
with ``strict=True``:

* the primary 1x1 conv is ``num_conv_branches = 3`` conv-BN branches (``primary_rpr_conv.{0,1,2}``);
* the cheap 3x3 depthwise conv is 3 depthwise conv-BN branches (``cheap_rpr_conv.i``) + a 1x1 depthwise
  conv-BN "scale" branch (``cheap_rpr_scale``) + a BatchNorm identity branch (``cheap_rpr_skip``);
* a stride-2 bottleneck's depthwise conv is 3 branches (``dw_rpr_conv.i``) + a 1x1 scale branch
  (``dw_rpr_scale``);
* ``mode="shortcut"`` (every bottleneck from the third on) adds GhostNetV2's DFC attention (``short_conv``)
  to the expansion module; ``mode="original"`` has none.

Unlike timm's, the blocks take a ``dilation`` (DeepLab-style ``output_stride`` with the same weights).

:func:`reparameterize` sums every branch into one conv per position (RepVGG/MobileOne algebra, in float64)
and swaps each V3 block for the equivalent :class:`~ghost_vision.models.layers.GhostBottleneck` /
:class:`~ghost_vision.models.layers.GhostModule` / :class:`~ghost_vision.models.layers.GhostModuleV2` whose
convolutions carry the fused bias (no BatchNorm): timm's deploy form, key for key
(``ghost1.primary_conv.0.{weight,bias}``, ``conv_dw.{weight,bias}``, ...), so the package's fast path
(:mod:`ghost_vision.deploy`) applies to it unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import GhostBottleneck, GhostModule, GhostModuleV2, SqueezeExcite, dfc_gate, dfc_pool

__all__ = ["ConvBn", "GhostModuleV3", "GhostBottleneckV3", "bn_scale_shift", "reparameterize"]

NUM_CONV_BRANCHES = 3


class ConvBn(nn.Module):
    """Conv (no bias) -> BN, keys ``conv``/``bn1`` (timm's ``ConvBnAct`` with ``act_layer=None``)."""

    def __init__(
        self, in_chs: int, out_chs: int, kernel: int, stride: int = 1, *, groups: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel, stride, padding=dilation * (kernel - 1) // 2,
                              dilation=dilation, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn1(self.conv(x))


def bn_scale_shift(bn: nn.Module) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` in float64 with ``bn(x) == x * scale + shift`` from the running statistics
    (``BatchNorm2d`` or torchvision's ``FrozenBatchNorm2d``)."""
    if getattr(bn, "running_var", None) is None or getattr(bn, "running_mean", None) is None:
        raise ValueError(f"cannot fold {type(bn).__name__} without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if getattr(bn, "weight", None) is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.detach().double() * scale
    if getattr(bn, "bias", None) is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def _fused_branches(
    convs: nn.ModuleList, scale: ConvBn | None, skip: nn.Module | None
) -> tuple[Tensor, Tensor]:
    """One ``(kernel, bias)`` (float64) equal to the sum of conv-BN branches, a 1x1 conv-BN branch zero-padded
    to the kernel size, and a BN-only identity branch (a centred one-hot kernel)."""
    ref: nn.Conv2d = convs[0].conv
    kh, kw = ref.kernel_size
    kernel = torch.zeros(ref.weight.shape, dtype=torch.float64, device=ref.weight.device)
    bias = torch.zeros(ref.out_channels, dtype=torch.float64, device=ref.weight.device)

    def add(w: Tensor, bn: nn.Module) -> None:
        s, b = bn_scale_shift(bn)
        ph, pw = (kh - w.shape[-2]) // 2, (kw - w.shape[-1]) // 2
        kernel.add_(F.pad(w.detach().double(), [pw, pw, ph, ph]) * s.view(-1, 1, 1, 1))
        bias.add_(b)

    for branch in convs:
        add(branch.conv.weight, branch.bn1)
    if scale is not None:
        add(scale.conv.weight, scale.bn1)
    if skip is not None:  # identity: channel i of the output is channel i of the input (within its group)
        per_group = ref.in_channels // ref.groups
        eye = torch.zeros(ref.out_channels, per_group, 1, 1, dtype=torch.float64, device=ref.weight.device)
        eye[torch.arange(ref.out_channels), torch.arange(ref.out_channels) % per_group] = 1.0
        add(eye, skip)
    return kernel, bias


def _biased_conv(like: nn.Conv2d, kernel: Tensor, bias: Tensor, requires_grad: bool) -> nn.Conv2d:
    """A conv with ``like``'s geometry holding the fused ``kernel`` and ``bias``."""
    conv = nn.Conv2d(like.in_channels, like.out_channels, like.kernel_size, like.stride, like.padding,
                     like.dilation, like.groups, bias=True, device="meta")  # no init: both tensors replaced
    conv.weight = nn.Parameter(kernel.to(like.weight.dtype), requires_grad=requires_grad)
    conv.bias = nn.Parameter(bias.to(like.weight.dtype), requires_grad=requires_grad)
    return conv


class GhostModuleV3(nn.Module):
    """Ghost module in GhostNetV3's training form (see the module docstring).

    Args:
        in_chs, out_chs: channels; ``ceil(out / 2)`` intrinsic + as many cheap maps.
        use_act: ReLU after both halves (the expansion module); ``False`` for the projection.
        mode: ``"original"`` or ``"shortcut"`` (with DFC attention, as timm).
        dilation: of the cheap 3x3 depthwise convs (the DFC branch pools ``2 * dilation`` as GhostModuleV2).
    """

    def __init__(
        self, in_chs: int, out_chs: int, *, use_act: bool = True, mode: str = "original", dilation: int = 1
    ) -> None:
        super().__init__()
        if mode not in ("original", "shortcut"):
            raise ValueError(f"GhostModuleV3 mode must be 'original' or 'shortcut', got {mode!r}")
        self.out_chs, self.mode, self.use_act, self.dilation = out_chs, mode, use_act, dilation
        self.num_conv_branches = NUM_CONV_BRANCHES
        init_chs = math.ceil(out_chs / 2)
        self.init_chs = init_chs
        self.needs_slice = 2 * init_chs != out_chs
        # registration order = timm's, so state-dict keys come in the same order
        self.primary_rpr_conv = nn.ModuleList([ConvBn(in_chs, init_chs, 1) for _ in range(NUM_CONV_BRANCHES)])
        self.primary_activation = nn.ReLU(inplace=True) if use_act else nn.Identity()
        self.cheap_rpr_skip = nn.BatchNorm2d(init_chs)
        self.cheap_rpr_conv = nn.ModuleList(
            [ConvBn(init_chs, init_chs, 3, groups=init_chs, dilation=dilation) for _ in range(NUM_CONV_BRANCHES)]
        )
        self.cheap_rpr_scale = ConvBn(init_chs, init_chs, 1, groups=init_chs)
        self.cheap_activation = nn.ReLU(inplace=True) if use_act else nn.Identity()
        self.pool = 2 * dilation
        self.short_conv = GhostModuleV2.dfc_branch(in_chs, out_chs) if mode == "shortcut" else None

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary_rpr_conv[0](x)
        for i, branch in enumerate(self.primary_rpr_conv):
            if i > 0:
                x1 = x1 + branch(x)
        x1 = self.primary_activation(x1)
        x2 = self.cheap_rpr_scale(x1) + self.cheap_rpr_skip(x1)
        for branch in self.cheap_rpr_conv:
            x2 += branch(x1)  # in place on a fresh sum (autograd keeps no add outputs)
        x2 = self.cheap_activation(x2)
        out = torch.cat([x1, x2], dim=1)
        if self.needs_slice:
            out = out[:, : self.out_chs]
        if self.short_conv is not None:
            out = out * dfc_gate(self.short_conv(dfc_pool(x, self.pool)), [out.shape[-2], out.shape[-1]])
        return out

    def reparameterized(self) -> GhostModule:
        """The equivalent inference module (eval-mode statistics): a :class:`GhostModule` (``"original"``)
        or :class:`GhostModuleV2` (``"shortcut"``) whose primary and cheap convs carry the fused bias."""
        ref = self.primary_rpr_conv[0].conv
        cls = GhostModuleV2 if self.short_conv is not None else GhostModule
        with torch.device("meta"):  # a skeleton: every tensor of it is replaced below
            out = cls(ref.in_channels, self.out_chs, use_act=self.use_act, dilation=self.dilation)
        trainable = ref.weight.requires_grad
        for seq, convs, scale, skip in (
            (out.primary_conv, self.primary_rpr_conv, None, None),
            (out.cheap_operation, self.cheap_rpr_conv, self.cheap_rpr_scale, self.cheap_rpr_skip),
        ):
            seq[0] = _biased_conv(convs[0].conv, *_fused_branches(convs, scale, skip), trainable)
            seq[1] = nn.Identity()
        if isinstance(out, GhostModuleV2):
            out.short_conv = self.short_conv
        return out.train(self.training)


class GhostBottleneckV3(nn.Module):
    """Ghost bottleneck in GhostNetV3's training form: ``ghost1`` (GhostModuleV3, ReLU) -> [stride-2
    depthwise conv as 3 branches + 1x1 scale branch] -> [SE] -> ``ghost2`` (GhostModuleV3, linear) + shortcut.

    ``dilation`` / ``in_dilation`` as for :class:`~ghost_vision.models.layers.GhostBottleneck`.
    """

    __jit_ignored_attributes__ = ["block_args"]

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        dw_kernel_size: int = 3,
        stride: int = 1,
        se_ratio: float = 0.0,
        *,
        mode: str = "original",
        dilation: int = 1,
        in_dilation: int | None = None,
    ) -> None:
        super().__init__()
        in_dilation = dilation if in_dilation is None else in_dilation
        self.block_args = dict(in_chs=in_chs, mid_chs=mid_chs, out_chs=out_chs, dw_kernel_size=dw_kernel_size,
                               stride=stride, se_ratio=se_ratio, attn=mode == "shortcut", dilation=dilation,
                               in_dilation=in_dilation)
        self.stride = stride
        self.num_conv_branches = NUM_CONV_BRANCHES
        self.ghost1 = GhostModuleV3(in_chs, mid_chs, use_act=True, mode=mode, dilation=in_dilation)
        self.has_dw = stride > 1 or in_dilation != dilation  # kept (with its keys) when stride became dilation
        self.dw_rpr_conv = nn.ModuleList(
            [ConvBn(mid_chs, mid_chs, dw_kernel_size, stride, groups=mid_chs, dilation=in_dilation)
             for _ in range(NUM_CONV_BRANCHES if self.has_dw else 0)]
        )
        self.dw_rpr_scale = ConvBn(mid_chs, mid_chs, 1, stride, groups=mid_chs) if self.has_dw else None
        self.se = SqueezeExcite(mid_chs, se_ratio) if se_ratio and se_ratio > 0 else None
        self.ghost2 = GhostModuleV3(mid_chs, out_chs, use_act=False, mode="original", dilation=dilation)
        # the shortcut is GhostBottleneck's (same keys, same dilation rule)
        self.shortcut = GhostBottleneck.make_shortcut(in_chs, out_chs, dw_kernel_size, stride, in_dilation,
                                                      self.has_dw)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from_expansion(x, self.ghost1(x))

    def forward_from_expansion(self, x: Tensor, mid: Tensor) -> Tensor:
        """Finish the block from ``x`` and ``ghost1(x)`` (SSDLite taps the expansion of ``blocks.7``)."""
        if self.dw_rpr_scale is not None:
            y = self.dw_rpr_scale(mid)
            for branch in self.dw_rpr_conv:
                y = y + branch(mid)
            mid = y
        if self.se is not None:
            mid = self.se(mid)
        return self.ghost2(mid) + self.shortcut(x)

    def reparameterized(self) -> GhostBottleneck:
        """The equivalent :class:`GhostBottleneck` (eval-mode statistics): fused Ghost modules and a
        depthwise conv with bias (``bn_dw`` is ``nn.Identity``); SE and shortcut are moved over."""
        with torch.device("meta"):  # a skeleton: every tensor of it is replaced below
            out = GhostBottleneck(**self.block_args)
        out.ghost1, out.ghost2 = self.ghost1.reparameterized(), self.ghost2.reparameterized()
        if self.dw_rpr_scale is not None:
            ref = self.dw_rpr_conv[0].conv
            kernel, bias = _fused_branches(self.dw_rpr_conv, self.dw_rpr_scale, None)
            out.conv_dw, out.bn_dw = _biased_conv(ref, kernel, bias, ref.weight.requires_grad), nn.Identity()
        out.se, out.shortcut = self.se, self.shortcut
        return out.train(self.training)


def reparameterize(model: nn.Module) -> nn.Module:
    """Fuse every GhostNetV3 training-form block inside ``model`` into its inference form, in place.

    Works on a classifier, a feature backbone, or any detector/segmenter holding one; models without V3
    blocks are returned unchanged. Uses the BatchNorms' running statistics: outputs in eval mode equal the
    training form's within float rounding (the fused weights stay trainable unless the branches were frozen).

    Returns:
        ``model`` itself.

    Example:
        >>> import torch
        >>> from ghost_vision.models import create_ghostnet, reparameterize
        >>> model = create_ghostnet("ghostnetv3_050").eval()
        >>> x = torch.rand(1, 3, 64, 64)
        >>> before = model(x)
        >>> _ = reparameterize(model)
        >>> bool((model(x) - before).abs().max() < 1e-5)
        True
    """
    if isinstance(model, (GhostModuleV3, GhostBottleneckV3)):
        raise TypeError(f"reparameterize() rewrites a model in place and cannot replace a bare "
                        f"{type(model).__name__}: use block.reparameterized() (returns the fused block)")
    with torch.no_grad():
        _swap(model)
    return model


def _swap(module: nn.Module) -> None:
    for name, child in list(module._modules.items()):
        if isinstance(child, (GhostModuleV3, GhostBottleneckV3)):
            module._modules[name] = child.reparameterized()
        elif child is not None:
            _swap(child)
