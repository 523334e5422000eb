"""Deterministic synthetic "shapes" datasets written in the real COCO, Pascal VOC and Cityscapes formats and
as image/mask folders.

The same four shape classes (:data:`SYNTHETIC_CLASSES`: circle, triangle, rectangle, star) appear in every
variant, in this order, so label ``k`` means the same shape everywhere (COCO maps them from the
non-contiguous category ids :data:`SYNTHETIC_COCO_CATEGORY_IDS`). Every image is drawn from its own seed
(``seed``, format, split, index), so the output is byte-identical for the same arguments, and a dataset is
written to a temporary folder and moved into place with a ``.complete.json`` marker: calling a writer again
with the same arguments does nothing, and a dataset written by an older version of a writer (its marker's
``version``, see :func:`is_current`) is written again.

Example:
    >>> from ghost_vision.data.synthetic import write_synthetic_coco
    >>> root = write_synthetic_coco("data_cache/shapes_coco", num_train=200, num_val=50)  # doctest: +SKIP
    >>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
    ['annotations', 'train2017', 'val2017']
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ._render import SHAPE_CLASSES, Scene, Shape, outline, render_scene, smooth_noise
from .masks import mask_to_polygons
from .voc import voc_colormap

__all__ = [
    "SYNTHETIC_CITYSCAPES_LABEL_IDS",
    "SYNTHETIC_CLASSES",
    "SYNTHETIC_COCO_CATEGORY_IDS",
    "SYNTHETIC_FOLDER_CLASSES",
    "is_current",
    "read_marker",
    "write_synthetic_cityscapes",
    "write_synthetic_coco",
    "write_synthetic_folder",
    "write_synthetic_voc",
]

SYNTHETIC_CLASSES: tuple[str, ...] = SHAPE_CLASSES
SYNTHETIC_COCO_CATEGORY_IDS: tuple[int, ...] = (2, 5, 9, 17)  # non-contiguous, as in real COCO
# Cityscapes label id drawn for each shape: person, traffic sign, car, traffic light.
SYNTHETIC_CITYSCAPES_LABEL_IDS: tuple[int, ...] = (24, 20, 26, 19)
_CITYSCAPES_VOID_IDS = (5, 14, 29, 30)  # dynamic, guard rail, caravan, trailer: all map to 255
MARKER = ".complete.json"
# Bumped when a writer's output changes, so that a dataset cached by an older version is written again.
# coco 2: non-crowd masks as polygons (version 1 wrote compressed RLE).
_FORMAT_VERSIONS = {"coco": 2, "voc": 1, "cityscapes": 1, "folder": 1}


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *key]))


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(h, w): landscape 320-400 x 240-300, one in five portrait."""
    w, h = int(rng.integers(320, 401)), int(rng.integers(240, 301))
    return (w, h) if rng.random() < 0.2 else (h, w)


