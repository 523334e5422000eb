"""Building blocks of the DataModules: collate, index wrapper, transform presets, shared base classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset, default_collate

from .resumable import ResumableDataLoader

__all__ = ["IndexedDataset", "build_preset", "detection_collate", "missing_data_error", "recipe_hint",
           "segmentation_collate"]

# The synthetic recipes that the "dataset not found" messages suggest (named, not addressed by a path: the
# recipes are found by name wherever they are installed).
DET_SHAPES_RECIPE = "ssdlite_ghost_shapes"
SEG_SHAPES_RECIPE = "deeplabv3_ghost_shapes"


def recipe_hint(name: str) -> str:
    """How messages refer to a packaged recipe: the command that trains it."""
    return f"recipe: ghost-vision train {name}"


def detection_collate(batch: Sequence[tuple[Any, Any] | None]) -> tuple[tuple[Any, ...], ...] | None:
    """``[(img, target), ...] -> ((img, ...), (target, ...))``: detection images differ in size.

    ``None`` entries (samples skipped as unreadable, ``skip_corrupt=True``) are dropped; a batch of nothing but
    skipped samples becomes ``None``, which the tasks' steps pass over.

    Example:
        >>> import torch
        >>> batch = [(torch.zeros(3, 4, 5), {"labels": torch.tensor([1])}), None,  # None: a skipped sample
        ...          (torch.zeros(3, 6, 5), {"labels": torch.tensor([2, 3])})]
        >>> images, targets = detection_collate(batch)
        >>> [tuple(image.shape) for image in images], [t["labels"].tolist() for t in targets]
        ([(3, 4, 5), (3, 6, 5)], [[1], [2, 3]])
    """
    batch = [b for b in batch if b is not None]
    return tuple(zip(*batch, strict=True)) if batch else None


def segmentation_collate(batch: Sequence[tuple[Any, ...] | None]) -> Any:
    """``default_collate`` (stacked images and masks) after dropping skipped samples (``None``), as
    :func:`detection_collate` does; ``None`` when nothing is left.

    Example:
        >>> import torch
        >>> batch = [(torch.zeros(3, 4, 4), torch.zeros(4, 4, dtype=torch.int64)), None,
        ...          (torch.ones(3, 4, 4), torch.ones(4, 4, dtype=torch.int64))]
        >>> images, masks = segmentation_collate(batch)
        >>> images.shape, masks.shape
        (torch.Size([2, 3, 4, 4]), torch.Size([2, 4, 4]))
    """
    batch = [b for b in batch if b is not None]
    return default_collate(batch) if batch else None


class IndexedDataset(Dataset):
    """Wraps a dataset so that each sample ends with its index: ``(image, mask) -> (image, mask, index)``.

    Example:
        >>> ds = IndexedDataset(CityscapesSegmentation("cityscapes", split="val"))  # doctest: +SKIP
        >>> image, mask, index = ds[3]  # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...] | None:
        sample = self.dataset[index]
        return None if sample is None else (*sample, index)  # None: skipped (skip_corrupt=True)

    def __getattr__(self, name: str) -> Any:  # classes, ids, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def missing_data_error(what: str, expected: Path, how: str, synthetic_recipe: str) -> FileNotFoundError:
    """A :class:`FileNotFoundError` naming the expected path, where to get the data and a synthetic recipe."""
    return FileNotFoundError(
        f"{what} not found: expected {expected}. {how} "
        f"To try the pipeline without downloading anything, train the synthetic {recipe_hint(synthetic_recipe)}"
    )


def build_preset(preset: str | None, defaults: dict[str, Any], extra: dict[str, Any] | None = None):
    """``build_transforms(preset, **defaults, **extra)``, or ``None`` for the ``None``/``"none"`` preset."""
    if preset is None or preset.lower() == "none":
        return None
    from .transforms import build_transforms  # imported lazily: only needed when a preset is used

    return build_transforms(preset, **{**defaults, **(extra or {})})


