"""COCO instance masks: validate a ``segmentation`` and decode it to a ``H x W`` uint8 mask with pycocotools.

pycocotools decodes polygons (``[[x1, y1, x2, y2, ...], ...]``, several parts for one object), uncompressed
RLE (``{"counts": [ints], "size": [h, w]}``, as crowd regions use) and compressed RLE (``counts`` a string),
but checks nothing: an odd-length polygon drops its last number, a NaN coordinate rasterises somewhere, an RLE
of another image size decodes to a mask of that size and RLE counts summing to the wrong total decode to
garbage. :func:`segmentation_problem` names those cases; :func:`decode_segmentation` raises
:class:`~ghost_vision.data.io.DataError` for them naming the file, the image id and the annotation id (so a
dataset built with ``skip_corrupt=True`` counts the sample as skipped instead of training on a wrong mask).
:func:`mask_to_polygons` goes the other way: a binary mask to COCO polygons that decode back to it exactly.

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

__all__ = ["decode_segmentation", "mask_to_polygons", "segmentation_problem"]


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


# Douglas-Peucker tolerance on the 2x grid: under the 0.5 (half-cell) margin between the traced outline and the
# centres of the pixels on either side of it, so simplifying never moves a pixel centre across the outline.
_SIMPLIFY = 0.45


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO polygons ``[[x1, y1, x2, y2, ...], ...]`` that pycocotools decodes back to exactly ``mask``.

    COCO's pixel ``(x, y)`` covers ``[x, x + 1) x [y, y + 1)`` and pycocotools fills the pixels whose centre
    lies inside a polygon. The outline of each part of ``mask`` is traced on the mask upsampled 2x, so its
    vertices lie on the quarter-pixel grid, a quarter pixel inside the pixel edges, and simplified within
    a fraction of a pixel (Douglas-Peucker): the pixel centres inside stay inside, those outside stay out.
    Each 8-connected part is one polygon (an object in several parts, as real COCO has). COCO polygons have
    no holes (pycocotools takes the union of an annotation's polygons), so a part with holes is cut at a
    hole's first column into pieces without holes, one polygon each. Polygons of fewer than 3 points are
    dropped (the 2x tracing never makes one). An empty mask gives ``[]``.

    Args:
        mask: ``H x W`` boolean or 0/1 array.

    Returns:
        One list of ``x, y`` floats per polygon, in 0-based pixel coordinates of ``mask``.

    Example:
        >>> ring = np.zeros((5, 6), np.uint8)
        >>> ring[0:5, 1:5] = 1
        >>> ring[2, 2] = 0  # a hole: cut into two polygons
        >>> polygons = mask_to_polygons(ring)
        >>> len(polygons), polygons[0]
        (2, [1.25, 0.25, 1.25, 4.75, 1.75, 4.75, 1.75, 0.25])
        >>> bool((decode_segmentation(polygons, 5, 6) == ring).all())
        True
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_polygons: mask must be H x W, got shape {mask.shape}")
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return []
    x0, y0 = int(xs.min()), int(ys.min())
    crop = mask[y0:ys.max() + 1, x0:xs.max() + 1] != 0
    return [(p + (x0, y0)).ravel().tolist() for p in _outlines(crop)]


def _outlines(mask: np.ndarray) -> list[np.ndarray]:
    """``N x 2`` float (x, y) outlines of the parts of a boolean ``mask``; parts with holes are cut first."""
    # OpenCV's contour tracing (Suzuki-Abe), imported here so that importing the data package stays light.
    # cv2 comes with albumentations, a runtime dependency (it requires opencv-python-headless or opencv-python).
    import cv2

    up = np.pad(mask.repeat(2, axis=0).repeat(2, axis=1), 1).astype(np.uint8)  # 2x, then a 1-cell border
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    hole = next((c for c, h in zip(contours, hierarchy[0] if contours else []) if h[3] >= 0), None)
    if hole is not None:
        # the traced hole border's leftmost cell is the upsampled pixel left of the hole: padded cell 2c
        # holds the right half of pixel c - 1, so the hole starts at column c. Cutting there opens the hole
        # on the right piece's left edge and leaves the left piece without it: every cut removes one hole.
        c = cv2.boundingRect(hole)[0] // 2
        left, right = mask.copy(), mask.copy()
        left[:, c:] = False
        right[:, :c] = False
        return _outlines(left) + _outlines(right)
    outlines = []
    for contour in contours:
        points = cv2.approxPolyDP(contour, _SIMPLIFY, True).reshape(-1, 2)
        if len(points) >= 3:
            outlines.append((points - 0.5) / 2)  # the centre of padded cell u is (u - 1 + 0.5) / 2 pixels
    return outlines
