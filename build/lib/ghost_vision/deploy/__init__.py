"""Deployment: a fast CPU inference path (:func:`optimize`), ONNX/TorchScript export and benchmarks.

Example:
    >>> import torch
    >>> from ghost_vision.models import create_ghostnet
    >>> from ghost_vision.deploy import optimize
    >>> model = create_ghostnet("ghostnet_100").eval()
    >>> fast = optimize(model)  # a frozen TorchScript copy: BN folded, concat-free blocks, channels_last
    >>> x = torch.rand(1, 3, 224, 224)
    >>> with torch.inference_mode():
    ...     bool((fast(x) - model(x)).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .fuse import (
    FastGhostBottleneck,
    FastSqueezeExcite,
    FusedGhostModule,
    FusedGhostModuleV2,
    fold_bn,
    fuse_model,
    unfused_batchnorms,
)
from .onnx_graph import ConcatFreeGhostModule, optimize_for_onnx
from .script import freeze_network

__all__ = [
    "ConcatFreeGhostModule",
    "FastGhostBottleneck",
    "FastSqueezeExcite",
    "FusedGhostModule",
    "FusedGhostModuleV2",
    "fold_bn",
    "fuse_model",
    "freeze_network",
    "optimize",
    "optimize_for_onnx",
    "unfused_batchnorms",
]


def optimize(
    model: nn.Module,
    *,
    channels_last: bool = True,
    script: bool = True,
    inplace: bool = False,
    fold_se: bool = True,
    compile: bool = False,
) -> nn.Module:
    """The fast CPU inference path for any model built from Ghost blocks (classifier, feature backbone,
    detectors, segmentation models): same outputs within 1e-4, about twice as fast as the plain model.

    * fuses GhostNetV3's training branches (:func:`~ghost_vision.models.reparameterize`, on the copy), after
      which a v3 block is a v2 block and everything below applies to it;
    * folds every BatchNorm that follows a convolution (Ghost modules, bottlenecks, stem, torchvision
      heads' ``Conv2dNormActivation``, ``FrozenBatchNorm2d`` too) - eval mode only;
    * replaces Ghost modules and bottlenecks (wherever they are nested) by concat-free versions: the
      expansion's halves stay apart up to the projection (a sum of two 1x1 convs), the projection's halves
      are added into the shortcut, one-op hard-sigmoid, SE gate folded into the projection at batch 1
      (see :mod:`ghost_vision.deploy.fuse`);
    * ``channels_last``: 4-D weights in NHWC, so every convolution (whose oneDNN kernels prefer it)
      runs and returns NHWC, whatever the input layout;
    * ``script``: freezes the network into TorchScript graphs (:mod:`ghost_vision.deploy.script`): the whole
      model, or a detector's backbone and heads (its Python ``forward`` with transforms and NMS stays).
      Parts that do not script stay eager, with one ``UserWarning`` naming them.

    Move the model to its device before calling this: frozen weights are constants of the graph.

    Args:
        model: the model, in eval mode (raises ``RuntimeError`` otherwise).
        channels_last: convert weights to ``torch.channels_last``.
        script: freeze into TorchScript (``False`` keeps plain modules whose attributes can be inspected).
        inplace: rewrite ``model`` itself instead of a deep copy.
        fold_se: fold the SE gate into the following conv's weight when the batch is 1.
        compile: wrap the eager result in ``torch.compile`` instead of scripting it (needs a C++ compiler;
            the first call compiles for a minute or more, then shapes that change recompile). Off by default.

    Returns:
        The optimized model (a ``ScriptModule`` when scripted as a whole, a ``torch.compile`` wrapper when
        ``compile=True``).

    Example:
        >>> import torch
        >>> from ghost_vision.models import create_ghostnet
        >>> backbone = create_ghostnet("ghostnet_050", features_only=True).eval()
        >>> fast = optimize(backbone, script=False)  # plain modules: inspectable, a little slower
        >>> x = torch.rand(1, 3, 64, 64)
        >>> with torch.inference_mode():
        ...     all(torch.allclose(a, b, atol=1e-4) for a, b in zip(fast(x).values(), backbone(x).values()))
        True
    """
    model = fuse_model(model, inplace=inplace, fold_se=fold_se)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        return torch.compile(model)
    if script:
        model, kept = freeze_network(model)
        if kept:
            warnings.warn(f"optimize(): these parts did not script and stay eager: {'; '.join(kept[:5])}",
                          stacklevel=2)
    return model
