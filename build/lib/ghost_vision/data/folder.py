"""Semantic segmentation from a folder of images and a folder of index masks matched by file stem.

The de-facto format of MMSegmentation's ``BaseSegDataset``, CamVid and most mask exports (CVAT, Label
Studio "semantic segmentation mask")::

    img_dir/  a.jpg  b.jpg  sub/c.jpg          masks: one per image, same relative stem
    ann_dir/  a.png  b.png  sub/c.png          values 0..K-1 index ``classes``; 255 = ignored

Masks are single-channel PNGs (grayscale ``L`` or palette ``P``: the stored value/palette index is the class)
or, with ``palette``, colour (RGB) images whose colours are looked up in the palette.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ._target import Transforms, image_to_tensor
from .io import DataError, SkipCorrupt, SkippingDataset, read_colour_mask, read_image, read_label_png

__all__ = ["SegmentationFolder"]

IGNORE = 255  # the ignored label in every mask this package returns
_INVALID = -1
_SHOWN = 5  # how many stems/values an error message lists


def _listing(items: Sequence[object]) -> str:
    """``"a, b, c"`` or ``"a, b, c, d, e and 7 more"``."""
    shown = ", ".join(str(i) for i in items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def scan_stems(folder: Path, suffix: str, what: str) -> dict[str, Path]:
    """``{stem: path}`` for every file under ``folder`` (recursively) whose name ends with ``suffix``; the
    stem is the path relative to ``folder`` without the suffix (``"sub/c"``)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {folder}")
    found: dict[str, Path] = {}
    others: set[str] = set()
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or any(part.startswith(".") for part in rel.split("/")):  # .DS_Store, .cache/
            continue
        if rel.endswith(suffix) and len(rel) > len(suffix):
            found[rel[: -len(suffix)]] = path
        else:
            others.add(path.suffix or path.name)
    if not found:
        hint = f" (it holds files ending in {_listing(sorted(others))}: set the suffix to match)" if others else ""
        raise FileNotFoundError(f"no {what} files ending in {suffix!r} in {folder}{hint}")
    return found


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """``classes`` as a tuple of names, refusing a bare string or an empty list."""
    if isinstance(classes, str) or not classes:
        raise ValueError(f"classes must list one name per mask value, got {classes!r}")
    return tuple(str(c) for c in classes)


def _mode(path: Path) -> str | None:
    """The PIL mode from the file header (``None`` when unreadable: the reader then names the problem)."""
    try:
        with Image.open(path) as img:
            return img.mode
    except (OSError, ValueError, SyntaxError):
        return None


def read_split_file(path: Path) -> list[str]:
    """Stems listed one per line (blank lines and ``#`` comments skipped); duplicates are an error."""
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    stems = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    stems = [s for s in stems if s and not s.startswith("#")]
    if not stems:
        raise DataError(f"split file {path} lists no stems")
    seen: set[str] = set()
    dup = sorted({s for s in stems if s in seen or seen.add(s)})
    if dup:
        raise DataError(f"split file {path} lists {len(dup)} stem(s) more than once: {_listing(dup)}")
    return stems


