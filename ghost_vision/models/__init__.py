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
    list_models,
)
from .ghostnet import GhostNet, GhostNetFeatures
from .pretrained import (
    PretrainedWeights,
    WeightsDownloadError,
    get_weights,
    list_weights,
    load_named_weights,
    register_weights,
    skip_weight_loading,
    weights_path,
)
from .segmentation import GhostDeepLabV3, GhostLRASPP, deeplabv3_ghostnet, lraspp_ghostnet
from .weights import WeightsMismatchError, load_weights, read_state_dict

__all__ = [
    "VARIANTS",
    "GhostNet",
    "PretrainedWeights",
    "WeightsDownloadError",
    "get_weights",
    "list_weights",
    "load_named_weights",
    "register_weights",
    "skip_weight_loading",
    "weights_path",
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
    "list_models",
    "load_weights",
    "read_state_dict",
]
