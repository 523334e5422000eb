"""Reading image and label files robustly, shared by every dataset.

- :func:`read_image` returns ``H x W x 3`` uint8 RGB whatever the file's mode (grayscale, RGBA, palette,
  CMYK, 16-bit) with the EXIF orientation applied.
- :func:`read_label_png` returns the raw ``H x W`` values of a label PNG (palette indices for palette PNGs).
- :func:`read_colour_mask` maps a colour (RGB) label image to indices into a palette.
- Problems raise :class:`DataError` (or :class:`FileNotFoundError` for a missing file) naming the file.
- :class:`SkipCorrupt` implements the opt-in ``skip_corrupt=True`` behaviour of the datasets: an unreadable
  sample comes back as ``None`` (never another sample), counted and logged.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

logger = logging.getLogger("ghost_vision.data")

__all__ = [
    "DataError", "SkipCorrupt", "SkippingDataset", "read_colour_mask", "read_image", "read_label_png", "require_file",
]


class DataError(ValueError):
    """A data file is unreadable, corrupt or malformed; the message names the file and the problem."""


def few(items: Iterable[Any], n: int = 5) -> str:
    """``"a, b, c, ... (12 in all)"``: the first ``n`` items and the count, for error messages."""
    items = list(items)
    head = ", ".join(str(x) for x in items[:n])
    return f"{head}{', ...' if len(items) > n else ''} ({len(items)} in all)"


def require_file(path: str | Path, what: str = "file") -> Path:
    """Return ``path`` as a :class:`Path`, raising :class:`FileNotFoundError` naming it when absent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _open(path: Path) -> Image.Image:
    require_file(path, "image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.load()  # decode now so that truncated/corrupt data fails here, naming the file
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return img


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float grayscale: PIL's convert("RGB") clips instead of rescaling.
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white (what viewers show) rather than keeping whatever is under alpha=0.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as ``H x W x 3`` uint8 RGB, EXIF orientation applied.

    Example:
        >>> img = read_image("JPEGImages/000005.jpg")  # doctest: +SKIP
        >>> img.shape, img.dtype  # doctest: +SKIP
        ((375, 500, 3), dtype('uint8'))
    """
    path = Path(path)
    img = _open(path)
    try:
        img = ImageOps.exif_transpose(img)
        arr = np.array(_to_rgb(img), dtype=np.uint8)  # a writable copy
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"cannot read image {path}: unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_label_png(path: str | Path) -> np.ndarray:
    """Read a single-channel label image (palette indices or gray values) as ``H x W`` uint8/int array.

    No orientation or colour conversion is applied: the stored values are the labels.
    """
    path = Path(path)
    img = _open(path)
    if img.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
        raise DataError(f"label file {path} has mode {img.mode!r}; expected a single-channel (palette/gray) PNG")
    arr = np.array(img)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    return arr


class SkipCorrupt:
    """Opt-in skipping of unreadable samples (``skip_corrupt=True``), honest about it.

    ``fetch(index, loader)`` returns ``loader(index)``, or ``None`` when that raises :class:`DataError` or
    :class:`OSError` (missing/unreadable file): never another sample in its place (the DataLoader's collate
    drops the ``None``, so evaluation scores exactly the readable samples). Each skip is logged with its
    reason where it happens. The skipped indices are flagged in a tensor in shared memory, so that the
    DataLoader's worker processes (each with its own copy of the dataset) and the main process share one
    record; the flag value says which of the sample's files failed (1 + its position in
    ``SkippingDataset.sample_files``; 255 when the message names none of them). A flagged sample is not read
    again.
    """

    def __init__(self, enabled: bool, name: str, length: int) -> None:
        self.enabled = enabled
        self.name = name
        self.flags = torch.zeros(length, dtype=torch.uint8).share_memory_() if enabled else None
        self.reasons: dict[int, str] = {}  # what this process saw

    def mark(self, index: int, error: BaseException, files: Sequence[str]) -> None:
        """Flag ``index`` as skipped because of ``error`` (``files``: the sample's files, to name the culprit)."""
        assert self.flags is not None
        message = str(error)
        which = next((k + 1 for k, f in enumerate(files) if f in message), 255)
        self.flags[index] = which
        self.reasons[index] = message
        logger.warning("%s: skipping sample %d (skip_corrupt=True): %s", self.name, index, message)

    def fetch(self, index: int, loader: Callable[[int], Any], files: Callable[[int], Sequence[str]]) -> Any:
        if self.flags is None:
            return loader(index)
        if self.flags[index]:
            return None
        try:
            return loader(index)
        except (DataError, OSError) as e:
            self.mark(index, e, files(index))
            return None

    def skipped(self) -> dict[int, int]:
        """``{index: flag}`` of every sample skipped so far by any process sharing this record."""
        if self.flags is None:
            return {}
        idx = self.flags.nonzero().flatten()
        return dict(zip(idx.tolist(), self.flags[idx].tolist(), strict=True))


class SkippingDataset(Dataset):
    """Base of the real-format datasets: one entry of ``ids`` per sample, ``_load(index)`` reads one, and an
    opt-in :class:`SkipCorrupt` in ``_skip`` (both set by the subclass's ``__init__``).

    With ``skip_corrupt=True`` an unreadable sample comes back as ``None`` (the loaders' collate functions
    drop it); :meth:`skipped_files` names the files skipped so far by this process and its DataLoader
    workers.
    """

    ids: list[Any]
    _skip: SkipCorrupt

    def _load(self, index: int) -> Any:
        raise NotImplementedError

    def sample_files(self, index: int) -> tuple[str, ...]:
        """The files sample ``index`` is read from (to name the one that failed)."""
        return (str(self.ids[index]),)

    @property
    def num_skipped(self) -> int:
        """Corrupt samples skipped so far (``skip_corrupt=True``) by this process and its DataLoader workers."""
        return len(self._skip.skipped())

    def skipped_files(self, flags: Mapping[int, int] | None = None) -> list[str]:
        """The unreadable file of every skipped sample, in index order; ``flags`` (``{index: flag}``, e.g.
        gathered from several processes) replaces this process's record."""
        flags = self._skip.skipped() if flags is None else flags
        out = []
        for i in sorted(flags):
            files = self.sample_files(i)
            which = int(flags[i])
            out.append(files[which - 1] if 1 <= which <= len(files) else " or ".join(files))
        return out

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        return self._skip.fetch(index, self._load, self.sample_files)


def read_colour_mask(path: str | Path, palette: np.ndarray) -> np.ndarray:
    """Read a colour (RGB) label image as ``H x W`` int64 indices into ``palette`` (``P x 3`` uint8).

    Every pixel's colour must be one of the palette's; otherwise :class:`DataError` names the file and the
    first unknown colours.
    """
    path = Path(path)
    palette = np.asarray(palette, dtype=np.int64).reshape(-1, 3)
    rgb = read_image(path).astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    known = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(known, kind="stable")
    pos = np.searchsorted(known[order], code).clip(0, len(known) - 1)
    found = known[order][pos] == code
    if not found.all():
        unknown = np.unique(code[~found])
        shown = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown[:5].tolist()]
        raise DataError(
            f"colour mask {path} has {len(unknown)} colour(s) outside the palette, e.g. RGB {shown}: "
            "add them to the palette (its position is the mask value) or fix the mask"
        )
    return order[pos]
