"""Checkpoints that survive a kill: atomic writes, and a readable-checkpoint check before any work starts.

Lightning's ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in the
system temp folder; when that is another filesystem than the checkpoint folder (a tmpfs ``/tmp``, a
network disk), the final "move" is a copy straight into ``last.ckpt``, and a job killed during it leaves a
truncated ``last.ckpt`` and no previous one. :class:`AtomicCheckpointIO` writes a temporary file next to
the target, flushes it to disk and renames it over the target (``os.replace``, atomic on POSIX), so the
target always holds either the previous checkpoint or the new one, whole.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "CheckpointError", "check_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not a Lightning checkpoint; the message names it."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic: temp file in the target folder, fsync, rename.

    Remote paths (``s3://`` ...) keep Lightning's own writing. Used by the command line's trainers.

    Example:
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()])  # doctest: +SKIP
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or _remote(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _remote(path: Any) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def check_checkpoint(path: str | Path, what: str = "--ckpt_path") -> Path:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a whole, readable Lightning checkpoint.

    Cheap: the file is memory-mapped, tensors are not read. Catches a missing file, a truncated or corrupt
    one (a job killed while copying it) and a foreign one (a plain ``state_dict``, another framework's file).

    Example:
        >>> check_checkpoint("runs/ssdlite/ckpt/last.ckpt")  # doctest: +SKIP
    """
    if _remote(path):
        return Path(path)  # left to Lightning
    path = Path(str(path).removeprefix("file://"))
    if not path.is_file():
        raise CheckpointError(f"{what}: checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{what}: {path} is not a PyTorch checkpoint (not a zip archive: truncated, corrupt or another format); "
            "point at a .ckpt written by ghost-vision / Lightning"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError/... for broken archives
        raise CheckpointError(f"{what}: cannot read checkpoint {path} (truncated or corrupt?): {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "pytorch-lightning_version" not in ckpt:
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(
            f"{what}: {path} is not a Lightning checkpoint (found {keys}); to start from plain weights use "
            "--model.init_args.init_from PATH instead"
        )
    return path
