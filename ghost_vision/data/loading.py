"""Building blocks of the DataModules: collate, index wrapper, transform presets, shared base classes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

from .resumable import ResumableDataLoader

__all__ = ["IndexedDataset", "build_preset", "detection_collate", "missing_data_error"]

# packaged recipes (ghost_vision/configs), named in the missing-data messages
DET_SHAPES_CONFIG = "ssdlite_ghost_shapes"
SEG_SHAPES_CONFIG = "deeplabv3_ghost_shapes"


def detection_collate(batch: Sequence[tuple[Any, Any]]) -> tuple[tuple[Any, ...], ...]:
    """``[(img, target), ...] -> ((img, ...), (target, ...))``: detection images differ in size."""
    return tuple(zip(*batch, strict=True))


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

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], index)

    def __getattr__(self, name: str) -> Any:  # classes, ids, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def missing_data_error(what: str, expected: Path, how: str, synthetic_config: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: expected {expected}. {how} "
        f"To try the pipeline without downloading anything, train the synthetic recipe: "
        f"ghost-vision train {synthetic_config}"
    )


def build_preset(preset: str | None, defaults: dict[str, Any], extra: dict[str, Any] | None = None):
    """``build_transforms(preset, **defaults, **extra)``, or ``None`` for the ``None``/``"none"`` preset."""
    if preset is None or preset.lower() == "none":
        return None
    from .transforms import build_transforms  # imported lazily: only needed when a preset is used

    return build_transforms(preset, **{**defaults, **(extra or {})})


class _BaseDataModule(L.LightningDataModule):
    _collate = None
    _index_eval = False

    def __init__(self, batch_size, val_batch_size, num_workers, pin_memory, skip_corrupt, train_transform,
                 eval_transform, train_transform_kwargs, eval_transform_kwargs) -> None:
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
        """Raise a helpful :class:`FileNotFoundError` when the dataset is absent."""

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
    _collate = staticmethod(detection_collate)

    def __init__(self, batch_size, val_batch_size, num_workers, pin_memory, skip_corrupt, image_size, *transform_args):
        super().__init__(batch_size, val_batch_size, num_workers, pin_memory, skip_corrupt, *transform_args)
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
    _index_eval = True

    def __init__(self, batch_size, val_batch_size, num_workers, pin_memory, skip_corrupt, crop_size, scale, eval_size,
                 *transform_args):
        super().__init__(batch_size, val_batch_size, num_workers, pin_memory, skip_corrupt, *transform_args)
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
