"""Cityscapes semantic segmentation (``leftImg8bit`` + ``gtFine`` ``labelIds``) with the 19 train ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ._target import Transforms, image_to_tensor
from .io import DataError, SkipCorrupt, SkippingDataset, few, read_image, read_label_png

__all__ = ["CITYSCAPES_CLASSES", "CITYSCAPES_LABELS", "CityscapesSegmentation", "label_ids_to_train_ids"]

# (name, label id, train id) as in cityscapesscripts.helpers.labels, copied here because cityscapesscripts is
# only a test dependency (the tests compare against it). Train ids 255 and -1 are ignored (-> 255).
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(
    name for name, _, tid in sorted(CITYSCAPES_LABELS, key=lambda x: x[2]) if 0 <= tid < 255
)

_MAX_ID = max(i for _, i, _ in CITYSCAPES_LABELS)  # 33: a labelIds PNG holds 0.._MAX_ID only
_LUT = np.full(256, 255, dtype=np.uint8)
for _name, _id, _tid in CITYSCAPES_LABELS:
    if 0 <= _id < 256:
        _LUT[_id] = _tid if 0 <= _tid < 255 else 255


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map Cityscapes label ids to train ids 0..18; every other value (incl. -1 and >= 256) becomes 255.

    Example:
        >>> import numpy as np
        >>> label_ids_to_train_ids(np.array([7, 8, 26, 0, 300])).tolist()  # road, sidewalk, car, unlabeled, junk
        [0, 1, 13, 255, 255]
    """
    label_ids = np.asarray(label_ids)
    valid = (label_ids >= 0) & (label_ids < 256)
    return np.where(valid, _LUT[np.clip(label_ids, 0, 255)], 255).astype(np.uint8)


class CityscapesSegmentation(SkippingDataset):
    """Cityscapes fine annotations: ``(image float32 3xHxW, mask int64 HxW)`` with train ids, 255 ignored.

    Images are ``root/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png``, labels
    ``root/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png`` mapped to the 19 train ids exactly as
    ``cityscapesscripts``' label table does. ``num_classes`` is 19 (no background class); ``ids`` holds
    ``{city}/{stem}`` strings.

    Example:
        >>> ds = CityscapesSegmentation("cityscapes", split="val")  # doctest: +SKIP
        >>> image, mask = ds[0]  # doctest: +SKIP
        >>> image.shape, mask.shape, ds.num_classes  # doctest: +SKIP
        (torch.Size([3, 1024, 2048]), torch.Size([1024, 2048]), 19)
    """

    classes: tuple[str, ...] = CITYSCAPES_CLASSES
    num_classes: int = 19

    def __init__(
        self,
        root: str | Path,
        *,
        split: str = "train",
        transforms: Transforms | None = None,
        skip_corrupt: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        self.transforms = transforms
        img_root = self.root / "leftImg8bit" / split
        if not img_root.is_dir():
            raise FileNotFoundError(f"Cityscapes image folder not found: {img_root}")
        self.images = sorted(img_root.glob("*/*_leftImg8bit.png"))
        if not self.images:
            raise FileNotFoundError(f"no */*_leftImg8bit.png images found in {img_root}")
        self.ids: list[str] = [f"{p.parent.name}/{p.name.removesuffix('_leftImg8bit.png')}" for p in self.images]
        self._skip = SkipCorrupt(skip_corrupt, f"CityscapesSegmentation({self.root}, {split})", len(self.ids))

    def label_path(self, index: int) -> Path:
        city, stem = self.ids[index].split("/", 1)
        return self.root / "gtFine" / self.split / city / f"{stem}_gtFine_labelIds.png"

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_image(self.images[index])
        label_path = self.label_path(index)
        if not label_path.is_file():
            raise FileNotFoundError(f"Cityscapes label file not found: {label_path}")
        label_ids = read_label_png(label_path)
        if label_ids.shape != image.shape[:2]:
            raise DataError(
                f"Cityscapes label {label_path} is {label_ids.shape[::-1]} (W, H) but its image "
                f"{self.images[index]} is {image.shape[1::-1]}"
            )
        if label_ids.max(initial=0) > _MAX_ID:
            bad = np.unique(label_ids[label_ids > _MAX_ID])
            raise DataError(
                f"Cityscapes label {label_path} holds label ids {few(bad.tolist())} outside the label table "
                f"(0..{_MAX_ID}); is it a *_labelIds.png (not *_color.png or *_instanceIds.png)?"
            )
        mask = label_ids_to_train_ids(label_ids)
        if self.transforms is not None:
            image, mask = self.transforms(image=image, mask=mask)
        return image_to_tensor(image), torch.as_tensor(np.asarray(mask)).to(torch.int64)

    def sample_files(self, index: int) -> tuple[str, ...]:
        return str(self.images[index]), str(self.label_path(index))
