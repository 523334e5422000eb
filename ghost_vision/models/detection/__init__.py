"""GhostNet detectors built on torchvision's detection models (SSDLite, Faster R-CNN, RetinaNet, FCOS)."""

from .fpn import (
    GhostNetFPNBackbone,
    fasterrcnn_ghostnet_fpn,
    fcos_ghostnet_fpn,
    ghostnet_fpn_backbone,
    retinanet_ghostnet_fpn,
)
from .ssdlite import SSDHeadOutputs, SSDLiteFeatureExtractorGhostNet, ssdlite320_ghostnet

__all__ = [
    "GhostNetFPNBackbone",
    "SSDHeadOutputs",
    "SSDLiteFeatureExtractorGhostNet",
    "fasterrcnn_ghostnet_fpn",
    "fcos_ghostnet_fpn",
    "ghostnet_fpn_backbone",
    "retinanet_ghostnet_fpn",
    "ssdlite320_ghostnet",
]
