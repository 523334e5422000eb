"""ghost-vision: GhostNet as a first-class backbone for detection and segmentation."""

__version__ = "0.1.0"
