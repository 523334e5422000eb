"""torchvision peers run the way torchvision runs them, behind the same input contract as the Ghost models.

Every network :func:`~ghost_vision.models.get_model` returns takes what its Ghost counterpart takes:

* **segmenters** take float RGB in [0, 1]. Ghost segmenters normalise inside (``normalize=True``); torchvision's
  (``deeplabv3_mobilenet_v3_large``, ``lraspp_mobilenet_v3_large``, ``fcn_resnet50``, ...) expect an already
  normalised tensor, so the registry wraps them in :class:`NormalizedInput` with the mean/std of their
  weights' ``transforms()`` (:func:`peer_transforms`): the same arithmetic as torchvision's documented
  ``weights.transforms()`` + model, done inside the model, so training, validation, ``infer``, export and the
  benchmark all feed it alike. ``normalize=False`` returns torchvision's model unwrapped.
* **detectors** take a list of [0, 1] images and normalise in their own transform (torchvision's
  ``GeneralizedRCNNTransform`` / SSD's), Ghost and peer alike: nothing is added.
* **classifiers and feature trunks** (``ghostnet_100``, ``mobilenet_v3_large``, ``mobilenet_v3_large_features``)
  take an ImageNet-normalised tensor, as timm's GhostNet and torchvision's MobileNetV3 weights both define:
  nothing is added.

Resizing and cropping are the recipe's (the data pipeline gives both models of a comparison the same
crops), not torchvision's evaluation resize (shorter side to 520 px for its segmentation weights).

Example:
    >>> import torch
    >>> from ghost_vision.models import get_model
    >>> peer = get_model("lraspp_mobilenet_v3_large", num_classes=3).eval()
    >>> type(peer).__name__, type(peer.model).__name__
    ('NormalizedInput', 'LRASPP')
    >>> peer(torch.rand(1, 3, 64, 64))["out"].shape
    torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["NormalizedInput", "is_segmentation_builder", "peer_transforms"]


class NormalizedInput(nn.Module):
    """``model((x - mean) / std)``: a network that expects normalised input, given [0, 1] RGB instead.

    The output is the wrapped model's, unchanged (``{"out", "aux"}`` for a segmenter). The mean/std buffers
    are not persistent, so :meth:`state_dict` is the wrapped model's with a ``model.`` prefix, and
    :meth:`load_state_dict` also takes the wrapped model's own (torchvision-format, unprefixed) state dict.

    Args:
        model: the network that expects normalised input.
        mean: per-channel mean subtracted from the input.
        std: per-channel standard deviation the input is divided by.

    Example:
        >>> import torch
        >>> net = NormalizedInput(torch.nn.Identity(), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        >>> net(torch.ones(1, 3, 1, 1)).flatten().tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, model: nn.Module, *, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or not all(s > 0 for s in std):
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.model = model
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1), persistent=False)
        self.register_load_state_dict_pre_hook(_accept_unprefixed)

    def forward(self, x: Tensor) -> Any:
        return self.model((x - self.mean) / self.std)


def _accept_unprefixed(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    # A torchvision checkpoint of the wrapped model has no ``model.`` prefix: re-key it (only when none of
    # this module's keys has the prefix, so a wrapped state dict is never touched).
    own = [k for k in state_dict if k.startswith(prefix)]
    if own and not any(k.startswith(prefix + "model.") for k in own):
        for key in own:
            state_dict[prefix + "model." + key[len(prefix):]] = state_dict.pop(key)


def is_segmentation_builder(builder: Any) -> bool:
    """Whether ``builder`` is one of torchvision's semantic segmentation builders (they expect normalised
    input, unlike the Ghost segmenters)."""
    return getattr(builder, "__module__", "").startswith("torchvision.models.segmentation")


def peer_transforms(name: str, weights: Any = None) -> nn.Module:
    """torchvision's documented preprocessing of a builder's weights (``weights.transforms()``); no download.

    Args:
        name: a torchvision builder name (``"lraspp_mobilenet_v3_large"``, ``"mobilenet_v3_large"``, ...);
            ``"mobilenet_v3_large_features"`` is read as ``"mobilenet_v3_large"``.
        weights: the weights the model is built with (an enum member or its name, ``"DEFAULT"``); ``None``
            (a randomly initialised model) takes the builder's default weights' preprocessing, which is the
            convention of its ImageNet backbone too.

    Returns:
        The transform object (``SemanticSegmentation``, ``ImageClassification``, ``ObjectDetection``) with
        its ``mean``/``std`` where the family normalises outside the model.

    Example:
        >>> peer_transforms("lraspp_mobilenet_v3_large").mean
        [0.485, 0.456, 0.406]
    """
    from torchvision.models import get_model_weights

    enum = get_model_weights(name.removesuffix("_features"))
    return (enum.DEFAULT if weights is None else enum.verify(weights)).transforms()
