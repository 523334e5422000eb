"""DataModules over the synthetic shapes datasets, created on first use in a cache folder.

The data is written by :mod:`ghost_vision.data.synthetic` in ``prepare_data()`` (and, idempotently, in
``setup()``) under ``root`` (relative to the working directory; ``data_cache/`` is git-ignored). Classes
are the constant :data:`~ghost_vision.data.synthetic.SYNTHETIC_CLASSES` (circle, triangle, rectangle, star).
"""

from __future__ import annotations

from typing import Any

from .datamodules import (
    CityscapesDataModule,
    CocoDataModule,
    VOCDetectionDataModule,
    VOCSegmentationDataModule,
)
from .synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COCO_CATEGORY_IDS,
    write_synthetic_cityscapes,
    write_synthetic_coco,
    write_synthetic_voc,
)

__all__ = [
    "SyntheticCityscapesDataModule",
    "SyntheticCocoDataModule",
    "SyntheticVOCDetectionDataModule",
    "SyntheticVOCSegmentationDataModule",
]


class SyntheticCocoDataModule(CocoDataModule):
    """Synthetic shapes in COCO format (``num_classes`` 5 incl. background; category ids 2, 5, 9, 17).

    Example:
        >>> dm = SyntheticCocoDataModule(num_train=200, num_val=50, batch_size=16)
        >>> dm.num_classes, dm.label_to_cat_id
        (5, {1: 2, 2: 5, 3: 9, 4: 17})
        >>> dm.prepare_data(); dm.setup("fit")  # doctest: +SKIP
    """

    def __init__(
        self,
        root: str = "data_cache/shapes_coco",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        image_size: int = 320,
        train_transform: str | None = "det_train",
        eval_transform: str | None = None,
        train_transform_kwargs: dict[str, Any] | None = None,
        eval_transform_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            root, "train2017", "val2017", batch_size=batch_size, val_batch_size=val_batch_size,
            num_workers=num_workers, pin_memory=pin_memory, image_size=image_size, train_transform=train_transform,
            eval_transform=eval_transform, train_transform_kwargs=train_transform_kwargs,
            eval_transform_kwargs=eval_transform_kwargs, remove_empty=False,
        )
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    @property
    def classes(self) -> tuple[str, ...]:
        return SYNTHETIC_CLASSES

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {i + 1: c for i, c in enumerate(SYNTHETIC_COCO_CATEGORY_IDS)}

    def prepare_data(self) -> None:
        write_synthetic_coco(self.root, num_train=self.num_train, num_val=self.num_val, seed=self.seed)

    def check_data(self) -> None:
        self.prepare_data()


class SyntheticVOCDetectionDataModule(VOCDetectionDataModule):
    """Synthetic shapes in Pascal VOC format (``VOC2007`` train / val; ``num_classes`` 5 incl. background).

    Example:
        >>> SyntheticVOCDetectionDataModule(num_train=100).num_classes
        5
    """

    def __init__(
        self,
        root: str = "data_cache/shapes_voc",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        image_size: int = 320,
        train_transform: str | None = "det_train",
        eval_transform: str | None = None,
        train_transform_kwargs: dict[str, Any] | None = None,
        eval_transform_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            root, ("2007",), "train", ("2007",), "val", SYNTHETIC_CLASSES, batch_size=batch_size,
            val_batch_size=val_batch_size, num_workers=num_workers, pin_memory=pin_memory, image_size=image_size,
            train_transform=train_transform, eval_transform=eval_transform,
            train_transform_kwargs=train_transform_kwargs, eval_transform_kwargs=eval_transform_kwargs,
        )
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    def prepare_data(self) -> None:
        write_synthetic_voc(self.root, num_train=self.num_train, num_val=self.num_val, seed=self.seed, year="2007")

    def check_data(self) -> None:
        self.prepare_data()


class SyntheticVOCSegmentationDataModule(VOCSegmentationDataModule):
    """Synthetic shapes as VOC ``SegmentationClass`` masks (``num_classes`` 5 incl. background).

    Example:
        >>> SyntheticVOCSegmentationDataModule(crop_size=256).num_classes
        5
    """

    def __init__(
        self,
        root: str = "data_cache/shapes_voc",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = 1,
        num_workers: int = 2,
        pin_memory: bool = False,
        crop_size: int = 256,
        scale: tuple[float, float] = (0.5, 2.0),
        eval_size: int | tuple[int, int] | None = None,
        train_transform: str | None = "seg_train",
        eval_transform: str | None = "seg_eval",
        train_transform_kwargs: dict[str, Any] | None = None,
        eval_transform_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            root, "2007", "train", "val", SYNTHETIC_CLASSES, batch_size=batch_size, val_batch_size=val_batch_size,
            num_workers=num_workers, pin_memory=pin_memory, crop_size=crop_size, scale=scale, eval_size=eval_size,
            train_transform=train_transform, eval_transform=eval_transform,
            train_transform_kwargs=train_transform_kwargs, eval_transform_kwargs=eval_transform_kwargs,
        )
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    def prepare_data(self) -> None:
        write_synthetic_voc(self.root, num_train=self.num_train, num_val=self.num_val, seed=self.seed, year="2007")

    def check_data(self) -> None:
        self.prepare_data()


class SyntheticCityscapesDataModule(CityscapesDataModule):
    """Synthetic street-like scenes in Cityscapes format with real label ids (19 train classes, 255 ignored).

    Example:
        >>> SyntheticCityscapesDataModule(num_train=100, num_val=25).num_classes
        19
    """

    def __init__(
        self,
        root: str = "data_cache/shapes_cityscapes",
        num_train: int = 150,
        num_val: int = 30,
        seed: int = 0,
        batch_size: int = 8,
        val_batch_size: int | None = 1,
        num_workers: int = 2,
        pin_memory: bool = False,
        crop_size: int = 256,
        scale: tuple[float, float] = (0.5, 2.0),
        eval_size: int | tuple[int, int] | None = None,
        train_transform: str | None = "seg_train",
        eval_transform: str | None = "seg_eval",
        train_transform_kwargs: dict[str, Any] | None = None,
        eval_transform_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            root, "train", "val", batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers,
            pin_memory=pin_memory, crop_size=crop_size, scale=scale, eval_size=eval_size,
            train_transform=train_transform, eval_transform=eval_transform,
            train_transform_kwargs=train_transform_kwargs, eval_transform_kwargs=eval_transform_kwargs,
        )
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    def prepare_data(self) -> None:
        write_synthetic_cityscapes(self.root, num_train=self.num_train, num_val=self.num_val, seed=self.seed)

    def check_data(self) -> None:
        self.prepare_data()

