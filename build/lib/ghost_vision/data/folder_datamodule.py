"""DataModule over :class:`~ghost_vision.data.folder.SegmentationFolder`: your own images and index masks.

Layout (every folder relative to ``root`` and configurable)::

    root/images/train/*.jpg   root/masks/train/*.png
    root/images/val/*.jpg     root/masks/val/*.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .loading import _SegmentationDataModule, missing_data_error

__all__ = ["SegmentationFolderDataModule"]

FOLDER_RECIPE = "deeplabv3_ghost_folder"


class SegmentationFolderDataModule(_SegmentationDataModule):
    """Semantic segmentation from image/mask folders with your classes (``num_classes == len(classes)``).

    Val/test batches are ``(images, masks, indices)`` as for the other segmentation DataModules; ``setup``
    for validate/test needs only the val folders.

    Args:
        root: the dataset folder; the folders and split files below are relative to it.
        classes: one name per mask value (value i is classes[i]); num_classes = len(classes).
        train_img_dir: training images.
        train_ann_dir: training masks (same relative stem as their image).
        val_img_dir: validation images (point at your test split to evaluate it).
        val_ann_dir: validation masks.
        train_split_file: optional file of training stems, one per line.
        val_split_file: optional file of validation stems, one per line.
        img_suffix: image file ending.
        seg_map_suffix: mask file ending.
        ignore_index: mask value of unlabelled pixels (becomes 255; 255 is always ignored).
        reduce_zero_label: ADE20K style: 0 is ignored, 1..K become 0..K-1.
        palette: RGB colour per mask value, to read colour (RGB) masks.
        **kwargs: the shared options (``batch_size``, ``val_batch_size``, ``num_workers``, ``pin_memory``,
            ``crop_size``, ``scale``, ``eval_size``, ``train_transform``/``eval_transform`` and their
            ``*_kwargs``, ``skip_corrupt``; see ``_SegmentationDataModule`` and ``_BaseDataModule``).

    Example:
        >>> dm = SegmentationFolderDataModule("data/camvid", classes=[f"c{i}" for i in range(11)],
        ...                                   ignore_index=11, crop_size=360)
        >>> dm.num_classes
        11
        >>> dm.setup("fit")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str,
        *,
        classes: tuple[str, ...],
        train_img_dir: str = "images/train",
        train_ann_dir: str = "masks/train",
        val_img_dir: str = "images/val",
        val_ann_dir: str = "masks/val",
        train_split_file: str | None = None,
        val_split_file: str | None = None,
        img_suffix: str = ".jpg",
        seg_map_suffix: str = ".png",
        ignore_index: int | None = 255,
        reduce_zero_label: bool = False,
        palette: list[tuple[int, int, int]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from .folder import check_classes

        self.root = Path(root).expanduser().absolute()
        self.classes: tuple[str, ...] = check_classes(classes)
        self.train_img_dir, self.train_ann_dir = train_img_dir, train_ann_dir
        self.val_img_dir, self.val_ann_dir = val_img_dir, val_ann_dir
        self.train_split_file, self.val_split_file = train_split_file, val_split_file
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix
        self.ignore_index = ignore_index
        self.reduce_zero_label = reduce_zero_label
        self.palette = palette

    @property
    def num_classes(self) -> int:
        """``len(classes)``: mask values index the classes directly."""
        return len(self.classes)

    def _paths(self, split: str) -> dict[str, Path | None]:
        split_file = getattr(self, f"{split}_split_file")
        return {
            f"{split}_img_dir": self.root / getattr(self, f"{split}_img_dir"),
            f"{split}_ann_dir": self.root / getattr(self, f"{split}_ann_dir"),
            f"{split}_split_file": None if split_file is None else self.root / split_file,
        }

    def check_split(self, split: str) -> None:
        """Raise a :class:`FileNotFoundError` naming the first missing folder or split file of ``split``."""
        for key, path in self._paths(split).items():
            if path is not None and not path.exists():
                raise missing_data_error(
                    f"Segmentation folder ({key})", path,
                    f"Point data.root at your dataset and data.{key} at this folder relative to it "
                    "(layout: docs/data.md, 'Train on your own data').",
                    FOLDER_RECIPE,
                )

    def check_data(self) -> None:
        self.check_split("train")
        self.check_split("val")

    def dataset(self, split: str, transforms: Any = None):
        """The :class:`~ghost_vision.data.folder.SegmentationFolder` of ``split`` (``"train"`` or ``"val"``)."""
        from .folder import SegmentationFolder

        paths = self._paths(split)
        return SegmentationFolder(
            paths[f"{split}_img_dir"], paths[f"{split}_ann_dir"], classes=self.classes, img_suffix=self.img_suffix,
            seg_map_suffix=self.seg_map_suffix, ignore_index=self.ignore_index,
            split_file=paths[f"{split}_split_file"], reduce_zero_label=self.reduce_zero_label, palette=self.palette,
            transforms=transforms, skip_corrupt=self.skip_corrupt,
        )

    def prepare_data(self) -> None:
        pass  # setup() checks the folders the stage needs: evaluating needs no training folders

    def setup(self, stage: str | None = None) -> None:
        fit = stage in (None, "fit")
        if fit:
            self.check_data()
        else:
            self.check_split("val")
        if fit and self.train_dataset is None:
            self.train_dataset = self.dataset("train", self.train_transforms_fn())
        if self.val_dataset is None:
            self.val_dataset = self.dataset("val", self.eval_transforms_fn())
