"""The GhostNet variant table: one place that both the builders (``factory``) and the named weights
(``pretrained``) read, so neither imports the other for it.

Beyond the named rows, any width is buildable (without published weights) under timm's naming rule,
``ghostnet[v2|v3]_NNN`` with NNN the width times 100: ``ghostnet_110`` is GhostNet v1 at width 1.1, the
width whose SSDLite matches the MobileNetV3 peer's MACs. :func:`variant_config` reads both.
"""

from __future__ import annotations

import re

__all__ = ["VARIANTS", "WIDTH_RANGE", "variant_config", "variant_name"]

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

#: the widths a custom name may give (NNN from 010 to 400)
WIDTH_RANGE = (0.1, 4.0)
_VERSION_PREFIX = {1: "ghostnet", 2: "ghostnetv2", 3: "ghostnetv3"}
_NAME = re.compile(r"ghostnet(?:v([23]))?_(\d{3})")


def variant_config(name: str) -> tuple[int, float] | None:
    """``(version, width)`` of a variant name: a row of :data:`VARIANTS` or ``ghostnet[v2|v3]_NNN`` (width
    NNN / 100 within :data:`WIDTH_RANGE`); ``None`` for anything else.

    Example:
        >>> variant_config("ghostnetv2_130"), variant_config("ghostnet_110"), variant_config("resnet50")
        ((2, 1.3), (1, 1.1), None)
    """
    if not isinstance(name, str):
        return None
    if name in VARIANTS:
        return VARIANTS[name]
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    width = int(match.group(2)) / 100
    if not WIDTH_RANGE[0] <= width <= WIDTH_RANGE[1]:
        return None
    return int(match.group(1) or 1), width


def variant_name(version: int, width: float) -> str | None:
    """The variant name of ``(version, width)``: a row of :data:`VARIANTS` when one matches (to 1e-9), else
    ``ghostnet[v2|v3]_NNN`` when the width is a whole number of hundredths within :data:`WIDTH_RANGE`;
    ``None`` otherwise.

    Example:
        >>> variant_name(1, 1.0), variant_name(1, 1.1), variant_name(3, 0.75), variant_name(1, 1.105)
        ('ghostnet_100', 'ghostnet_110', 'ghostnetv3_075', None)
    """
    for name, (v, w) in VARIANTS.items():
        if v == version and abs(w - width) < 1e-9:
            return name
    hundredths = round(width * 100)
    if version not in _VERSION_PREFIX or abs(width * 100 - hundredths) > 1e-6:
        return None
    if not WIDTH_RANGE[0] <= hundredths / 100 <= WIDTH_RANGE[1]:
        return None
    return f"{_VERSION_PREFIX[version]}_{hundredths:03d}"
