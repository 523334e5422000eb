"""GhostNet models: backbones, detectors, segmentation heads, weight loading and the model registry
(:func:`get_model`, :func:`list_models`)."""

from .detection import (
    GhostNetFPNBackbone,
    fasterrcnn_ghostnet_fpn,
    fcos_ghostnet_fpn,
    ghostnet_fpn_backbone,
    maskrcnn_ghostnet_fpn,
    nanodet_plus_ghostnet,
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
    resolve_variant,
)
from .ghostnet import GhostNet, GhostNetFeatures
from .layers_v3 import reparameterize
from .peers import NormalizedInput, peer_transforms
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
from .registry import get_model, list_models
from .segmentation import GhostDeepLabV3, GhostLRASPP, deeplabv3_ghostnet, lraspp_ghostnet
from .variants import variant_config, variant_name
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
    "NormalizedInput",
    "peer_transforms",
    "GhostNetFPNBackbone",
    "create_ghostnet",
    "deeplabv3_ghostnet",
    "fasterrcnn_ghostnet_fpn",
    "fcos_ghostnet_fpn",
    "get_model",
    "ghostnet_fpn_backbone",
    "lraspp_ghostnet",
    "maskrcnn_ghostnet_fpn",
    "nanodet_plus_ghostnet",
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
    "resolve_variant",
    "variant_config",
    "variant_name",
]


def __getattr__(name: str):  # the deprecated ghost_vision.models.SSDHeadOutputs (now in deploy.export)
    if name == "SSDHeadOutputs":
        from . import detection

        return detection.__getattr__(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
