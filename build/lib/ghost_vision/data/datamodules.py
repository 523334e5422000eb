"""Lightning DataModules for COCO, Pascal VOC and Cityscapes (real layouts) and the synthetic shapes data.

Every init argument is type-annotated for LightningCLI YAML configs. ``num_classes`` (including background
for detection; 19 for Cityscapes) and ``classes`` are available right after ``__init__`` so the CLI can
link ``data.num_classes`` to the model. Transforms are chosen by preset name
(:func:`ghost_vision.data.transforms.build_transforms`; ``None`` or ``"none"`` for no transform).

Batches: detection loaders yield ``(images, targets)`` tuples of lists (:func:`detection_collate`);
segmentation train loaders yield stacked ``(images, masks)``, segmentation val/test loaders yield
``(images, masks, indices)`` (:class:`IndexedDataset`, index = position in the dataset, for metrics that
gather per image under DDP). Segmentation eval images differ in size, so ``val_batch_size`` defaults to 1;
raise it only with an eval transform that outputs a fixed size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .io import DataError
from .loading import (
    DET_SHAPES_RECIPE,
    SEG_SHAPES_RECIPE,
    IndexedDataset,
    _DetectionDataModule,
    _SegmentationDataModule,
    detection_collate,
    missing_data_error,
)

__all__ = [
    "CityscapesDataModule",
    "CocoDataModule",
    "IndexedDataset",
    "VOCDetectionDataModule",
    "VOCSegmentationDataModule",
    "detection_collate",
]


class CocoDataModule(_DetectionDataModule):
    """COCO detection in the official layout (default 2017): ``root/{split}/`` and
    ``root/annotations/instances_{split}.json``.

    ``num_classes`` = categories + 1 (background), read from the val annotation file; ``label_to_cat_id``
    maps labels back to COCO category ids and ``val_ann_file`` is the JSON the COCO metric evaluates on.
    ``masks=True`` adds the instance masks (``target["masks"]``, see :class:`~ghost_vision.data.CocoDetection`)
    for Mask R-CNN.

    Example:
        >>> dm = CocoDataModule("data/coco", batch_size=32, image_size=320)  # doctest: +SKIP
        >>> dm.num_classes, dm.val_ann_file  # doctest: +SKIP
        (81, PosixPath('data/coco/annotations/instances_val2017.json'))
    """

    def __init__(
        self,
        root: str = "data/coco",
        *,
        train_split: str = "train2017",
        val_split: str = "val2017",
        remove_empty: bool = True,
        masks: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.root = Path(root).expanduser().absolute()
        self.train_split = train_split
        self.val_split = val_split
        self.remove_empty = remove_empty
        self.masks = masks
        self._categories: list[dict[str, Any]] | None = None

    def ann_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}.json"

    @property
    def val_ann_file(self) -> Path:
        return self.ann_file(self.val_split)

    def check_data(self) -> None:
        for path in (self.root / self.train_split, self.root / self.val_split, self.ann_file(self.train_split),
                     self.val_ann_file):
            if not path.exists():
                raise missing_data_error(
                    "COCO dataset", path,
                    "Download train2017.zip, val2017.zip and annotations_trainval2017.zip from "
                    f"https://cocodataset.org/#download and unpack them into {self.root}.",
                    DET_SHAPES_RECIPE,
                )

    def _load_categories(self) -> list[dict[str, Any]]:
        if self._categories is None:
            from .coco import load_coco_json

            if not self.val_ann_file.is_file():
                self.check_data()
            self._categories = sorted(load_coco_json(self.val_ann_file).dataset["categories"], key=lambda c: c["id"])
        return self._categories

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(str(c.get("name", c["id"])) for c in self._load_categories())

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {i + 1: int(c["id"]) for i, c in enumerate(self._load_categories())}

    def setup(self, stage: str | None = None) -> None:
        from .coco import CocoDetection

        self.check_data()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = CocoDetection(
                self.root / self.train_split, self.ann_file(self.train_split), transforms=self.train_transforms_fn(),
                remove_empty=self.remove_empty, skip_corrupt=self.skip_corrupt, masks=self.masks,
            )
        if self.val_dataset is None:
            self.val_dataset = CocoDetection(
                self.root / self.val_split, self.val_ann_file, transforms=self.eval_transforms_fn(),
                skip_corrupt=self.skip_corrupt, masks=self.masks,
            )
        train, val = self.train_dataset, self.val_dataset
        if train is not None and (train.label_to_cat_id, train.classes) != (val.label_to_cat_id, val.classes):
            # labels are each file's sorted category ids: different lists would silently swap classes
            raise DataError(
                f"{self.ann_file(self.train_split)} and {self.val_ann_file} list different categories "
                f"({dict(zip(train.label_to_cat_id.values(), train.classes, strict=True))} vs "
                f"{dict(zip(val.label_to_cat_id.values(), val.classes, strict=True))}): export both splits with the same "
                "category list (id and name)"
            )


class VOCDetectionDataModule(_DetectionDataModule):
    """Pascal VOC detection: train on ``VOC2007+VOC2012 trainval``, validate/test on ``VOC2007 test``.

    ``root`` is the VOCdevkit folder. Eval datasets keep difficult objects (flagged) for the VOC metric;
    ``keep_difficult_train`` controls training. ``classes`` defaults to the 20 VOC classes; objects of other
    classes stop the set-up naming them unless ``ignore_unknown_classes=True`` (dropped, counted, warned).

    Example:
        >>> dm = VOCDetectionDataModule("data/VOCdevkit", batch_size=32)  # doctest: +SKIP
        >>> dm.num_classes  # doctest: +SKIP
        21
    """

    def __init__(
        self,
        root: str = "data/VOCdevkit",
        *,
        train_years: tuple[str, ...] = ("2007", "2012"),
        train_image_set: str = "trainval",
        val_years: tuple[str, ...] = ("2007",),
        val_image_set: str = "test",
        classes: tuple[str, ...] | None = None,
        keep_difficult_train: bool = False,
        ignore_unknown_classes: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from .voc import VOC_CLASSES

        self.ignore_unknown_classes = ignore_unknown_classes
        self.root = Path(root).expanduser().absolute()
        self.train_years, self.val_years = tuple(train_years), tuple(val_years)
        self.train_image_set, self.val_image_set = train_image_set, val_image_set
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else VOC_CLASSES
        self.keep_difficult_train = keep_difficult_train

    def check_data(self) -> None:
        for year, image_set in [(y, self.train_image_set) for y in self.train_years] + [
            (y, self.val_image_set) for y in self.val_years
        ]:
            path = self.root / f"VOC{year}" / "ImageSets" / "Main" / f"{image_set}.txt"
            if not path.is_file():
                raise missing_data_error(
                    "Pascal VOC dataset", path,
                    "Download VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar and VOCtrainval_11-May-2012.tar "
                    f"from http://host.robots.ox.ac.uk/pascal/VOC/ and unpack them so that {self.root} is the "
                    "VOCdevkit folder holding VOC2007/ and VOC2012/.",
                    DET_SHAPES_RECIPE,
                )

    def setup(self, stage: str | None = None) -> None:
        from .voc import VOCDetection

        self.check_data()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = VOCDetection(
                self.root, year=self.train_years, image_set=self.train_image_set, classes=self.classes,
                keep_difficult=self.keep_difficult_train, transforms=self.train_transforms_fn(),
                skip_corrupt=self.skip_corrupt, ignore_unknown_classes=self.ignore_unknown_classes,
            )
        if self.val_dataset is None:
            self.val_dataset = VOCDetection(
                self.root, year=self.val_years, image_set=self.val_image_set, classes=self.classes,
                keep_difficult=True, transforms=self.eval_transforms_fn(), skip_corrupt=self.skip_corrupt,
                ignore_unknown_classes=self.ignore_unknown_classes,
            )


class VOCSegmentationDataModule(_SegmentationDataModule):
    """Pascal VOC semantic segmentation (``SegmentationClass``), default VOC2012 train / val, 21 classes.

    Example:
        >>> dm = VOCSegmentationDataModule("data/VOCdevkit", crop_size=512)  # doctest: +SKIP
        >>> dm.num_classes  # doctest: +SKIP
        21
    """

    def __init__(
        self,
        root: str = "data/VOCdevkit",
        *,
        year: str = "2012",
        train_image_set: str = "train",
        val_image_set: str = "val",
        classes: tuple[str, ...] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        from .voc import VOC_CLASSES

        self.root = Path(root).expanduser().absolute()
        self.year = str(year)
        self.train_image_set, self.val_image_set = train_image_set, val_image_set
        self.classes: tuple[str, ...] = tuple(classes) if classes is not None else VOC_CLASSES

    @property
    def num_classes(self) -> int:
        """Number of classes including background (21 for VOC)."""
        return len(self.classes) + 1

    def check_data(self) -> None:
        for image_set in (self.train_image_set, self.val_image_set):
            path = self.root / f"VOC{self.year}" / "ImageSets" / "Segmentation" / f"{image_set}.txt"
            if not path.is_file():
                raise missing_data_error(
                    "Pascal VOC segmentation dataset", path,
                    "Download VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/ and unpack "
                    f"it so that {self.root} is the VOCdevkit folder.",
                    SEG_SHAPES_RECIPE,
                )

    def setup(self, stage: str | None = None) -> None:
        from .voc import VOCSegmentation

        self.check_data()
        kw = {"year": self.year, "classes": self.classes, "skip_corrupt": self.skip_corrupt}
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = VOCSegmentation(
                self.root, image_set=self.train_image_set, transforms=self.train_transforms_fn(), **kw
            )
        if self.val_dataset is None:
            self.val_dataset = VOCSegmentation(
                self.root, image_set=self.val_image_set, transforms=self.eval_transforms_fn(), **kw
            )


class CityscapesDataModule(_SegmentationDataModule):
    """Cityscapes fine annotations, 19 train classes (255 ignored), default train / val.

    Example:
        >>> dm = CityscapesDataModule("data/cityscapes", crop_size=768, batch_size=8)  # doctest: +SKIP
        >>> dm.num_classes  # doctest: +SKIP
        19
    """

    def __init__(
        self,
        root: str = "data/cityscapes",
        *,
        train_split: str = "train",
        val_split: str = "val",
        crop_size: int | tuple[int, int] = 768,
        **kwargs: Any,
    ) -> None:
        super().__init__(crop_size=crop_size, **kwargs)
        from .cityscapes import CITYSCAPES_CLASSES

        self.root = Path(root).expanduser().absolute()
        self.train_split, self.val_split = train_split, val_split
        self.classes: tuple[str, ...] = CITYSCAPES_CLASSES
        self.num_classes: int = 19

    def check_data(self) -> None:
        for sub in ("leftImg8bit", "gtFine"):
            for split in (self.train_split, self.val_split):
                path = self.root / sub / split
                if not path.is_dir():
                    raise missing_data_error(
                        "Cityscapes dataset", path,
                        "Register at https://www.cityscapes-dataset.com/downloads/, download "
                        f"leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip and unpack both into {self.root}.",
                        SEG_SHAPES_RECIPE,
                    )

    def setup(self, stage: str | None = None) -> None:
        from .cityscapes import CityscapesSegmentation

        self.check_data()
        if stage in (None, "fit") and self.train_dataset is None:
            self.train_dataset = CityscapesSegmentation(
                self.root, split=self.train_split, transforms=self.train_transforms_fn(),
                skip_corrupt=self.skip_corrupt,
            )
        if self.val_dataset is None:
            self.val_dataset = CityscapesSegmentation(
                self.root, split=self.val_split, transforms=self.eval_transforms_fn(), skip_corrupt=self.skip_corrupt
            )
