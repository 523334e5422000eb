"""Deployment: a fast CPU inference path (:func:`optimize`), ONNX/TorchScript export and benchmarks.

Example:
    >>> import torch
    >>> from ghost_vision.models import create_ghostnet
    >>> from ghost_vision.deploy import optimize
    >>> model = create_ghostnet("ghostnet_100").eval()
    >>> fast = optimize(model)  # a copy: BN folded, lean Ghost blocks, channels_last weights
    >>> x = torch.rand(1, 3, 224, 224)
    >>> with torch.inference_mode():
    ...     bool((fast(x) - model(x)).abs().max() < 1e-4)
    True
"""

from __future__ import annotations

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

__all__ = [
    "FastGhostBottleneck",
    "FastSqueezeExcite",
    "FusedGhostModule",
    "FusedGhostModuleV2",
    "fold_bn",
    "fuse_model",
    "optimize",
    "unfused_batchnorms",
]


def optimize(
    model: nn.Module,
    *,
    channels_last: bool = True,
    inplace: bool = False,
    fold_se: bool = True,
    compile: bool = False,
) -> nn.Module:
    """The fast inference path for any model built from Ghost blocks (classifier, feature backbone,
    detectors, segmentation models): same outputs within 1e-4, faster on CPU.

    * folds every BatchNorm that follows a convolution (Ghost modules, bottlenecks, stem, torchvision
      heads' ``Conv2dNormActivation``, ``FrozenBatchNorm2d`` too) - eval mode only;
    * replaces Ghost modules and bottlenecks (wherever they are nested) by lean versions: no
      ``Identity``/``Sequential`` dispatch, shortcut added into the Ghost halves instead of
      ``cat`` + ``add``, one-op hard-sigmoid, SE gate folded into the next 1x1 conv at batch 1
      (see :mod:`ghost_vision.deploy.fuse`);
    * ``channels_last``: 4-D weights in NHWC, so every convolution (whose oneDNN kernels prefer it)
      runs and returns NHWC, whatever the input layout.

    Args:
        model: the model, in eval mode (raises ``RuntimeError`` otherwise).
        channels_last: convert weights to ``torch.channels_last``.
        inplace: rewrite ``model`` itself instead of a deep copy.
        fold_se: fold the SE gate into the following conv's weight when the batch is 1.
        compile: wrap the result in ``torch.compile`` (needs a C++ compiler; the first call compiles for
            a minute or more, then shapes that change recompile). Off by default.

    Returns:
        The optimized module (a ``torch.compile`` wrapper when ``compile=True``).
    """
    model = fuse_model(model, inplace=inplace, fold_se=fold_se)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model

