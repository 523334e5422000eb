"""COCO instance masks: validate a ``segmentation`` and decode it to a ``H x W`` uint8 mask with pycocotools.

pycocotools decodes polygons (``[[x1, y1, x2, y2, ...], ...]``, several parts for one object), uncompressed
RLE (``{"counts": [ints], "size": [h, w]}``, as crowd regions use) and compressed RLE (``counts`` a string),
but checks nothing: an odd-length polygon drops its last number, a NaN coordinate rasterises somewhere, an RLE
of another image size decodes to a mask of that size and RLE counts summing to the wrong total decode to
garbage. :func:`segmentation_problem` names those cases; :func:`decode_segmentation` raises
:class:`~ghost_vision.data.io.DataError` for them naming the file, the image id and the annotation id (so a
dataset built with ``skip_corrupt=True`` counts the sample as skipped instead of training on a wrong mask).

Example:
    >>> decode_segmentation([[1, 1, 4, 1, 4, 3, 1, 3]], 4, 6)  # pixels whose centre is inside
    array([[0, 0, 0, 0, 0, 0],
           [0, 1, 1, 1, 0, 0],
           [0, 1, 1, 1, 0, 0],
           [0, 0, 0, 0, 0, 0]], dtype=uint8)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .io import DataError

__all__ = ["decode_segmentation", "segmentation_problem"]


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def segmentation_problem(segmentation: Any, height: int, width: int) -> str | None:
    """Why ``segmentation`` is not a valid COCO mask of a ``height x width`` image, or ``None`` when it is."""
    if isinstance(segmentation, list):
        if not segmentation:
            return "segmentation is an empty polygon list"
        for k, poly in enumerate(segmentation):
            if not isinstance(poly, list) or not all(map(_number, poly)):
                return f"polygon {k} is not a list of finite numbers"
            if len(poly) % 2 or len(poly) < 6:
                return f"polygon {k} has {len(poly)} numbers (need an even count of at least 6: 3 x, y points)"
        return None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(type(v) is int for v in size)):
            return f"RLE 'size' must be [height, width], got {size!r}"
        if size != [height, width]:
            return f"RLE size {size} differs from the image's [height, width] [{height}, {width}]"
        if isinstance(counts, list):
            if not all(type(v) is int and v >= 0 for v in counts):
                return "uncompressed RLE 'counts' must be non-negative integers"
            if sum(counts) != height * width:
                return f"uncompressed RLE counts sum to {sum(counts)}, not height x width = {height * width}"
            return None
        if isinstance(counts, str):
            return None  # compressed RLE: pycocotools checks its decoded length below
        return f"RLE 'counts' must be a list of ints or a string, got {type(counts).__name__}"
    return f"segmentation must be a polygon list or an RLE object, got {type(segmentation).__name__}"


def decode_segmentation(
    segmentation: Any, height: int, width: int, *, where: str = "", image_id: Any = None, ann_id: Any = None
) -> np.ndarray:
    """Decode a COCO ``segmentation`` to a ``height x width`` uint8 0/1 mask (pycocotools' rasterisation, as
    ``COCO.annToMask``). Raises :class:`DataError` naming ``where`` (the file), ``image_id`` and ``ann_id`` when
    it is malformed (see :func:`segmentation_problem`)."""
    problem = segmentation_problem(segmentation, height, width)
    if problem is None:
        try:
            if isinstance(segmentation, list):
                rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
            elif isinstance(segmentation["counts"], list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            else:
                rle = segmentation
            mask = mask_utils.decode(rle)
        except (TypeError, ValueError, KeyError) as e:  # e.g. a corrupt compressed RLE string
            problem = f"pycocotools cannot decode it ({e})"
        else:
            if mask.shape == (height, width):
                return mask
            problem = f"decodes to shape {mask.shape}, not ({height}, {width})"
    raise DataError(
        f"{where or 'COCO annotations'}: image id {image_id}, annotation id {ann_id}: malformed segmentation: "
        f"{problem}"
    )
