"""Validation of a COCO annotation file once at load: malformed records raise :class:`DataError` naming the
file and the records (the first few ids and how many); legal but degenerate boxes are only counted.

pycocotools validates nothing (a NaN box reaches the loss, an orphan annotation vanishes, a duplicated image
id is scored twice), hence this module. It is vectorised where the work grows with the number of boxes
(COCO train2017: 860k): each check is one C-level pass (comprehension, ``set(map(type, ...))``) plus numpy;
the record-by-record search for culprits runs only once a check has failed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from .io import DataError, few

__all__ = ["validate_coco"]

_NUMBER = {int, float}


class _Checker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, problem: str, culprits: Iterable[Any], hint: str = "") -> NoReturn:
        raise DataError(f"COCO annotation file {self.path}: {problem}: {few(culprits)}{'. ' + hint if hint else ''}")

    def check(self, bad: Any, what: str, problem: str, names: Callable[[np.ndarray], Iterable[Any]],
              hint: str = "") -> None:
        """Raise when the boolean mask ``bad`` has a ``True``; ``names(indices)`` names the records."""
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            self.fail(f"{what}s {problem}", names(np.flatnonzero(bad)), hint)

    def records(self, items: list[Any], what: str) -> None:
        if set(map(type, items)) - {dict}:
            self.fail(f"{what} entries that are not objects", (f"{what}s[{i}]" for i, x in enumerate(items)
                                                               if not isinstance(x, dict)))

    def columns(self, items: list[dict], keys: tuple[str, ...], what: str, defaults: tuple[Any, ...] | None = None
                ) -> tuple[list[Any], ...]:
        """The values of ``keys`` in every record, one list per key (a C-level pass with ``itemgetter`` each).
        Without ``defaults`` a missing key raises naming the records; with them, missing keys take them."""
        try:  # one C-level map per key: no per-record tuple (which would wake the GC over the whole file)
            return tuple(list(map(itemgetter(key), items)) for key in keys)
        except KeyError:
            if defaults is not None:
                return tuple([x.get(k, d) for x in items] for k, d in zip(keys, defaults))
            for key in keys:
                if any(key not in x for x in items):
                    self.fail(f"{what}s without '{key}'", (_name(i, x, what) for i, x in enumerate(items) if key not in x))
            raise

    def int_ids(self, values: list[Any], what: str, key: str, names) -> np.ndarray:
        if set(map(type, values)) - {int}:
            self.check([type(v) is not int for v in values], what, f"whose '{key}' is not an integer", names)
        try:
            return np.fromiter(values, dtype=np.int64, count=len(values))
        except OverflowError:
            self.check([abs(v) >= 2**63 for v in values], what, f"whose '{key}' does not fit in 64 bits", names)
            raise

    def unique(self, ids: np.ndarray, what: str) -> None:
        values, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = values[counts > 1]
            self.fail(f"duplicate {what} ids", dup.tolist(),
                      f"each {what} id must occur once ({int(counts[counts > 1].sum())} entries share them)")

    def numbers(self, values: list[Any], what: str, key: str, names, *, positive: bool) -> np.ndarray:
        """A float64 column; raises for non-numbers, non-finite and negative (or zero) values."""
        if set(map(type, values)) - _NUMBER:
            self.check([type(v) not in _NUMBER for v in values], what, f"whose '{key}' is not a number", names)
        try:
            arr = np.fromiter(values, dtype=np.float64, count=len(values))
        except OverflowError:  # an integer beyond float64: infinite, i.e. not finite
            arr = np.array([v if abs(v) < 1e308 else np.inf for v in values], dtype=np.float64)
        self.check(~np.isfinite(arr), what, f"whose '{key}' is not finite", names)
        self.check(arr <= 0 if positive else arr < 0, what, f"whose '{key}' is {'not positive' if positive else 'negative'}",
                   names)
        return arr


def _name(i: int, record: Any, what: str) -> str:
    ident = record.get("id") if isinstance(record, dict) else None
    return f"id {ident}" if isinstance(ident, int) else f"{what}s[{i}]"


def _boxes(c: _Checker, bboxes: list[Any], names) -> np.ndarray:
    """``N x 4`` float64 from the ``bbox`` lists, raising for anything but 4 finite numbers each."""
    ok = not (set(map(type, bboxes)) - {list}) and set(map(len, bboxes)) <= {4}
    ok = ok and not (set(map(type, chain.from_iterable(bboxes))) - _NUMBER)
    if not ok:
        c.check([not (isinstance(b, list) and len(b) == 4 and all(type(v) in _NUMBER for v in b)) for b in bboxes],
                "annotation", "whose 'bbox' is not a list of 4 numbers [x, y, width, height]", names)
    try:
        arr = np.fromiter(chain.from_iterable(bboxes), dtype=np.float64, count=4 * len(bboxes)).reshape(-1, 4)
    except OverflowError:  # an integer beyond float64
        arr = np.array([[float(v) if abs(v) < 1e308 else np.inf for v in b] for b in bboxes]).reshape(-1, 4)
    c.check(~np.isfinite(arr).all(1), "annotation", "whose 'bbox' holds NaN or infinity", names)
    c.check((arr[:, 2] < 0) | (arr[:, 3] < 0), "annotation", "whose 'bbox' has a negative width or height", names,
            "COCO boxes are [x, y, width, height]; was the file written as [x1, y1, x2, y2]?")
    return arr


def validate_coco(data: dict[str, Any], path: Path, *, evaluation: bool = False) -> dict[str, int]:
    """Check a parsed COCO detection file; raise :class:`DataError` naming the file and the records.

    Checked: ``images`` entries are objects with an integer ``id`` (unique), a non-empty ``file_name`` and a
    positive ``width``/``height``; ``categories`` have unique integer ids; ``annotations`` have a positive
    integer ``id`` (unique: pycocotools reads id 0 as "unmatched"), an integer ``image_id`` present in
    ``images``, an integer ``category_id``, a ``bbox`` of 4 finite numbers with width and height >= 0, ``iscrowd`` 0 or
    1 and a finite ``area`` >= 0 when present. ``evaluation=True`` also requires ``area`` and ``iscrowd``
    (pycocotools' COCOeval reads both). Returns counts: ``boxes`` and ``degenerate`` (boxes under 1 px wide
    or high once clipped to their image: legal, COCO has them, and left out of training targets).
    """
    c = _Checker(path)
    images, anns, cats = data["images"], data["annotations"], data["categories"]
    if not isinstance(anns, list):
        c.fail("'annotations' is not a list", [type(anns).__name__])
    for items, what in ((images, "image"), (anns, "annotation"), (cats, "category")):
        c.records(items, what)

    def img_names(idx):
        return (_name(int(i), images[int(i)], "image") for i in idx)

    ids, files, width, height = c.columns(images, ("id", "file_name", "width", "height"), "image")
    img_ids = c.int_ids(ids, "image", "id", img_names)
    c.unique(img_ids, "image")
    c.check([not (isinstance(f, str) and f) for f in files], "image", "whose 'file_name' is not a non-empty string",
            img_names)
    size = {k: c.numbers(v, "image", k, img_names, positive=True) for k, v in (("width", width), ("height", height))}

    cat_ids = c.int_ids(c.columns(cats, ("id",), "category")[0], "category", "id",
                        lambda idx: (f"categories[{i}]" for i in idx))
    c.unique(cat_ids, "category")
    if not anns:
        return {"boxes": 0, "degenerate": 0}

    def ann_names(idx):
        return (_name(int(i), anns[int(i)], "annotation") for i in idx)

    ids, a_img, cat, bboxes = c.columns(anns, ("id", "image_id", "category_id", "bbox"), "annotation")
    c.int_ids(cat, "annotation", "category_id", ann_names)  # ids absent from 'categories': dropped, warned
    ids = c.int_ids(ids, "annotation", "id", ann_names)
    c.check(ids <= 0, "annotation", "whose 'id' is not positive", ann_names,
            "pycocotools' COCOeval treats annotation id 0 as 'unmatched'")
    c.unique(ids, "annotation")
    a_img = c.int_ids(a_img, "annotation", "image_id", ann_names)
    order = np.argsort(img_ids)
    pos = np.searchsorted(img_ids[order], a_img).clip(0, max(0, len(img_ids) - 1))
    known = img_ids[order][pos] == a_img if len(img_ids) else np.zeros(len(a_img), dtype=bool)
    c.check(~known, "annotation", "whose 'image_id' is not in 'images'", ann_names)
    boxes = _boxes(c, bboxes, ann_names)
    crowd, area = c.columns(anns, ("iscrowd", "area"), "annotation", None if evaluation else (0, 0.0))
    c.check([not (type(v) is int and v in (0, 1)) for v in crowd] if set(map(type, crowd)) - {int}
            else ~np.isin(np.fromiter(crowd, np.int64, len(crowd)), (0, 1)),
            "annotation", "whose 'iscrowd' is not 0 or 1", ann_names)
    c.numbers(area, "annotation", "area", ann_names, positive=False)

    # legal but degenerate: under 1 px once clipped to the image (what training drops, see _target.py)
    w, h = size["width"][order][pos], size["height"][order][pos]
    x1, y1 = boxes[:, 0].clip(0, w), boxes[:, 1].clip(0, h)
    x2, y2 = (boxes[:, 0] + boxes[:, 2]).clip(0, w), (boxes[:, 1] + boxes[:, 3]).clip(0, h)
    degenerate = int((((x2 - x1) < 1) | ((y2 - y1) < 1)).sum())
    return {"boxes": len(anns), "degenerate": degenerate}
