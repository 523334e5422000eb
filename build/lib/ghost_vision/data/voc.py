"""Pascal VOC detection (XML) and segmentation (``SegmentationClass`` palette PNGs) in the VOCdevkit layout.

Box convention: VOC XML coordinates are 1-based and inclusive, so ``[xmin, xmax]`` covers the 0-based
pixel columns ``xmin - 1 .. xmax - 1``; as continuous 0-based xyxy that is
``(xmin - 1, ymin - 1, xmax, ymax)``. Writing back to VOC is the inverse:
``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2``.
"""

from __future__ import annotations

import logging
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._target import Transforms, finalize_detection, image_to_tensor, to_tensor_target
from .io import (
    DataError,
    SkipCorrupt,
    SkippingDataset,
    few,
    read_colour_mask,
    read_image,
    read_label_png,
    require_file,
)

__all__ = ["VOC_CLASSES", "VOCDetection", "VOCSegmentation", "voc_colormap"]

logger = logging.getLogger("ghost_vision.data")

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC palette (``n x 3`` uint8): the devkit's bit-interleaving recipe (no library exposes it)."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _years(year: str | int | Sequence[str | int]) -> list[str]:
    years = [year] if isinstance(year, (str, int)) else list(year)
    out = [str(y).removeprefix("VOC") for y in years]
    if not out:
        raise ValueError("year must name at least one VOC year")
    return out


def _year_dir(root: Path, year: str) -> Path:
    for cand in (root / f"VOC{year}", root / "VOCdevkit" / f"VOC{year}"):
        if cand.is_dir():
            return cand
    raise FileNotFoundError(
        f"VOC{year} folder not found under {root} (expected {root / f'VOC{year}'}; root is the VOCdevkit folder)"
    )


def _read_ids(list_file: Path) -> list[str]:
    require_file(list_file, "VOC image-set list")
    ids = []
    for line in list_file.read_text(encoding="utf-8").splitlines():
        parts = line.split()
        if parts:
            ids.append(parts[0])
    return ids


def find_image(folder: Path, image_id: str) -> Path:
    """``folder/{image_id}.jpg``, else the same stem with another image extension."""
    for ext in IMAGE_EXTENSIONS:
        path = folder / f"{image_id}{ext}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"image file not found: {folder / (image_id + '.jpg')} (also tried other extensions)")


class _VOCBase(SkippingDataset):
    def __init__(self, root, year, image_set, subdir, transforms, skip_corrupt, name):
        self.root = Path(root)
        self.years = _years(year)
        self.image_set = image_set
        self.transforms = transforms
        self._items: list[tuple[Path, str]] = []
        for y in self.years:
            ydir = _year_dir(self.root, y)
            self._items += [(ydir, i) for i in _read_ids(ydir / "ImageSets" / subdir / f"{image_set}.txt")]
        self.ids: list[str] = [i for _, i in self._items]
        self._skip = SkipCorrupt(skip_corrupt, f"{name}({self.root}, {'+'.join(self.years)}, {image_set})",
                                 len(self.ids))

    @property
    def num_classes(self) -> int:
        """Number of classes including background (K + 1)."""
        return len(self.classes) + 1

    def image_path(self, index: int) -> Path:
        """The image file of sample ``index`` (``JPEGImages/{id}.jpg`` when no file of that stem exists)."""
        ydir, image_id = self._items[index]
        try:
            return find_image(ydir / "JPEGImages", image_id)
        except FileNotFoundError:
            return ydir / "JPEGImages" / f"{image_id}.jpg"


def _number(obj: ET.Element, tag: str, xml_path: Path, what: str) -> float:
    node = obj.find(tag)
    if node is None or node.text is None:
        raise DataError(f"malformed VOC XML {xml_path}: {what}: <{tag}> missing")
    try:
        value = float(node.text.strip())
    except ValueError as e:
        raise DataError(f"malformed VOC XML {xml_path}: {what}: <{tag}> is not a number: {node.text!r}") from e
    if not math.isfinite(value):
        raise DataError(f"malformed VOC XML {xml_path}: {what}: <{tag}> is not finite: {node.text!r}")
    return value


