"""DataModules over the synthetic shapes datasets, created on first use in a cache folder.

The data is written by :mod:`ghost_vision.data.synthetic` in ``prepare_data()`` (:meth:`write_data`; the
Trainer calls it once per node before ``setup()``) under ``root`` (relative to the working directory;
``data_cache/`` is git-ignored); ``setup()`` only checks that it is there. Classes are the constant
:data:`~ghost_vision.data.synthetic.SYNTHETIC_CLASSES` (circle, triangle, rectangle, star).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .datamodules import (
    CityscapesDataModule,
    CocoDataModule,
    VOCDetectionDataModule,
    VOCSegmentationDataModule,
)
from .folder_datamodule import SegmentationFolderDataModule
from .synthetic import (
    SYNTHETIC_CLASSES,
    SYNTHETIC_COCO_CATEGORY_IDS,
    SYNTHETIC_FOLDER_CLASSES,
    is_current,
    read_marker,
    write_synthetic_cityscapes,
    write_synthetic_coco,
    write_synthetic_folder,
    write_synthetic_voc,
)

__all__ = [
    "SyntheticCityscapesDataModule",
    "SyntheticCocoDataModule",
    "SyntheticSegmentationFolderDataModule",
    "SyntheticVOCDetectionDataModule",
    "SyntheticVOCSegmentationDataModule",
]


class _WritesSyntheticData:
    """``prepare_data()`` writes the synthetic dataset (:meth:`write_data`); ``check_data()`` (run by
    ``setup()``) only checks that ``root`` holds the dataset these arguments describe."""

    _writer: Callable[..., Path]
    _writer_kwargs: dict[str, Any] = {}
    root: Path
    num_train: int
    num_val: int
    seed: int

    def _params(self) -> dict[str, Any]:
        return {"num_train": self.num_train, "num_val": self.num_val, "seed": self.seed, **self._writer_kwargs}

    def write_data(self) -> Path:
        """Write the dataset under ``root`` (nothing to do when it is already there with these arguments)."""
        return type(self)._writer(self.root, **self._params())

    def prepare_data(self) -> None:
        self.write_data()

    def check_data(self) -> None:
        marker = read_marker(self.root)
        expected = self._params()
        stale = marker is not None and not is_current(marker)
        if marker is None or stale or any(marker.get(k) != v for k, v in expected.items()):
            found = "nothing" if marker is None else {k: marker.get(k) for k in expected}
            if stale:
                found = f"one written by an older version of the writer, with {found}"
            raise FileNotFoundError(
                f"{type(self).__name__}: no synthetic dataset with {expected} in {self.root} (found {found}); "
                "call prepare_data() (or write_data()) first -- Trainer.fit/validate/test do that before setup()"
            )


class SyntheticCocoDataModule(_WritesSyntheticData, CocoDataModule):
    """Synthetic shapes in COCO format (``num_classes`` 5 incl. background; category ids 2, 5, 9, 17).

    Example:
        >>> dm = SyntheticCocoDataModule(num_train=200, num_val=50, batch_size=16)
        >>> dm.num_classes, dm.label_to_cat_id
        (5, {1: 2, 2: 5, 3: 9, 4: 17})
        >>> dm.prepare_data(); dm.setup("fit")  # doctest: +SKIP
    """

    _writer = staticmethod(write_synthetic_coco)

    def __init__(
        self,
        root: str = "data_cache/shapes_coco",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        *,
        num_workers: int = 2,
        pin_memory: bool = False,
        masks: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_split="train2017", val_split="val2017", remove_empty=False,
                         num_workers=num_workers, pin_memory=pin_memory, masks=masks, **kwargs)
        self.num_train, self.num_val, self.seed = num_train, num_val, seed

    @property
    def classes(self) -> tuple[str, ...]:
        return SYNTHETIC_CLASSES

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {i + 1: c for i, c in enumerate(SYNTHETIC_COCO_CATEGORY_IDS)}


class SyntheticVOCDetectionDataModule(_WritesSyntheticData, VOCDetectionDataModule):
    """Synthetic shapes in Pascal VOC format (``VOC2007`` train / val; ``num_classes`` 5 incl. background).

    Example:
        >>> SyntheticVOCDetectionDataModule(num_train=100).num_classes
        5
    """

    _writer = staticmethod(write_synthetic_voc)
    _writer_kwargs = {"year": "2007"}

    def __init__(
        self,
        root: str = "data_cache/shapes_voc",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        *,
        num_workers: int = 2,
        pin_memory: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_years=("2007",), train_image_set="train", val_years=("2007",),
                         val_image_set="val", classes=SYNTHETIC_CLASSES, num_workers=num_workers,
                         pin_memory=pin_memory, **kwargs)
        self.num_train, self.num_val, self.seed = num_train, num_val, seed


class SyntheticVOCSegmentationDataModule(_WritesSyntheticData, VOCSegmentationDataModule):
    """Synthetic shapes as VOC ``SegmentationClass`` masks (``num_classes`` 5 incl. background).

    Example:
        >>> SyntheticVOCSegmentationDataModule(crop_size=256).num_classes
        5
    """

    _writer = staticmethod(write_synthetic_voc)
    _writer_kwargs = {"year": "2007"}

    def __init__(
        self,
        root: str = "data_cache/shapes_voc",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        *,
        num_workers: int = 2,
        pin_memory: bool = False,
        crop_size: int | tuple[int, int] = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, year="2007", train_image_set="train", val_image_set="val",
                         classes=SYNTHETIC_CLASSES, num_workers=num_workers, pin_memory=pin_memory,
                         crop_size=crop_size, **kwargs)
        self.num_train, self.num_val, self.seed = num_train, num_val, seed


class SyntheticCityscapesDataModule(_WritesSyntheticData, CityscapesDataModule):
    """Synthetic street-like scenes in Cityscapes format with real label ids (19 train classes, 255 ignored).

    Example:
        >>> SyntheticCityscapesDataModule(num_train=100, num_val=25).num_classes
        19
    """

    _writer = staticmethod(write_synthetic_cityscapes)

    def __init__(
        self,
        root: str = "data_cache/shapes_cityscapes",
        num_train: int = 150,
        num_val: int = 30,
        seed: int = 0,
        *,
        num_workers: int = 2,
        pin_memory: bool = False,
        crop_size: int | tuple[int, int] = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, train_split="train", val_split="val", num_workers=num_workers,
                         pin_memory=pin_memory, crop_size=crop_size, **kwargs)
        self.num_train, self.num_val, self.seed = num_train, num_val, seed


class SyntheticSegmentationFolderDataModule(_WritesSyntheticData, SegmentationFolderDataModule):
    """Synthetic shapes as image/mask folders (``images/{train,val}``, ``masks/{train,val}``; grayscale masks
    0 background, 1..4 shapes, 255 ignored; ``num_classes`` 5): the recipe ``deeplabv3_ghost_folder`` runs
    on it, and swapping in :class:`SegmentationFolderDataModule` with your ``root`` and ``classes`` trains on
    your data.

    Example:
        >>> dm = SyntheticSegmentationFolderDataModule(crop_size=256)
        >>> dm.num_classes, dm.classes[:2]
        (5, ('background', 'circle'))
    """

    _writer = staticmethod(write_synthetic_folder)

    def __init__(
        self,
        root: str = "data_cache/shapes_folder",
        num_train: int = 200,
        num_val: int = 50,
        seed: int = 0,
        *,
        num_workers: int = 2,
        pin_memory: bool = False,
        crop_size: int | tuple[int, int] = 256,
        **kwargs: Any,
    ) -> None:
        super().__init__(root, classes=SYNTHETIC_FOLDER_CLASSES, num_workers=num_workers, pin_memory=pin_memory,
                         crop_size=crop_size, **kwargs)
        self.num_train, self.num_val, self.seed = num_train, num_val, seed
