"""GhostNet detectors: torchvision's detection models (SSDLite, Faster R-CNN, RetinaNet, FCOS, Mask R-CNN) and
NanoDet-Plus."""

from typing import Any

from .fpn import (
    GhostNetFPNBackbone,
    fasterrcnn_ghostnet_fpn,
    fcos_ghostnet_fpn,
    ghostnet_fpn_backbone,
    retinanet_ghostnet_fpn,
)
from .maskrcnn import maskrcnn_ghostnet_fpn, maskrcnn_mobilenet_v3_large_fpn, maskrcnn_on_fpn
from .nanodet import (
    DynamicSoftLabelAssigner,
    GFLHead,
    GhostPAN,
    NanoDetPlus,
    nanodet_plus_ghostnet,
)
from .ssdlite import SSDLiteFeatureExtractorGhostNet, ssdlite320_ghostnet

__all__ = [
    "DynamicSoftLabelAssigner",
    "GFLHead",
    "GhostNetFPNBackbone",
    "GhostPAN",
    "NanoDetPlus",
    "SSDLiteFeatureExtractorGhostNet",
    "fasterrcnn_ghostnet_fpn",
    "fcos_ghostnet_fpn",
    "ghostnet_fpn_backbone",
    "maskrcnn_ghostnet_fpn",
    "maskrcnn_mobilenet_v3_large_fpn",
    "maskrcnn_on_fpn",
    "nanodet_plus_ghostnet",
    "retinanet_ghostnet_fpn",
    "ssdlite320_ghostnet",
]


def __getattr__(name: str) -> Any:
    # SSDHeadOutputs (an export wrapper) moved to ghost_vision.deploy.export; the old import keeps working
    # without making the model package import deploy.
    if name == "SSDHeadOutputs":
        import warnings

        from ...deploy.export import SSDHeadOutputs

        warnings.warn("import SSDHeadOutputs from ghost_vision.deploy.export (its old place in "
                      "ghost_vision.models is deprecated)", DeprecationWarning, stacklevel=2)
        return SSDHeadOutputs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
