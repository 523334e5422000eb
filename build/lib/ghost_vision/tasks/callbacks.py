"""Pictures of a task's work: predictions drawn on images (:func:`predict_and_draw`, also used by
``ghost-vision infer``), and callbacks that leave training curves and drawn validation images behind."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from ghost_vision.visualize import draw_detections, draw_segmentation, plot_curves, save_image

__all__ = ["TrainingCurves", "DrawPredictions", "SkippedFiles", "output_dir", "predict_and_draw"]

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_and_draw(
    task: L.LightningModule,
    images: Sequence[torch.Tensor],
    *,
    model: torch.nn.Module | None = None,
    score_thresh: float = 0.3,
) -> list[torch.Tensor]:
    """Run a task's model on images (3xHxW float in [0, 1], any sizes) and draw what it predicts.

    Detection tasks get boxes captioned ``class score`` (those scoring below ``score_thresh`` hidden),
    segmentation tasks their class-id mask overlaid. ``model`` replaces ``task.model`` for the forward pass
    (e.g. ``deploy.optimize(task.model)``); it must be in eval mode. Returns one uint8 3xHxW picture per image.

    Example:
        >>> task = load_task("runs/ssdlite_ghost_shapes/checkpoints/last.ckpt").eval()  # doctest: +SKIP
        >>> pictures = predict_and_draw(task, [torch.rand(3, 240, 320)])  # doctest: +SKIP
    """
    from .detection import DetectionTask

    model = task.model if model is None else model
    images = [img.to(task.device) for img in images]
    if not images:
        return []
    if isinstance(task, DetectionTask):
        preds = model(images)
        names = task.hparams.get("class_names")
        return [draw_detections(i, p, class_names=names, score_thresh=score_thresh) for i, p in zip(images, preds)]
    # segmentation: one forward pass per group of equally sized images
    drawn: list[torch.Tensor] = []
    same_size = all(img.shape == images[0].shape for img in images)
    for group in ([images] if same_size else [[img] for img in images]):
        masks = model(torch.stack(group))["out"].argmax(1)
        drawn += [draw_segmentation(i, m, num_classes=task.hparams.num_classes) for i, m in zip(group, masks)]
    return drawn


def output_dir(trainer: L.Trainer) -> Path:
    """The run's log folder. Under DDP ``trainer.log_dir`` is a collective (rank 0 broadcasts it): call this
    on every rank, never from inside a ``rank_zero_only`` function, or the other ranks wait forever."""
    return Path(trainer.log_dir or trainer.default_root_dir)


class _OutputDirMixin:
    _out: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._out = output_dir(trainer)  # all ranks take part in the broadcast here


def _scalar(value: Any) -> float | None:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


class TrainingCurves(_OutputDirMixin, L.Callback):
    """Plot epoch-level training losses and validation metrics against the epoch to ``curves.png``
    (and the numbers to ``curves.json``), refreshed at the end of every training epoch."""

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename
        self.history: list[dict[str, float]] = []

    def _record(self, trainer: L.Trainer, prefixes: tuple[str, ...]) -> None:
        row = {"epoch": float(trainer.current_epoch)}
        for key, value in trainer.callback_metrics.items():
            v = _scalar(value)
            if v is not None and key.startswith(prefixes) and not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = v
        if self.history and self.history[-1]["epoch"] == row["epoch"]:
            self.history[-1].update(row)
        else:
            self.history.append(row)

    @rank_zero_only
    def _plot(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = (self._out or output_dir(trainer)) / self.filename
        plot_curves(self.history, path, title=type(pl_module.model).__name__)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not on_validation_epoch_end: callbacks' epoch-end hooks run before the task's, which computes and
        # logs the metrics, so trainer.callback_metrics would still hold the previous validation's values.
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._record(trainer, ("val/",))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning validates at the end of the epoch before this hook, so the row is complete here.
        self._record(trainer, ("train/",))
        self._plot(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class DrawPredictions(_OutputDirMixin, L.Callback):
    """At the end of ``fit`` and ``validate``, draw predictions on the first validation images as PNGs."""

    def __init__(self, num_images: int = 8, score_thresh: float = 0.3, dirname: str = "predictions") -> None:
        self.num_images = num_images
        self.score_thresh = score_thresh
        self.dirname = dirname

    @rank_zero_only
    def _draw(self, trainer: L.Trainer, task: L.LightningModule, tag: str) -> None:
        dm = trainer.datamodule
        if dm is None or self.num_images <= 0:
            return
        was_training = task.training
        task.eval()
        drawn: list[torch.Tensor] = []
        for batch in dm.val_dataloader():
            if batch is None:  # only skipped samples (skip_corrupt=True)
                continue
            images = batch[0]
            if isinstance(images, torch.Tensor) and images.ndim == 3:
                images = images[None]
            drawn += predict_and_draw(task, list(images), score_thresh=self.score_thresh)
            if len(drawn) >= self.num_images:
                break
        task.train(was_training)
        if drawn:
            out = self._out or output_dir(trainer)
            path = save_image(drawn[: self.num_images], out / self.dirname / f"{tag}.png")
            log.info("predictions drawn to %s", path)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "fit_end")

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._draw(trainer, pl_module, "validate")


class SkippedFiles(L.Callback):
    """Report the files skipped as unreadable (``skip_corrupt=True``) at the end of every train and
    validation epoch: one log line with the count and the names, and ``skipped_files`` logged as a metric
    of validation (so ``tools/eval.py`` writes it into its JSON); :attr:`names` keeps the names per split.

    Under DDP every rank skips what its own samples hold; the record is the union over ranks (a max
    all-reduce of each dataset's skip flags), so 1 and N processes report the same files. Datasets without
    ``skip_corrupt`` are left alone.
    """

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}

    @staticmethod
    def _dataset(trainer: L.Trainer, split: str) -> Any:
        ds = getattr(trainer.datamodule, f"{split}_dataset", None) if trainer.datamodule is not None else None
        while ds is not None and not hasattr(ds, "_skip") and hasattr(ds, "dataset"):  # IndexedDataset, Subset
            ds = ds.dataset
        skip = getattr(ds, "_skip", None)
        return ds if skip is not None and getattr(skip, "flags", None) is not None else None

    def _report(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> list[str] | None:
        ds = self._dataset(trainer, split)
        if ds is None:
            return None
        flags = ds._skip.flags.to(device=pl_module.device, dtype=torch.int32)
        flags = trainer.strategy.reduce(flags, reduce_op="max")  # identity on one process
        index = torch.nonzero(flags).flatten()
        names = ds.skipped_files(dict(zip(index.tolist(), flags[index].tolist(), strict=True)))
        self.names[split] = names
        if names:
            shown = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
            if trainer.is_global_zero:
                log.warning("%s: %d unreadable file(s) skipped so far (skip_corrupt=True): %s", split, len(names), shown)
        return names

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, pl_module, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        names = self._report(trainer, pl_module, "val")
        if names is not None:
            pl_module.log("val/skipped_files", float(len(names)), sync_dist=False)
