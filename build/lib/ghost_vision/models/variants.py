"""The GhostNet variant table: one place that both the builders (``factory``) and the named weights
(``pretrained``) read, so neither imports the other for it."""

from __future__ import annotations

__all__ = ["VARIANTS"]

#: name -> (version, width). Names are timm's, so checkpoints and docs line up.
VARIANTS: dict[str, tuple[int, float]] = {
    "ghostnet_050": (1, 0.5),
    "ghostnet_100": (1, 1.0),
    "ghostnet_130": (1, 1.3),
    "ghostnetv2_100": (2, 1.0),
    "ghostnetv2_130": (2, 1.3),
    "ghostnetv2_160": (2, 1.6),
    "ghostnetv3_050": (3, 0.5),
    "ghostnetv3_100": (3, 1.0),
    "ghostnetv3_130": (3, 1.3),
    "ghostnetv3_160": (3, 1.6),
}