def parse_voc_xml(xml_path: Path) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
    """Objects (name, 0-based xyxy box, difficult) and the XML ``(width, height)`` (None when 0/absent).

    Raises :class:`DataError` naming the file and the object for: malformed XML, an ``<object>`` without a
    non-empty ``<name>`` or without ``<bndbox>``, a coordinate that is missing, not a number or not finite,
    ``xmax < xmin`` or ``ymax < ymin``, a non-numeric ``<size>``.
    """
    require_file(xml_path, "VOC annotation file")
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise DataError(f"malformed VOC XML {xml_path}: {e}") from e
    size = None
    if root.find("size") is not None:
        w, h = (_number(root.find("size"), t, xml_path, "<size>") for t in ("width", "height"))
        size = (int(w), int(h)) if w > 0 and h > 0 else None
    objects = []
    for k, obj in enumerate(root.iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"malformed VOC XML {xml_path}: object #{k} has no <name> (or an empty one)")
        what = f"object #{k} ({name!r})"
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"malformed VOC XML {xml_path}: {what} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(bnd, t, xml_path, what) for t in ("xmin", "ymin", "xmax", "ymax"))
        if xmax < xmin or ymax < ymin:
            raise DataError(
                f"malformed VOC XML {xml_path}: {what} has xmax < xmin or ymax < ymin "
                f"(xmin={xmin:g}, ymin={ymin:g}, xmax={xmax:g}, ymax={ymax:g})"
            )
        diff = (obj.findtext("difficult") or "0").strip()
        objects.append({
            "name": name,
            "box": (xmin - 1.0, ymin - 1.0, xmax, ymax),
            "difficult": diff not in ("0", "", "false", "False"),
        })
    return objects, size