class SegmentationFolder(SkippingDataset):
    """Images and index masks matched by stem: ``(image float32 3xHxW, mask int64 HxW)``, 255 ignored.

    Args:
        img_dir: folder of images, searched recursively for names ending in ``img_suffix``.
        ann_dir: folder of masks, searched recursively for names ending in ``seg_map_suffix``; a mask's path
            relative to ``ann_dir`` minus the suffix equals its image's (``img_dir/sub/a.jpg`` <->
            ``ann_dir/sub/a.png``).
        classes: one name per mask value: value ``i`` is ``classes[i]`` (``classes[i - 1]`` with
            ``reduce_zero_label``); ``num_classes == len(classes)``. Include your background class if the
            masks label background.
        img_suffix: image file name ending, e.g. ``"_leftImg8bit.png"``.
        seg_map_suffix: mask file name ending, e.g. ``"_labelIds.png"``.
        ignore_index: a mask value (as stored in the file) that means "not labelled", e.g. 11 for CamVid's
            void; it becomes 255. The value 255 is always ignored. ``None``: only 255.
        split_file: a text file of stems (one per line, no suffix) to use instead of every image found.
        reduce_zero_label: as in MMSegmentation (ADE20K): file value 0 is ignored and 1..K become 0..K-1.
        palette: for colour masks: one RGB triple per mask value (position = value; add the colour of
            ignored pixels at position ``ignore_index``). Single-channel masks are read as stored.
        transforms: ``transforms(image=HxWx3 uint8, mask=HxW uint8) -> (image, mask)`` (the ``seg_train`` /
            ``seg_eval`` presets of :func:`~ghost_vision.data.transforms.build_transforms`).
        skip_corrupt: skip unreadable or invalid samples (counted and logged) instead of raising.

    An image without a mask or a mask without an image (or a split-file stem without either) raises
    :class:`~ghost_vision.data.io.DataError` naming the stems; so does, when the sample is read, a mask
    whose size differs from its image's or that holds values other than the classes' and the ignored ones
    (naming the file and the values).

    Example:
        >>> ds = SegmentationFolder("camvid/train", "camvid/trainannot", classes=CAMVID_CLASSES,
        ...                         img_suffix=".png", ignore_index=11)  # doctest: +SKIP
        >>> image, mask = ds[0]  # doctest: +SKIP
        >>> ds.num_classes, ds.ids[0]  # doctest: +SKIP
        (11, '0001TP_006690')
    """

    def __init__(
        self,
        img_dir: str | Path,
        ann_dir: str | Path,
        *,
        classes: Sequence[str],
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        ignore_index: int | None = IGNORE,
        split_file: str | Path | None = None,
        reduce_zero_label: bool = False,
        palette: Sequence[Sequence[int]] | None = None,
        transforms: Transforms | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.img_dir, self.ann_dir = Path(img_dir), Path(ann_dir)
        self.classes = check_classes(classes)
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.palette = None if palette is None else self._check_palette(palette)
        self.transforms = transforms
        self._lut = self._build_lut()

        images = scan_stems(self.img_dir, img_suffix, "image")
        masks = scan_stems(self.ann_dir, seg_map_suffix, "mask")
        if split_file is not None:
            self.split_file: Path | None = Path(split_file)
            stems = read_split_file(self.split_file)
            where = f"listed in {self.split_file}"
        else:
            self.split_file = None
            stems = sorted(images)
            where = f"in {self.img_dir}"
        no_image = [s for s in stems if s not in images]
        if no_image:
            hint = " (list stems without the suffix)" if any(s.endswith(img_suffix) for s in no_image) else ""
            raise DataError(f"{len(no_image)} stem(s) {where} have no image {self.img_dir}/STEM{img_suffix}"
                            f"{hint}: {_listing(no_image)}")
        no_mask = [s for s in stems if s not in masks]
        if no_mask:
            raise DataError(f"{len(no_mask)} image(s) {where} have no mask {self.ann_dir}/STEM{seg_map_suffix}: "
                            f"{_listing(no_mask)}")
        if split_file is None:
            no_img = sorted(set(masks) - set(images))
            if no_img:
                raise DataError(f"{len(no_img)} mask(s) in {self.ann_dir} have no image {self.img_dir}/STEM"
                                f"{img_suffix}: {_listing(no_img)} (remove them, or pass a split_file)")
        self.ids: list[str] = stems
        self.images = [images[s] for s in stems]
        self.masks = [masks[s] for s in stems]
        self._skip = SkipCorrupt(skip_corrupt, f"SegmentationFolder({self.img_dir}, {self.ann_dir})", len(stems))

    @property
    def num_classes(self) -> int:
        """``len(classes)``: the mask values index the classes directly (no implicit background)."""
        return len(self.classes)

    def _check_palette(self, palette: Sequence[Sequence[int]]) -> np.ndarray:
        arr = np.asarray(palette)
        if arr.ndim != 2 or arr.shape[1] != 3 or not np.issubdtype(arr.dtype, np.integer) or \
                arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
            raise ValueError(f"palette must be a list of [R, G, B] triples of ints 0..255, got {palette!r}")
        needed = len(self.classes) + int(self.reduce_zero_label)
        if len(arr) < needed:
            raise ValueError(f"palette has {len(arr)} colours but {needed} mask values need one "
                             f"({len(self.classes)} classes{' + the ignored 0' if self.reduce_zero_label else ''})")
        codes = [tuple(c) for c in arr.tolist()]
        dup = sorted({c for c in codes if codes.count(c) > 1})
        if dup:
            raise ValueError(f"palette repeats colours {dup}: each mask value needs its own colour")
        return arr.astype(np.uint8)

    def _build_lut(self) -> np.ndarray:
        """File value -> returned label (0..K-1, 255 ignored, -1 invalid)."""
        k = len(self.classes)
        first = int(self.reduce_zero_label)  # file value of class 0
        if first + k > IGNORE:
            raise ValueError(f"{k} classes need mask values {first}..{first + k - 1}, but 255 is the ignored value")
        ii = self.ignore_index
        if ii is not None and (ii < 0 or first <= ii < first + k):
            what = "negative" if ii < 0 else f"the mask value of class {self.classes[ii - first]!r}"
            raise ValueError(f"ignore_index={ii} is {what}: use the value that marks unlabelled pixels "
                             "(or 255/None when there is none)")
        lut = np.full(max(IGNORE, ii or 0) + 1, _INVALID, dtype=np.int16)
        lut[first:first + k] = np.arange(k)
        lut[IGNORE] = IGNORE
        if self.reduce_zero_label:
            lut[0] = IGNORE
        if ii is not None:
            lut[ii] = IGNORE
        return lut

    def _expected(self) -> str:
        first = int(self.reduce_zero_label)
        extra = ["0 (reduce_zero_label)"] if self.reduce_zero_label else []
        if self.ignore_index not in (None, IGNORE):
            extra.append(f"{self.ignore_index} (ignore_index)")
        return f"{first}..{first + len(self.classes) - 1} ({len(self.classes)} classes), " + ", ".join([*extra, "255"])

    def read_mask(self, path: Path) -> np.ndarray:
        """The ``H x W`` uint8 labels stored in ``path``: 0..K-1, 255 ignored (validated)."""
        if _mode(path) in ("RGB", "RGBA"):
            if self.palette is None:
                raise DataError(f"mask {path} is a colour (RGB) image: save single-channel index masks, or pass "
                                "palette=[[R, G, B], ...] (one colour per mask value) to read colour masks")
            raw = read_colour_mask(path, self.palette)
        else:
            raw = read_label_png(path)  # grayscale or palette PNG; reports unreadable files and other modes
        raw = raw.astype(np.int64, copy=False)
        inside = (raw >= 0) & (raw < len(self._lut))
        labels = np.where(inside, self._lut[np.where(inside, raw, 0)], _INVALID)
        bad = labels == _INVALID
        if bad.any():
            values = np.unique(raw[bad]).tolist()
            raise DataError(f"mask {path} has values {_listing(values)} outside {self._expected()}: check "
                            "classes (one per mask value), ignore_index and reduce_zero_label")
        return labels.astype(np.uint8)

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(self.images[index])
        mask = self.read_mask(self.masks[index])
        if mask.shape != image.shape[:2]:
            raise DataError(f"mask {self.masks[index]} is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{self.images[index]} is {image.shape[1]}x{image.shape[0]} (W x H)")
        if self.transforms is not None:
            image, mask = self.transforms(image=image, mask=mask)
        return image_to_tensor(image), torch.as_tensor(np.asarray(mask)).to(torch.int64)

    def sample_files(self, index: int) -> tuple[str, ...]:
        return str(self.images[index]), str(self.masks[index])