def read_marker(root: str | Path) -> dict[str, Any] | None:
    """The parameters a writer recorded in ``root`` (``format``, ``num_train``, ...), ``None`` when ``root``
    holds no complete synthetic dataset."""
    try:
        return json.loads((Path(root) / MARKER).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_current(marker: dict[str, Any]) -> bool:
    """Whether ``marker`` (from :func:`read_marker`) was written by this version of its format's writer; the
    writer writes an older dataset again.

    Example:
        >>> is_current({"format": "coco", "version": 1, "num_train": 200, "num_val": 50, "seed": 0})
        False
    """
    return marker.get("version") == _FORMAT_VERSIONS.get(marker.get("format"))


def _materialize(root: str | Path, params: dict[str, Any], write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` and move ``tmp`` to ``root`` with a marker, unless ``root`` already matches."""
    root = Path(root)
    params = {"version": _FORMAT_VERSIONS[params["format"]], **params}
    marker = root / MARKER
    if marker.is_file():
        found = read_marker(root) or {}
        if found == params:
            return root
        if root.is_symlink():
            # the link's target may be another run's data (a shared cache): rewriting it under that run would
            # change its files mid-training, and rmtree refuses links anyway, after the whole write
            differ = ", ".join(f"{k} {found.get(k)!r} here, {v!r} asked" for k, v in params.items() if found.get(k) != v)
            raise FileExistsError(
                f"{root} is a link to {root.resolve()}, a synthetic dataset written with other settings ({differ}); "
                "a linked dataset is not rewritten: give this run a root of its own, or link to one written with "
                "these settings"
            )
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists and is not a synthetic dataset folder (no {MARKER}); choose another root")
    # a link to an empty (or not yet existing) folder: write into its target and keep the link
    dest = root.resolve() if root.is_symlink() else root
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps(params, sort_keys=True))
        if dest.exists():  # an empty folder, or an older synthetic dataset (it has our marker)
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, quality=90)


def _splits(num_train: int, num_val: int) -> list[tuple[str, int, int]]:
    return [("train", 0, num_train), ("val", 1, num_val)]


# ----------------------------------------------------------------------------------------------- COCO
def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO's uncompressed RLE (column-major run lengths starting with zeros), as real crowd annotations use."""
    flat = mask.flatten(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _coco_ann(ann_id: int, image_id: int, shape: Shape, crowd: bool) -> dict[str, Any]:
    # The polygons decode to exactly the visible pixels (mask_to_polygons), so ``bbox`` (their tight box)
    # and ``area`` (their pixel count, what pycocotools' annToMask(...).sum() gives) hold for either form.
    x0, y0, x1, y1 = shape.box
    seg = _uncompressed_rle(shape.mask) if crowd else mask_to_polygons(shape.mask)
    return {
        "id": ann_id, "image_id": image_id, "category_id": SYNTHETIC_COCO_CATEGORY_IDS[shape.cls],
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "area": float(shape.area),
        "iscrowd": int(crowd), "segmentation": seg,
    }


def _coco_scene(seed: int, code: int, i: int) -> tuple[int, int, Scene]:
    """(h, w, scene) of image ``i`` of split ``code`` (0 train, 1 val)."""
    rng = _rng(seed, 1, code, i)
    h, w = _image_size(rng)
    return h, w, render_scene(rng, h, w, crowd=i % 25 == 0)


def write_synthetic_coco(
    root: str | Path, *, num_train: int = 200, num_val: int = 50, seed: int = 0, progress: bool = False
) -> Path:
    """Write ``root/{train2017,val2017}/*.jpg`` and ``root/annotations/instances_{train,val}2017.json``.

    Image ids are non-sequential (train ``10 i + 7``, val ``500000 + 10 i + 3``); every 25th image holds a
    crowd region (``iscrowd=1``, uncompressed RLE). Every other annotation's ``segmentation`` is a list of
    polygons, as in real COCO, of the shape's visible pixels (shapes drawn later hide parts of earlier ones,
    so some objects come in several parts, one polygon each): pycocotools decodes them to exactly those
    pixels (see :func:`~ghost_vision.data.masks.mask_to_polygons`). ``bbox`` is their tight box and
    ``area`` their pixel count, which is what pycocotools' ``annToMask(ann).sum()`` gives (real COCO's
    ``area`` is the polygon's own area, a little off the pixel count).

    Example:
        >>> import tempfile
        >>> root = write_synthetic_coco(tempfile.mkdtemp(), num_train=2, num_val=1)
        >>> sorted(p.name for p in (root / "annotations").iterdir()), len(list((root / "train2017").iterdir()))
        (['instances_train2017.json', 'instances_val2017.json'], 2)
    """

    def write(tmp: Path) -> None:
        (tmp / "annotations").mkdir()
        categories = [
            {"id": cid, "name": name, "supercategory": "shape"}
            for cid, name in zip(SYNTHETIC_COCO_CATEGORY_IDS, SYNTHETIC_CLASSES, strict=True)
        ]
        ann_id = 1
        for split, code, count in _splits(num_train, num_val):
            folder = tmp / f"{split}2017"
            folder.mkdir()
            images, annotations = [], []
            for i in tqdm(range(count), desc=f"shapes COCO {split}", disable=not progress):
                h, w, scene = _coco_scene(seed, code, i)
                image_id = 10 * i + 7 if code == 0 else 500000 + 10 * i + 3
                name = f"{image_id:012d}.jpg"
                _save_jpeg(folder / name, scene.image)
                images.append({"id": image_id, "file_name": name, "width": w, "height": h})
                for shape, crowd in [(o, False) for o in scene.objects] + [(c, True) for c in scene.crowds]:
                    annotations.append(_coco_ann(ann_id, image_id, shape, crowd))
                    ann_id += 1
            data = {
                "info": {"description": f"ghost-vision synthetic shapes ({split}, seed {seed})", "version": "1.0"},
                "licenses": [], "images": images, "annotations": annotations, "categories": categories,
            }
            (tmp / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data, separators=(",", ":")))

    params = {"format": "coco", "num_train": num_train, "num_val": num_val, "seed": seed}
    return _materialize(root, params, write)


# ------------------------------------------------------------------------------------------------ VOC
def _voc_xml(image_id: str, scene: Scene, h: int, w: int) -> bytes:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = "VOC"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    size = ET.SubElement(ann, "size")
    for tag, v in (("width", w), ("height", h), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(ann, "segmented").text = "1"
    small = 0.06 * max(h, w)
    for o in scene.objects:
        x0, y0, x1, y1 = o.box
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = SYNTHETIC_CLASSES[o.cls]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = "1" if max(x1 - x0, y1 - y0) < small else "0"
        bnd = ET.SubElement(obj, "bndbox")
        # 0-based continuous (x0, y0, x1, y1) -> VOC 1-based inclusive (x0 + 1, y0 + 1, x1, y1)
        for tag, v in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bnd, tag).text = str(v)
    ET.indent(ann)
    return ET.tostring(ann, encoding="utf-8")


def _class_mask(scene: Scene, h: int, w: int) -> np.ndarray:
    """``h x w`` uint8: 0 background, ``1 + class`` on each shape, 255 on a 1-px border around each (as VOC)."""
    label = np.zeros((h, w), np.uint8)
    for o in scene.objects:
        label[o.mask] = o.cls + 1
    for o in scene.objects:
        label[outline(o.mask)] = 255
    return label


def write_synthetic_voc(
    root: str | Path,
    *,
    num_train: int = 200,
    num_val: int = 50,
    seed: int = 0,
    year: str = "2007",
    progress: bool = False,
) -> Path:
    """Write a VOCdevkit folder ``root/VOC{year}`` for detection and segmentation.

    ``JPEGImages``, ``Annotations`` (objects whose larger side is under 6 % of the image's are
    ``difficult``), ``SegmentationClass`` palette PNGs (0 background, 1..4 shapes, 255 on a 1-px border
    around each shape as in VOC) and ``ImageSets/{Main,Segmentation}/{train,val,trainval}.txt``.

    Example:
        >>> import tempfile
        >>> root = write_synthetic_voc(tempfile.mkdtemp(), num_train=2, num_val=1)
        >>> sorted(p.name for p in (root / "VOC2007").iterdir())
        ['Annotations', 'ImageSets', 'JPEGImages', 'SegmentationClass']
    """

    def write(tmp: Path) -> None:
        ydir = tmp / f"VOC{year}"
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
            (ydir / sub).mkdir(parents=True)
        palette = voc_colormap().flatten().tolist()
        lists: dict[str, list[str]] = {}
        offset = 0
        for split, code, count in _splits(num_train, num_val):
            lists[split] = []
            for i in tqdm(range(count), desc=f"shapes VOC {split}", disable=not progress):
                rng = _rng(seed, 2, code, i)
                h, w = _image_size(rng)
                scene = render_scene(rng, h, w)
                image_id = f"{offset + i:06d}"
                lists[split].append(image_id)
                _save_jpeg(ydir / "JPEGImages" / f"{image_id}.jpg", scene.image)
                (ydir / "Annotations" / f"{image_id}.xml").write_bytes(_voc_xml(image_id, scene, h, w))
                label = _class_mask(scene, h, w)
                png = Image.frombytes("P", (w, h), label.tobytes())
                png.putpalette(palette)
                png.save(ydir / "SegmentationClass" / f"{image_id}.png")
            offset += count
        lists["trainval"] = lists["train"] + lists["val"]
        for split, ids in lists.items():
            for sub in ("Main", "Segmentation"):
                (ydir / "ImageSets" / sub / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))

    params = {"format": "voc", "num_train": num_train, "num_val": num_val, "seed": seed, "year": str(year)}
    return _materialize(root, params, write)


# ------------------------------------------------------------------------------------- image/mask folders
SYNTHETIC_FOLDER_CLASSES: tuple[str, ...] = ("background", *SYNTHETIC_CLASSES)


def write_synthetic_folder(
    root: str | Path, *, num_train: int = 200, num_val: int = 50, seed: int = 0, progress: bool = False
) -> Path:
    """Write ``root/images/{train,val}/{id}.jpg`` and ``root/masks/{train,val}/{id}.png`` (the layout of
    :class:`~ghost_vision.data.folder.SegmentationFolder`).

    Masks are grayscale (mode ``L``) PNGs indexing :data:`SYNTHETIC_FOLDER_CLASSES` (0 background, 1..4
    the shapes) with 255 on a 1-px border around each shape (ignored).

    Example:
        >>> import tempfile
        >>> root = write_synthetic_folder(tempfile.mkdtemp(), num_train=2, num_val=1)
        >>> sorted(str(p.relative_to(root)) for p in root.glob("*/val/*"))
        ['images/val/val_00000.jpg', 'masks/val/val_00000.png']
    """

    def write(tmp: Path) -> None:
        for split, code, count in _splits(num_train, num_val):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "masks" / split).mkdir(parents=True)
            for i in tqdm(range(count), desc=f"shapes folder {split}", disable=not progress):
                rng = _rng(seed, 4, code, i)
                h, w = _image_size(rng)
                scene = render_scene(rng, h, w)
                stem = f"{split}_{i:05d}"
                _save_jpeg(tmp / "images" / split / f"{stem}.jpg", scene.image)
                Image.fromarray(_class_mask(scene, h, w), mode="L").save(tmp / "masks" / split / f"{stem}.png")

    params = {"format": "folder", "num_train": num_train, "num_val": num_val, "seed": seed}
    return _materialize(root, params, write)


# ----------------------------------------------------------------------------------------- Cityscapes
def _street(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A street-like background: (float image, label ids) with sky, buildings, vegetation, road, sidewalk."""
    ids = np.full((h, w), 7, np.uint8)  # road
    yy, xx = np.mgrid[0:h, 0:w]
    horizon = int(h * rng.uniform(0.3, 0.5))
    ids[:horizon] = 23  # sky
    x = 0
    while x < w:  # building blocks / trees standing on the horizon
        bw = int(rng.integers(w // 10, w // 4))
        top = int(horizon * rng.uniform(0.05, 0.8))
        ids[top:horizon, x:x + bw] = 11 if rng.random() < 0.7 else 21
        x += bw + int(rng.integers(0, w // 12))
    side = rng.random() < 0.5
    slope = rng.uniform(0.3, 0.8)
    edge = w * rng.uniform(0.1, 0.3) + (yy - horizon) * slope * (-1 if side else 1) * 0.2
    walk = (yy >= horizon) & ((xx < edge) if side else (xx > w - edge))
    ids[walk] = 8  # sidewalk
    if rng.random() < 0.5:
        ids[int(h * rng.uniform(0.9, 0.96)):] = 1  # ego vehicle -> ignored
    base = {23: (120, 160, 220), 11: (130, 110, 100), 21: (70, 130, 60), 7: (110, 110, 115), 8: (170, 150, 150),
            1: (30, 30, 40)}
    img = np.zeros((h, w, 3), np.float32)
    for lid, colour in base.items():
        sel = ids == lid
        if sel.any():
            img[sel] = np.clip(np.asarray(colour) + rng.uniform(-40, 40, 3), 0, 255)
    img += (smooth_noise(rng, h, w, int(rng.integers(15, 40)))[..., None] - 0.5) * rng.uniform(20, 50)
    return img, ids


def write_synthetic_cityscapes(
    root: str | Path, *, num_train: int = 100, num_val: int = 25, seed: int = 0, progress: bool = False
) -> Path:
    """Write ``root/leftImg8bit/{train,val}/{city}/*_leftImg8bit.png`` + ``gtFine/.../*_gtFine_labelIds.png``.

    Street-like backgrounds (sky 23, building 11, vegetation 21, road 7, sidewalk 8, sometimes ego vehicle
    1) with shapes labelled person 24 / traffic sign 20 / car 26 / traffic light 19 by shape class, and one
    in seven shapes carrying a label id that maps to 255 (dynamic, guard rail, caravan, trailer).
    Images are about 2:1 (352-448 x 176-224); train cities ``aachen``/``bremen``, val ``frankfurt``.

    Example:
        >>> import tempfile
        >>> root = write_synthetic_cityscapes(tempfile.mkdtemp(), num_train=1, num_val=1)
        >>> sorted(p.name for p in (root / "gtFine" / "val" / "frankfurt").iterdir())[:1]
        ['frankfurt_000000_000019_gtFine_labelIds.png']
    """

    def write(tmp: Path) -> None:
        for split, code, count in _splits(num_train, num_val):
            cities = ("aachen", "bremen") if split == "train" else ("frankfurt",)
            for i in tqdm(range(count), desc=f"shapes Cityscapes {split}", disable=not progress):
                rng = _rng(seed, 3, code, i)
                w = int(rng.integers(352, 449))
                h = w // 2
                background, ids = _street(rng, h, w)
                scene = render_scene(rng, h, w, background=background)
                for o in scene.objects:
                    void = rng.random() < 1 / 7
                    lid = _CITYSCAPES_VOID_IDS[int(rng.integers(4))] if void else SYNTHETIC_CITYSCAPES_LABEL_IDS[o.cls]
                    ids[o.mask] = lid
                city = cities[i % len(cities)]
                stem = f"{city}_{i:06d}_000019"
                img_dir = tmp / "leftImg8bit" / split / city
                gt_dir = tmp / "gtFine" / split / city
                img_dir.mkdir(parents=True, exist_ok=True)
                gt_dir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(scene.image).save(img_dir / f"{stem}_leftImg8bit.png")
                Image.fromarray(ids).save(gt_dir / f"{stem}_gtFine_labelIds.png")

    params = {"format": "cityscapes", "num_train": num_train, "num_val": num_val, "seed": seed}
    return _materialize(root, params, write)