class VOCDetection(_VOCBase):
    """Pascal VOC detection from a VOCdevkit folder (``root/VOC2007``, ``root/VOC2012``, ...).

    Ids come from ``VOC{year}/ImageSets/Main/{image_set}.txt``; files are found by id
    (``Annotations/{id}.xml``, ``JPEGImages/{id}.jpg`` or another extension); the XML's ``<filename>`` and
    ``<path>`` are ignored. Boxes follow the module's convention ``(xmin - 1, ymin - 1, xmax, ymax)``.
    ``classes`` (without background) defaults to the 20 VOC classes; ``num_classes == len(classes) + 1``.
    Every XML is parsed and validated once, here (:func:`parse_voc_xml`); a malformed one raises
    :class:`DataError` naming it (with ``skip_corrupt=True`` its sample is skipped instead, see
    :class:`~ghost_vision.data.io.SkipCorrupt`). Objects of a class outside ``classes`` raise
    :class:`DataError` naming the class and an XML holding it, unless ``ignore_unknown_classes=True``: then
    they are dropped, counted in one warning (:attr:`num_unknown_objects`). ``keep_difficult=False`` drops
    difficult objects; with ``True`` they stay, flagged in ``target["difficult"]``. ``target["image_id"]``
    is the index in the dataset (the string id is ``dataset.ids[index]``); ``target["orig_size"]`` is
    ``(H, W)`` before transforms.

    Example:
        >>> ds = VOCDetection("VOCdevkit", year=["2007", "2012"], image_set="trainval")  # doctest: +SKIP
        >>> ds = VOCDetection("raccoon_voc", year="2007", classes=("raccoon",))  # doctest: +SKIP
        >>> image, target = ds[0]  # doctest: +SKIP
        >>> sorted(target)  # doctest: +SKIP
        ['boxes', 'difficult', 'image_id', 'labels', 'orig_size']
    """

    def __init__(
        self,
        root: str | Path,
        *,
        year: str | int | Sequence[str | int] = "2007",
        image_set: str = "trainval",
        classes: Sequence[str] | None = None,
        keep_difficult: bool = False,
        transforms: Transforms | None = None,
        skip_corrupt: bool = False,
        ignore_unknown_classes: bool = False,
    ) -> None:
        super().__init__(root, year, image_set, "Main", transforms, skip_corrupt, "VOCDetection")
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else VOC_CLASSES
        self._label = {name: i + 1 for i, name in enumerate(self.classes)}
        self.keep_difficult = keep_difficult
        self.ignore_unknown_classes = ignore_unknown_classes
        self._parsed: list[tuple[list[dict[str, Any]], tuple[int, int] | None] | None] = []
        unknown: dict[str, list[Any]] = {}  # class -> [objects, first XML]
        for index in range(len(self.ids)):
            try:
                objects, size = parse_voc_xml(self.xml_path(index))
            except (DataError, OSError) as e:
                if not skip_corrupt:
                    raise
                self._skip.mark(index, e, self.sample_files(index))
                self._parsed.append(None)
                continue
            for o in objects:
                if o["name"] not in self._label:
                    unknown.setdefault(o["name"], [0, self.xml_path(index)])[0] += 1
            self._parsed.append((objects, size))
        self.num_unknown_objects = sum(n for n, _ in unknown.values())
        if unknown:
            names = sorted(unknown, key=lambda c: -unknown[c][0])
            desc = few(f"{c!r} ({unknown[c][0]} objects, e.g. in {unknown[c][1]})" for c in names)
            if not ignore_unknown_classes:
                raise DataError(
                    f"VOCDetection: objects of classes not in `classes` {list(self.classes)}: {desc}. Add them to "
                    "`classes`, or pass ignore_unknown_classes=True to drop such objects"
                )
            warnings.warn(
                f"VOCDetection: dropping {self.num_unknown_objects} objects of classes not in `classes` "
                f"(ignore_unknown_classes=True): {desc}",
                stacklevel=2,
            )

    def xml_path(self, index: int) -> Path:
        ydir, image_id = self._items[index]
        return ydir / "Annotations" / f"{image_id}.xml"

    def sample_files(self, index: int) -> tuple[str, ...]:
        return str(self.xml_path(index)), str(self.image_path(index))

    def annotation(self, index: int) -> dict[str, Any]:
        """The parsed annotation of sample ``index`` (numpy boxes/labels/difficult, XML size), no I/O."""
        parsed = self._parsed[index]
        if parsed is None:
            raise DataError(f"VOCDetection: {self.xml_path(index)} is unreadable (skipped, skip_corrupt=True)")
        objects, size = parsed
        objects = [o for o in objects if o["name"] in self._label and (self.keep_difficult or not o["difficult"])]
        return {
            "boxes": np.asarray([o["box"] for o in objects], dtype=np.float32).reshape(-1, 4),
            "labels": np.asarray([self._label[o["name"]] for o in objects], dtype=np.int64),
            "difficult": np.asarray([o["difficult"] for o in objects], dtype=bool),
            "size": size,
        }

    def _load(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ann = self.annotation(index)
        image = read_image(find_image(self._items[index][0] / "JPEGImages", self.ids[index]))
        h, w = image.shape[:2]
        if ann["size"] is not None and ann["size"] != (w, h):
            logger.debug("%s: XML size %s differs from the image's (%d, %d); using the image", self.ids[index],
                         ann["size"], w, h)
        target = {k: ann[k] for k in ("boxes", "labels", "difficult")}
        tensor, t = finalize_detection(image, target, self.transforms, per_box=("labels", "difficult"))
        out = to_tensor_target(t, {"boxes": torch.float32, "labels": torch.int64, "difficult": torch.bool})
        out["image_id"] = torch.tensor(index, dtype=torch.int64)
        out["orig_size"] = torch.tensor((h, w), dtype=torch.int64)
        return tensor, out


class VOCSegmentation(_VOCBase):
    """Pascal VOC semantic segmentation: ``SegmentationClass/{id}.png`` palette PNGs to class ids.

    Ids come from ``VOC{year}/ImageSets/Segmentation/{image_set}.txt``. Mask values are the palette
    indices: 0 background, 1..K the ``classes`` (default the 20 VOC classes), 255 ignored (object borders);
    any other value raises :class:`~ghost_vision.data.io.DataError` naming the file. Masks saved as RGB
    with the VOC colours are decoded too. ``num_classes == len(classes) + 1`` (21 for VOC).
    Samples are ``(image float32 3xHxW, mask int64 HxW)``.

    Example:
        >>> ds = VOCSegmentation("VOCdevkit", year="2012", image_set="val")  # doctest: +SKIP
        >>> image, mask = ds[0]  # doctest: +SKIP
        >>> mask.dtype, ds.num_classes  # doctest: +SKIP
        (torch.int64, 21)
    """

    def __init__(
        self,
        root: str | Path,
        *,
        year: str | int | Sequence[str | int] = "2012",
        image_set: str = "train",
        classes: Sequence[str] | None = None,
        transforms: Transforms | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        super().__init__(root, year, image_set, "Segmentation", transforms, skip_corrupt, "VOCSegmentation")
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else VOC_CLASSES

    def read_mask(self, path: Path) -> np.ndarray:
        """The ``H x W`` uint8 class-id mask stored in ``path`` (validated)."""
        require_file(path, "VOC segmentation mask")
        try:
            mask = read_label_png(path)
        except DataError:
            mask = self._decode_rgb(path)
        mask = mask.astype(np.int64)
        bad = (mask > len(self.classes)) & (mask != 255)
        if bad.any():
            raise DataError(f"VOC mask {path} has values {np.unique(mask[bad])[:10].tolist()} outside 0..{len(self.classes)} and 255")
        return mask.astype(np.uint8)

    def _decode_rgb(self, path: Path) -> np.ndarray:
        # a colour in the VOC palette decodes to its position (values above len(classes) fail in read_mask)
        return read_colour_mask(path, voc_colormap()).astype(np.uint8)

    def mask_path(self, index: int) -> Path:
        ydir, image_id = self._items[index]
        return ydir / "SegmentationClass" / f"{image_id}.png"

    def sample_files(self, index: int) -> tuple[str, ...]:
        return str(self.image_path(index)), str(self.mask_path(index))

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        ydir, image_id = self._items[index]
        image = read_image(find_image(ydir / "JPEGImages", image_id))
        mask_path = self.mask_path(index)
        mask = self.read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(f"VOC mask {mask_path} is {mask.shape[::-1]} but its image is {image.shape[1::-1]} (W, H)")
        if self.transforms is not None:
            image, mask = self.transforms(image=image, mask=mask)
        return image_to_tensor(image), torch.as_tensor(np.asarray(mask)).to(torch.int64)
