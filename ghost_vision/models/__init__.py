"""GhostNet models: backbones, detectors, segmentation heads and weight loading."""

from .detection import (
    GhostNetFPNBackbone,
    SSDHeadOutputs,
    fasterrcnn_ghostnet_fpn,
    fcos_ghostnet_fpn,
    ghostnet_fpn_backbone,
    retinanet_ghostnet_fpn,
    ssdlite320_ghostnet,
)
from .factory import (
    VARIANTS,
    create_ghostnet,
    ghostnet_050,
    ghostnet_100,
    ghostnet_130,
    ghostnetv2_100,
    ghostnetv2_130,
    ghostnetv2_160,
    ghostnetv3_050,
    ghostnetv3_100,
    ghostnetv3_130,
    ghostnetv3_160,
    list_models,
)
from .ghostnet import GhostNet, GhostNetFeatures
from .layers_v3 import reparameterize
from .segmentation import GhostDeepLabV3, GhostLRASPP, deeplabv3_ghostnet, lraspp_ghostnet
from .weights import WeightsMismatchError, load_weights, read_state_dict

__all__ = [
    "VARIANTS",
    "GhostNet",
    "GhostNetFeatures",
    "WeightsMismatchError",
    "GhostDeepLabV3",
    "GhostLRASPP",
    "GhostNetFPNBackbone",
    "SSDHeadOutputs",
    "create_ghostnet",
    "deeplabv3_ghostnet",
    "fasterrcnn_ghostnet_fpn",
    "fcos_ghostnet_fpn",
    "ghostnet_fpn_backbone",
    "lraspp_ghostnet",
    "retinanet_ghostnet_fpn",
    "ssdlite320_ghostnet",
    "ghostnet_050",
    "ghostnet_100",
    "ghostnet_130",
    "ghostnetv2_100",
    "ghostnetv2_130",
    "ghostnetv2_160",
    "ghostnetv3_050",
    "ghostnetv3_100",
    "ghostnetv3_130",
    "ghostnetv3_160",
    "list_models",
    "reparameterize",
    "load_weights",
    "read_state_dict",
]
