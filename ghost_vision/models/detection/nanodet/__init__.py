"""NanoDet-Plus on GhostNet: Ghost-PAN neck, GFL head, dynamic soft-label assigner, GFL losses, AGM."""

from .assigner import AssignResult, DynamicSoftLabelAssigner
from .head import GFLHead, Integral, SimpleConvHead, bbox2distance, distance2bbox, make_priors
from .losses import distribution_focal_loss, giou_loss, mean_over_ranks, quality_focal_loss
from .model import NanoDetBackbone, NanoDetPlus, nanodet_plus_ghostnet
from .neck import GhostBlocks, GhostPAN

__all__ = [
    "AssignResult",
    "DynamicSoftLabelAssigner",
    "GFLHead",
    "GhostBlocks",
    "GhostPAN",
    "Integral",
    "NanoDetBackbone",
    "NanoDetPlus",
    "SimpleConvHead",
    "bbox2distance",
    "distance2bbox",
    "distribution_focal_loss",
    "giou_loss",
    "make_priors",
    "mean_over_ranks",
    "nanodet_plus_ghostnet",
    "quality_focal_loss",
]
