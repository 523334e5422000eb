"""GhostNet models: backbones, detectors, segmentation heads and weight loading."""

from .factory import (
    VARIANTS,
    create_ghostnet,
    ghostnet_050,
    ghostnet_100,
    ghostnet_130,
    ghostnetv2_100,
    ghostnetv2_130,
    ghostnetv2_160,
    list_models,
)
from .ghostnet import GhostNet, GhostNetFeatures
from .weights import WeightsMismatchError, load_weights, read_state_dict

__all__ = [
    "VARIANTS",
    "GhostNet",
    "GhostNetFeatures",
    "WeightsMismatchError",
    "create_ghostnet",
    "ghostnet_050",
    "ghostnet_100",
    "ghostnet_130",
    "ghostnetv2_100",
    "ghostnetv2_130",
    "ghostnetv2_160",
    "list_models",
    "load_weights",
    "read_state_dict",
]