class _BaseDataModule(L.LightningDataModule):
    """Loader, corrupt-sample and transform options shared by every DataModule.

    Every option is keyword-only and listed once, here and in the two family classes below (with each
    family's defaults). A DataModule lists only its own options and forwards the rest as ``**kwargs``;
    LightningCLI (jsonargparse) follows ``super().__init__(**kwargs)`` and still shows every option, typed
    and with its default, in ``--help`` and ``--print_config``. A subclass that wants another default (the
    synthetic sets: ``num_workers=2``) lists that one option and passes it on by name.

    Args:
        batch_size: training batch size per process.
        val_batch_size: validation batch size (``None``: ``batch_size``).
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster GPU copies.
        skip_corrupt: skip unreadable or invalid samples (counted and logged) instead of stopping.
        train_transform: training preset name (``ghost_vision.data.transforms.build_transforms``; ``None``
            or ``"none"``: no transform).
        eval_transform: evaluation preset name.
        train_transform_kwargs: extra keyword arguments of the training preset.
        eval_transform_kwargs: extra keyword arguments of the evaluation preset.
    """

    _collate = None
    _index_eval = False

    def __init__(
        self,
        *,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        skip_corrupt: bool = False,
        train_transform: str | None = None,
        eval_transform: str | None = None,
        train_transform_kwargs: dict[str, Any] | None = None,
        eval_transform_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.train_transform_kwargs = dict(train_transform_kwargs or {})
        self.eval_transform_kwargs = dict(eval_transform_kwargs or {})
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size if val_batch_size is not None else batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.skip_corrupt = skip_corrupt
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def check_data(self) -> None:
        """Raise a helpful :class:`FileNotFoundError` when the dataset is absent (checks only, writes nothing)."""

    def prepare_data(self) -> None:
        self.check_data()

    def _loader(self, dataset: Dataset | None, train: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a dataloader")
        if not train and self._index_eval:
            dataset = IndexedDataset(dataset)
        # training: reproducible epochs and exact mid-epoch resume from a checkpoint (see .resumable)
        loader_cls = ResumableDataLoader if train else DataLoader
        return loader_cls(
            dataset,
            batch_size=self.batch_size if train else self.val_batch_size,
            shuffle=train,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=type(self)._collate,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset if self.test_dataset is not None else self.val_dataset, False)


class _DetectionDataModule(_BaseDataModule):
    """Detection defaults (``det_train`` preset, batch 16) and ``image_size``, the size of the detection
    presets; the other options are :class:`_BaseDataModule`'s.

    Args:
        image_size: output size of the detection presets (``det_train`` crops/resizes to it).
        train_transform: training preset name.
        eval_transform: evaluation preset name (``None``: images as they are, the model resizes).
        **options: the shared options of :class:`_BaseDataModule`.
    """

    _collate = staticmethod(detection_collate)

    def __init__(
        self, *, image_size: int = 320, train_transform: str | None = "det_train", eval_transform: str | None = None,
        **options: Any,
    ) -> None:
        super().__init__(train_transform=train_transform, eval_transform=eval_transform, **options)
        self.image_size = image_size

    def train_transforms_fn(self):
        return build_preset(self.train_transform, {"size": self.image_size}, self.train_transform_kwargs)

    def eval_transforms_fn(self):
        return build_preset(self.eval_transform, {"size": self.image_size}, self.eval_transform_kwargs)

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.classes) + 1


class _SegmentationDataModule(_BaseDataModule):
    """Segmentation defaults (``seg_train``/``seg_eval`` presets, batch 8, validation batch 1: eval images
    differ in size) and ``crop_size``/``scale`` (``seg_train``), ``eval_size`` (``seg_eval``; ``None`` keeps
    the file's size); the other options are :class:`_BaseDataModule`'s.

    Args:
        crop_size: training crop (``seg_train`` preset).
        scale: training random scale range (``seg_train`` preset).
        eval_size: resize for evaluation (``seg_eval`` preset); ``None`` keeps the file's size.
        batch_size: training batch size per process.
        val_batch_size: validation batch size (1: eval images differ in size unless ``eval_size`` is set).
        train_transform: training preset name.
        eval_transform: evaluation preset name.
        **options: the shared options of :class:`_BaseDataModule`.
    """

    _collate = staticmethod(segmentation_collate)
    _index_eval = True

    def __init__(
        self,
        *,
        crop_size: int | tuple[int, int] = 512,
        scale: tuple[float, float] = (0.5, 2.0),
        eval_size: int | tuple[int, int] | None = None,
        batch_size: int = 8,
        val_batch_size: int | None = 1,
        train_transform: str | None = "seg_train",
        eval_transform: str | None = "seg_eval",
        **options: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, train_transform=train_transform,
                         eval_transform=eval_transform, **options)
        self.crop_size = crop_size
        self.scale = tuple(scale)
        self.eval_size = eval_size

    def train_transforms_fn(self):
        return build_preset(
            self.train_transform, {"crop_size": self.crop_size, "scale": self.scale}, self.train_transform_kwargs
        )

    def eval_transforms_fn(self):
        defaults = {} if self.eval_size is None else {"size": self.eval_size}
        return build_preset(self.eval_transform, defaults, self.eval_transform_kwargs)
